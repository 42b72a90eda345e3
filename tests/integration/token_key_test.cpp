// Key generation, certificate objects and token-backed OpenSSL keys on a real SoftHSM token.
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "pkcs11/error.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/keygen.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/openssl.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/token_pkey.hpp"
#include "pkcs11/uri.hpp"
#include "rig.hpp"

using namespace firmad;
using firmad::pkcs11::Bytes;
using firmad::pkcs11::RawOp;
using firmad::test::TokenRig;

namespace {

using X509Req = std::unique_ptr<X509_REQ, ossl::Deleter<X509_REQ_free>>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, ossl::Deleter<EVP_MD_CTX_free>>;
using Store = std::unique_ptr<X509_STORE, ossl::Deleter<X509_STORE_free>>;
using SslCtx = std::unique_ptr<SSL_CTX, ossl::Deleter<SSL_CTX_free>>;
using Ssl = std::unique_ptr<SSL, ossl::Deleter<SSL_free>>;

Bytes der_of(X509* x) {
  unsigned char* p = nullptr;
  const int len = i2d_X509(x, &p);
  Bytes out(p, p + (len > 0 ? len : 0));
  OPENSSL_free(p);
  return out;
}

Bytes spki_of(EVP_PKEY* k) {
  unsigned char* p = nullptr;
  const int len = i2d_PUBKEY(k, &p);
  Bytes out(p, p + (len > 0 ? len : 0));
  OPENSSL_free(p);
  return out;
}

// A software key, made the ordinary (provider) way.
ossl::Pkey software_key(const char* type) {
  return ossl::Pkey(std::string(type) == "RSA" ? EVP_RSA_gen(2048) : EVP_EC_gen(type));
}

// A public-only key from SubjectPublicKeyInfo DER (a provider key, nothing to do with the token).
ossl::Pkey public_key(const Bytes& spki) {
  const unsigned char* p = spki.data();
  return ossl::Pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
}

// A certificate for `subject_key` signed by `signer` (the same key for a self-signed one), valid from
// `from_days` to `to_days` days from now.
ossl::X509Ptr certificate(EVP_PKEY* subject_key, EVP_PKEY* signer, const std::string& cn, long from_days = -1,
                          long to_days = 30, long serial = 1) {
  ossl::X509Ptr x(X509_new());
  X509_NAME* name = X509_get_subject_name(x.get());
  if (!X509_set_version(x.get(), X509_VERSION_3) || !ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial) ||
      !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                                  -1, 0) ||
      !X509_set_issuer_name(x.get(), name) || !X509_gmtime_adj(X509_getm_notBefore(x.get()), from_days * 86400) ||
      !X509_gmtime_adj(X509_getm_notAfter(x.get()), to_days * 86400) || !X509_set_pubkey(x.get(), subject_key))
    ADD_FAILURE() << "cannot fill in the certificate: " << ossl::error_text();
  if (X509_sign(x.get(), signer, EVP_sha256()) <= 0) {
    ADD_FAILURE() << "cannot sign the certificate: " << ossl::error_text();
    return nullptr;
  }
  return x;
}

std::string uri_of(const Bytes& id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string uri = "pkcs11:id=";
  for (auto b : id) uri += '%', uri += kHex[b >> 4], uri += kHex[b & 15];
  return uri;
}

class TokenTest : public ::testing::Test {
 protected:
  // Each test gets a fresh token: ctest runs each test in its own process.
  void SetUp() override {
    rig_ = std::make_unique<TokenRig>();
    module_ = pkcs11::Module::shared(TokenRig::kModule);
    session_.emplace(module_, slot(), pkcs11::Session::Access::ReadWrite);
    session_->login(TokenRig::kPin);
  }
  void TearDown() override {
    session_.reset();
    module_.reset();
    rig_.reset();
  }

  pkcs11::SlotId slot() {
    const auto uri = pkcs11::Uri::parse("pkcs11:token=firmad-demo");
    for (auto s : module_->slots_with_token())
      if (uri.matches_token(*module_, s)) return s;
    throw std::runtime_error("token not found");
  }

  const pkcs11::Session& session() { return *session_; }

  pkcs11::GeneratedKey generate(const char* spec, const std::string& label, const Bytes& id) {
    const auto parsed = pkcs11::parse_key_spec(spec);
    if (!parsed) throw std::runtime_error(std::string("bad spec in test: ") + spec);
    return pkcs11::generate_key_pair(session(), *parsed, label, id);
  }

  std::optional<bool> bool_attribute(pkcs11::ObjectHandle h, CK_ATTRIBUTE_TYPE type) {
    const auto v = session().attribute(h, type);
    if (!v || v->size() != 1) return std::nullopt;
    return (*v)[0] != CK_FALSE;
  }
  std::string label_of(pkcs11::ObjectHandle h) {
    const auto v = session().attribute(h, CKA_LABEL);
    return v ? std::string(v->begin(), v->end()) : std::string("(none)");
  }

  std::unique_ptr<TokenRig> rig_;
  std::shared_ptr<pkcs11::Module> module_;
  std::optional<pkcs11::Session> session_;
};

// ---------------------------------------------------------------- Keygen

class Keygen : public TokenTest {};

