// libFuzzer target: any bytes as a one-line subject ("/C=MX/CN=...") give a DER name or std::invalid_argument.
#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string_view>

#include "daemon/mx/subject.hpp"
#include "pkcs11/openssl.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const firmad::pkcs11::Bytes der = firmad::parse_subject(text);
    const unsigned char* p = der.data();
    std::unique_ptr<X509_NAME, firmad::ossl::Deleter<X509_NAME_free>> name(
        d2i_X509_NAME(nullptr, &p, static_cast<long>(der.size())));
    if (!name || p != der.data() + der.size() || X509_NAME_entry_count(name.get()) < 1) {
      std::fprintf(stderr, "invariant broken: parse_subject returned something that is not a DER name\n");
      std::abort();
    }
  } catch (const std::invalid_argument&) {
  }
  if (ERR_peek_error() != 0) {
    std::fprintf(stderr, "invariant broken: parse_subject left errors on OpenSSL's queue\n");
    std::abort();
  }
  return 0;
}
