// Unit tests of the HTTP client's URL parser, redirect Location resolution and percent-encoding.
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "daemon/renewal/http_client.hpp"
#include "daemon/renewal/http_url.hpp"

namespace firmad::http {
namespace {

// Asserts that parsing `text` is refused as a bad URL whose message contains `why`.
void expect_bad(std::string_view text, std::string_view why = "") {
  SCOPED_TRACE("URL: " + std::string(text));
  try {
    const Url url = parse_url(text);
    ADD_FAILURE() << "accepted as " << url.str();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::BadUrl) << e.what();
    EXPECT_NE(std::string_view(e.what()).find(why), std::string_view::npos) << "'" << why << "' not in: " << e.what();
  }
}

// The same for resolving `location` against `base`.
void expect_bad_location(const Url& base, std::string_view location, std::string_view why = "") {
  SCOPED_TRACE("Location: " + std::string(location));
  try {
    const Url url = resolve_location(base, location);
    ADD_FAILURE() << "resolved to " << url.str();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::BadUrl) << e.what();
    EXPECT_NE(std::string_view(e.what()).find(why), std::string_view::npos) << "'" << why << "' not in: " << e.what();
  }
}

std::string resolved(std::string_view base, std::string_view location) {
  return resolve_location(parse_url(base), location).str();
}

// ---- parse_url ---------------------------------------------------------------

TEST(HttpUrlTest, SplitsAnHttpsUrlIntoItsParts) {
  const Url url = parse_url("HTTPS://CA.Example.TEST:8443/idse/Consulta.idse?NPIE=A%20B#section");
  EXPECT_TRUE(url.https);
  EXPECT_EQ(url.kind, HostKind::Name);
  EXPECT_EQ(url.host, "ca.example.test");  // host names are case-insensitive; paths are not
  EXPECT_EQ(url.port, 8443);
  EXPECT_EQ(url.target, "/idse/Consulta.idse?NPIE=A%20B");
  EXPECT_EQ(url.path(), "/idse/Consulta.idse");
  EXPECT_EQ(url.authority(), "ca.example.test:8443");
  EXPECT_EQ(url.origin(), "https://ca.example.test:8443");
  EXPECT_EQ(url.str(), "https://ca.example.test:8443/idse/Consulta.idse?NPIE=A%20B");
}

TEST(HttpUrlTest, FillsInTheDefaultPortAndTarget) {
  const Url plain = parse_url("http://h");
  EXPECT_FALSE(plain.https);
  EXPECT_EQ(plain.port, 80);
  EXPECT_EQ(plain.target, "/");
  EXPECT_EQ(parse_url("https://h").port, 443);
  EXPECT_EQ(parse_url("http://h?q=1").target, "/?q=1");
  // A default port written out is left out again, so Host is what a browser sends.
  EXPECT_EQ(parse_url("http://h:80/x").str(), "http://h/x");
  EXPECT_EQ(parse_url("https://h:443").authority(), "h");
  EXPECT_EQ(parse_url("http://h:443").authority(), "h:443");
}

TEST(HttpUrlTest, DropsTheFragment) {
  EXPECT_EQ(parse_url("http://h/p#f").target, "/p");
  EXPECT_EQ(parse_url("http://h#f").target, "/");
  EXPECT_EQ(parse_url("http://h?q#f?g").target, "/?q");
  EXPECT_EQ(parse_url("http://h/p#").target, "/p");
}

TEST(HttpUrlTest, RefusesAnEmptyUrl) { expect_bad("", "empty"); }

TEST(HttpUrlTest, RefusesATruncatedUrl) {
  expect_bad("h", "no scheme");
  expect_bad("http", "no scheme");
  expect_bad("http:", "no scheme");
  expect_bad("http:/", "no scheme");
  expect_bad("http:/h", "no scheme");
  expect_bad("http://", "no host");
  expect_bad("http:///path", "no host");
  expect_bad("http://?q", "no host");
  expect_bad("http://#f", "no host");
  expect_bad("http://h:", "empty port");
  expect_bad("http://h:/x", "empty port");
  expect_bad("https://[", "unterminated IPv6");
  expect_bad("https://[::1", "unterminated IPv6");
  expect_bad("https://[::1]:", "empty port");
}