TEST_F(Keygen, ParsesExactlyTheFiveKeySpecs) {
  struct Case {
    const char* text;
    pkcs11::KeyType type;
    int bits;
    const char* curve;
  };
  for (const Case& c : {Case{"rsa-2048", pkcs11::KeyType::Rsa, 2048, ""}, Case{"rsa-3072", pkcs11::KeyType::Rsa, 3072, ""},
                        Case{"rsa-4096", pkcs11::KeyType::Rsa, 4096, ""},
                        Case{"ec-p256", pkcs11::KeyType::Ec, 256, "P-256"},
                        Case{"ec-p384", pkcs11::KeyType::Ec, 384, "P-384"}}) {
    const auto spec = pkcs11::parse_key_spec(c.text);
    ASSERT_TRUE(spec) << c.text;
    EXPECT_EQ(spec->type, c.type) << c.text;
    EXPECT_EQ(spec->bits, c.bits) << c.text;
    EXPECT_EQ(spec->curve, c.curve) << c.text;
  }
  for (const char* bad : {"", "rsa", "rsa-", "rsa-1024", "rsa-2047", "RSA-2048", "rsa-2048 ", " rsa-2048", "rsa-20480",
                          "ec-p521", "ec-P256", "ec-p256k", "ed25519", "ec-", "ec-p2560"})
    EXPECT_FALSE(pkcs11::parse_key_spec(bad)) << '"' << bad << '"';
}

TEST_F(Keygen, GeneratesSignOnlyTokenKeysOfEachSpec) {
  struct Case {
    const char* spec;
    pkcs11::KeyType type;
    int bits;
    const char* curve;
  };
  std::uint8_t n = 0x40;
  for (const Case& c : {Case{"rsa-2048", pkcs11::KeyType::Rsa, 2048, ""}, Case{"rsa-3072", pkcs11::KeyType::Rsa, 3072, ""},
                        Case{"ec-p256", pkcs11::KeyType::Ec, 256, "P-256"},
                        Case{"ec-p384", pkcs11::KeyType::Ec, 384, "P-384"}}) {
    SCOPED_TRACE(c.spec);
    const Bytes id{0xa0, ++n};
    const std::string label = std::string("gen-") + c.spec;
    const auto key = generate(c.spec, label, id);

    // The private key: on the token, private, sensitive, not extractable, sign only.
    for (auto [attr, want, name] : {std::tuple{CKA_TOKEN, true, "CKA_TOKEN"}, std::tuple{CKA_PRIVATE, true, "CKA_PRIVATE"},
                                    std::tuple{CKA_SENSITIVE, true, "CKA_SENSITIVE"},
                                    std::tuple{CKA_EXTRACTABLE, false, "CKA_EXTRACTABLE"},
                                    std::tuple{CKA_SIGN, true, "CKA_SIGN"}, std::tuple{CKA_DECRYPT, false, "CKA_DECRYPT"},
                                    std::tuple{CKA_UNWRAP, false, "CKA_UNWRAP"}, std::tuple{CKA_DERIVE, false, "CKA_DERIVE"},
                                    std::tuple{CKA_ALWAYS_SENSITIVE, true, "CKA_ALWAYS_SENSITIVE"},
                                    std::tuple{CKA_NEVER_EXTRACTABLE, true, "CKA_NEVER_EXTRACTABLE"}})
      EXPECT_EQ(bool_attribute(key.private_key, attr), std::optional<bool>(want)) << "private key " << name;
    for (auto [attr, want, name] : {std::tuple{CKA_TOKEN, true, "CKA_TOKEN"}, std::tuple{CKA_PRIVATE, false, "CKA_PRIVATE"},
                                    std::tuple{CKA_VERIFY, true, "CKA_VERIFY"}})
      EXPECT_EQ(bool_attribute(key.public_key, attr), std::optional<bool>(want)) << "public key " << name;
    EXPECT_FALSE(session().attribute(key.private_key, c.type == pkcs11::KeyType::Rsa ? CKA_PRIVATE_EXPONENT : CKA_VALUE))
        << "the private key can be read back";
    for (auto h : {key.private_key, key.public_key}) {
      EXPECT_EQ(session().attribute(h, CKA_ID), std::optional<Bytes>(id));
      EXPECT_EQ(label_of(h), label);
    }

    // The public key handed back is the one find_key reports, and of the asked-for kind.
    const auto found = pkcs11::find_key(session(), pkcs11::Uri::parse(uri_of(id)));
    ASSERT_TRUE(found);
    EXPECT_EQ(found->public_key, key.public_key_info);
    EXPECT_EQ(found->private_key, std::optional<pkcs11::ObjectHandle>(key.private_key));
    EXPECT_EQ(found->label, label);
    EXPECT_EQ(found->type, c.type);
    EXPECT_EQ(found->bits, c.bits);
    EXPECT_EQ(found->curve, c.curve);
    const auto pub = public_key(key.public_key_info);
    ASSERT_TRUE(pub) << "the returned public key is not SubjectPublicKeyInfo DER";
    EXPECT_EQ(EVP_PKEY_get_bits(pub.get()), c.bits);
    EXPECT_TRUE(EVP_PKEY_is_a(pub.get(), c.type == pkcs11::KeyType::Rsa ? "RSA" : "EC"));
  }
}

TEST_F(Keygen, RefusesSpecsOutsideTheListAndEmptyIdsWithoutWritingAnything) {
  const Bytes id{0xb0, 0x01};
  EXPECT_THROW(pkcs11::generate_key_pair(session(), {pkcs11::KeyType::Rsa, 1024, ""}, "small", id), std::invalid_argument);
  EXPECT_THROW(pkcs11::generate_key_pair(session(), {pkcs11::KeyType::Ec, 521, "P-521"}, "p521", id),
               std::invalid_argument);
  EXPECT_THROW(pkcs11::generate_key_pair(session(), {pkcs11::KeyType::Ed25519, 255, "Ed25519"}, "ed", id),
               std::invalid_argument);
  EXPECT_THROW(generate("ec-p256", "no-id", Bytes{}), std::invalid_argument);
  const auto left = pkcs11::objects_by_id(session(), id);
  EXPECT_FALSE(left.private_key);
  EXPECT_FALSE(left.public_key);
  EXPECT_TRUE(pkcs11::find_key(session(), pkcs11::Uri::parse("pkcs11:object=no-id")) == std::nullopt);
}

