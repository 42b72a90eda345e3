// An OpenSSL EVP_PKEY whose private key stays on the token: OpenSSL hashes and pads, the token signs.
#pragma once
#include <functional>
#include <string>

#include "pkcs11/openssl.hpp"
#include "pkcs11/types.hpp"

namespace firmad::pkcs11 {

// Signs `input` with the token key for OpenSSL and returns the signature as
// sign_raw does (RSA: as long as the modulus; ECDSA: r || s). Called on
// whatever thread uses the EVP_PKEY, possibly from several at once when the
// key is shared (an SSL_CTX); it may block. It reports failure by throwing.
using TokenSigner = std::function<Bytes(RawOp op, const Bytes& input)>;

// Returns an EVP_PKEY holding the public key from `spki` (an RSA, or EC
// P-256/P-384, SubjectPublicKeyInfo DER) whose signatures are made by
// `signer`, which the key owns (it is destroyed with the last reference to
// the key). It works with X509_REQ_sign, X509_sign, CMS_sign,
// EVP_DigestSign (RSA PKCS#1 v1.5 with any digest, RSA-PSS, ECDSA) and as a
// TLS 1.2/1.3 client key in libssl. It cannot decrypt: RSA decryption is
// refused. Share it with EVP_PKEY_up_ref: EVP_PKEY_dup returns NULL for an
// RSA token key, and an EC copy shares the signer. When the signer throws,
// the OpenSSL call fails (returns its failure value; no exception crosses
// OpenSSL) with "firmad token ... token signature failed: <text>" on
// OpenSSL's error queue, and last_token_error() has the text. Throws
// std::invalid_argument when spki is not one SubjectPublicKeyInfo of a
// supported key or signer is empty, std::runtime_error when OpenSSL fails.
ossl::Pkey token_pkey(const Bytes& spki, TokenSigner signer);

// Returns the text of the exception the signer threw in the last token
// signature this thread asked for, or "" if that signature succeeded (or
// none was asked for).
std::string last_token_error();

}  // namespace firmad::pkcs11