TEST(HttpUrlTest, RefusesAnOversizeUrlButNotOneAtTheLimit) {
  const std::string prefix = "http://h/";
  const std::string at_limit = prefix + std::string(kMaxUrl - prefix.size(), 'a');
  EXPECT_EQ(parse_url(at_limit).target.size(), kMaxUrl - prefix.size() + 1);
  const std::string over = at_limit + "a";
  try {
    parse_url(over);
    ADD_FAILURE() << "accepted a URL of " << over.size() << " bytes";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::BadUrl);
    const std::string what = e.what();
    EXPECT_NE(what.find("longer than 8192 bytes"), std::string::npos) << what;
    // The message quotes the start of the URL, not all of it.
    EXPECT_NE(what.find("'http://h/aaa"), std::string::npos) << what;
    EXPECT_LT(what.size(), 400u) << what;
  }
}

TEST(HttpUrlTest, RefusesSpacesControlCharactersAndNonAsciiBytes) {
  for (std::string_view text : {"http://h/a b", "http://h/a\tb", "http://h/\r\nHost: evil", "http://h/\x7f",
                                "http://h/caf\xc3\xa9", " http://h/", "http://h/\xff"})
    expect_bad(text, "percent-encode it");
  expect_bad(std::string_view("http://h/\0x", 11), "percent-encode it");
}

TEST(HttpUrlTest, RefusesSchemesOtherThanHttpAndHttps) {
  expect_bad("ftp://h/", "scheme 'ftp' is not http or https");
  expect_bad("file:///etc/passwd", "scheme 'file'");
  expect_bad("httpx://h", "scheme 'httpx'");
  expect_bad("://h", "scheme ''");
  expect_bad("mailto:ca@example.test", "no scheme");
}

TEST(HttpUrlTest, RefusesUserInformation) {
  for (std::string_view text : {"https://user@h/", "https://user:password@h", "https://h.example@evil.test/",
                                "http://@h", "http://[::1]@h/"})
    expect_bad(text, "user information");
  // An '@' after the authority is part of the path.
  EXPECT_EQ(parse_url("http://h/a@b?c=@").target, "/a@b?c=@");
}

TEST(HttpUrlTest, ReadsIpv6LiteralsInBrackets) {
  const Url loopback = parse_url("https://[::1]:8443/est");
  EXPECT_EQ(loopback.kind, HostKind::Ipv6);
  EXPECT_EQ(loopback.host, "::1");
  EXPECT_EQ(loopback.port, 8443);
  EXPECT_EQ(loopback.authority(), "[::1]:8443");
  EXPECT_EQ(loopback.str(), "https://[::1]:8443/est");
  // Written the long way or in capitals, an address is the same host.
  EXPECT_EQ(parse_url("http://[0:0:0:0:0:0:0:1]/").host, "::1");
  EXPECT_EQ(parse_url("http://[2001:DB8::A]").host, "2001:db8::a");
  EXPECT_EQ(parse_url("http://[2001:DB8::A]").str(), "http://[2001:db8::a]/");
  EXPECT_EQ(parse_url("http://[::ffff:192.0.2.1]:80/").port, 80);
}

TEST(HttpUrlTest, RefusesIpv6LiteralsThatAreNotPlainAddresses) {
  expect_bad("http://::1/", "must be written in brackets");
  expect_bad("http://2001:db8::1:80/", "must be written in brackets");
  expect_bad("http://[]/", "is not an IPv6 address");
  expect_bad("http://[::g]/", "is not an IPv6 address");
  expect_bad("http://[1.2.3.4]/", "is not an IPv6 address");
  expect_bad("http://[::1:2:3:4:5:6:7:8]/", "is not an IPv6 address");
  expect_bad("http://[fe80::1%25eth0]/", "is not an IPv6 address");  // zones are local to a host
  expect_bad("http://[fe80::1%eth0]/", "is not an IPv6 address");
  expect_bad("http://[::1]x/", "unexpected text after the IPv6 literal");
  expect_bad("http://[::1]]/", "unexpected text after the IPv6 literal");
}

