// A bounded, verifying HTTP(S) client for certificate renewal: one synchronous fetch per call.
#pragma once
#include <openssl/types.h>

#include <chrono>
#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace firmad::http {

// What one fetch may cost; every call returns or throws within `timeout`.
struct Limits {
  std::chrono::milliseconds connect_timeout{10000};  // DNS + TCP connect + TLS handshake, per hop
  std::chrono::milliseconds timeout{60000};          // the whole exchange, redirects included
  std::size_t max_body = 1024 * 1024;                // response body bytes
  int max_redirects = 3;
};

// Whom an https server must prove itself to, and what we prove ourselves with.
struct Tls {
  std::vector<std::string> trust_anchor_files;  // PEM files with CA certificates; ONLY these are trusted (not the system store)
  EVP_PKEY* client_key = nullptr;               // optional client authentication (not owned; may be a key whose
  X509* client_certificate = nullptr;           //   private operations are done by a hardware token via a custom RSA/EC method)
  std::vector<X509*> client_chain;              // optional intermediates (not owned)
};

struct Request {
  std::string method = "GET";
  std::string url;
  // Sent as given (after Host and User-Agent, which a "User-Agent" here
  // replaces). Host, Content-Length, Transfer-Encoding and Connection are
  // firmad's to set and are refused.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; repeated fields joined with ", "
  std::string body;
  std::string url;  // after redirects
};

// Why a fetch failed. The message names the URL and the cause (OpenSSL's
// verification error, the system error, the limit that was hit).
class Error : public std::runtime_error {
 public:
  enum class Kind {
    BadUrl,            // not an http(s) URL firmad accepts (also a bad redirect Location)
    Unreachable,       // DNS failure, connection refused, no route
    Timeout,           // connect_timeout or timeout passed (the message says which)
    Tls,               // configuration, handshake, verification, downgrade refused
    TooLarge,          // response body over max_body, or header over 16 KiB
    TooManyRedirects,  // more than max_redirects
    Protocol,          // malformed response, connection dropped, invalid request method or header
  };
  Error(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const noexcept { return kind_; }

 private:
  Kind kind_;
};

// The name of a kind ("BadUrl", "Timeout", ...), for logs and tests.
const char* to_string(Error::Kind kind) noexcept;

// Sends `request` and returns the final response (any status; redirects
// 301/302/303/307/308 followed, https never to http). Throws http::Error, and
// nothing else.
Response fetch(const Request& request, const Limits& limits, const Tls& tls);

// Returns `value` percent-encoded for a URL query value or path segment:
// everything but A-Z a-z 0-9 - . _ ~ becomes %XX.
std::string url_encode(std::string_view value);

// Returns an application/x-www-form-urlencoded body ("a=1&b=x+y"), as browsers
// encode one: space becomes '+', everything but A-Z a-z 0-9 * - . _ becomes %XX.
std::string form_encode(const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace firmad::http
