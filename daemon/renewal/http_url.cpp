// Parsing absolute http(s) URLs and resolving redirect Locations, for the HTTP client.
#include "daemon/renewal/http_url.hpp"

#include <boost/asio/ip/address_v4.hpp>
#include <boost/asio/ip/address_v6.hpp>

#include <algorithm>

namespace firmad::http {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool is_alpha(unsigned char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_alnum(unsigned char c) { return is_alpha(c) || is_digit(c); }

[[noreturn]] void bad_url(std::string_view url, const std::string& why) {
  throw Error(Error::Kind::BadUrl, "bad URL " + shown(url) + ": " + why);
}

// Why `host` is not an LDH host name, or empty if it is one.
std::string why_not_host_name(std::string_view host) {
  if (host.size() > 253) return "host name longer than 253 characters";
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = host.find('.', start);
    const std::string_view label = host.substr(start, dot == std::string_view::npos ? host.size() - start : dot - start);
    if (label.empty() || label.size() > 63) return "host name label empty or longer than 63 characters";
    if (label.front() == '-' || label.back() == '-') return "host name label starts or ends with '-'";
    for (unsigned char c : label)
      if (!is_alnum(c) && c != '-') return "host name contains '" + std::string(1, static_cast<char>(c)) + "'";
    if (dot == std::string_view::npos) {
      // A last label starting with a digit is how resolvers spot numeric
      // forms ("127.1", "0x7f.1"); no real top-level domain starts so.
      if (is_digit(label.front())) return "neither an IPv4 address nor a host name";
      return "";
    }
    start = dot + 1;
  }
}

std::uint16_t parse_port(std::string_view url, std::string_view port) {
  if (port.empty()) bad_url(url, "empty port");
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](unsigned char c) { return is_digit(c); }))
    bad_url(url, "port '" + std::string(port) + "' is not a number from 1 to 65535");
  const unsigned long value = std::stoul(std::string(port));
  if (value == 0 || value > 65535) bad_url(url, "port " + std::string(port) + " is not from 1 to 65535");
  return static_cast<std::uint16_t>(value);
}

// RFC 3986 5.2.4: resolves "." and ".." in a path, never above the root.
std::string remove_dot_segments(std::string_view in) {
  std::string out;
  while (!in.empty()) {
    if (in.starts_with("../")) {
      in.remove_prefix(3);
    } else if (in.starts_with("./")) {
      in.remove_prefix(2);
    } else if (in.starts_with("/./")) {
      in.remove_prefix(2);
    } else if (in == "/.") {
      in = "/";
    } else if (in.starts_with("/../") || in == "/..") {
      in = in.size() == 3 ? std::string_view("/") : in.substr(3);
      const std::size_t slash = out.rfind('/');
      out.erase(slash == std::string::npos ? 0 : slash);
    } else if (in == "." || in == "..") {
      in = {};
    } else {
      const std::size_t next = in.find('/', 1);
      const std::size_t n = next == std::string_view::npos ? in.size() : next;
      out.append(in.substr(0, n));
      in.remove_prefix(n);
    }
  }
  return out.empty() || out.front() != '/' ? "/" + out : out;
}

}  // namespace

std::string shown(std::string_view text) {
  // The text may come from a server (a Location header): a NUL would end the
  // exception's message early and a CR or LF would split a log line, so those
  // three are written as \xNN. Other bytes are shown as they are.
  constexpr std::size_t kShown = 200;
  std::string out = "'";
  for (char c : text.substr(0, kShown)) {
    if (c == '\0') out += "\\x00";
    else if (c == '\r') out += "\\x0d";
    else if (c == '\n') out += "\\x0a";
    else out += c;
  }
  return out + (text.size() > kShown ? "...'" : "'");
}

std::string Url::authority() const {
  std::string out = kind == HostKind::Ipv6 ? "[" + host + "]" : host;
  if (port != (https ? 443 : 80)) out += ":" + std::to_string(port);
  return out;
}

std::string Url::origin() const { return (https ? "https://" : "http://") + authority(); }

