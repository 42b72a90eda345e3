// What status shows of an X.509 certificate, read once when the token is scanned.
#pragma once
#include <ctime>
#include <optional>
#include <string>

#include "pkcs11/types.hpp"

namespace firmad {

struct CertificateSummary {
  std::string subject;  // RFC 2253
  std::string issuer;
  std::string serial;   // upper-case hex
  std::time_t not_before = 0;
  std::time_t not_after = 0;
};

// Returns the summary of a DER certificate, or nullopt if it does not parse.
std::optional<CertificateSummary> summarize_certificate(const pkcs11::Bytes& der);

// Returns "YYYY-MM-DDTHH:MM:SSZ".
std::string iso8601(std::time_t t);

}  // namespace firmad
