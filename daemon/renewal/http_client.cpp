// A bounded, verifying HTTP(S) client for certificate renewal, on Boost.Beast and OpenSSL.
#include "daemon/asio.hpp"  // first: it works around a Boost 1.74 header-order issue

#include "daemon/renewal/http_client.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>

#include "daemon/renewal/http_url.hpp"
#include "firmad_version.hpp"
#include "pkcs11/openssl.hpp"

namespace firmad::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using Kind = Error::Kind;

// Response header bytes; renewal servers send a few hundred.
constexpr std::uint32_t kHeaderLimit = 16 * 1024;
// The read buffer holds the header and at most one read ahead of the parser;
// the cap also bounds a chunk-size line that never ends.
constexpr std::size_t kBufferLimit = kHeaderLimit + 64 * 1024;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool iequals(std::string_view a, std::string_view b) { return a.size() == b.size() && lower(a) == lower(b); }

bool is_alnum(unsigned char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// RFC 9110 token characters: what a method or header name may be made of.
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!is_alnum(c) && std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) == std::string_view::npos)
      return false;
  return true;
}

// ---- Requests -------------------------------------------------------------

bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// Refuses what would make a malformed or smuggled request.
void check_request(const Request& request) {
  if (!is_token(request.method))
    throw Error(Kind::Protocol, "invalid request method " + shown(request.method) + " for " + shown(request.url));
  for (const auto& [name, value] : request.headers) {
    if (!is_token(name))
      throw Error(Kind::Protocol, "invalid request header name " + shown(name) + " for " + shown(request.url));
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
      throw Error(Kind::Protocol,
                  "request header " + name + " contains CR, LF or NUL (for " + shown(request.url) + ")");
    for (const char* own : {"host", "content-length", "transfer-encoding", "connection"})
      if (iequals(name, own))
        throw Error(Kind::Protocol, "request header " + name + " is set by firmad and may not be given (for " +
                                        shown(request.url) + ")");
  }
}

struct Hop {
  std::string method;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

bhttp::request<bhttp::string_body> build_request(const Url& url, const Hop& hop) {
  bhttp::request<bhttp::string_body> req;
  req.version(11);
  if (const bhttp::verb verb = bhttp::string_to_verb(hop.method); verb != bhttp::verb::unknown)
    req.method(verb);
  else
    req.method_string(hop.method);
  req.target(url.target);
  req.set(bhttp::field::host, url.authority());
  req.set(bhttp::field::user_agent, "firmad/" FIRMAD_VERSION);
  for (const auto& [name, value] : hop.headers) {
    if (iequals(name, "user-agent"))
      req.set(bhttp::field::user_agent, value);
    else
      req.insert(name, value);
  }
  // One request per connection: nothing to pool on a renewal thread that
  // runs a few times a year, and no stale connection to go wrong.
  req.set(bhttp::field::connection, "close");
  req.body() = hop.body;
  req.prepare_payload();  // Content-Length for a body (and 0 for an empty POST)
  return req;
}

// ---- Name resolution --------------------------------------------------------

// The addresses of `url`'s host. getaddrinfo cannot be cancelled, so it runs
// on a thread of its own that this call stops waiting for at `deadline`; the
// thread then finishes (bounded by the resolver's own timeouts) and frees
// what it shares with nobody.
std::vector<tcp::endpoint> resolve(const Url& url, Clock::time_point deadline, std::chrono::milliseconds limit) {
  if (url.kind != HostKind::Name) return {tcp::endpoint(boost::asio::ip::make_address(url.host), url.port)};

  struct Lookup {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    int rc = 0;
    std::vector<tcp::endpoint> endpoints;
  };
  auto lookup = std::make_shared<Lookup>();
  try {
    std::thread([lookup, host = url.host, port = url.port] {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* found = nullptr;
      const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
      std::vector<tcp::endpoint> endpoints;
      for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
          const auto* in = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
          endpoints.emplace_back(boost::asio::ip::address_v4(ntohl(in->sin_addr.s_addr)), port);
        } else if (a->ai_family == AF_INET6) {
          const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
          boost::asio::ip::address_v6::bytes_type bytes;
          std::memcpy(bytes.data(), &in6->sin6_addr, bytes.size());
          endpoints.emplace_back(boost::asio::ip::address_v6(bytes, in6->sin6_scope_id), port);
        }
      }
      if (found != nullptr) ::freeaddrinfo(found);
      const std::lock_guard lock(lookup->mutex);
      lookup->rc = rc;
      lookup->endpoints = std::move(endpoints);
      lookup->done = true;
      lookup->done_cv.notify_all();
    }).detach();
  } catch (const std::system_error& e) {
    throw Error(Kind::Unreachable, "cannot look up " + url.host + " for " + shown(url.str()) + ": " + e.what());
  }

  std::unique_lock lock(lookup->mutex);
  if (!lookup->done_cv.wait_until(lock, deadline, [&] { return lookup->done; }))
    throw Error(Kind::Timeout, "looking up " + url.host + " for " + shown(url.str()) + " took longer than " +
                                   std::to_string(limit.count()) + " ms");
  if (lookup->rc != 0)
    throw Error(Kind::Unreachable,
                "cannot look up " + url.host + " for " + shown(url.str()) + ": " + ::gai_strerror(lookup->rc));
  if (lookup->endpoints.empty())
    throw Error(Kind::Unreachable, "cannot look up " + url.host + " for " + shown(url.str()) + ": no IP address");
  return std::move(lookup->endpoints);
}