Url parse_url(std::string_view text) {
  if (text.empty()) bad_url(text, "empty");
  if (text.size() > kMaxUrl) bad_url(text, "longer than " + std::to_string(kMaxUrl) + " bytes");
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f) bad_url(text, "contains a space, a control character or a non-ASCII byte (percent-encode it)");

  const std::size_t sep = text.find("://");
  if (sep == std::string_view::npos) bad_url(text, "no scheme (expected http:// or https://)");
  Url url;
  const std::string scheme = lower(text.substr(0, sep));
  if (scheme == "https")
    url.https = true;
  else if (scheme != "http")
    bad_url(text, "scheme '" + scheme + "' is not http or https");

  const std::string_view rest = text.substr(sep + 3);
  const std::size_t authority_end = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, authority_end);
  std::string_view tail = authority_end == std::string_view::npos ? std::string_view{} : rest.substr(authority_end);
  tail = tail.substr(0, tail.find('#'));  // the fragment is the client's, never sent
  url.target = tail.empty() ? "/" : tail.front() == '?' ? "/" + std::string(tail) : std::string(tail);

  if (authority.find('@') != std::string_view::npos) bad_url(text, "user information (user@host) is not accepted");
  if (authority.empty()) bad_url(text, "no host");
  std::string_view port;
  if (authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) bad_url(text, "unterminated IPv6 literal");
    const std::string literal(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') bad_url(text, "unexpected text after the IPv6 literal");
      port = after.substr(1);
      if (port.empty()) bad_url(text, "empty port");
    }
    boost::system::error_code ec;
    const auto address = boost::asio::ip::make_address_v6(literal, ec);
    if (ec || literal.find('%') != std::string::npos) bad_url(text, "'" + literal + "' is not an IPv6 address");
    url.kind = HostKind::Ipv6;
    url.host = address.to_string();
  } else {
    if (std::count(authority.begin(), authority.end(), ':') > 1)
      bad_url(text, "an IPv6 address must be written in brackets");
    const std::size_t colon = authority.find(':');
    const std::string_view host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) bad_url(text, "empty port");
    }
    if (host.empty()) bad_url(text, "no host");
    if (std::all_of(host.begin(), host.end(), [](unsigned char c) { return is_digit(c) || c == '.'; })) {
      boost::system::error_code ec;
      boost::asio::ip::make_address_v4(std::string(host), ec);
      if (ec) bad_url(text, "'" + std::string(host) + "' is not an IPv4 address");
      url.kind = HostKind::Ipv4;
      url.host = std::string(host);
    } else {
      if (const std::string why = why_not_host_name(host); !why.empty()) bad_url(text, why);
      url.host = lower(host);
    }
  }
  url.port = port.empty() ? (url.https ? 443 : 80) : parse_port(text, port);
  return url;
}

Url resolve_location(const Url& base, std::string_view location) {
  if (location.size() > kMaxUrl) bad_url(location, "longer than " + std::to_string(kMaxUrl) + " bytes");
  std::size_t i = 0;
  if (!location.empty() && is_alpha(static_cast<unsigned char>(location[0]))) {
    while (i < location.size() &&
           (is_alnum(static_cast<unsigned char>(location[i])) || location[i] == '+' || location[i] == '-' ||
            location[i] == '.'))
      ++i;
    if (i < location.size() && location[i] == ':') return parse_url(location);  // absolute
  }
  if (location.starts_with("//")) return parse_url((base.https ? "https:" : "http:") + std::string(location));

  const std::size_t suffix_at = location.find_first_of("?#");
  const std::string_view path = location.substr(0, suffix_at);
  std::string suffix(suffix_at == std::string_view::npos ? std::string_view{} : location.substr(suffix_at));
  std::string merged;
  if (path.empty()) {
    merged = base.path();
    if (suffix.empty() || suffix.front() == '#') {
      const std::size_t q = base.target.find('?');
      suffix = (q == std::string::npos ? "" : base.target.substr(q)) + suffix;
    }
  } else if (path.front() == '/') {
    merged = remove_dot_segments(path);
  } else {
    const std::string base_path = base.path();
    merged = remove_dot_segments(base_path.substr(0, base_path.rfind('/') + 1) + std::string(path));
  }
  return parse_url(base.origin() + merged + suffix);
}

}  // namespace firmad::http
