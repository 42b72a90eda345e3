// Builds the PKCS#11 attributes of a firmad key from its Status entry, with OpenSSL parsing the DER.
#include "client/pkcs11/objects.hpp"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <cstring>
#include <memory>
#include <stdexcept>

#include "client/pkcs11/mechanisms.hpp"
#include "protocol/base64.hpp"

namespace firma::p11 {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const noexcept { X509_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const noexcept { BN_free(p); }
};
struct ObjFree {
  void operator()(ASN1_OBJECT* p) const noexcept { ASN1_OBJECT_free(p); }
};

Bytes ulong_bytes(CK_ULONG v) {
  Bytes b(sizeof v);
  std::memcpy(b.data(), &v, sizeof v);
  return b;
}
Bytes bool_bytes(bool v) { return Bytes{static_cast<std::uint8_t>(v ? CK_TRUE : CK_FALSE)}; }
Bytes text_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Bytes from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) throw std::runtime_error("objectId is not hex");
  Bytes out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
    if (hi < 0 || lo < 0) throw std::runtime_error("objectId is not hex");
    out.push_back(static_cast<std::uint8_t>(hi * 16 + lo));
  }
  return out;
}

template <typename T, typename F>
Bytes der_of(T* value, F i2d) {
  const int n = i2d(value, nullptr);
  if (n <= 0) throw std::runtime_error("cannot encode DER");
  Bytes out(static_cast<std::size_t>(n));
  unsigned char* p = out.data();
  i2d(value, &p);
  return out;
}

// A DER OCTET STRING around `content` (CKA_EC_POINT).
Bytes octet_string(const Bytes& content) {
  Bytes out{0x04};
  const std::size_t n = content.size();
  if (n < 0x80) {
    out.push_back(static_cast<std::uint8_t>(n));
  } else if (n < 0x100) {
    out.insert(out.end(), {0x81, static_cast<std::uint8_t>(n)});
  } else {
    out.insert(out.end(), {0x82, static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)});
  }
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

Bytes bn_param(EVP_PKEY* pkey, const char* name) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &raw) != 1) throw std::runtime_error(std::string("public key lacks ") + name);
  std::unique_ptr<BIGNUM, BnFree> bn(raw);
  Bytes out(static_cast<std::size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

// The public attributes both key objects carry: modulus and exponent, or
// curve and point.
void public_parts(const KeyInfo& info, std::map<CK_ATTRIBUTE_TYPE, Bytes>& a, bool point) {
  const unsigned char* p = info.spki.data();
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(info.spki.size())));
  if (!pkey) throw std::runtime_error("cannot parse the public key of " + info.alias);
  switch (info.kind) {
    case KeyKind::rsa:
      a[CKA_MODULUS] = bn_param(pkey.get(), OSSL_PKEY_PARAM_RSA_N);
      a[CKA_PUBLIC_EXPONENT] = bn_param(pkey.get(), OSSL_PKEY_PARAM_RSA_E);
      a[CKA_MODULUS_BITS] = ulong_bytes(static_cast<CK_ULONG>(EVP_PKEY_get_bits(pkey.get())));
      break;
    case KeyKind::ec: {
      char group[64] = {};
      if (EVP_PKEY_get_utf8_string_param(pkey.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, nullptr) != 1)
        throw std::runtime_error("EC key without a named curve: " + info.alias);
      std::unique_ptr<ASN1_OBJECT, ObjFree> oid(OBJ_txt2obj(group, 0));
      if (!oid) throw std::runtime_error(std::string("unknown curve ") + group);
      a[CKA_EC_PARAMS] = der_of(oid.get(), i2d_ASN1_OBJECT);
      if (point) {
        std::size_t n = 0;
        EVP_PKEY_get_octet_string_param(pkey.get(), OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0, &n);
        Bytes raw(n);
        if (EVP_PKEY_get_octet_string_param(pkey.get(), OSSL_PKEY_PARAM_PUB_KEY, raw.data(), raw.size(), &n) != 1)
          throw std::runtime_error("cannot read the EC point of " + info.alias);
        a[CKA_EC_POINT] = octet_string(raw);
      }
      break;
    }
    case KeyKind::ed25519: {
      // PKCS#11 3.0 allows the curve's OID (1.3.101.112) or its printable name;
      // SoftHSM and OpenSC write the OID.
      a[CKA_EC_PARAMS] = Bytes{0x06, 0x03, 0x2b, 0x65, 0x70};
      if (point) {
        Bytes raw(32);
        std::size_t n = raw.size();
        if (EVP_PKEY_get_raw_public_key(pkey.get(), raw.data(), &n) != 1 || n != 32)
          throw std::runtime_error("cannot read the Ed25519 key of " + info.alias);
        a[CKA_EC_POINT] = octet_string(raw);
      }
      break;
    }
  }
}