// ---- TLS --------------------------------------------------------------------

// A client context that trusts the given anchors only and presents the
// client credential, if any.
std::unique_ptr<ssl::context> make_tls_context(const Tls& tls, const Url& url) {
  if (tls.trust_anchor_files.empty())
    throw Error(Kind::Tls, "cannot fetch " + shown(url.str()) + ": no trust anchors configured for https");
  if ((tls.client_key == nullptr) != (tls.client_certificate == nullptr))
    throw Error(Kind::Tls, "cannot fetch " + shown(url.str()) +
                               ": client authentication needs both a client key and a client certificate");

  auto context = std::make_unique<ssl::context>(ssl::context::tls_client);
  SSL_CTX* ctx = context->native_handle();
  ERR_clear_error();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  // No SSL_CTX_set_default_verify_paths: the system store is not trusted.
  for (const std::string& file : tls.trust_anchor_files)
    if (SSL_CTX_load_verify_file(ctx, file.c_str()) != 1)
      throw Error(Kind::Tls, "cannot load trust anchors from " + file + ": " + ossl::error_text());

  if (tls.client_certificate != nullptr) {
    // Compared here, before OpenSSL's own check, to say which part is wrong.
    if (X509_check_private_key(tls.client_certificate, tls.client_key) != 1)
      throw Error(Kind::Tls, "the client key does not match the client certificate: " + ossl::error_text());
    if (SSL_CTX_use_certificate(ctx, tls.client_certificate) != 1)
      throw Error(Kind::Tls, "cannot use the client certificate: " + ossl::error_text());
    for (X509* intermediate : tls.client_chain)
      if (intermediate == nullptr || SSL_CTX_add1_chain_cert(ctx, intermediate) != 1)
        throw Error(Kind::Tls, "cannot use a client chain certificate: " + ossl::error_text());
    if (SSL_CTX_use_PrivateKey(ctx, tls.client_key) != 1)
      throw Error(Kind::Tls, "cannot use the client key: " + ossl::error_text());
  }
  return context;
}

// Has `ssl` check the peer's certificate against the URL's host, and name it (SNI).
void bind_to_host(SSL* ssl, const Url& url) {
  if (url.kind == HostKind::Name) {
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set_tlsext_host_name(ssl, url.host.c_str()) != 1 || SSL_set1_host(ssl, url.host.c_str()) != 1)
      throw Error(Kind::Tls, "cannot set the TLS host name for " + shown(url.str()) + ": " + ossl::error_text());
  } else if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), url.host.c_str()) != 1) {
    throw Error(Kind::Tls, "cannot set the TLS IP address for " + shown(url.str()) + ": " + ossl::error_text());
  }
}