TEST_F(Keygen, GenerationNeedsAReadWriteLoggedInSession) {
  // Logged in (the login is the application's), but read-only.
  pkcs11::Session read_only(module_, slot());
  try {
    pkcs11::generate_key_pair(read_only, *pkcs11::parse_key_spec("ec-p256"), "ro", Bytes{0xb1});
    FAIL() << "a read-only session generated a key";
  } catch (const pkcs11::Error& e) {
    EXPECT_EQ(e.call(), "C_GenerateKeyPair");
    EXPECT_EQ(e.code_name(), "CKR_SESSION_READ_ONLY");
  }
}

TEST_F(Keygen, CertificateObjectsAreFoundByIdWithTheirDer) {
  const Bytes id{0xc0, 0x01};
  const auto key = generate("ec-p256", "with-cert", id);
  const auto pub = public_key(key.public_key_info);
  const auto ca = software_key("RSA");
  const auto cert = certificate(pub.get(), ca.get(), "with-cert");
  ASSERT_TRUE(cert);
  const Bytes der = der_of(cert.get());

  const auto handle = pkcs11::create_certificate(session(), der, "with-cert", id);
  EXPECT_EQ(bool_attribute(handle, CKA_TOKEN), std::optional<bool>(true));
  EXPECT_EQ(bool_attribute(handle, CKA_PRIVATE), std::optional<bool>(false));
  EXPECT_EQ(session().ulong_attribute(handle, CKA_CLASS), std::optional<unsigned long>(CKO_CERTIFICATE));
  EXPECT_EQ(session().ulong_attribute(handle, CKA_CERTIFICATE_TYPE), std::optional<unsigned long>(CKC_X_509));
  EXPECT_EQ(label_of(handle), "with-cert");
  EXPECT_EQ(session().attribute(handle, CKA_VALUE), std::optional<Bytes>(der));
  unsigned char* subject = nullptr;
  const int subject_len = i2d_X509_NAME(X509_get_subject_name(cert.get()), &subject);
  EXPECT_EQ(session().attribute(handle, CKA_SUBJECT), std::optional<Bytes>(Bytes(subject, subject + subject_len)));
  OPENSSL_free(subject);

  const auto objects = pkcs11::objects_by_id(session(), id);
  EXPECT_EQ(objects.private_key, std::optional<pkcs11::ObjectHandle>(key.private_key));
  EXPECT_EQ(objects.public_key, std::optional<pkcs11::ObjectHandle>(key.public_key));
  ASSERT_EQ(objects.certificates.size(), 1u);
  EXPECT_EQ(objects.certificates[0].first, handle);
  EXPECT_EQ(objects.certificates[0].second, der);
  EXPECT_EQ(pkcs11::find_key(session(), pkcs11::Uri::parse(uri_of(id)))->certificate, der);

  // Logged out, the private key is invisible; the rest is not.
  session_->logout();
  const auto public_only = pkcs11::objects_by_id(session(), id);
  EXPECT_FALSE(public_only.private_key);
  EXPECT_EQ(public_only.public_key, std::optional<pkcs11::ObjectHandle>(key.public_key));
  EXPECT_EQ(public_only.certificates.size(), 1u);

  EXPECT_TRUE(pkcs11::objects_by_id(session(), Bytes{0xc0, 0x02}).certificates.empty());
}

TEST_F(Keygen, CreateCertificateRefusesWhatIsNotOneCertificate) {
  const Bytes id{0xc1};
  const auto ca = software_key("P-256");
  const auto cert = certificate(ca.get(), ca.get(), "ca");
  Bytes der = der_of(cert.get());
  Bytes trailing = der;
  trailing.push_back(0);
  for (const Bytes& bad : {Bytes{}, Bytes{0x30, 0x03, 0x02, 0x01, 0x01}, Bytes(der.begin(), der.end() - 1), trailing})
    EXPECT_THROW(pkcs11::create_certificate(session(), bad, "bad", id), std::invalid_argument);
  EXPECT_TRUE(pkcs11::objects_by_id(session(), id).certificates.empty());
}

TEST_F(Keygen, FindKeyPicksTheCertificateWithTheLatestNotAfterWhatEverTheOrder) {
  const Bytes id{0xd0, 0x01};
  const auto key = generate("rsa-2048", "renewed", id);
  const auto pub = public_key(key.public_key_info);
  const auto ca = software_key("P-256");
  // The old certificate (30 days left) and its renewal (400 days), same key.
  const auto old_cert = certificate(pub.get(), ca.get(), "renewed", -300, 30, 1);
  const auto new_cert = certificate(pub.get(), ca.get(), "renewed", -1, 400, 2);
  const Bytes old_der = der_of(old_cert.get()), new_der = der_of(new_cert.get());
  const auto uri = pkcs11::Uri::parse(uri_of(id));

  // Both orders of creation, so that "the first the token lists" cannot pass by luck.
  for (bool new_first : {true, false}) {
    SCOPED_TRACE(new_first ? "renewal created first" : "renewal created second");
    std::vector<pkcs11::ObjectHandle> made;
    for (const Bytes* der : new_first ? std::vector{&new_der, &old_der} : std::vector{&old_der, &new_der})
      made.push_back(pkcs11::create_certificate(session(), *der, "renewed", id));
    ASSERT_EQ(pkcs11::objects_by_id(session(), id).certificates.size(), 2u);
    EXPECT_EQ(pkcs11::find_key(session(), uri)->certificate, new_der);
    // By label, the same answer.
    EXPECT_EQ(pkcs11::find_key(session(), pkcs11::Uri::parse("pkcs11:object=renewed"))->certificate, new_der);
    for (auto h : made) session().destroy(h);
  }

  // Equal notAfter: the later notBefore wins.
  const auto a = certificate(pub.get(), ca.get(), "renewed", -10, 100, 3);
  const auto b = certificate(pub.get(), ca.get(), "renewed", -5, 100, 4);
  pkcs11::create_certificate(session(), der_of(b.get()), "renewed", id);
  pkcs11::create_certificate(session(), der_of(a.get()), "renewed", id);
  EXPECT_EQ(pkcs11::find_key(session(), uri)->certificate, der_of(b.get()));
}

