// Which PKCS#11 signing mechanisms map onto firmad's Sign, and how their inputs and outputs are converted.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "client/firma.hpp"
#include "client/pkcs11/ck.hpp"
#include "client/pkcs11/objects.hpp"

namespace firma::p11 {

// How a mechanism reaches Sign.
struct MechanismPlan {
  CK_MECHANISM_TYPE type = 0;
  KeyKind kind = KeyKind::rsa;
  std::string hash;       // hashed locally ("sha256"...), or empty: the input is a digest / DigestInfo / message
  bool pss = false;
  bool digest_info = false;  // CKM_RSA_PKCS: the input is a DigestInfo
  bool message = false;      // CKM_EDDSA: the input is the message
  std::optional<int> salt;   // RSA-PSS salt length from the parameters
  std::string pss_hash;      // CKM_RSA_PKCS_PSS: the hash its parameters name
};

// The mechanisms a key of this kind signs with (RSA-PSS only if the token
// makes it, SHA-1 only if firmad.toml allows it for the key).
std::vector<CK_MECHANISM_TYPE> mechanisms_for(KeyKind kind, bool pss, bool sha1 = false);

// Checks a mechanism and its parameters against a key. Returns CKR_OK and
// fills `plan`, or CKR_MECHANISM_INVALID / CKR_MECHANISM_PARAM_INVALID /
// CKR_KEY_TYPE_INCONSISTENT.
CK_RV plan_for(const CK_MECHANISM& mechanism, const KeyInfo& key, MechanismPlan& plan);

// The length of the signatures a key makes (RSA: the modulus, ECDSA: r||s, EdDSA: 64).
CK_ULONG signature_length(const KeyInfo& key);

// Splits a DigestInfo of SHA-256/384/512 (and SHA-1 with `sha1`) into its
// hash name and digest; nullopt for anything else (MD5+SHA-1 of TLS 1.0,
// SHA-1 without `sha1`, raw data).
std::optional<std::pair<std::string, Bytes>> parse_digest_info(const Bytes& input, bool sha1 = false);

// The hash firmad is told for a raw ECDSA digest of this length (20 bytes:
// SHA-1, with `sha1` only), or empty.
std::string hash_for_digest_length(std::size_t n, bool sha1 = false);

// A DER ECDSA-Sig-Value as r||s, each `half` bytes; nullopt if malformed.
std::optional<Bytes> ecdsa_der_to_raw(const Bytes& der, std::size_t half);

// The CK_RV for a firmad error, by its short name (see the table in mechanisms.cpp).
CK_RV rv_for_error(const std::string& short_name);

}  // namespace firma::p11