TEST(HttpUrlTest, ReadsDottedQuadIpv4AddressesOnly) {
  const Url url = parse_url("http://192.0.2.10:8080/x");
  EXPECT_EQ(url.kind, HostKind::Ipv4);
  EXPECT_EQ(url.host, "192.0.2.10");
  EXPECT_EQ(url.authority(), "192.0.2.10:8080");
  // The shorthand forms resolvers accept would reach another host than the one read.
  expect_bad("http://127.1/", "is not an IPv4 address");
  expect_bad("http://2130706433/", "is not an IPv4 address");
  expect_bad("http://1.2.3.256/", "is not an IPv4 address");
  expect_bad("http://1.2.3.4./", "is not an IPv4 address");
  expect_bad("http://0x7f.0.0.1/", "neither an IPv4 address nor a host name");
  expect_bad("http://1.2.3.4a/", "neither an IPv4 address nor a host name");
}

TEST(HttpUrlTest, AcceptsPortsFrom1To65535Only) {
  EXPECT_EQ(parse_url("http://h:1/").port, 1);
  EXPECT_EQ(parse_url("http://h:65535/").port, 65535);
  EXPECT_EQ(parse_url("http://h:00080/").port, 80);
  expect_bad("http://h:0/", "is not from 1 to 65535");
  expect_bad("http://h:00000/", "is not from 1 to 65535");
  expect_bad("http://h:65536/", "is not from 1 to 65535");
  expect_bad("http://h:99999/", "is not from 1 to 65535");
  expect_bad("http://h:123456/", "is not a number from 1 to 65535");
  expect_bad("http://h:18446744073709551617/", "is not a number from 1 to 65535");
  expect_bad("http://h:-1/", "is not a number");
  expect_bad("http://h:+80/", "is not a number");
  expect_bad("http://h:8a/", "is not a number");
  expect_bad("http://[::1]:65536/", "is not from 1 to 65535");
}

TEST(HttpUrlTest, RefusesHostNamesThatAreNotLetterDigitHyphen) {
  const std::string label63(63, 'a');
  EXPECT_EQ(parse_url("http://" + label63 + ".test/").host, label63 + ".test");
  expect_bad("http://" + std::string(64, 'a') + ".test/", "longer than 63");
  std::string name253;
  while (name253.size() < 248) name253 += std::string(61, 'b') + ".";
  name253 += "cdefg";
  ASSERT_EQ(name253.size(), 253u);
  EXPECT_EQ(parse_url("http://" + name253).host, name253);
  expect_bad("http://" + name253 + "h", "longer than 253");
  expect_bad("http://-a.test/", "starts or ends with '-'");
  expect_bad("http://a-.test/", "starts or ends with '-'");
  expect_bad("http://a..test/", "label empty");
  expect_bad("http://.test/", "label empty");
  expect_bad("http://test./", "label empty");
  expect_bad("http://a_b.test/", "contains '_'");
  expect_bad("http://a%2eb/", "contains '%'");
  expect_bad("http://a\\b/", "contains '\\'");
  expect_bad("http://a:b:c/", "brackets");
  EXPECT_EQ(parse_url("http://xn--caf-dma.test-1.example/").host, "xn--caf-dma.test-1.example");
}

TEST(HttpUrlTest, KeepsPercentEncodingInTheTargetAsWritten) {
  // Neither decoded nor re-encoded: the server sees the bytes the URL holds.
  EXPECT_EQ(parse_url("http://h/a%20b/%2F?q=%3D%26&r=%zz").target, "/a%20b/%2F?q=%3D%26&r=%zz");
  EXPECT_EQ(parse_url("http://h/%").target, "/%");
  EXPECT_EQ(parse_url("http://h/%2e%2e/x").target, "/%2e%2e/x");
}

