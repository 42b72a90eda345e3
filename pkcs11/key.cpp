// Key discovery: private key, public key and certificate tied by CKA_ID.
#include "pkcs11/key.hpp"

#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include "pkcs11/error.hpp"
#include "pkcs11/openssl.hpp"

namespace firmad::pkcs11 {
namespace {

Bytes to_der(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(pkey, &der);
  if (len <= 0) ossl::fail("cannot encode public key");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

ossl::Pkey from_params(const char* type, OSSL_PARAM_BLD* bld) {
  std::unique_ptr<OSSL_PARAM, ossl::Deleter<OSSL_PARAM_free>> params(OSSL_PARAM_BLD_to_param(bld));
  ossl::PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0)
    ossl::fail(std::string("cannot build ") + type + " public key from token attributes");
  return ossl::Pkey(pkey);
}

using ParamBld = std::unique_ptr<OSSL_PARAM_BLD, ossl::Deleter<OSSL_PARAM_BLD_free>>;

Bytes rsa_spki(const Bytes& n, const Bytes& e) {
  ossl::Bn bn_n(BN_bin2bn(n.data(), n.size(), nullptr)), bn_e(BN_bin2bn(e.data(), e.size(), nullptr));
  ParamBld bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()))
    ossl::fail("cannot build RSA public key");
  return to_der(from_params("RSA", bld.get()).get());
}

// CKA_EC_POINT holds the point wrapped in a DER OCTET STRING (some modules
// give it bare); returns the bare point. A bare uncompressed point can also
// parse as an OCTET STRING by chance, so the wrapped reading is taken only
// when its length is the curve's point length.
Bytes unwrap_point(const Bytes& attr, std::size_t point_size) {
  const unsigned char* p = attr.data();
  ossl::Asn1OctetString os(d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(attr.size())));
  if (os && p == attr.data() + attr.size() && static_cast<std::size_t>(ASN1_STRING_length(os.get())) == point_size)
    return Bytes(ASN1_STRING_get0_data(os.get()), ASN1_STRING_get0_data(os.get()) + ASN1_STRING_length(os.get()));
  ERR_clear_error();
  return attr;
}

struct Curve {
  KeyType type;
  std::string name;     // our name
  const char* group;    // OpenSSL group name
  int bits;
};

std::optional<Curve> curve_of(const Bytes& params) {
  const unsigned char* p = params.data();
  ossl::Asn1Object oid(d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(params.size())));
  if (oid) {
    switch (OBJ_obj2nid(oid.get())) {
      case NID_X9_62_prime256v1: return Curve{KeyType::Ec, "P-256", "P-256", 256};
      case NID_secp384r1: return Curve{KeyType::Ec, "P-384", "P-384", 384};
      case NID_ED25519: return Curve{KeyType::Ed25519, "Ed25519", nullptr, 255};
      default: return std::nullopt;
    }
  }
  ERR_clear_error();
  // PKCS#11 3.0 also allows PrintableString "edwards25519".
  static const std::string kEd = "edwards25519";
  if (params.size() == kEd.size() + 2 && params[0] == 0x13 &&
      std::equal(kEd.begin(), kEd.end(), params.begin() + 2))
    return Curve{KeyType::Ed25519, "Ed25519", nullptr, 255};
  return std::nullopt;
}

Bytes ec_spki(const Curve& curve, const Bytes& point) {
  if (curve.type == KeyType::Ed25519) {
    ossl::Pkey pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, point.data(), point.size()));
    if (!pkey) ossl::fail("cannot build Ed25519 public key");
    return to_der(pkey.get());
  }
  ParamBld bld(OSSL_PARAM_BLD_new());
  if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve.group, 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()))
    ossl::fail("cannot build EC public key");
  return to_der(from_params("EC", bld.get()).get());
}

// Uncompressed point 04||X||Y, or the 32-byte Ed25519 key.
std::size_t point_size(const Curve& curve) {
  return curve.type == KeyType::Ed25519 ? 32 : 1 + 2 * ((curve.bits + 7) / 8);
}