TEST_F(Keygen, SetLabelRenamesObjects) {
  const Bytes id{0xe0, 0x01};
  const auto key = generate("ec-p384", "before", id);
  const auto ca = software_key("P-256");
  const auto cert = certificate(public_key(key.public_key_info).get(), ca.get(), "before");
  const auto cert_handle = pkcs11::create_certificate(session(), der_of(cert.get()), "before", id);

  for (auto h : {key.private_key, key.public_key, cert_handle}) pkcs11::set_label(session(), h, "after");
  for (auto h : {key.private_key, key.public_key, cert_handle}) EXPECT_EQ(label_of(h), "after");
  EXPECT_FALSE(pkcs11::find_key(session(), pkcs11::Uri::parse("pkcs11:object=before")));
  const auto found = pkcs11::find_key(session(), pkcs11::Uri::parse("pkcs11:object=after"));
  ASSERT_TRUE(found);
  EXPECT_EQ(found->id, id);
  EXPECT_EQ(found->private_key, std::optional<pkcs11::ObjectHandle>(key.private_key));

  EXPECT_THROW(pkcs11::set_label(session(), 0xdeadbeef, "x"), pkcs11::Error);
}

// ---------------------------------------------------------------- sign_raw

class SignRaw : public TokenTest {};

TEST_F(SignRaw, TokenSignaturesVerifyWithTheGeneratedPublicKey) {
  const auto rsa = generate("rsa-2048", "raw-rsa", Bytes{0x10});
  const auto rsa_pub = public_key(rsa.public_key_info);
  Bytes digest(32);
  RAND_bytes(digest.data(), 32);

  // CKM_RSA_PKCS over DigestInfo || digest: a PKCS#1 v1.5 SHA-256 signature.
  const auto prefix = pkcs11::digest_info_prefix(pkcs11::Hash::Sha256);
  Bytes info(prefix.begin(), prefix.end());
  info.insert(info.end(), digest.begin(), digest.end());
  const Bytes pkcs1 = pkcs11::sign_raw(session(), rsa.private_key, RawOp::RsaPkcs1, info);
  EXPECT_EQ(pkcs1.size(), 256u);
  ossl::PkeyCtx v(EVP_PKEY_CTX_new(rsa_pub.get(), nullptr));
  ASSERT_GT(EVP_PKEY_verify_init(v.get()), 0);
  ASSERT_GT(EVP_PKEY_CTX_set_signature_md(v.get(), EVP_sha256()), 0);
  EXPECT_EQ(EVP_PKEY_verify(v.get(), pkcs1.data(), pkcs1.size(), digest.data(), digest.size()), 1);

  // CKM_RSA_X_509: raw RSA; the public operation gives the block back.
  Bytes block(256);
  RAND_bytes(block.data(), 256);
  block[0] = 0;
  const Bytes raw = pkcs11::sign_raw(session(), rsa.private_key, RawOp::RsaX509, block);
  ossl::PkeyCtx r(EVP_PKEY_CTX_new(rsa_pub.get(), nullptr));
  ASSERT_GT(EVP_PKEY_verify_recover_init(r.get()), 0);
  ASSERT_GT(EVP_PKEY_CTX_set_rsa_padding(r.get(), RSA_NO_PADDING), 0);
  Bytes back(256);
  std::size_t back_len = back.size();
  ASSERT_EQ(EVP_PKEY_verify_recover(r.get(), back.data(), &back_len, raw.data(), raw.size()), 1) << ossl::error_text();
  back.resize(back_len);
  EXPECT_EQ(back, block);

  // CKM_ECDSA: r || s, 2 x 48 bytes on P-384.
  const auto ec = generate("ec-p384", "raw-ec", Bytes{0x11});
  Bytes digest48(48);
  RAND_bytes(digest48.data(), 48);
  const Bytes rs = pkcs11::sign_raw(session(), ec.private_key, RawOp::Ecdsa, digest48);
  ASSERT_EQ(rs.size(), 96u);
  ossl::EcdsaSig sig(ECDSA_SIG_new());
  ECDSA_SIG_set0(sig.get(), BN_bin2bn(rs.data(), 48, nullptr), BN_bin2bn(rs.data() + 48, 48, nullptr));
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(sig.get(), &der);
  const auto ec_pub = public_key(ec.public_key_info);
  ossl::PkeyCtx ev(EVP_PKEY_CTX_new(ec_pub.get(), nullptr));
  ASSERT_GT(EVP_PKEY_verify_init(ev.get()), 0);
  EXPECT_EQ(EVP_PKEY_verify(ev.get(), der, der_len, digest48.data(), digest48.size()), 1);
  OPENSSL_free(der);

  EXPECT_THROW(pkcs11::sign_raw(session(), rsa.private_key, RawOp::RsaPkcs1, Bytes{}), std::invalid_argument);
  // Refused before the token sees them: SoftHSM exits the process on the
  // first two, so reaching the end of this test is part of the check.
  EXPECT_THROW(pkcs11::sign_raw(session(), ec.private_key, RawOp::RsaX509, block), std::invalid_argument);
  EXPECT_THROW(pkcs11::sign_raw(session(), rsa.private_key, RawOp::RsaX509, Bytes(257, 1)), std::invalid_argument);
  EXPECT_THROW(pkcs11::sign_raw(session(), rsa.private_key, RawOp::Ecdsa, digest), std::invalid_argument);
  EXPECT_THROW(pkcs11::sign_raw(session(), ec.private_key, RawOp::RsaPkcs1, digest), std::invalid_argument);
  // A shorter raw block is a smaller number: allowed (PKCS#11 left-pads it).
  EXPECT_EQ(pkcs11::sign_raw(session(), rsa.private_key, RawOp::RsaX509, Bytes(255, 1)).size(), 256u);
  // What only the token can refuse comes back as an Error naming the call.
  try {
    pkcs11::sign_raw(session(), rsa.private_key, RawOp::RsaPkcs1, Bytes(300, 1));
    FAIL() << "a 300-byte block was signed with a 256-byte modulus";
  } catch (const pkcs11::Error& e) {
    EXPECT_EQ(e.call(), "C_Sign") << e.what();
  }
}

