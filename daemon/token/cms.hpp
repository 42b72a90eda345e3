// CMS SignedData built with OpenSSL around a signature the token makes.
#pragma once
#include <functional>
#include <optional>
#include <span>

#include "pkcs11/types.hpp"

namespace firmad {

// Signs the digest (of `hash`) of the DER signed attributes and returns the
// signature as CMS wants it (RSA PKCS#1 v1.5 bytes, DER ECDSA-Sig-Value).
using AttributeSigner = std::function<pkcs11::Bytes(const pkcs11::Bytes& digest)>;

struct CmsInput {
  pkcs11::Bytes certificate;                    // signer's X.509 DER, embedded
  pkcs11::Hash hash = pkcs11::Hash::Sha256;
  std::optional<std::span<const std::uint8_t>> content;  // attached
  std::optional<pkcs11::Bytes> digest;          // detached: the content's digest
};

// Returns the DER ContentInfo of a SignedData with one signer whose signed
// attributes are contentType (id-data), signingTime (now) and messageDigest.
// Throws std::runtime_error with OpenSSL's reason on failure.
pkcs11::Bytes build_cms(const CmsInput& in, const AttributeSigner& sign);

}  // namespace firmad
