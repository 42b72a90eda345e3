// C_CreateObject for an imported key pair and its certificate, all or nothing.
#include "pkcs11/import.hpp"

#include <openssl/core_names.h>
#include <openssl/rand.h>

#include <stdexcept>

#include "pkcs11/error.hpp"
#include "pkcs11/keygen.hpp"
#include "pkcs11/openssl.hpp"

namespace firmad::pkcs11 {
namespace {

using SecretBn = std::unique_ptr<BIGNUM, ossl::Deleter<BN_clear_free>>;

// Returns a key component as an unsigned big-endian integer, left-padded to
// `width` bytes when width is given.
Bytes component(EVP_PKEY* key, const char* name, int width = 0) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &raw) != 1 || !raw)
    ossl::fail(std::string("cannot read the key's ") + name);
  const SecretBn bn(raw);  // cleared on release: it may be a private component
  const int len = width ? width : BN_num_bytes(bn.get());
  Bytes out(static_cast<std::size_t>(len));
  if (BN_bn2binpad(bn.get(), out.data(), len) != len) {
    OPENSSL_cleanse(out.data(), out.size());
    ossl::fail(std::string("cannot encode the key's ") + name);
  }
  return out;
}

bool has_component(EVP_PKEY* key, const char* name) {
  BIGNUM* raw = nullptr;
  const bool has = EVP_PKEY_get_bn_param(key, name, &raw) == 1 && raw;
  BN_clear_free(raw);
  ERR_clear_error();
  return has;
}

void rsa_parts(EVP_PKEY* key, Template& priv, Template& pub) {
  if (has_component(key, OSSL_PKEY_PARAM_RSA_FACTOR3))
    throw std::invalid_argument("cannot import a multi-prime RSA key: PKCS#11 holds two-prime keys only");
  for (Template* t : {&priv, &pub}) {
    t->add_ulong(CKA_KEY_TYPE, CKK_RSA);
    t->add(CKA_MODULUS, component(key, OSSL_PKEY_PARAM_RSA_N));
    t->add(CKA_PUBLIC_EXPONENT, component(key, OSSL_PKEY_PARAM_RSA_E));
  }
  priv.add(CKA_PRIVATE_EXPONENT, component(key, OSSL_PKEY_PARAM_RSA_D));
  priv.add(CKA_PRIME_1, component(key, OSSL_PKEY_PARAM_RSA_FACTOR1));
  priv.add(CKA_PRIME_2, component(key, OSSL_PKEY_PARAM_RSA_FACTOR2));
  priv.add(CKA_EXPONENT_1, component(key, OSSL_PKEY_PARAM_RSA_EXPONENT1));
  priv.add(CKA_EXPONENT_2, component(key, OSSL_PKEY_PARAM_RSA_EXPONENT2));
  priv.add(CKA_COEFFICIENT, component(key, OSSL_PKEY_PARAM_RSA_COEFFICIENT1));
}

void ec_parts(EVP_PKEY* key, Template& priv, Template& pub) {
  char group[80] = {};
  std::size_t len = 0;
  if (!EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len)) {
    ERR_clear_error();
    throw std::invalid_argument("cannot import an EC key with explicit curve parameters: a named curve is needed");
  }
  int nid = OBJ_txt2nid(group);
  if (nid == NID_undef) nid = EC_curve_nist2nid(group);
  if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1)
    throw std::invalid_argument(std::string("cannot import an EC key on curve ") + group + " (P-256 and P-384 only)");
  const int width = nid == NID_secp384r1 ? 48 : 32;

  const Bytes params = encode_der(i2d_ASN1_OBJECT, static_cast<const ASN1_OBJECT*>(OBJ_nid2obj(nid)), "curve OID");
  // CKA_EC_POINT: the uncompressed point (04 || X || Y) in a DER OCTET STRING.
  Bytes point{0x04};
  for (const char* coordinate : {OSSL_PKEY_PARAM_EC_PUB_X, OSSL_PKEY_PARAM_EC_PUB_Y}) {
    const Bytes c = component(key, coordinate, width);
    point.insert(point.end(), c.begin(), c.end());
  }
  ossl::Asn1OctetString os(ASN1_OCTET_STRING_new());
  if (!os || !ASN1_OCTET_STRING_set(os.get(), point.data(), static_cast<int>(point.size())))
    ossl::fail("cannot encode the EC point");

  for (Template* t : {&priv, &pub}) {
    t->add_ulong(CKA_KEY_TYPE, CKK_EC);
    t->add_copy(CKA_EC_PARAMS, params);
  }
  pub.add(CKA_EC_POINT, encode_der(i2d_ASN1_OCTET_STRING, static_cast<const ASN1_OCTET_STRING*>(os.get()), "EC point"));
  priv.add(CKA_VALUE, component(key, OSSL_PKEY_PARAM_PRIV_KEY, width));
}