// ---- One exchange -----------------------------------------------------------

enum class Phase { Connect, Handshake, Send, Receive };

struct Deadlines {
  Clock::time_point connect;
  Clock::time_point total;
  const Limits& limits;
};

// Turns a failed step of an exchange into the Error a caller can act on.
[[noreturn]] void fail(const Url& url, Phase phase, error_code ec, const Deadlines& d, SSL* ssl) {
  const std::string where = shown(url.str());
  if (ec == beast::error::timeout) {
    if ((phase == Phase::Connect || phase == Phase::Handshake) && d.connect < d.total)
      throw Error(Kind::Timeout, std::string(phase == Phase::Connect ? "connecting to " : "TLS handshake with ") +
                                     where + " took longer than the connect timeout of " +
                                     std::to_string(d.limits.connect_timeout.count()) + " ms");
    throw Error(Kind::Timeout, "no complete response from " + where + " within the timeout of " +
                                   std::to_string(d.limits.timeout.count()) + " ms");
  }
  switch (phase) {
    case Phase::Connect:
      throw Error(Kind::Unreachable, "cannot connect to " + where + ": " + ec.message());
    case Phase::Handshake:
      if (const long result = SSL_get_verify_result(ssl); result != X509_V_OK)
        throw Error(Kind::Tls, "the server certificate of " + where +
                                   " is not trusted: " + X509_verify_cert_error_string(result));
      throw Error(Kind::Tls, "TLS handshake with " + where + " failed: " + ec.message());
    case Phase::Send:
    case Phase::Receive:
      break;
  }
  const char* doing = phase == Phase::Send ? "sending the request to " : "reading the response from ";
  if (ec == bhttp::error::body_limit)
    throw Error(Kind::TooLarge, "the response body from " + where + " is larger than the limit of " +
                                    std::to_string(d.limits.max_body) + " bytes");
  if (ec == bhttp::error::header_limit)
    throw Error(Kind::TooLarge, "the response header from " + where + " is larger than " +
                                    std::to_string(kHeaderLimit) + " bytes");
  if (ec == bhttp::error::buffer_overflow)
    throw Error(Kind::TooLarge, "a line of the response from " + where + " is longer than " +
                                    std::to_string(kBufferLimit) + " bytes");
  if (ec == ssl::error::stream_truncated)
    throw Error(Kind::Protocol, "the connection to " + where +
                                    " was closed without a TLS close_notify before the response was complete");
  if (ec.category() == boost::asio::error::get_ssl_category())
    throw Error(Kind::Tls, std::string("TLS error ") + doing + where + ": " + ec.message());
  if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message || ec == boost::asio::error::eof)
    throw Error(Kind::Protocol, "the server closed the connection before a complete response (" + where + ")");
  throw Error(Kind::Protocol, std::string(doing) + where + " failed: " + ec.message());
}

// Runs the asynchronous operation that `start` begins until it completes, or
// until `expiry`, and returns its result (beast::error::timeout if it did not
// complete). The streams' own expiry is not enough: Beast 1.74 loses a timeout
// while data keeps arriving (the read completes first, and the expired timer
// is ignored as stale), so a server trickling an endless body would never be
// stopped. An operation left pending is never run again: the caller throws,
// and the io_context drops its handler, which owns all it refers to.
template <typename Start>
error_code run(boost::asio::io_context& ioc, Clock::time_point expiry, Start&& start) {
  struct Outcome {
    bool done = false;
    error_code ec;
  };
  auto outcome = std::make_shared<Outcome>();
  start([outcome](error_code ec, auto&&...) {
    outcome->done = true;
    outcome->ec = ec;
  });
  ioc.restart();
  ioc.run_until(expiry);
  return outcome->done ? outcome->ec : error_code(beast::error::timeout);
}

