// libFuzzer target: any bytes as a URL, or as a redirect Location from a few bases, parse or are refused as BadUrl.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "daemon/renewal/http_url.hpp"

namespace {

using firmad::http::Error;
using firmad::http::HostKind;
using firmad::http::Url;

[[noreturn]] void broken(const char* invariant, const std::string& url) {
  std::fprintf(stderr, "invariant broken: %s (URL '%s')\n", invariant, url.c_str());
  std::abort();
}

// What parse_url promises of a URL it accepts.
void check(const Url& url) {
  const std::string text = url.str();
  if (url.host.empty()) broken("no host", text);
  if (url.port == 0) broken("port 0", text);
  if (url.target.empty() || url.target.front() != '/') broken("target does not start with '/'", text);
  if (url.target.find('#') != std::string::npos) broken("fragment kept", text);
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f) broken("space, control or non-ASCII byte in the URL", text);
  if (url.kind == HostKind::Name)
    for (char c : url.host)
      if (c >= 'A' && c <= 'Z') broken("host name not lower-case", text);
  if ((url.kind == HostKind::Ipv6) != (url.host.find(':') != std::string::npos)) broken("IPv6 kind and host disagree", text);
  // What it makes reads back as itself (when the default port or a '/'
  // added to "?q" has not pushed it over the length limit).
  if (text.size() > firmad::http::kMaxUrl) return;
  Url again;
  try {
    again = firmad::http::parse_url(text);
  } catch (const Error& e) {
    broken("str() is not accepted again", text + "': '" + e.what());
  }
  if (again.https != url.https || again.host != url.host || again.kind != url.kind || again.port != url.port ||
      again.target != url.target)
    broken("str() reads back as another URL", text);
}

void refused_cleanly(const Error& e) {
  if (e.kind() != Error::Kind::BadUrl) broken("refused with a kind other than BadUrl", e.what());
}

void location(const Url& base, std::string_view text) {
  try {
    check(firmad::http::resolve_location(base, text));
  } catch (const Error& e) {
    refused_cleanly(e);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Url bases[] = {firmad::http::parse_url("https://ca.example.test:8443/idse/dir/page.idse?x=1"),
                              firmad::http::parse_url("http://[::1]/"), firmad::http::parse_url("http://192.0.2.1")};
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    check(firmad::http::parse_url(text));
  } catch (const Error& e) {
    refused_cleanly(e);
  }
  for (const Url& base : bases) location(base, text);
  // "<base>\n<location>": a base of the input's own choosing.
  if (const std::size_t nl = text.find('\n'); nl != std::string_view::npos) {
    try {
      const Url base = firmad::http::parse_url(text.substr(0, nl));
      location(base, text.substr(nl + 1));
    } catch (const Error& e) {
      refused_cleanly(e);
    }
  }
  return 0;
}
