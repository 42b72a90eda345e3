// C_GenerateKeyPair, certificate objects, labels, and the templates every object firmad writes is made from.
#include "pkcs11/keygen.hpp"

#include <cstring>
#include <stdexcept>

#include "pkcs11/error.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/openssl.hpp"

namespace firmad::pkcs11 {

Template::~Template() {
  for (auto& v : values_) OPENSSL_cleanse(v.data(), v.size());
}

void Template::add(CK_ATTRIBUTE_TYPE type, Bytes&& value) {
  Bytes& v = values_.emplace_back(std::move(value));
  attributes_.push_back({type, v.empty() ? nullptr : v.data(), static_cast<CK_ULONG>(v.size())});
}

void Template::add_bool(CK_ATTRIBUTE_TYPE type, bool value) {
  add(type, Bytes{static_cast<std::uint8_t>(value ? CK_TRUE : CK_FALSE)});
}

void Template::add_ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value) {
  Bytes b(sizeof value);
  std::memcpy(b.data(), &value, sizeof value);
  add(type, std::move(b));
}

ObjectGuard::~ObjectGuard() {
  for (auto it = objects_.rbegin(); it != objects_.rend(); ++it) {
    try {
      session_.destroy(*it);
    } catch (...) {
      // Best effort, and a destructor must not throw: the failure being
      // unwound is the one to report.
    }
  }
}

void add_key_pair_attributes(Template& priv, Template& pub, const std::string& label, const Bytes& id, bool token,
                             bool forbid_decrypt) {
  const Bytes label_bytes(label.begin(), label.end());
  priv.add_ulong(CKA_CLASS, CKO_PRIVATE_KEY);
  priv.add_bool(CKA_TOKEN, token);
  priv.add_bool(CKA_PRIVATE, true);
  priv.add_bool(CKA_SENSITIVE, true);
  priv.add_bool(CKA_EXTRACTABLE, false);
  priv.add_bool(CKA_SIGN, true);
  // A signing key and nothing else: no decryption, unwrapping or derivation.
  if (forbid_decrypt) priv.add_bool(CKA_DECRYPT, false);
  priv.add_bool(CKA_UNWRAP, false);
  priv.add_bool(CKA_DERIVE, false);
  pub.add_ulong(CKA_CLASS, CKO_PUBLIC_KEY);
  pub.add_bool(CKA_TOKEN, token);
  pub.add_bool(CKA_PRIVATE, false);
  // CKA_VERIFY is left to the token: firmad never verifies on it, and
  // tpm2-pkcs11 maps verify and decrypt to one TPM flag, so a public key
  // that verifies with a private key that does not decrypt is refused there
  // (CKR_GENERAL_ERROR, "attr mismatch").
  for (Template* t : {&priv, &pub}) {
    t->add_copy(CKA_LABEL, label_bytes);
    t->add_copy(CKA_ID, id);
  }
}

void add_certificate_attributes(Template& cert, const Bytes& der, const std::string& label, const Bytes& id) {
  const unsigned char* p = der.data();
  ossl::X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!x || p != der.data() + der.size()) {
    ERR_clear_error();
    throw std::invalid_argument("not one DER X.509 certificate");
  }
  cert.add_ulong(CKA_CLASS, CKO_CERTIFICATE);
  cert.add_ulong(CKA_CERTIFICATE_TYPE, CKC_X_509);
  cert.add_bool(CKA_TOKEN, true);
  cert.add_bool(CKA_PRIVATE, false);
  cert.add(CKA_LABEL, Bytes(label.begin(), label.end()));
  cert.add_copy(CKA_ID, id);
  cert.add(CKA_SUBJECT, encode_der(i2d_X509_NAME, static_cast<const X509_NAME*>(X509_get_subject_name(x.get())),
                                   "certificate's subject"));
  cert.add(CKA_ISSUER, encode_der(i2d_X509_NAME, static_cast<const X509_NAME*>(X509_get_issuer_name(x.get())),
                                  "certificate's issuer"));
  cert.add(CKA_SERIAL_NUMBER, encode_der(i2d_ASN1_INTEGER, X509_get0_serialNumber(x.get()),
                                         "certificate's serial number"));
  // The bytes as given, not a re-encoding: they are what was signed.
  cert.add_copy(CKA_VALUE, der);
}

ObjectHandle create_object(const Session& session, Template& t, const char* call) {
  CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
  check(session.module().fn()->C_CreateObject(session.handle(), t.data(), t.size(), &object), call);
  return object;
}

std::optional<KeySpec> parse_key_spec(std::string_view text) {
  if (text == "rsa-2048") return KeySpec{KeyType::Rsa, 2048, ""};
  if (text == "rsa-3072") return KeySpec{KeyType::Rsa, 3072, ""};
  if (text == "rsa-4096") return KeySpec{KeyType::Rsa, 4096, ""};
  if (text == "ec-p256") return KeySpec{KeyType::Ec, 256, "P-256"};
  if (text == "ec-p384") return KeySpec{KeyType::Ec, 384, "P-384"};
  return std::nullopt;
}