template <typename Stream>
Response exchange_on(Stream& stream, boost::asio::io_context& ioc, const Url& url, const Hop& hop,
                     const std::vector<tcp::endpoint>& endpoints, const Deadlines& d) {
  constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;
  SSL* ssl = nullptr;
  if constexpr (kTls) ssl = stream.native_handle();
  auto& socket = beast::get_lowest_layer(stream);

  socket.expires_at(d.connect);
  error_code ec = run(ioc, d.connect, [&](auto done) { socket.async_connect(endpoints, done); });
  if (ec) fail(url, Phase::Connect, ec, d, ssl);
  if constexpr (kTls) {
    ec = run(ioc, d.connect, [&](auto done) { stream.async_handshake(ssl::stream_base::client, done); });
    if (ec) fail(url, Phase::Handshake, ec, d, ssl);
  }

  socket.expires_at(d.total);
  bhttp::request<bhttp::string_body> request = build_request(url, hop);
  ec = run(ioc, d.total, [&](auto done) { bhttp::async_write(stream, request, done); });
  if constexpr (kTls) {
    if (ec && ec != beast::error::timeout) {
      // Under TLS 1.3 a server refuses our certificate (or its absence) with
      // an alert after our side of the handshake is done, and then resets
      // the connection, which may break our write first. The alert is the
      // cause worth reporting: read it if it came.
      std::array<char, 256> scratch;
      const error_code alert =
          run(ioc, d.total, [&](auto done) { stream.async_read_some(boost::asio::buffer(scratch), done); });
      if (alert.category() == boost::asio::error::get_ssl_category()) ec = alert;
    }
  }
  if (ec) fail(url, Phase::Send, ec, d, ssl);

  beast::flat_buffer buffer(kBufferLimit);
  for (;;) {
    bhttp::response_parser<bhttp::string_body> parser;
    parser.header_limit(kHeaderLimit);
    // The parser refuses a body over the limit as it arrives (declared,
    // chunked or until-close alike), so memory never holds more.
    parser.body_limit(static_cast<std::uint64_t>(d.limits.max_body));
    if (hop.method == "HEAD") parser.skip(true);
    // The header on its own first: in Beast 1.74 a whole-message read parses
    // eagerly past the header and loses the parser's own "Content-Length over
    // body_limit" error (boostorg/beast#2183), and a declared body is not
    // counted against the limit after that.
    ec = run(ioc, d.total, [&](auto done) { bhttp::async_read_header(stream, buffer, parser, done); });
    if (!ec && !parser.is_done() && parser.content_length() && *parser.content_length() > d.limits.max_body)
      ec = bhttp::error::body_limit;
    if (!ec && !parser.is_done())
      ec = run(ioc, d.total, [&](auto done) { bhttp::async_read(stream, buffer, parser, done); });
    if (ec) fail(url, Phase::Receive, ec, d, ssl);

    auto message = parser.release();
    const int status = static_cast<int>(message.result_int());
    if (status / 100 == 1 && status != 101) continue;  // interim (100 Continue, 103): the final response follows

    Response response;
    response.status = status;
    for (const auto& field : message) {
      const beast::string_view name = field.name_string();
      const beast::string_view value = field.value();
      const auto [it, inserted] =
          response.headers.emplace(lower(std::string_view(name.data(), name.size())), std::string(value));
      if (!inserted) it->second += ", " + std::string(value);
    }
    response.body = std::move(message.body());
    response.url = url.str();
    // No TLS shutdown: the response is complete, and a server that never
    // answers close_notify would only cost time.
    return response;
  }
}

Response exchange(boost::asio::io_context& ioc, ssl::context* tls_context, const Url& url, const Hop& hop,
                  const Limits& limits, Clock::time_point total) {
  const Clock::time_point now = Clock::now();
  if (now >= total)
    throw Error(Kind::Timeout, "no complete response from " + shown(url.str()) + " within the timeout of " +
                                   std::to_string(limits.timeout.count()) + " ms");
  const Deadlines d{std::min(now + limits.connect_timeout, total), total, limits};
  const std::vector<tcp::endpoint> endpoints =
      resolve(url, d.connect, d.connect < d.total ? limits.connect_timeout : limits.timeout);
  if (!url.https) {
    beast::tcp_stream stream(ioc);
    return exchange_on(stream, ioc, url, hop, endpoints, d);
  }
  beast::ssl_stream<beast::tcp_stream> stream(ioc, *tls_context);
  bind_to_host(stream.native_handle(), url);
  return exchange_on(stream, ioc, url, hop, endpoints, d);
}