// ---------------------------------------------------------------- token_pkey

// A token key in OpenSSL, with a record of what OpenSSL asked the token for.
struct TokenKey_ {
  pkcs11::GeneratedKey generated;
  std::shared_ptr<std::vector<RawOp>> calls = std::make_shared<std::vector<RawOp>>();
  std::shared_ptr<std::vector<Bytes>> inputs = std::make_shared<std::vector<Bytes>>();
  ossl::Pkey pkey;
};

class TokenKey : public TokenTest {
 protected:
  TokenKey_ token_key(const char* spec, std::uint8_t id) {
    TokenKey_ k;
    k.generated = generate(spec, std::string("tk-") + spec, Bytes{0x70, id});
    const pkcs11::Session* s = &session();
    const auto handle = k.generated.private_key;
    k.pkey = pkcs11::token_pkey(k.generated.public_key_info,
                                [s, handle, calls = k.calls, inputs = k.inputs](RawOp op, const Bytes& input) {
                                  calls->push_back(op);
                                  inputs->push_back(input);
                                  return pkcs11::sign_raw(*s, handle, op, input);
                                });
    return k;
  }

  // Whether OpenSSL's error queue (now cleared) holds our "token signature failed".
  static bool queue_names_token_failure() {
    bool found = false;
    const char* data = nullptr;
    int flags = 0;
    while (unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
      const char* reason = ERR_reason_error_string(e);
      if (reason && std::string(reason) == "token signature failed") found = true;
    }
    return found;
  }
};

TEST_F(TokenKey, CsrSignedOnTheTokenVerifies) {
  std::uint8_t id = 0;
  for (const char* spec : {"rsa-2048", "ec-p256", "ec-p384"}) {
    SCOPED_TRACE(spec);
    auto k = token_key(spec, ++id);
    X509Req req(X509_REQ_new());
    X509_NAME* name = X509_REQ_get_subject_name(req.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("csr"), -1, -1, 0);
    ASSERT_EQ(X509_REQ_set_pubkey(req.get(), k.pkey.get()), 1) << ossl::error_text();
    ASSERT_GT(X509_REQ_sign(req.get(), k.pkey.get(), EVP_sha256()), 0) << ossl::error_text();
    EXPECT_EQ(k.calls->size(), 1u) << "the signature did not come from the token";

    // Verified with a key that knows nothing of the token.
    const auto pub = public_key(k.generated.public_key_info);
    EXPECT_EQ(X509_REQ_verify(req.get(), pub.get()), 1) << ossl::error_text();
    EXPECT_EQ(spki_of(X509_REQ_get0_pubkey(req.get())), k.generated.public_key_info);
  }
}

