// Absolute http(s) URLs as firmad's HTTP client accepts them, and redirect Locations resolved against one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "daemon/renewal/http_client.hpp"  // http::Error

namespace firmad::http {

// The longest URL (or Location value) accepted, in bytes.
inline constexpr std::size_t kMaxUrl = 8192;

enum class HostKind { Name, Ipv4, Ipv6 };

struct Url {
  bool https = false;
  std::string host;  // lower-case DNS name, or an IP literal without brackets
  HostKind kind = HostKind::Name;
  std::uint16_t port = 0;
  std::string target;  // path and query, as written (percent-encoding kept); starts with '/'; no fragment

  // "host", "host:8443", "[::1]:8443": the port only when it is not the scheme's default.
  std::string authority() const;
  // "https://" + authority().
  std::string origin() const;
  // The whole URL as firmad requests it (no fragment).
  std::string str() const { return origin() + target; }
  // The target without its query.
  std::string path() const { return target.substr(0, target.find('?')); }
  bool same_origin(const Url& o) const { return https == o.https && host == o.host && port == o.port; }
};

// Returns the absolute http:// or https:// URL `text` split into its parts:
// the scheme (any case), a host (an LDH name, a dotted-quad IPv4 address, or
// an IPv6 address in brackets without a zone), an optional port from 1 to
// 65535, and the path and query (the fragment is dropped). Refuses (throws
// Error with kind BadUrl, naming the URL and the reason) an empty or over-long
// text, spaces, control characters and non-ASCII bytes (which must be
// percent-encoded), user information ("user@host"), and anything else.
Url parse_url(std::string_view text);

// Returns the URL a redirect's Location value points to from `base` (RFC 3986
// §5.2): absolute ("https://other/x"), scheme-relative ("//other/x"),
// absolute-path ("/x") or relative ("x", "../x", "?q", "#f", ""), with "."
// and ".." segments of a relative reference resolved, never above the root.
// Throws Error(BadUrl) as parse_url does, for the Location or the URL it makes.
Url resolve_location(const Url& base, std::string_view location);

// `text` quoted for an error message: cut short after 200 bytes, NUL, CR and
// LF written as \x00, \x0d and \x0a.
std::string shown(std::string_view text);

}  // namespace firmad::http
