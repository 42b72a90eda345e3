// An employer's credential file (.pfx, or .key with .cer) read into OpenSSL objects, ready for the token.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "pkcs11/openssl.hpp"

namespace firmad {

// A private key, the certificate that belongs to it, and whatever other
// certificates came with it (issuer chain), in the file's order.
struct Credential {
  ossl::Pkey key;
  ossl::X509Ptr certificate;
  std::vector<ossl::X509Ptr> chain;
};

// Why a credential file was refused. The message is meant for the person who
// chose the file; it never contains the password.
class CredentialError : public std::runtime_error {
 public:
  enum class Reason {
    WrongPassword,         // the password does not open the file
    Corrupt,               // not a credential file, or damaged (empty, truncated, oversize)
    UnsupportedAlgorithm,  // a key or encryption algorithm firmad or OpenSSL cannot use
    Mismatch,              // the certificate does not belong to the key
    NoKey,                 // the file holds no private key
    NoCertificate,         // the file holds no certificate
  };

  CredentialError(Reason reason, const std::string& message) : std::runtime_error(message), reason_(reason) {}
  Reason reason() const noexcept { return reason_; }

 private:
  Reason reason_;
};

// Files larger than this are refused as Corrupt before any parsing: a real
// credential (key, certificate and a chain) is a few kilobytes.
inline constexpr std::size_t kMaxCredentialFileBytes = 1024 * 1024;

// Returns the key, certificate and chain of a PKCS#12 (.pfx/.p12) file, DER,
// current (AES-256-CBC/PBKDF2) or legacy (RC2-40, 3DES) encryption, with or
// without a MAC. The certificate is the one that belongs to the key.
// Accepted keys: RSA of 2048-4096 bits, EC on P-256 or P-384. Throws
// CredentialError: WrongPassword when the password does not verify the
// file's MAC (or, without a MAC, does not decrypt it), Corrupt when the bytes
// are not a PKCS#12 structure (trailing bytes included), UnsupportedAlgorithm
// (also for more than 2,000,000 key-derivation rounds, refused before any
// runs), NoKey, NoCertificate, Mismatch. Thread-safe; leaves this thread's
// OpenSSL error queue empty.
Credential parse_pkcs12(std::span<const std::uint8_t> pfx, std::string_view password);

// Returns the credential made of a private key file and its certificate file.
// key: PKCS#8, DER or PEM, encrypted (EncryptedPrivateKeyInfo, e.g. SAT's
// PBES2 with DES-EDE3-CBC) or not; the password is ignored when it is not
// encrypted. Unencrypted PEM "RSA/EC PRIVATE KEY" files are accepted too.
// cert: X.509, DER or PEM; when it holds several certificates, the one that
// belongs to the key is the certificate and the others are the chain. Throws
// CredentialError as parse_pkcs12 does. Thread-safe; leaves this thread's
// OpenSSL error queue empty.
Credential parse_key_and_certificate(std::span<const std::uint8_t> key, std::span<const std::uint8_t> cert,
                                     std::string_view password);

}  // namespace firmad
