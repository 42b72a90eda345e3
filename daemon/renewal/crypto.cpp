// CSR and acceptance made with a token-backed EVP_PKEY; issued certificates parsed and checked before install.
#include "daemon/renewal/crypto.hpp"

#include <openssl/cms.h>
#include <openssl/pem.h>
#include <openssl/pemerr.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <ctime>
#include <new>
#include <string>

#include "daemon/mx/identity.hpp"
#include "protocol/base64.hpp"

namespace firmad::renewal {

namespace {

using ReqPtr = std::unique_ptr<X509_REQ, ossl::Deleter<X509_REQ_free>>;
using NamePtr = std::unique_ptr<X509_NAME, ossl::Deleter<X509_NAME_free>>;
using StorePtr = std::unique_ptr<X509_STORE, ossl::Deleter<X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, ossl::Deleter<X509_STORE_CTX_free>>;
using Pkcs7Ptr = std::unique_ptr<PKCS7, ossl::Deleter<PKCS7_free>>;
void free_x509s(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
using X509s = std::unique_ptr<STACK_OF(X509), ossl::Deleter<free_x509s>>;

template <typename T, typename I2d>
Bytes der_of(const T* object, I2d i2d, const char* what) {
  const int len = i2d(object, nullptr);
  if (len <= 0) ossl::fail(std::string("cannot encode the ") + what);
  Bytes out(static_cast<std::size_t>(len));
  unsigned char* p = out.data();
  i2d(object, &p);
  return out;
}

ossl::X509Ptr parse_certificate(const Bytes& der) {
  const unsigned char* p = der.data();
  ossl::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != der.data() + der.size()) {
    ERR_clear_error();
    throw VerificationError("not an X.509 certificate");
  }
  return cert;
}

Bytes cert_der(const X509* x) { return der_of(x, i2d_X509, "certificate"); }

// A read-only memory BIO over `data`; BIO_new_mem_buf takes an int length
// (and a negative one means "up to the first NUL").
ossl::Bio memory_bio(std::string_view data, const char* what) {
  if (data.size() > static_cast<std::size_t>(INT_MAX))
    throw std::length_error(std::string(what) + " is larger than 2 GiB");
  ossl::Bio bio(BIO_new_mem_buf(data.empty() ? "" : data.data(), static_cast<int>(data.size())));
  if (!bio) ossl::fail(std::string("cannot buffer ") + what);
  return bio;
}

// "YYYY-MM-DDTHH:MM:SSZ" for a certificate's time, read from the certificate
// itself: identify_certificate may refuse a certificate that d2i_X509 reads.
std::string time_text(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
    ERR_clear_error();
    return "unreadable";
  }
  return iso8601(timegm(&tm));
}

const EVP_MD* digest_for(EVP_PKEY* key) {
  return EVP_PKEY_get_bits(key) == 384 && EVP_PKEY_get_base_id(key) == EVP_PKEY_EC ? EVP_sha384() : EVP_sha256();
}

}  // namespace

Bytes certificate_subject(const Bytes& certificate_der) {
  auto cert = parse_certificate(certificate_der);
  return der_of(static_cast<const X509_NAME*>(X509_get_subject_name(cert.get())), i2d_X509_NAME, "subject");
}

Bytes build_csr(const Bytes& spki, const Bytes& subject, EVP_PKEY* key) {
  ReqPtr req(X509_REQ_new());
  if (!req || X509_REQ_set_version(req.get(), 0) != 1) ossl::fail("cannot make a certificate request");
  const unsigned char* p = subject.data();
  NamePtr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(subject.size())));
  if (!name || X509_REQ_set_subject_name(req.get(), name.get()) != 1) ossl::fail("cannot set the request's subject");
  p = spki.data();
  ossl::Pkey pub(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  if (!pub || X509_REQ_set_pubkey(req.get(), pub.get()) != 1) ossl::fail("cannot set the request's public key");
  if (X509_REQ_sign(req.get(), key, digest_for(key)) <= 0) ossl::fail("the token could not sign the request");
  return der_of(static_cast<const X509_REQ*>(req.get()), i2d_X509_REQ, "certificate request");
}

bool verifies_with(const Bytes& certificate_der, const Bytes& digest, const Bytes& signature) {
  auto cert = parse_certificate(certificate_der);
  EVP_PKEY* pub = X509_get0_pubkey(cert.get());
  using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, ossl::Deleter<EVP_PKEY_CTX_free>>;
  PkeyCtx ctx(pub ? EVP_PKEY_CTX_new(pub, nullptr) : nullptr);
  bool ok = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 && EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) == 1;
  if (ok && EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA) ok = EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) == 1;
  ok = ok && EVP_PKEY_verify(ctx.get(), signature.data(), signature.size(), digest.data(), digest.size()) == 1;
  ERR_clear_error();
  return ok;
}

Bytes sign_acceptance(std::string_view text, const Bytes& certificate_der, EVP_PKEY* key) {
  auto cert = parse_certificate(certificate_der);
  ossl::Bio in = memory_bio(text, "the acceptance");
  ossl::Cms cms(CMS_sign(cert.get(), key, nullptr, in.get(), CMS_BINARY));
  if (!cms) ossl::fail("the token could not sign the acceptance");
  ossl::Bio out(BIO_new(BIO_s_mem()));
  if (!out || i2d_CMS_bio(out.get(), cms.get()) != 1) ossl::fail("cannot encode the acceptance");
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(out.get(), &mem);
  return Bytes(mem->data, mem->data + mem->length);
}

