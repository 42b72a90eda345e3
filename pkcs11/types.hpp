// Plain values the token layer hands out: no CK_* types beyond this folder.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace firmad::pkcs11 {

using Bytes = std::vector<std::uint8_t>;
using SlotId = unsigned long;
using ObjectHandle = unsigned long;

enum class KeyType { Rsa, Ec, Ed25519 };
enum class Scheme { RsaPkcs1, RsaPss, Ecdsa, EdDsa };
// SHA-1 only for keys whose configuration allows it (allow_sha1).
enum class Hash { Sha256, Sha384, Sha512, Sha1 };

// A bare private key operation on the token, for callers (OpenSSL) that do
// the hashing and padding themselves.
enum class RawOp {
  RsaPkcs1,  // CKM_RSA_PKCS: PKCS#1 v1.5 type 1 padding over the given bytes (the caller adds any DigestInfo)
  RsaX509,   // CKM_RSA_X_509: raw RSA on a block the caller has padded to the modulus length (RSA-PSS)
  Ecdsa,     // CKM_ECDSA over a digest; the signature is r || s as the token returns it
};

struct PinFlags {
  bool count_low = false;
  bool final_try = false;
  bool locked = false;
  bool to_be_changed = false;
};

struct TokenInfo {
  std::string label;
  std::string serial;
  std::string manufacturer;
  std::string model;
  bool login_required = true;
  // CKF_PROTECTED_AUTHENTICATION_PATH: the PIN is typed on the reader's PIN
  // pad, not given to C_Login.
  bool protected_path = false;
  PinFlags pin;
};

// A key found on the token. The private key handle is set only while the
// application is logged in (private objects are invisible otherwise).
struct KeyInfo {
  std::string label;
  Bytes id;
  KeyType type = KeyType::Rsa;
  int bits = 0;
  std::string curve;                     // "P-256", "P-384", "Ed25519"; empty for RSA
  std::vector<Scheme> schemes;           // what key and token can do together
  Bytes public_key;                      // SubjectPublicKeyInfo DER; empty if unknown
  Bytes certificate;                     // X.509 DER with the same CKA_ID; empty if none
  std::optional<ObjectHandle> private_key;
  // CKA_ALWAYS_AUTHENTICATE on the private key: every signature needs the PIN
  // again (C_Login(CKU_CONTEXT_SPECIFIC) after C_SignInit). Read only while
  // logged in, with the private key.
  bool always_authenticate = false;
};

struct SignRequest {
  Scheme scheme = Scheme::RsaPkcs1;
  Hash hash = Hash::Sha256;
  Bytes input;                 // the digest (or, for EdDSA, the message)
  std::optional<unsigned long> salt_length;  // RSA-PSS; default: digest length
};

const char* to_string(KeyType);
const char* to_string(Scheme);
const char* to_string(Hash);
const char* to_string(RawOp);
std::size_t digest_size(Hash);

}  // namespace firmad::pkcs11