namespace {

// Modules that make CKM_RSA_PKCS signatures with their RSA decryption, so
// that an RSA key that may not decrypt cannot sign PKCS#1 v1.5 over a
// client's digest there. No flag says so; the library does:
// tpm2-pkcs11 (1.9) signs CKM_RSA_PKCS with TPM2_RSA_Decrypt (its
// hash-and-sign mechanisms use TPM2_Sign, but firmad is given digests), and
// answers CKR_GENERAL_ERROR ("inconsistent attributes") for such a key.
bool signs_pkcs1_by_decryption(const Module& module) { return module.library_manufacturer() == "tpm2-software.github.io"; }

}  // namespace

GeneratedKey generate_key_pair(const Session& session, const KeySpec& spec, const std::string& label,
                               const Bytes& id) {
  if (id.empty()) throw std::invalid_argument("a generated key needs a non-empty object id");
  const bool may_decrypt = spec.type == KeyType::Rsa && signs_pkcs1_by_decryption(session.module());
  Template priv, pub;
  add_key_pair_attributes(priv, pub, label, id, true, !may_decrypt);
  CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  if (spec.type == KeyType::Rsa && (spec.bits == 2048 || spec.bits == 3072 || spec.bits == 4096)) {
    for (Template* t : {&priv, &pub}) t->add_ulong(CKA_KEY_TYPE, CKK_RSA);
    pub.add_ulong(CKA_MODULUS_BITS, static_cast<CK_ULONG>(spec.bits));
    pub.add(CKA_PUBLIC_EXPONENT, Bytes{0x01, 0x00, 0x01});
  } else if (spec.type == KeyType::Ec && (spec.curve == "P-256" || spec.curve == "P-384")) {
    const int nid = spec.curve == "P-384" ? NID_secp384r1 : NID_X9_62_prime256v1;
    for (Template* t : {&priv, &pub}) t->add_ulong(CKA_KEY_TYPE, CKK_EC);
    pub.add(CKA_EC_PARAMS, encode_der(i2d_ASN1_OBJECT, static_cast<const ASN1_OBJECT*>(OBJ_nid2obj(nid)), "curve OID"));
    mech.mechanism = CKM_EC_KEY_PAIR_GEN;
  } else {
    throw std::invalid_argument(std::string("cannot generate a ") + to_string(spec.type) + " key of " +
                                std::to_string(spec.bits) + " bits" + (spec.curve.empty() ? "" : " on " + spec.curve) +
                                ": RSA 2048/3072/4096 and EC P-256/P-384 only");
  }

  CK_OBJECT_HANDLE pub_handle = CK_INVALID_HANDLE, priv_handle = CK_INVALID_HANDLE;
  check(session.module().fn()->C_GenerateKeyPair(session.handle(), &mech, pub.data(), pub.size(), priv.data(),
                                                 priv.size(), &pub_handle, &priv_handle),
        "C_GenerateKeyPair");
  ObjectGuard guard(session);
  guard.add(priv_handle);
  guard.add(pub_handle);
  GeneratedKey out{priv_handle, pub_handle, public_key_info(session, pub_handle), may_decrypt};
  guard.release();
  return out;
}

ObjectHandle create_certificate(const Session& session, const Bytes& der, const std::string& label, const Bytes& id) {
  Template cert;
  add_certificate_attributes(cert, der, label, id);
  return create_object(session, cert, "C_CreateObject(certificate)");
}

void set_label(const Session& session, ObjectHandle object, const std::string& label) {
  Bytes value(label.begin(), label.end());
  CK_ATTRIBUTE a{CKA_LABEL, value.empty() ? nullptr : value.data(), static_cast<CK_ULONG>(value.size())};
  check(session.module().fn()->C_SetAttributeValue(session.handle(), object, &a, 1), "C_SetAttributeValue");
}

WriteProbe probe_writes(const Session& session, const Bytes& certificate_der, const Bytes& id) {
  WriteProbe out;
  auto said = [](const Error& e) { return e.call() + ": " + e.code_name(); };
  ObjectHandle probe = 0;
  try {
    probe = create_certificate(session, certificate_der, "firmad-write-probe", id);
  } catch (const Error& e) {
    out.create = said(e);
    return out;
  }
  try {
    set_label(session, probe, "firmad-write-probe-relabelled");
  } catch (const Error& e) {
    out.relabel = said(e);
  }
  try {
    session.destroy(probe);
  } catch (const Error& e) {
    out.destroy = said(e);
  }
  return out;
}

ObjectsById objects_by_id(const Session& session, const Bytes& id) {
  ObjectsById out;
  if (auto p = session.find(CKO_PRIVATE_KEY, std::nullopt, id, 1); !p.empty()) out.private_key = p.front();
  if (auto p = session.find(CKO_PUBLIC_KEY, std::nullopt, id, 1); !p.empty()) out.public_key = p.front();
  for (ObjectHandle h : session.find(CKO_CERTIFICATE, std::nullopt, id, 64))
    out.certificates.emplace_back(h, session.attribute(h, CKA_VALUE).value_or(Bytes{}));
  return out;
}

}  // namespace firmad::pkcs11