std::vector<Bytes> certificates_from(std::string_view body) {
  if (body.size() > static_cast<std::size_t>(INT_MAX)) throw VerificationError("the answer is larger than 2 GiB");
  std::vector<Bytes> out;
  // DER certificate.
  if (!body.empty() && static_cast<unsigned char>(body.front()) == 0x30) {
    const Bytes der(body.begin(), body.end());
    const unsigned char* p = der.data();
    ossl::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    if (cert && p == der.data() + der.size()) return {der};
    ERR_clear_error();
  }
  // PEM, one or more. Each must read: a chain cut short is a damaged answer,
  // not a shorter chain.
  if (body.find("-----BEGIN CERTIFICATE-----") != std::string_view::npos) {
    ossl::Bio bio = memory_bio(body, "the answer");
    ERR_clear_error();
    while (ossl::X509Ptr cert{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) out.push_back(cert_der(cert.get()));
    const unsigned long why = ERR_peek_last_error();
    ERR_clear_error();
    if (ERR_GET_LIB(why) != ERR_LIB_PEM || ERR_GET_REASON(why) != PEM_R_NO_START_LINE)
      throw VerificationError("a PEM certificate in the answer is damaged or cut short");
    if (!out.empty()) return out;
  }
  // base64 of a PKCS#7 certs-only, line breaks allowed.
  std::string compact;
  for (char c : body)
    if (!std::isspace(static_cast<unsigned char>(c))) compact += c;
  if (auto der = protocol::base64_decode(compact); der && !der->empty()) {
    const unsigned char* p = der->data();
    Pkcs7Ptr p7(d2i_PKCS7(nullptr, &p, static_cast<long>(der->size())));
    if (p7 && p == der->data() + der->size() && PKCS7_type_is_signed(p7.get()) && p7->d.sign && p7->d.sign->cert) {
      for (int i = 0; i < sk_X509_num(p7->d.sign->cert); ++i) out.push_back(cert_der(sk_X509_value(p7->d.sign->cert, i)));
    }
    ERR_clear_error();
    if (!out.empty()) return out;
  }
  throw VerificationError("the answer holds no certificate (neither DER, PEM nor PKCS#7)");
}

std::string to_pem(const Bytes& der, const char* label) {
  std::string b64 = protocol::base64_encode(der);
  std::string out = std::string("-----BEGIN ") + label + "-----\n";
  for (std::size_t i = 0; i < b64.size(); i += 64) out += b64.substr(i, 64) + "\n";
  return out + "-----END " + label + "-----\n";
}

Bytes public_key_of(const Bytes& certificate_der) {
  auto cert = parse_certificate(certificate_der);
  return der_of(static_cast<const X509_PUBKEY*>(X509_get_X509_PUBKEY(cert.get())), i2d_X509_PUBKEY, "public key");
}

std::vector<Bytes> verify_issued(const Bytes& certificate_der, const std::vector<Bytes>& intermediates,
                                 const Bytes& expected_spki, const std::vector<std::string>& trust_anchor_files,
                                 std::time_t now) {
  auto cert = parse_certificate(certificate_der);
  if (public_key_of(certificate_der) != expected_spki)
    throw VerificationError("the certificate is for another key, not the key on the token");
  if (X509_cmp_time(X509_get0_notBefore(cert.get()), &now) > 0)
    throw VerificationError("the certificate is not valid yet (notBefore " +
                            time_text(X509_get0_notBefore(cert.get())) + ")");
  if (X509_cmp_time(X509_get0_notAfter(cert.get()), &now) < 0)
    throw VerificationError("the certificate has expired (notAfter " +
                            time_text(X509_get0_notAfter(cert.get())) + ")");
  if (trust_anchor_files.empty()) throw VerificationError("no trust anchors are configured");
  StorePtr store(X509_STORE_new());
  if (!store) throw std::bad_alloc();
  for (const auto& file : trust_anchor_files) {
    if (X509_STORE_load_file(store.get(), file.c_str()) != 1) {
      ERR_clear_error();
      throw VerificationError("cannot read the trust anchors in " + file);
    }
  }
  X509s untrusted(sk_X509_new_null());
  if (!untrusted) throw std::bad_alloc();
  for (const auto& der : intermediates) {
    auto x = parse_certificate(der);
    if (sk_X509_push(untrusted.get(), x.get()) > 0) x.release();
  }
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), untrusted.get()) != 1)
    ossl::fail("cannot set up certificate verification");
  X509_STORE_CTX_set_time(ctx.get(), 0, now);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    throw VerificationError(std::string("the certificate does not chain to a configured trust anchor: ") +
                            X509_verify_cert_error_string(err));
  }
  std::vector<Bytes> chain;
  X509s full(X509_STORE_CTX_get1_chain(ctx.get()));
  for (int i = 1; full && i < sk_X509_num(full.get()); ++i) chain.push_back(cert_der(sk_X509_value(full.get(), i)));
  return chain;
}

}  // namespace firmad::renewal