TEST_F(TokenKey, DigestSignMakesPkcs1PssAndEcdsaSignatures) {
  auto rsa = token_key("rsa-3072", 1);
  auto ec = token_key("ec-p256", 2);
  const std::string message = "factura 2024-001: 1,234.56 MXN";
  const auto* data = reinterpret_cast<const unsigned char*>(message.data());

  struct Case {
    const char* name;
    TokenKey_* key;
    const EVP_MD* md;
    int padding;  // 0: not RSA
    RawOp expected;
  };
  for (const Case& c : {Case{"rsa pkcs1 sha256", &rsa, EVP_sha256(), RSA_PKCS1_PADDING, RawOp::RsaPkcs1},
                        Case{"rsa pkcs1 sha512", &rsa, EVP_sha512(), RSA_PKCS1_PADDING, RawOp::RsaPkcs1},
                        Case{"rsa pss sha256", &rsa, EVP_sha256(), RSA_PKCS1_PSS_PADDING, RawOp::RsaX509},
                        Case{"rsa pss sha384", &rsa, EVP_sha384(), RSA_PKCS1_PSS_PADDING, RawOp::RsaX509},
                        Case{"ecdsa sha256", &ec, EVP_sha256(), 0, RawOp::Ecdsa},
                        // A digest longer than P-256's order: cut to 32 bytes before the token sees it.
                        Case{"ecdsa sha512 on p-256", &ec, EVP_sha512(), 0, RawOp::Ecdsa}}) {
    SCOPED_TRACE(c.name);
    c.key->calls->clear();
    c.key->inputs->clear();
    MdCtx ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    ASSERT_EQ(EVP_DigestSignInit(ctx.get(), &pctx, c.md, nullptr, c.key->pkey.get()), 1) << ossl::error_text();
    if (c.padding) {
      ASSERT_GT(EVP_PKEY_CTX_set_rsa_padding(pctx, c.padding), 0);
    }
    if (c.padding == RSA_PKCS1_PSS_PADDING) {
      ASSERT_GT(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 0);
    }
    std::size_t len = 0;
    ASSERT_EQ(EVP_DigestSign(ctx.get(), nullptr, &len, data, message.size()), 1) << ossl::error_text();
    Bytes sig(len);
    ASSERT_EQ(EVP_DigestSign(ctx.get(), sig.data(), &len, data, message.size()), 1) << ossl::error_text();
    sig.resize(len);
    ASSERT_EQ(c.key->calls->size(), 1u);
    EXPECT_EQ(c.key->calls->front(), c.expected);
    if (c.expected == RawOp::RsaPkcs1 && c.md == EVP_sha256()) {
      // OpenSSL added the DigestInfo before handing the block to the token.
      const auto prefix = pkcs11::digest_info_prefix(pkcs11::Hash::Sha256);
      const Bytes& in = c.key->inputs->front();
      ASSERT_EQ(in.size(), prefix.size() + 32);
      EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), in.begin()));
    }
    if (c.expected == RawOp::Ecdsa) {
      EXPECT_EQ(c.key->inputs->front().size(), 32u);
    }

    const auto pub = public_key(c.key->generated.public_key_info);
    MdCtx vctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* vpctx = nullptr;
    ASSERT_EQ(EVP_DigestVerifyInit(vctx.get(), &vpctx, c.md, nullptr, pub.get()), 1);
    if (c.padding) {
      ASSERT_GT(EVP_PKEY_CTX_set_rsa_padding(vpctx, c.padding), 0);
    }
    if (c.padding == RSA_PKCS1_PSS_PADDING) {
      ASSERT_GT(EVP_PKEY_CTX_set_rsa_pss_saltlen(vpctx, RSA_PSS_SALTLEN_DIGEST), 0);
    }
    EXPECT_EQ(EVP_DigestVerify(vctx.get(), sig.data(), sig.size(), data, message.size()), 1) << ossl::error_text();
    // And not for another message.
    MdCtx wctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* wpctx = nullptr;
    ASSERT_EQ(EVP_DigestVerifyInit(wctx.get(), &wpctx, c.md, nullptr, pub.get()), 1);
    if (c.padding) {
      ASSERT_GT(EVP_PKEY_CTX_set_rsa_padding(wpctx, c.padding), 0);
    }
    EXPECT_NE(EVP_DigestVerify(wctx.get(), sig.data(), sig.size(), data, message.size() - 1), 1);
    ERR_clear_error();
  }
}

TEST_F(TokenKey, CmsSignedDataWithAttachedContentVerifies) {
  for (const char* spec : {"rsa-2048", "ec-p256"}) {
    SCOPED_TRACE(spec);
    auto k = token_key(spec, static_cast<std::uint8_t>(spec[0]));
    // Self-signed by the token key: one more token signature.
    const auto cert = certificate(k.pkey.get(), k.pkey.get(), std::string("cms-") + spec);
    ASSERT_TRUE(cert);
    const std::string content = "<Comprobante Total=\"1234.56\"/>";
    ossl::Bio in(BIO_new_mem_buf(content.data(), static_cast<int>(content.size())));
    ossl::Cms cms(CMS_sign(cert.get(), k.pkey.get(), nullptr, in.get(), CMS_BINARY));
    ASSERT_TRUE(cms) << ossl::error_text();
    EXPECT_EQ(k.calls->size(), 2u);

    // Through DER, as a relying party would get it.
    unsigned char* der = nullptr;
    const int der_len = i2d_CMS_ContentInfo(cms.get(), &der);
    const unsigned char* p = der;
    ossl::Cms parsed(d2i_CMS_ContentInfo(nullptr, &p, der_len));
    OPENSSL_free(der);
    ASSERT_TRUE(parsed);
    Store store(X509_STORE_new());
    X509_STORE_add_cert(store.get(), cert.get());
    ossl::Bio out(BIO_new(BIO_s_mem()));
    ASSERT_EQ(CMS_verify(parsed.get(), nullptr, store.get(), nullptr, out.get(), CMS_BINARY), 1) << ossl::error_text();
    char* text = nullptr;
    const long n = BIO_get_mem_data(out.get(), &text);
    EXPECT_EQ(std::string(text, static_cast<std::size_t>(n)), content);
  }
}

// A TLS handshake in memory (a BIO pair) whose client authenticates with the token key.
struct Handshake {
  bool client_done = false, server_done = false;
  int version = 0;
  bool server_saw_client_certificate = false;
  long server_verify_result = -1;
  std::string error;
};