bool id_in_use(const Session& session, Bytes& id) {
  CK_ATTRIBUTE match{CKA_ID, id.data(), static_cast<CK_ULONG>(id.size())};
  const auto fn = session.module().fn();
  check(fn->C_FindObjectsInit(session.handle(), &match, 1), "C_FindObjectsInit");
  CK_OBJECT_HANDLE found = CK_INVALID_HANDLE;
  CK_ULONG count = 0;
  const CK_RV rv = fn->C_FindObjects(session.handle(), &found, 1, &count);
  fn->C_FindObjectsFinal(session.handle());
  check(rv, "C_FindObjects");
  return count > 0;
}

}  // namespace

namespace {

// The templates of an import, encoded before anything is written.
struct ImportTemplates {
  Template priv, pub, cert;
};

void build_templates(ImportTemplates& t, EVP_PKEY* key, X509* certificate, const std::string& label, const Bytes& id, bool token) {
  if (!key || !certificate) throw std::invalid_argument("an import needs both a key and its certificate");
  if (id.empty()) throw std::invalid_argument("an imported key needs a non-empty object id");
  if (X509_check_private_key(certificate, key) != 1) {
    ERR_clear_error();
    throw std::invalid_argument("the certificate does not belong to the key");
  }
  const Bytes subject = encode_der(i2d_X509_NAME, static_cast<const X509_NAME*>(X509_get_subject_name(certificate)),
                                   "certificate's subject");
  add_key_pair_attributes(t.priv, t.pub, label, id, token);
  for (Template* p : {&t.priv, &t.pub}) p->add_copy(CKA_SUBJECT, subject);
  if (EVP_PKEY_is_a(key, "RSA")) {
    rsa_parts(key, t.priv, t.pub);
  } else if (EVP_PKEY_is_a(key, "EC")) {
    ec_parts(key, t.priv, t.pub);
  } else {
    const char* name = EVP_PKEY_get0_type_name(key);
    throw std::invalid_argument(std::string("cannot import a ") + (name ? name : "(unknown)") +
                                " key: RSA and EC P-256/P-384 only");
  }
  add_certificate_attributes(t.cert, encode_der(i2d_X509, static_cast<const X509*>(certificate), "certificate"), label, id);
}

}  // namespace

ImportedObjects import_credential(const Session& session, EVP_PKEY* key, X509* certificate, const std::string& label,
                                  const Bytes& id) {
  // Everything is encoded before anything is written to the token.
  ImportTemplates t;
  build_templates(t, key, certificate, label, id, true);
  ObjectGuard guard(session);
  ImportedObjects out;
  out.private_key = create_object(session, t.priv, "C_CreateObject(private key)");
  guard.add(out.private_key);
  out.public_key = create_object(session, t.pub, "C_CreateObject(public key)");
  guard.add(out.public_key);
  out.certificate = create_object(session, t.cert, "C_CreateObject(certificate)");
  guard.release();
  return out;
}

void rehearse_import(const Session& session, EVP_PKEY* key, X509* certificate, const Bytes& id) {
  ImportTemplates t;
  build_templates(t, key, certificate, "firmad-import-rehearsal", id, false);
  ObjectGuard guard(session);  // destroys the session object again
  guard.add(create_object(session, t.priv, "C_CreateObject(private key)"));
}

Bytes new_object_id(const Session& session) {
  // 64 random bits: a collision is all but impossible, but checked anyway.
  for (int attempt = 0; attempt < 8; ++attempt) {
    Bytes id(8);
    if (RAND_bytes(id.data(), static_cast<int>(id.size())) != 1) ossl::fail("cannot draw a random object id");
    if (!id_in_use(session, id)) return id;
  }
  throw std::runtime_error("no unused random object id found in 8 draws");
}

}  // namespace firmad::pkcs11
