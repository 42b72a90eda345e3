// CMS SignedData whose signature comes from the token, not from an OpenSSL key.
#include "daemon/token/cms.hpp"

#include <openssl/cms.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstring>

#include "pkcs11/openssl.hpp"

namespace firmad {
namespace {

const EVP_MD* md_of(pkcs11::Hash h) {
  switch (h) {
    case pkcs11::Hash::Sha256: return EVP_sha256();
    case pkcs11::Hash::Sha384: return EVP_sha384();
    case pkcs11::Hash::Sha512: return EVP_sha512();
    case pkcs11::Hash::Sha1: return EVP_sha1();
  }
  return EVP_sha256();
}

pkcs11::Bytes digest(const EVP_MD* md, std::span<const std::uint8_t> data) {
  pkcs11::Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (!EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr)) ossl::fail("digest failed");
  out.resize(len);
  return out;
}

void der_length(pkcs11::Bytes& out, std::size_t len) {
  if (len < 0x80) {
    out.push_back(static_cast<std::uint8_t>(len));
    return;
  }
  std::uint8_t buf[sizeof(std::size_t)];
  int n = 0;
  for (std::size_t v = len; v; v >>= 8) buf[n++] = static_cast<std::uint8_t>(v);
  out.push_back(static_cast<std::uint8_t>(0x80 | n));
  while (n) out.push_back(buf[--n]);
}

// The DER of the signed attributes as the signature covers them: a SET OF
// (tag 0x31, not the [0] IMPLICIT tag they carry inside SignerInfo), its
// elements in DER order (sorted by their encodings), as OpenSSL emits them.
pkcs11::Bytes signed_attributes_der(CMS_SignerInfo* si) {
  std::vector<pkcs11::Bytes> attrs;
  const int count = CMS_signed_get_attr_count(si);
  for (int i = 0; i < count; ++i) {
    unsigned char* der = nullptr;
    const int len = i2d_X509_ATTRIBUTE(CMS_signed_get_attr(si, i), &der);
    if (len <= 0) ossl::fail("cannot encode signed attribute");
    attrs.emplace_back(der, der + len);
    OPENSSL_free(der);
  }
  std::sort(attrs.begin(), attrs.end(), [](const pkcs11::Bytes& a, const pkcs11::Bytes& b) {
    const int c = std::memcmp(a.data(), b.data(), std::min(a.size(), b.size()));
    return c != 0 ? c < 0 : a.size() < b.size();
  });
  std::size_t total = 0;
  for (const auto& a : attrs) total += a.size();
  pkcs11::Bytes out{0x31};
  der_length(out, total);
  for (const auto& a : attrs) out.insert(out.end(), a.begin(), a.end());
  return out;
}

}  // namespace

pkcs11::Bytes build_cms(const CmsInput& in, const AttributeSigner& sign) {
  const unsigned char* p = in.certificate.data();
  ossl::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(in.certificate.size())));
  if (!cert) ossl::fail("the certificate stored with the key does not parse");
  // A public-key-only EVP_PKEY: OpenSSL uses it to pick the signature
  // algorithm identifier; the signature itself comes from the token.
  EVP_PKEY* pub = X509_get0_pubkey(cert.get());
  if (!pub) ossl::fail("cannot read the certificate's public key");
  const EVP_MD* md = md_of(in.hash);
  const bool detached = !in.content.has_value();

  const unsigned flags = CMS_PARTIAL | CMS_BINARY | CMS_NOSMIMECAP | (detached ? CMS_DETACHED : 0);
  ossl::Cms cms(CMS_sign(nullptr, nullptr, nullptr, nullptr, flags));
  if (!cms) ossl::fail("cannot create CMS SignedData");
  CMS_SignerInfo* si = CMS_add1_signer(cms.get(), cert.get(), pub, md, flags);
  if (!si) ossl::fail("cannot add the signer to CMS SignedData");

  const pkcs11::Bytes content_digest = detached ? *in.digest : digest(md, *in.content);
  ossl::Asn1Time now(X509_gmtime_adj(nullptr, 0));
  if (!now ||
      CMS_signed_add1_attr_by_NID(si, NID_pkcs9_contentType, V_ASN1_OBJECT, OBJ_nid2obj(NID_pkcs7_data), -1) <= 0 ||
      CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, now->type, now.get(), -1) <= 0 ||
      CMS_signed_add1_attr_by_NID(si, NID_pkcs9_messageDigest, V_ASN1_OCTET_STRING, content_digest.data(),
                                  static_cast<int>(content_digest.size())) <= 0)
    ossl::fail("cannot add signed attributes");

  const pkcs11::Bytes signature = sign(digest(md, signed_attributes_der(si)));
  if (!ASN1_STRING_set(CMS_SignerInfo_get0_signature(si), signature.data(), static_cast<int>(signature.size())))
    ossl::fail("cannot store the signature");

  if (detached) {
    if (!CMS_set_detached(cms.get(), 1)) ossl::fail("cannot mark CMS content detached");
  } else {
    ASN1_OCTET_STRING** slot = CMS_get0_content(cms.get());
    if (!slot) ossl::fail("CMS SignedData has no content slot");
    ASN1_OCTET_STRING_free(*slot);
    *slot = ASN1_OCTET_STRING_new();
    if (!*slot || !ASN1_OCTET_STRING_set(*slot, in.content->data(), static_cast<int>(in.content->size())))
      ossl::fail("cannot store CMS content");
  }

  unsigned char* der = nullptr;
  const int len = i2d_CMS_ContentInfo(cms.get(), &der);
  if (len <= 0) ossl::fail("cannot encode CMS SignedData");
  pkcs11::Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

}  // namespace firmad
