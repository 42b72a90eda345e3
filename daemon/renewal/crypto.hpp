// What a renewal builds and checks with OpenSSL: the CSR, the signed acceptance, and the issued certificate.
#pragma once
#include <ctime>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/mx/subject.hpp"  // parse_subject: a configured subject for build_csr
#include "pkcs11/openssl.hpp"
#include "pkcs11/types.hpp"

namespace firmad::renewal {

using pkcs11::Bytes;

// An issued certificate that must not be installed; what() says why.
class VerificationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The DER subject of a DER certificate. Throws std::runtime_error.
Bytes certificate_subject(const Bytes& certificate_der);

// A PKCS#10 request for the public key `spki` with the DER `subject`,
// signed (SHA-256, or SHA-384 for P-384) by `key`, an EVP_PKEY whose private
// operations the token does. Returns its DER. Throws std::runtime_error.
Bytes build_csr(const Bytes& spki, const Bytes& subject, EVP_PKEY* key);

// CMS SignedData (DER, content attached) over `text`, signed by `key` with
// `certificate` as the signer — which may have expired: the renewal's
// acceptance of terms is the one signature made with an expired certificate.
Bytes sign_acceptance(std::string_view text, const Bytes& certificate_der, EVP_PKEY* key);

// Certificates from a body: DER, PEM (one or several), or base64 of a DER
// PKCS#7 certs-only (EST, RFC 7030 §4.1.3). Returns DER certificates, the
// first being the first in the body. Throws VerificationError when there is
// none, or when a PEM certificate in the body is damaged or cut short.
std::vector<Bytes> certificates_from(std::string_view body);

// PEM text of a DER certificate.
std::string to_pem(const Bytes& certificate_der, const char* label = "CERTIFICATE");

// Checks an issued certificate before it may be installed: it parses, its
// public key is `expected_spki`, it chains (with `intermediates`) to a
// certificate in one of the PEM `trust_anchor_files`, and `now` is inside its
// validity period. Returns the chain above it, issuer first, up to and
// including the trust anchor. Throws VerificationError naming the failed check.
std::vector<Bytes> verify_issued(const Bytes& certificate_der, const std::vector<Bytes>& intermediates,
                                 const Bytes& expected_spki, const std::vector<std::string>& trust_anchor_files,
                                 std::time_t now);

// Whether `signature` (PKCS#1 v1.5 for RSA, DER ECDSA for EC) over the
// SHA-256 digest `digest` verifies with the public key of `certificate_der`.
// Throws VerificationError when the certificate cannot be read.
bool verifies_with(const Bytes& certificate_der, const Bytes& digest, const Bytes& signature);

// The SubjectPublicKeyInfo DER of a certificate. Throws VerificationError.
Bytes public_key_of(const Bytes& certificate_der);

}  // namespace firmad::renewal