Handshake tls_handshake(EVP_PKEY* client_key, X509* client_cert, int version, const char* client_sigalgs = nullptr) {
  Handshake h;
  const auto server_key = software_key("P-256");
  const auto server_cert = certificate(server_key.get(), server_key.get(), "server");
  SslCtx server_ctx(SSL_CTX_new(TLS_server_method())), client_ctx(SSL_CTX_new(TLS_client_method()));
  for (SSL_CTX* ctx : {server_ctx.get(), client_ctx.get()}) {
    SSL_CTX_set_min_proto_version(ctx, version);
    SSL_CTX_set_max_proto_version(ctx, version);
  }
  if (SSL_CTX_use_certificate(server_ctx.get(), server_cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(server_ctx.get(), server_key.get()) != 1)
    h.error = "server credentials: " + ossl::error_text();
  // Client authentication required; the client's certificate is the one trusted.
  SSL_CTX_set_verify(server_ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  X509_STORE_add_cert(SSL_CTX_get_cert_store(server_ctx.get()), client_cert);
  if (client_sigalgs) SSL_CTX_set1_client_sigalgs_list(server_ctx.get(), client_sigalgs);
  SSL_CTX_set_verify(client_ctx.get(), SSL_VERIFY_PEER, nullptr);
  X509_STORE_add_cert(SSL_CTX_get_cert_store(client_ctx.get()), server_cert.get());

  Ssl server(SSL_new(server_ctx.get())), client(SSL_new(client_ctx.get()));
  if (SSL_use_certificate(client.get(), client_cert) != 1 || SSL_use_PrivateKey(client.get(), client_key) != 1) {
    h.error = "client credentials: " + ossl::error_text();
    return h;
  }
  BIO *client_bio = nullptr, *server_bio = nullptr;
  BIO_new_bio_pair(&client_bio, 0, &server_bio, 0);
  SSL_set_bio(client.get(), client_bio, client_bio);
  SSL_set_bio(server.get(), server_bio, server_bio);
  SSL_set_connect_state(client.get());
  SSL_set_accept_state(server.get());

  for (int round = 0; round < 50 && !(h.client_done && h.server_done); ++round) {
    for (auto [ssl, done, who] : {std::tuple{client.get(), &h.client_done, "client"},
                                  std::tuple{server.get(), &h.server_done, "server"}}) {
      if (*done) continue;
      const int rc = SSL_do_handshake(ssl);
      if (rc == 1) {
        *done = true;
        continue;
      }
      const int e = SSL_get_error(ssl, rc);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        if (h.error.empty()) h.error = std::string(who) + " failed";
        round = 50;
        break;
      }
    }
  }
  if (h.client_done && h.server_done) {
    h.version = SSL_version(client.get());
    h.server_saw_client_certificate = X509_cmp(SSL_get0_peer_certificate(server.get()), client_cert) == 0;
    h.server_verify_result = SSL_get_verify_result(server.get());
  }
  return h;
}

TEST_F(TokenKey, TlsClientAuthenticatesWithTheTokenKey) {
  auto rsa = token_key("rsa-2048", 1);
  auto ec = token_key("ec-p256", 2);
  struct Case {
    const char* name;
    TokenKey_* key;
    int version;
    const char* sigalgs;
    RawOp expected;
  };
  for (const Case& c : {Case{"rsa tls1.3 (rsa_pss_rsae)", &rsa, TLS1_3_VERSION, nullptr, RawOp::RsaX509},
                        Case{"rsa tls1.2 (pkcs1 sha256)", &rsa, TLS1_2_VERSION, "RSA+SHA256", RawOp::RsaPkcs1},
                        Case{"rsa tls1.2 (pss)", &rsa, TLS1_2_VERSION, "rsa_pss_rsae_sha256", RawOp::RsaX509},
                        Case{"ec tls1.3", &ec, TLS1_3_VERSION, nullptr, RawOp::Ecdsa},
                        Case{"ec tls1.2", &ec, TLS1_2_VERSION, nullptr, RawOp::Ecdsa}}) {
    SCOPED_TRACE(c.name);
    const auto cert = certificate(c.key->pkey.get(), c.key->pkey.get(), "client");
    ASSERT_TRUE(cert);
    c.key->calls->clear();
    const Handshake h = tls_handshake(c.key->pkey.get(), cert.get(), c.version, c.sigalgs);
    EXPECT_TRUE(h.client_done && h.server_done) << h.error << ": " << ossl::error_text();
    EXPECT_EQ(h.version, c.version);
    EXPECT_TRUE(h.server_saw_client_certificate);
    EXPECT_EQ(h.server_verify_result, X509_V_OK);
    ASSERT_EQ(c.key->calls->size(), 1u) << "the CertificateVerify was not signed on the token";
    EXPECT_EQ(c.key->calls->front(), c.expected);
  }
}

TEST_F(TokenKey, SignerThatThrowsFailsTheOperationCleanly) {
  for (const char* spec : {"rsa-2048", "ec-p256"}) {
    SCOPED_TRACE(spec);
    const auto gen = generate(spec, "broken", Bytes{0x80, static_cast<std::uint8_t>(spec[0])});
    int called = 0;
    auto key = pkcs11::token_pkey(gen.public_key_info, [&called](RawOp, const Bytes&) -> Bytes {
      ++called;
      throw std::runtime_error("token removed during the signature");
    });
    // A good certificate for the TLS attempt, signed by a software CA.
    const auto ca = software_key("P-256");
    const auto cert = certificate(key.get(), ca.get(), "client");
    ERR_clear_error();

    X509Req req(X509_REQ_new());
    ASSERT_EQ(X509_REQ_set_pubkey(req.get(), key.get()), 1);
    EXPECT_LE(X509_REQ_sign(req.get(), key.get(), EVP_sha256()), 0);
    EXPECT_EQ(pkcs11::last_token_error(), "token removed during the signature");
    EXPECT_TRUE(queue_names_token_failure());

    MdCtx ctx(EVP_MD_CTX_new());
    ASSERT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()), 1);
    Bytes sig(512);
    std::size_t len = sig.size();
    EXPECT_NE(EVP_DigestSign(ctx.get(), sig.data(), &len, reinterpret_cast<const unsigned char*>("x"), 1), 1);
    EXPECT_TRUE(queue_names_token_failure());

    ossl::Bio in(BIO_new_mem_buf("data", 4));
    EXPECT_FALSE(ossl::Cms(CMS_sign(cert.get(), key.get(), nullptr, in.get(), CMS_BINARY)));
    ERR_clear_error();

    const Handshake h = tls_handshake(key.get(), cert.get(), TLS1_3_VERSION);
    EXPECT_FALSE(h.server_done);
    EXPECT_FALSE(h.server_saw_client_certificate);
    EXPECT_EQ(h.error, "client failed");
    EXPECT_TRUE(queue_names_token_failure());
    EXPECT_EQ(called, 4);
  }

  // A success afterwards clears the thread's last error; something that is not a std::exception is caught too.
  auto good = token_key("ec-p256", 9);
  X509Req req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), good.pkey.get());
  ASSERT_GT(X509_REQ_sign(req.get(), good.pkey.get(), EVP_sha256()), 0);
  EXPECT_EQ(pkcs11::last_token_error(), "");
  auto odd = pkcs11::token_pkey(good.generated.public_key_info, [](RawOp, const Bytes&) -> Bytes { throw 42; });
  EXPECT_LE(X509_REQ_sign(req.get(), odd.get(), EVP_sha256()), 0);
  EXPECT_NE(pkcs11::last_token_error(), "");
  ERR_clear_error();
}

