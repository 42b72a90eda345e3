// libFuzzer target: any bytes given to the credential parsers get a credential or a CredentialError.
#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "daemon/mx/credential.hpp"

namespace {

using namespace firmad;

constexpr const char* kPassword = "fuzz";

// A broken invariant is a finding: abort so libFuzzer saves the input.
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

// What the parsers promise of anything they return or refuse.
void check(const Credential& c) {
  require(c.key && c.certificate, "a parsed credential has a key and a certificate");
  require(X509_check_private_key(c.certificate.get(), c.key.get()) == 1, "the certificate belongs to the key");
  ERR_clear_error();
}

void check(const CredentialError& e) {
  require(e.what()[0] != '\0', "a refusal says why");
  require(ERR_peek_error() == 0, "a refusal leaves OpenSSL's error queue empty");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> input(data, size);
  try {
    check(parse_pkcs12(input, kPassword));
  } catch (const CredentialError& e) {
    check(e);
  }
  // The same bytes as both a key file and a certificate file.
  try {
    check(parse_key_and_certificate(input, input, kPassword));
  } catch (const CredentialError& e) {
    check(e);
  }
  // The first two bytes choose where the rest splits into a key file and a
  // certificate file, so that a valid key can meet a damaged certificate.
  if (size > 2) {
    const std::span<const std::uint8_t> rest = input.subspan(2);
    const std::size_t cut = (std::size_t{data[0]} << 8 | data[1]) % (rest.size() + 1);
    try {
      check(parse_key_and_certificate(rest.first(cut), rest.subspan(cut), kPassword));
    } catch (const CredentialError& e) {
      check(e);
    }
  }
  return 0;
}