CK_KEY_TYPE key_type(KeyKind k) {
  switch (k) {
    case KeyKind::rsa: return CKK_RSA;
    case KeyKind::ec: return CKK_EC;
    case KeyKind::ed25519: return CKK_EC_EDWARDS;
  }
  return CKK_RSA;
}

}  // namespace

bool Object::matches(const CK_ATTRIBUTE* templ, CK_ULONG count) const {
  for (CK_ULONG i = 0; i < count; ++i) {
    const auto it = attributes.find(templ[i].type);
    if (it == attributes.end()) return false;
    if (templ[i].ulValueLen != it->second.size()) return false;
    if (templ[i].ulValueLen > 0 && (templ[i].pValue == nullptr || std::memcmp(templ[i].pValue, it->second.data(), it->second.size()) != 0))
      return false;
  }
  return true;
}

CK_RV Object::copy_attributes(CK_ATTRIBUTE* templ, CK_ULONG count) const {
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < count; ++i) {
    CK_ATTRIBUTE& a = templ[i];
    const auto it = attributes.find(a.type);
    if (object_class == CKO_PRIVATE_KEY &&
        (a.type == CKA_VALUE || a.type == CKA_PRIVATE_EXPONENT || a.type == CKA_PRIME_1 || a.type == CKA_PRIME_2 ||
         a.type == CKA_EXPONENT_1 || a.type == CKA_EXPONENT_2 || a.type == CKA_COEFFICIENT)) {
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      if (rv == CKR_OK) rv = CKR_ATTRIBUTE_SENSITIVE;
    } else if (it == attributes.end()) {
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      if (rv == CKR_OK) rv = CKR_ATTRIBUTE_TYPE_INVALID;
    } else if (a.pValue == nullptr) {
      a.ulValueLen = it->second.size();
    } else if (a.ulValueLen < it->second.size()) {
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      if (rv == CKR_OK) rv = CKR_BUFFER_TOO_SMALL;
    } else {
      if (!it->second.empty()) std::memcpy(a.pValue, it->second.data(), it->second.size());
      a.ulValueLen = it->second.size();
    }
  }
  return rv;
}

namespace {
// A member of the type asked, or nullptr: firmad's answer is parsed, never trusted.
const Json* member(const Json& object, const char* name, Json::value_t type) {
  const auto it = object.find(name);
  if (it == object.end()) return nullptr;
  if (type == Json::value_t::number_integer) return it->is_number_integer() ? &*it : nullptr;
  return it->type() == type ? &*it : nullptr;
}
}  // namespace

bool key_info(const Json& key, KeyInfo& out) {
  using T = Json::value_t;
  if (!key.is_object()) return false;
  // A key the caller may not sign with (an administrator sees every key) gets no objects.
  if (const Json* may_use = member(key, "mayUse", T::boolean); may_use != nullptr && !may_use->get<bool>()) return false;
  const Json* found = member(key, "found", T::boolean);
  const Json* public_key = member(key, "publicKey", T::string);
  const Json* type_field = member(key, "type", T::string);
  const Json* alias = member(key, "alias", T::string);
  const Json* token = member(key, "token", T::string);
  if (found == nullptr || !found->get<bool>() || public_key == nullptr || type_field == nullptr || alias == nullptr || token == nullptr)
    return false;
  const std::string type = type_field->get<std::string>();
  if (type == "rsa") {
    out.kind = KeyKind::rsa;
  } else if (type == "ec") {
    out.kind = KeyKind::ec;
  } else if (type == "ed25519") {
    out.kind = KeyKind::ed25519;
  } else {
    return false;
  }
  out.alias = alias->get<std::string>();
  out.token = token->get<std::string>();
  out.pss = false;
  if (const Json* schemes = member(key, "schemes", T::array))
    for (const auto& s : *schemes)
      if (s.is_string() && s.get<std::string>() == "rsa-pss") out.pss = true;
  const Json* sha1 = member(key, "allowSha1", T::boolean);
  out.sha1 = sha1 != nullptr && sha1->get<bool>() && out.kind != KeyKind::ed25519;
  const auto spki = firmad::protocol::base64_decode(public_key->get<std::string>());
  if (!spki || spki->empty() || out.alias.empty()) return false;
  // The key's size, on which each signature's length rests, is the public
  // key's own: a key of another type than firmad says, or another size
  // than its "bits", gets no objects.
  const unsigned char* p = spki->data();
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki->size())));
  if (!pkey || p != spki->data() + spki->size()) return false;
  const int id = EVP_PKEY_get_base_id(pkey.get());
  if ((out.kind == KeyKind::rsa && id != EVP_PKEY_RSA) || (out.kind == KeyKind::ec && id != EVP_PKEY_EC) ||
      (out.kind == KeyKind::ed25519 && id != EVP_PKEY_ED25519))
    return false;
  out.bits = out.kind == KeyKind::ed25519 ? 255 : EVP_PKEY_get_bits(pkey.get());
  // At most 16384 bits: beyond any key a token holds, and a size the signature length can carry.
  if (out.bits <= 0 || out.bits > 16384) return false;
  if (const Json* bits = member(key, "bits", T::number_integer); bits != nullptr && out.kind != KeyKind::ed25519 &&
                                                                  bits->get<std::int64_t>() != out.bits)
    return false;
  out.spki.assign(spki->begin(), spki->end());
  return true;
}