TEST(HttpUrlTest, ShownQuotesAndShortensText) {
  EXPECT_EQ(shown("http://h/"), "'http://h/'");
  EXPECT_EQ(shown(""), "''");
  const std::string shortened = shown(std::string(500, 'x'));
  EXPECT_EQ(shortened, "'" + std::string(200, 'x') + "...'");
}

TEST(HttpUrlTest, ShownEscapesWhatWouldBreakALogLine) {
  EXPECT_EQ(shown(std::string_view("/a\r\nSet-Cookie: x\0y", 19)), "'/a\\x0d\\x0aSet-Cookie: x\\x00y'");
  // A refused Location's CR LF stays inside the one-line message.
  try {
    resolve_location(parse_url("http://h/"), "/a\r\nX-Injected: 1");
    ADD_FAILURE() << "accepted a Location with CR LF";
  } catch (const Error& e) {
    EXPECT_EQ(std::string_view(e.what()).find_first_of("\r\n"), std::string_view::npos) << e.what();
    EXPECT_NE(std::string_view(e.what()).find("X-Injected"), std::string_view::npos) << e.what();
  }
}

// ---- resolve_location --------------------------------------------------------

constexpr std::string_view kBase = "https://ca.example.test:8443/idse/dir/page.idse?x=1#top";

TEST(HttpUrlTest, AnAbsoluteLocationReplacesTheUrl) {
  EXPECT_EQ(resolved(kBase, "http://Other.TEST/a?b"), "http://other.test/a?b");
  EXPECT_EQ(resolved(kBase, "HTTPS://other.test:9/"), "https://other.test:9/");
  // Dot segments of an absolute Location are the server's business.
  EXPECT_EQ(resolved(kBase, "https://other.test/a/../b"), "https://other.test/a/../b");
  const Url base = parse_url(kBase);
  expect_bad_location(base, "ftp://other.test/", "scheme 'ftp'");
  expect_bad_location(base, "mailto:x@other.test", "no scheme");
  expect_bad_location(base, "javascript:alert(1)", "no scheme");
  expect_bad_location(base, "https://user@other.test/", "user information");
}

TEST(HttpUrlTest, ASchemeRelativeLocationKeepsTheScheme) {
  EXPECT_EQ(resolved(kBase, "//other.test/a?b"), "https://other.test/a?b");
  EXPECT_EQ(resolved("http://h/", "//other.test:8080"), "http://other.test:8080/");
  const Url base = parse_url(kBase);
  expect_bad_location(base, "//", "no host");
  expect_bad_location(base, "///x", "no host");
  expect_bad_location(base, "//user@evil.test/", "user information");
  expect_bad_location(base, "//[::1/", "unterminated IPv6");
}

TEST(HttpUrlTest, AnAbsolutePathLocationKeepsTheOrigin) {
  EXPECT_EQ(resolved(kBase, "/final"), "https://ca.example.test:8443/final");
  EXPECT_EQ(resolved(kBase, "/a/./b/../c?y=2#frag"), "https://ca.example.test:8443/a/c?y=2");
  EXPECT_EQ(resolved(kBase, "/../../etc/passwd"), "https://ca.example.test:8443/etc/passwd");
  EXPECT_EQ(resolved(kBase, "/a/.."), "https://ca.example.test:8443/");
  EXPECT_EQ(resolved(kBase, "/a/%2e%2e/b"), "https://ca.example.test:8443/a/%2e%2e/b");
}

