// The PKCS#11 objects (private key, public key, certificate) libfirma-pkcs11 shows for one firmad key.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "client/firma.hpp"
#include "client/pkcs11/ck.hpp"

namespace firma::p11 {

enum class KeyKind { rsa, ec, ed25519 };

// One object: its attributes as the bytes C_GetAttributeValue returns.
struct Object {
  CK_OBJECT_CLASS object_class = CKO_DATA;
  std::string alias;  // the firmad key it mirrors
  std::map<CK_ATTRIBUTE_TYPE, Bytes> attributes;

  // Whether every attribute of the template is present with equal bytes.
  bool matches(const CK_ATTRIBUTE* templ, CK_ULONG count) const;
  // C_GetAttributeValue's rules (PKCS#11 3.0 §5.7): each value copied where
  // its buffer is large enough, its length given for a NULL buffer, else
  // CK_UNAVAILABLE_INFORMATION with the first of CKR_ATTRIBUTE_SENSITIVE
  // (a private key's secret parts), CKR_ATTRIBUTE_TYPE_INVALID or
  // CKR_BUFFER_TOO_SMALL; never a byte beyond a buffer's ulValueLen.
  CK_RV copy_attributes(CK_ATTRIBUTE* templ, CK_ULONG count) const;
};

// What signing with a key needs to know.
struct KeyInfo {
  std::string alias;
  std::string token;
  KeyKind kind = KeyKind::rsa;
  int bits = 0;  // RSA modulus bits, EC field bits (Ed25519: 255)
  bool pss = false;
  bool sha1 = false;  // firmad.toml lets the key sign SHA-1 (allowSha1)
  Bytes spki;
};

// Reads a Key entry of firmad's Status; returns false for a key firmad has not
// found on its token, whose public key cannot be read, or that the caller may
// not use (mayUse false: an administrator sees every key): it gets no objects.
bool key_info(const Json& key, KeyInfo& out);

// The objects of a key: private key, public key and, if the token holds one,
// the certificate. Throws std::runtime_error if the key's DER cannot be parsed.
std::vector<Object> objects_of(const Json& key, const KeyInfo& info);

}  // namespace firma::p11