// Whether certificate a (DER da) should be chosen over b: the later notAfter,
// then the later notBefore, then the smaller DER; parsed beats unparsed.
// Every step is a total order, so the choice is the same whatever order the
// token lists the certificates in.
bool preferred(X509* a, const Bytes& da, X509* b, const Bytes& db) {
  if (static_cast<bool>(a) != static_cast<bool>(b)) return a != nullptr;
  if (a) {
    int c = ASN1_TIME_compare(X509_get0_notAfter(a), X509_get0_notAfter(b));
    if (c == 0) c = ASN1_TIME_compare(X509_get0_notBefore(a), X509_get0_notBefore(b));
    ERR_clear_error();
    if (c == 1 || c == -1) return c == 1;  // -2: a time OpenSSL cannot read; fall through
  }
  return da < db;
}

// Returns the DER of the certificate with the latest notAfter among those
// matching label/id, or nullopt if there is none. Several share an id while
// a renewal that kept the key has both the old and the new certificate on
// the token; the new one is the one to present.
std::optional<Bytes> latest_certificate(const Session& s, const std::optional<std::string>& label,
                                        const std::optional<Bytes>& id) {
  std::optional<Bytes> best;
  ossl::X509Ptr best_x;
  for (ObjectHandle h : s.find(CKO_CERTIFICATE, label, id, 64)) {
    auto der = s.attribute(h, CKA_VALUE);
    if (!der) continue;
    const unsigned char* p = der->data();
    ossl::X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der->size())));
    ERR_clear_error();
    if (!best || preferred(x.get(), *der, best_x.get(), *best)) {
      best = std::move(*der);
      best_x = std::move(x);
    }
  }
  return best;
}

std::optional<ObjectHandle> first_of(const Session& s, CK_OBJECT_CLASS cls, const std::optional<std::string>& label,
                                     const std::optional<Bytes>& id) {
  auto found = s.find(cls, label, id, 1);
  if (found.empty()) return std::nullopt;
  return found.front();
}

}  // namespace

bool always_authenticate(const Session& s, ObjectHandle private_key) {
  const auto always = s.attribute(private_key, CKA_ALWAYS_AUTHENTICATE);
  return always && always->size() == sizeof(CK_BBOOL) && (*always)[0] != CK_FALSE;
}