TEST_F(TokenKey, TokenKeyCannotDecryptAndTakesOnlyRsaP256AndP384) {
  auto k = token_key("rsa-2048", 1);
  // Encrypt to the public key (software), then ask the token key to decrypt: refused, not crashed.
  const auto pub = public_key(k.generated.public_key_info);
  ossl::PkeyCtx enc(EVP_PKEY_CTX_new(pub.get(), nullptr));
  ASSERT_GT(EVP_PKEY_encrypt_init(enc.get()), 0);
  const unsigned char secret[] = "secret";
  Bytes ct(256);
  std::size_t ct_len = ct.size();
  ASSERT_EQ(EVP_PKEY_encrypt(enc.get(), ct.data(), &ct_len, secret, sizeof secret), 1);
  ossl::PkeyCtx dec(EVP_PKEY_CTX_new(k.pkey.get(), nullptr));
  ASSERT_TRUE(dec);
  Bytes pt(256);
  std::size_t pt_len = pt.size();
  const bool init = EVP_PKEY_decrypt_init(dec.get()) > 0;
  EXPECT_FALSE(init && EVP_PKEY_decrypt(dec.get(), pt.data(), &pt_len, ct.data(), ct_len) > 0);
  EXPECT_TRUE(k.calls->empty());
  ERR_clear_error();

  const auto noop = [](RawOp, const Bytes&) { return Bytes{}; };
  for (const char* type : {"ED25519", "P-521", "secp256k1"}) {
    SCOPED_TRACE(type);
    ossl::Pkey other(std::string(type) == "ED25519" ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                                                     : EVP_EC_gen(type));
    ASSERT_TRUE(other);
    EXPECT_THROW(pkcs11::token_pkey(spki_of(other.get()), noop), std::invalid_argument);
  }
  Bytes trailing = k.generated.public_key_info;
  trailing.push_back(0);
  for (const Bytes& bad : {Bytes{}, Bytes{0x30, 0x00}, trailing})
    EXPECT_THROW(pkcs11::token_pkey(bad, noop), std::invalid_argument);
  EXPECT_THROW(pkcs11::token_pkey(k.generated.public_key_info, nullptr), std::invalid_argument);
}

TEST_F(TokenKey, KeyOwnsItsSignerAndCopiesOfItAreSafe) {
  auto gen = generate("ec-p256", "owned", Bytes{0x90});
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  const pkcs11::Session* s = &session();
  const auto handle = gen.private_key;
  auto key = pkcs11::token_pkey(gen.public_key_info, [s, handle, alive](RawOp op, const Bytes& in) {
    return pkcs11::sign_raw(*s, handle, op, in);
  });
  alive.reset();
  EXPECT_FALSE(watch.expired()) << "the key does not hold its signer";

  // OpenSSL copies an EC_KEY with its method and ex_data: the copy signs
  // through the same signer, and freeing both frees the signer once.
  {
    ossl::Pkey copy(EVP_PKEY_dup(key.get()));
    ASSERT_TRUE(copy) << ossl::error_text();
    X509Req req(X509_REQ_new());
    X509_REQ_set_pubkey(req.get(), copy.get());
    ASSERT_GT(X509_REQ_sign(req.get(), copy.get(), EVP_sha256()), 0) << ossl::error_text();
    EXPECT_EQ(X509_REQ_verify(req.get(), public_key(gen.public_key_info).get()), 1);
  }
  EXPECT_FALSE(watch.expired());
  key.reset();
  EXPECT_TRUE(watch.expired()) << "the signer outlived its key";

  // An RSA token key cannot be copied at all (OpenSSL refuses keys with a
  // method of their own); that is a NULL, not a key that cannot sign.
  auto rsa_gen = generate("rsa-2048", "owned-rsa", Bytes{0x91});
  auto rsa_key = pkcs11::token_pkey(rsa_gen.public_key_info, [](RawOp, const Bytes&) { return Bytes{}; });
  EXPECT_FALSE(ossl::Pkey(EVP_PKEY_dup(rsa_key.get())));
  ERR_clear_error();
}

}  // namespace
