// Where renewed certificates come from: IDSE-style endpoints, a certmonger CA helper, or an EST server.
#pragma once
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/config.hpp"
#include "pkcs11/openssl.hpp"
#include "pkcs11/types.hpp"

namespace firmad::renewal {

using pkcs11::Bytes;

// What a CA answered.
struct Outcome {
  // Accepted: the CA took the request and named it (`ticket`); the
  // certificate is to be fetched with poll() at once, once the ticket is
  // recorded. Invalid: the CA answered with something that is not a certificate.
  enum class Kind { Issued, Accepted, Pending, Rejected, Unreachable, Underconfigured, Invalid };
  Kind kind = Kind::Unreachable;
  std::vector<Bytes> certificates;      // Issued: the certificate first, then any chain (DER)
  std::string ticket;                   // Pending: what to poll with (a serial, a cookie)
  std::chrono::seconds retry_after{0};  // Pending/Unreachable: the CA's own hint; 0 = none
  std::string reason;                   // why, for every kind but Issued

  static Outcome issued(std::vector<Bytes> certs) { return {Kind::Issued, std::move(certs), {}, {}, {}}; }
  static Outcome pending(std::string ticket, std::chrono::seconds after, std::string why = "the CA has not issued it yet") {
    return {Kind::Pending, {}, std::move(ticket), after, std::move(why)};
  }
  static Outcome accepted(std::string ticket) {
    return {Kind::Accepted, {}, std::move(ticket), {}, "the CA accepted the request"};
  }
  static Outcome failed(Kind kind, std::string why, std::chrono::seconds after = std::chrono::seconds(0)) {
    return {kind, {}, {}, after, std::move(why)};
  }
};

// Everything a provider may need for one request.
struct Submission {
  std::string key;             // the alias, for messages
  std::string npie;            // the employer's NPIE (idse)
  Bytes csr;                   // DER PKCS#10
  Bytes acceptance;            // DER CMS over the acceptance text (idse)
  Bytes current_certificate;   // DER, may have expired
  // TLS client authentication with the current key on the token (est).
  EVP_PKEY* client_key = nullptr;
  X509* client_certificate = nullptr;
};

class Provider {
 public:
  virtual ~Provider() = default;
  // Sends a new request. Blocks (bounded by the configured time limits);
  // never throws: every failure is an Outcome.
  virtual Outcome submit(const Submission& s) = 0;
  // Asks again about a Pending request.
  virtual Outcome poll(const Submission& s, const std::string& ticket) = 0;
};

// The provider the key's renewal configuration names.
std::unique_ptr<Provider> make_provider(const RenewalConfig& config);

// IDSE only: the serial of the certificate most recently issued for `npie`
// (Pending with empty ticket = none), and the certificate with that serial.
Outcome idse_lookup_serial(const RenewalConfig& config, const std::string& npie);
Outcome idse_fetch(const RenewalConfig& config, const std::string& serial);

// The fields of an IDSE answer, "KEY=value" lines: each line trimmed of
// spaces, tabs and CR and split at its first '=' (the value may hold more);
// lines without '=' or with an empty key are skipped; a repeated key keeps
// its last value; reading stops after 32 distinct keys. Never throws but
// std::bad_alloc.
std::map<std::string, std::string> idse_fields(std::string_view body);

// The wait a CA asks for, from a Retry-After value, an IDSE REINTENTAR field
// or a helper's first output line: decimal seconds (surrounding whitespace
// allowed), capped at one day. Anything else, an HTTP-date included, is 0
// (no hint). Never throws.
std::chrono::seconds retry_after_seconds(std::string_view value);

}  // namespace firmad::renewal