Response fetch_checked(const Request& request, const Limits& limits, const Tls& tls) {
  const Clock::time_point total = Clock::now() + std::max(limits.timeout, std::chrono::milliseconds(0));
  Url url = parse_url(request.url);
  check_request(request);

  Hop hop{request.method, request.headers, request.body};
  std::unique_ptr<ssl::context> tls_context;  // made at the first https hop, kept for the others
  boost::asio::io_context ioc;
  for (int redirects = 0;; ++redirects) {
    if (url.https && !tls_context) tls_context = make_tls_context(tls, url);
    Response response = exchange(ioc, tls_context.get(), url, hop, limits, total);
    const auto location = response.headers.find("location");
    if (!is_redirect(response.status) || location == response.headers.end()) return response;

    if (redirects >= std::max(limits.max_redirects, 0))
      throw Error(Kind::TooManyRedirects, "too many redirects: " + shown(request.url) + " still redirects after " +
                                              std::to_string(redirects) + " (max_redirects), last from " +
                                              shown(url.str()) + " to " + shown(location->second));
    Url next;
    try {
      next = resolve_location(url, location->second);
    } catch (const Error& e) {
      throw Error(Kind::BadUrl, "redirect from " + shown(url.str()) + ": " + e.what());
    }
    if (url.https && !next.https)
      throw Error(Kind::Tls, "refusing to downgrade from https to http: " + shown(url.str()) + " redirects to " +
                                 shown(next.str()));

    const bool to_get = (response.status == 303 && hop.method != "HEAD") ||
                        ((response.status == 301 || response.status == 302) && hop.method == "POST");
    if (to_get) {
      hop.method = "GET";
      hop.body.clear();
      std::erase_if(hop.headers, [](const auto& h) { return iequals(h.first, "content-type"); });
    }
    // Credentials meant for one server are not handed to another.
    if (!url.same_origin(next))
      std::erase_if(hop.headers, [](const auto& h) {
        return iequals(h.first, "authorization") || iequals(h.first, "proxy-authorization") ||
               iequals(h.first, "cookie");
      });
    url = std::move(next);
  }
}

std::string percent_encode(std::string_view value, bool form) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    const bool keep = is_alnum(c) || c == '-' || c == '.' || c == '_' || (form ? c == '*' : c == '~');
    if (keep) {
      out += static_cast<char>(c);
    } else if (form && c == ' ') {
      out += '+';
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

}  // namespace

const char* to_string(Error::Kind kind) noexcept {
  switch (kind) {
    case Kind::BadUrl: return "BadUrl";
    case Kind::Unreachable: return "Unreachable";
    case Kind::Timeout: return "Timeout";
    case Kind::Tls: return "Tls";
    case Kind::TooLarge: return "TooLarge";
    case Kind::TooManyRedirects: return "TooManyRedirects";
    case Kind::Protocol: return "Protocol";
  }
  return "unknown";
}

Response fetch(const Request& request, const Limits& limits, const Tls& tls) {
  try {
    return fetch_checked(request, limits, tls);
  } catch (const Error&) {
    throw;
  } catch (const boost::system::system_error& e) {
    throw Error(Kind::Protocol, "fetching " + shown(request.url) + " failed: " + e.what());
  } catch (const std::exception& e) {
    throw Error(Kind::Protocol, "fetching " + shown(request.url) + " failed: " + e.what());
  }
}

std::string url_encode(std::string_view value) { return percent_encode(value, false); }

std::string form_encode(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    if (!out.empty()) out += '&';
    out += percent_encode(name, true);
    out += '=';
    out += percent_encode(value, true);
  }
  return out;
}

}  // namespace firmad::http