TEST(HttpUrlTest, ARelativeLocationResolvesAgainstTheBaseDirectory) {
  EXPECT_EQ(resolved(kBase, "next.idse"), "https://ca.example.test:8443/idse/dir/next.idse");
  EXPECT_EQ(resolved(kBase, "./next.idse?z"), "https://ca.example.test:8443/idse/dir/next.idse?z");
  EXPECT_EQ(resolved(kBase, "../up"), "https://ca.example.test:8443/idse/up");
  EXPECT_EQ(resolved(kBase, "."), "https://ca.example.test:8443/idse/dir/");
  EXPECT_EQ(resolved(kBase, ".."), "https://ca.example.test:8443/idse/");
  EXPECT_EQ(resolved(kBase, "a/b/../../c"), "https://ca.example.test:8443/idse/dir/c");
  // Never above the root, however many ".." there are.
  EXPECT_EQ(resolved(kBase, "../../../../../root"), "https://ca.example.test:8443/root");
  EXPECT_EQ(resolved("http://h", "x"), "http://h/x");
  EXPECT_EQ(resolved("http://h/dir/", "x"), "http://h/dir/x");
  // A colon after a slash does not make a scheme.
  EXPECT_EQ(resolved(kBase, "a/b:c"), "https://ca.example.test:8443/idse/dir/a/b:c");
}

TEST(HttpUrlTest, AQueryOrFragmentOnlyLocationKeepsThePath) {
  EXPECT_EQ(resolved(kBase, "?z=3"), "https://ca.example.test:8443/idse/dir/page.idse?z=3");
  EXPECT_EQ(resolved(kBase, "#elsewhere"), "https://ca.example.test:8443/idse/dir/page.idse?x=1");
  EXPECT_EQ(resolved(kBase, ""), "https://ca.example.test:8443/idse/dir/page.idse?x=1");
  EXPECT_EQ(resolved("http://h/p", "?"), "http://h/p?");
}

TEST(HttpUrlTest, RefusesALocationThatIsOversizeOrMakesABadUrl) {
  const Url base = parse_url(kBase);
  expect_bad_location(base, "/" + std::string(kMaxUrl, 'a'), "longer than 8192 bytes");
  // Short enough itself, but not once joined to the base.
  expect_bad_location(base, "/" + std::string(kMaxUrl - 10, 'a'), "longer than 8192 bytes");
  expect_bad_location(base, "/a b", "percent-encode it");
  expect_bad_location(base, "x\r\nSet-Cookie: a=b", "percent-encode it");
  expect_bad_location(base, "http:", "no scheme");
  expect_bad_location(base, "http:/x", "no scheme");
}

TEST(HttpUrlTest, ALocationToTheSameUrlResolvesToIt) {
  const Url base = parse_url(kBase);
  const Url again = resolve_location(base, base.str());
  EXPECT_EQ(again.str(), base.str());
  EXPECT_TRUE(again.same_origin(base));
  EXPECT_FALSE(parse_url("http://ca.example.test:8443/").same_origin(base));
  EXPECT_FALSE(parse_url("https://ca.example.test/").same_origin(base));
}

// ---- url_encode and form_encode ------------------------------------------------

TEST(HttpUrlTest, UrlEncodeKeepsOnlyUnreservedCharacters) {
  EXPECT_EQ(url_encode(""), "");
  EXPECT_EQ(url_encode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(url_encode("a b/c?d=e&f+g%"), "a%20b%2Fc%3Fd%3De%26f%2Bg%25");
  EXPECT_EQ(url_encode("\xc3\xb1"), "%C3%B1");
  EXPECT_EQ(url_encode(std::string_view("\0\xff", 2)), "%00%FF");
  // What it makes is a URL target parse_url keeps as it is.
  const std::string target = "/q?v=" + url_encode("x y\r\n#\x7f");
  EXPECT_EQ(parse_url("http://h" + target).target, target);
}

TEST(HttpUrlTest, FormEncodeWritesWhatBrowsersSend) {
  EXPECT_EQ(form_encode({}), "");
  EXPECT_EQ(form_encode({{"NPIE", "A1 B2"}, {"CSR", "ab+/=="}}), "NPIE=A1+B2&CSR=ab%2B%2F%3D%3D");
  EXPECT_EQ(form_encode({{"k", ""}, {"", "v"}}), "k=&=v");
  EXPECT_EQ(form_encode({{"a*b~", "-._"}}), "a*b%7E=-._");
}

}  // namespace
}  // namespace firmad::http