std::vector<Object> objects_of(const Json& key, const KeyInfo& info) {
  std::map<CK_ATTRIBUTE_TYPE, Bytes> common;
  common[CKA_TOKEN] = bool_bytes(true);
  common[CKA_PRIVATE] = bool_bytes(false);  // visible without a login: firmad holds the PIN
  common[CKA_MODIFIABLE] = bool_bytes(false);
  common[CKA_COPYABLE] = bool_bytes(false);
  common[CKA_DESTROYABLE] = bool_bytes(false);
  common[CKA_LABEL] = text_bytes(key.contains("objectLabel") && key["objectLabel"].is_string() ? key["objectLabel"].get<std::string>() : info.alias);
  common[CKA_ID] = key.contains("objectId") && key["objectId"].is_string() ? from_hex(key["objectId"]) : Bytes{};

  Bytes cert_der, subject;
  X509* cert_raw = nullptr;
  if (key.contains("certificateDer") && key["certificateDer"].is_string()) {
    if (const auto der = firmad::protocol::base64_decode(key["certificateDer"].get<std::string>())) {
      cert_der.assign(der->begin(), der->end());
      const unsigned char* p = cert_der.data();
      cert_raw = d2i_X509(nullptr, &p, static_cast<long>(cert_der.size()));
    }
  }
  std::unique_ptr<X509, X509Free> cert(cert_raw);
  if (cert) subject = der_of(X509_get_subject_name(cert.get()), i2d_X509_NAME);

  std::vector<Object> out;
  Object priv{CKO_PRIVATE_KEY, info.alias, common};
  auto& a = priv.attributes;
  a[CKA_CLASS] = ulong_bytes(CKO_PRIVATE_KEY);
  a[CKA_KEY_TYPE] = ulong_bytes(key_type(info.kind));
  a[CKA_SIGN] = bool_bytes(true);
  for (CK_ATTRIBUTE_TYPE t : {CKA_SIGN_RECOVER, CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE, CKA_EXTRACTABLE, CKA_ALWAYS_AUTHENTICATE,
                              CKA_WRAP_WITH_TRUSTED, CKA_LOCAL})
    a[t] = bool_bytes(false);
  for (CK_ATTRIBUTE_TYPE t : {CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE}) a[t] = bool_bytes(true);
  a[CKA_SUBJECT] = subject;
  {
    // The mechanisms firmad signs with for this key (PKCS#11 2.40 §4.9).
    const auto mechanisms = mechanisms_for(info.kind, info.pss, info.sha1);
    Bytes allowed(mechanisms.size() * sizeof(CK_MECHANISM_TYPE));
    if (!mechanisms.empty()) std::memcpy(allowed.data(), mechanisms.data(), allowed.size());
    a[CKA_ALLOWED_MECHANISMS] = allowed;
  }
  public_parts(info, a, false);
  a.erase(CKA_MODULUS_BITS);  // a public key attribute
  out.push_back(std::move(priv));

  Object pub{CKO_PUBLIC_KEY, info.alias, common};
  auto& b = pub.attributes;
  b[CKA_CLASS] = ulong_bytes(CKO_PUBLIC_KEY);
  b[CKA_KEY_TYPE] = ulong_bytes(key_type(info.kind));
  b[CKA_VERIFY] = bool_bytes(true);
  for (CK_ATTRIBUTE_TYPE t : {CKA_VERIFY_RECOVER, CKA_ENCRYPT, CKA_WRAP, CKA_DERIVE, CKA_LOCAL, CKA_TRUSTED}) b[t] = bool_bytes(false);
  b[CKA_SUBJECT] = subject;
  b[CKA_PUBLIC_KEY_INFO] = info.spki;
  public_parts(info, b, true);
  out.push_back(std::move(pub));

  if (cert) {
    Object c{CKO_CERTIFICATE, info.alias, common};
    auto& d = c.attributes;
    d[CKA_CLASS] = ulong_bytes(CKO_CERTIFICATE);
    d[CKA_CERTIFICATE_TYPE] = ulong_bytes(CKC_X_509);
    d[CKA_CERTIFICATE_CATEGORY] = ulong_bytes(0);  // unspecified
    d[CKA_TRUSTED] = bool_bytes(false);
    d[CKA_VALUE] = cert_der;
    d[CKA_SUBJECT] = subject;
    d[CKA_ISSUER] = der_of(X509_get_issuer_name(cert.get()), i2d_X509_NAME);
    d[CKA_SERIAL_NUMBER] = der_of(X509_get_serialNumber(cert.get()), i2d_ASN1_INTEGER);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace firma::p11
