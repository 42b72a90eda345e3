// libFuzzer target: any bytes as a CA's answer give certificates, IDSE fields and a retry hint, or a clean refusal.
#include <openssl/err.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/provider.hpp"
#include "pkcs11/openssl.hpp"

namespace {

[[noreturn]] void broken(const char* invariant) {
  std::fprintf(stderr, "invariant broken: %s\n", invariant);
  std::abort();
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);

  // Certificates: at least one, each exactly one DER certificate.
  try {
    const std::vector<firmad::pkcs11::Bytes> certs = firmad::renewal::certificates_from(body);
    if (certs.empty()) broken("certificates_from returned no certificate");
    for (const auto& der : certs) {
      const unsigned char* p = der.data();
      firmad::ossl::X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
      if (!x || p != der.data() + der.size()) broken("certificates_from returned something that is not one DER certificate");
    }
  } catch (const firmad::renewal::VerificationError&) {
  }
  if (ERR_peek_error() != 0) broken("certificates_from left errors on OpenSSL's queue");

  // IDSE fields: at most 32, keys non-empty, no line break inside, trimmed where the line was.
  const auto fields = firmad::renewal::idse_fields(body);
  if (fields.size() > 32) broken("more than 32 IDSE fields");
  for (const auto& [key, value] : fields) {
    if (key.empty() || is_space(key.front())) broken("IDSE key empty or not trimmed");
    if (key.find('\n') != std::string::npos || value.find('\n') != std::string::npos) broken("line break in an IDSE field");
    if (!value.empty() && is_space(value.back())) broken("IDSE value not trimmed");
  }

  // The retry hint: from none to a day.
  const std::chrono::seconds after = firmad::renewal::retry_after_seconds(body);
  if (after.count() < 0 || after.count() > 86400) broken("retry hint out of range");
  return 0;
}