std::optional<KeyInfo> find_key(const Session& s, const Uri& uri) {
  const auto label = uri.object_label();
  const auto id = uri.object_id();

  KeyInfo key;
  auto privs = s.find(CKO_PRIVATE_KEY, label, id, 2);
  if (privs.size() > 1)
    throw std::runtime_error("the URI " + uri.text() + " matches more than one private key; add id= or object=");
  if (!privs.empty()) {
    key.private_key = privs.front();
    key.always_authenticate = always_authenticate(s, *key.private_key);
  }

  auto pub = first_of(s, CKO_PUBLIC_KEY, label, id);
  // The object that tells us the key's id and label.
  std::optional<ObjectHandle> anchor = key.private_key ? key.private_key : pub;
  if (!anchor) {
    anchor = first_of(s, CKO_CERTIFICATE, label, id);
    if (!anchor) return std::nullopt;
  }
  key.id = s.attribute(*anchor, CKA_ID).value_or(Bytes{});
  if (auto l = s.attribute(*anchor, CKA_LABEL)) key.label.assign(l->begin(), l->end());

  // Public key and certificate are the ones with the same CKA_ID.
  const std::optional<Bytes> by_id = key.id.empty() ? std::optional<Bytes>{} : std::optional<Bytes>{key.id};
  const std::optional<std::string> by_label = key.id.empty() ? std::optional<std::string>{key.label} : std::nullopt;
  if (auto same_id = first_of(s, CKO_PUBLIC_KEY, by_label, by_id)) pub = same_id;
  key.certificate = latest_certificate(s, by_label, by_id).value_or(Bytes{});

  const std::optional<ObjectHandle> typed = key.private_key ? key.private_key : pub;
  std::optional<unsigned long> key_type = typed ? s.ulong_attribute(*typed, CKA_KEY_TYPE) : std::nullopt;

  if (key_type == CKK_RSA) {
    key.type = KeyType::Rsa;
    auto n = s.attribute(*typed, CKA_MODULUS);
    auto e = s.attribute(*typed, CKA_PUBLIC_EXPONENT);
    if (!n && pub) n = s.attribute(*pub, CKA_MODULUS);
    if (!e && pub) e = s.attribute(*pub, CKA_PUBLIC_EXPONENT);
    if (n && e) {
      key.bits = static_cast<int>(n->size() * 8);
      key.public_key = rsa_spki(*n, *e);
    }
  } else if (key_type == CKK_EC || key_type == CKK_EC_EDWARDS) {
    auto params = s.attribute(*typed, CKA_EC_PARAMS);
    auto curve = params ? curve_of(*params) : std::nullopt;
    if (!curve) throw std::runtime_error("key " + uri.text() + " is on an elliptic curve firmad does not support");
    key.type = curve->type;
    key.curve = curve->name;
    key.bits = curve->bits;
    if (pub) {
      if (auto point = s.attribute(*pub, CKA_EC_POINT))
        key.public_key = ec_spki(*curve, unwrap_point(*point, point_size(*curve)));
    }
  } else if (key_type) {
    throw std::runtime_error("key " + uri.text() + " has a key type firmad does not support (" +
                             std::to_string(*key_type) + ")");
  }

  // Without a public key object, the certificate's key is the public key.
  if (!key.certificate.empty() && (key.public_key.empty() || !key_type)) {
    const unsigned char* p = key.certificate.data();
    ossl::X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(key.certificate.size())));
    if (x) {
      EVP_PKEY* pk = X509_get0_pubkey(x.get());
      if (pk && key.public_key.empty()) key.public_key = to_der(pk);
      if (pk && !key_type) {
        key.bits = EVP_PKEY_get_bits(pk);
        if (EVP_PKEY_is_a(pk, "RSA")) key.type = KeyType::Rsa;
        else if (EVP_PKEY_is_a(pk, "ED25519")) key.type = KeyType::Ed25519, key.curve = "Ed25519";
        else if (EVP_PKEY_is_a(pk, "EC")) key.type = KeyType::Ec, key.curve = key.bits == 384 ? "P-384" : "P-256";
      }
    }
    ERR_clear_error();
  }
  key.schemes = s.module().schemes(s.slot(), key.type);
  return key;
}

Bytes public_key_info(const Session& s, ObjectHandle public_key) {
  const auto key_type = s.ulong_attribute(public_key, CKA_KEY_TYPE);
  if (key_type == CKK_RSA) {
    const auto n = s.attribute(public_key, CKA_MODULUS);
    const auto e = s.attribute(public_key, CKA_PUBLIC_EXPONENT);
    if (n && e) return rsa_spki(*n, *e);
  } else if (key_type == CKK_EC || key_type == CKK_EC_EDWARDS) {
    const auto params = s.attribute(public_key, CKA_EC_PARAMS);
    const auto curve = params ? curve_of(*params) : std::nullopt;
    const auto point = s.attribute(public_key, CKA_EC_POINT);
    if (curve && point) return ec_spki(*curve, unwrap_point(*point, point_size(*curve)));
  }
  throw std::runtime_error("the token's public key object holds no RSA, EC P-256/P-384 or Ed25519 public key");
}

int destroy_key_objects(const Session& s, const KeyInfo& key) {
  const std::optional<Bytes> id = key.id.empty() ? std::nullopt : std::optional<Bytes>(key.id);
  const std::optional<std::string> label = key.id.empty() ? std::optional<std::string>(key.label) : std::nullopt;
  int destroyed = 0;
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE}) {
    for (ObjectHandle h : s.find(cls, label, id, 16)) {
      s.destroy(h);
      ++destroyed;
    }
  }
  return destroyed;
}

}  // namespace firmad::pkcs11
