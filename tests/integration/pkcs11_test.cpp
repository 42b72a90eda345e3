// The token layer on a real SoftHSM token: modules, URIs, keys, signatures, errors.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "pkcs11/error.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/uri.hpp"
#include "rig.hpp"

using namespace firmad;
using firmad::test::TokenRig;

namespace {

class TokenLayer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { rig_ = new TokenRig(); }
  static void TearDownTestSuite() {
    delete rig_;
    rig_ = nullptr;
  }

  std::shared_ptr<pkcs11::Module> module() { return pkcs11::Module::shared(TokenRig::kModule); }

  pkcs11::SlotId slot(pkcs11::Module& m) {
    const auto uri = pkcs11::Uri::parse("pkcs11:token=firmad-demo");
    for (auto s : m.slots_with_token())
      if (uri.matches_token(m, s)) return s;
    throw std::runtime_error("token not found");
  }

  // Verifies with OpenSSL against the SubjectPublicKeyInfo read from the token.
  static bool verify(const pkcs11::Bytes& spki, const pkcs11::Bytes& digest, const pkcs11::Bytes& sig,
                     const EVP_MD* md, bool pss = false) {
    const unsigned char* p = spki.data();
    EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size()));
    if (!key) return false;
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key, nullptr);
    bool ok = ctx && EVP_PKEY_verify_init(ctx) > 0;
    if (ok && md) ok = EVP_PKEY_CTX_set_signature_md(ctx, md) > 0;
    if (ok && pss) ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) > 0;
    ok = ok && EVP_PKEY_verify(ctx, sig.data(), sig.size(), digest.data(), digest.size()) == 1;
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok;
  }

  static pkcs11::Bytes sha(const EVP_MD* md, const std::string& text) {
    pkcs11::Bytes out(EVP_MD_get_size(md));
    EVP_Digest(text.data(), text.size(), out.data(), nullptr, md, nullptr);
    return out;
  }

  static TokenRig* rig_;
};
TokenRig* TokenLayer::rig_ = nullptr;

TEST_F(TokenLayer, LoadsModuleByPathOnceAndSharesIt) {
  auto a = module();
  auto b = module();
  EXPECT_EQ(a.get(), b.get());
  EXPECT_FALSE(a->slots_with_token().empty());
}

TEST_F(TokenLayer, LoadsModuleByP11KitRegisteredName) {
  auto m = pkcs11::Module::shared("softhsm2");
  EXPECT_NE(m->path().find("softhsm2"), std::string::npos);
  EXPECT_EQ(m.get(), module().get()) << "the name resolves to the same file: one C_Initialize";
}

TEST_F(TokenLayer, UnknownModuleNameIsAClearError) {
  try {
    pkcs11::Module::shared("no-such-module");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-module"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("p11-kit"), std::string::npos);
  }
}

TEST_F(TokenLayer, InvalidUriIsRefusedWithReason) {
  EXPECT_THROW(pkcs11::Uri::parse("pkcs11:id=%zz"), std::invalid_argument);
  EXPECT_THROW(pkcs11::Uri::parse("http://example"), std::invalid_argument);
}

TEST_F(TokenLayer, UriSelectsTokenByLabelAndSerial) {
  auto m = module();
  const auto s = slot(*m);
  const auto info = m->token_info(s);
  EXPECT_EQ(info.label, "firmad-demo");
  EXPECT_TRUE(pkcs11::Uri::parse("pkcs11:serial=" + info.serial).matches_token(*m, s));
  EXPECT_FALSE(pkcs11::Uri::parse("pkcs11:token=other").matches_token(*m, s));
}

TEST_F(TokenLayer, KeysAreInvisibleBeforeLoginAndSignAfter) {
  auto m = module();
  pkcs11::Session session(m, slot(*m));
  auto before = pkcs11::find_key(session, pkcs11::Uri::parse("pkcs11:object=empresa;id=%01"));
  ASSERT_TRUE(before) << "public key and certificate are visible without login";
  EXPECT_FALSE(before->private_key);
  EXPECT_FALSE(before->certificate.empty());
  session.login(TokenRig::kPin);
  auto after = pkcs11::find_key(session, pkcs11::Uri::parse("pkcs11:object=empresa;id=%01"));
  ASSERT_TRUE(after && after->private_key);
  EXPECT_EQ(after->type, pkcs11::KeyType::Rsa);
  EXPECT_EQ(after->bits, 2048);
  EXPECT_EQ(after->public_key, before->public_key);
  session.logout();
}

TEST_F(TokenLayer, SignsEveryScheme) {
  auto m = module();
  pkcs11::Session session(m, slot(*m));
  session.login(TokenRig::kPin);
  struct Case {
    const char* uri;
    pkcs11::Scheme scheme;
    pkcs11::Hash hash;
    const EVP_MD* md;
  };
  const Case cases[] = {
      {"pkcs11:object=empresa", pkcs11::Scheme::RsaPkcs1, pkcs11::Hash::Sha256, EVP_sha256()},
      {"pkcs11:object=empresa", pkcs11::Scheme::RsaPkcs1, pkcs11::Hash::Sha384, EVP_sha384()},
      {"pkcs11:object=empresa", pkcs11::Scheme::RsaPkcs1, pkcs11::Hash::Sha512, EVP_sha512()},
      {"pkcs11:object=empresa", pkcs11::Scheme::RsaPss, pkcs11::Hash::Sha256, EVP_sha256()},
      {"pkcs11:object=empresa", pkcs11::Scheme::RsaPss, pkcs11::Hash::Sha512, EVP_sha512()},
      {"pkcs11:object=firma-ec", pkcs11::Scheme::Ecdsa, pkcs11::Hash::Sha256, EVP_sha256()},
      {"pkcs11:object=firma-p384", pkcs11::Scheme::Ecdsa, pkcs11::Hash::Sha384, EVP_sha384()},
  };
  for (const auto& c : cases) {
    auto key = pkcs11::find_key(session, pkcs11::Uri::parse(c.uri));
    ASSERT_TRUE(key && key->private_key) << c.uri;
    pkcs11::SignRequest req{c.scheme, c.hash, sha(c.md, "factura 2026"), std::nullopt};
    auto sig = pkcs11::sign(session, *key->private_key, key->type, req);
    EXPECT_TRUE(verify(key->public_key, req.input, sig, c.md, c.scheme == pkcs11::Scheme::RsaPss))
        << c.uri << " " << pkcs11::to_string(c.scheme) << " " << pkcs11::to_string(c.hash);
    // The same signature does not verify another digest: the check can fail.
    EXPECT_FALSE(verify(key->public_key, sha(c.md, "factura 2027"), sig, c.md, c.scheme == pkcs11::Scheme::RsaPss));
  }
  session.logout();
}

TEST_F(TokenLayer, SignsEd25519OverTheMessage) {
  auto m = module();
  pkcs11::Session session(m, slot(*m));
  session.login(TokenRig::kPin);
  auto key = pkcs11::find_key(session, pkcs11::Uri::parse("pkcs11:object=firma-ed"));
  ASSERT_TRUE(key && key->private_key);
  EXPECT_EQ(key->type, pkcs11::KeyType::Ed25519);
  const std::string msg = "acuse de recibo";
  pkcs11::SignRequest req{pkcs11::Scheme::EdDsa, pkcs11::Hash::Sha256, pkcs11::Bytes(msg.begin(), msg.end()), {}};
  auto sig = pkcs11::sign(session, *key->private_key, key->type, req);
  ASSERT_EQ(sig.size(), 64u);
  const unsigned char* p = key->public_key.data();
  EVP_PKEY* pk = d2i_PUBKEY(nullptr, &p, static_cast<long>(key->public_key.size()));
  ASSERT_NE(pk, nullptr);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ASSERT_EQ(EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, pk), 1);
  EXPECT_EQ(EVP_DigestVerify(ctx, sig.data(), sig.size(), req.input.data(), req.input.size()), 1);
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pk);
  session.logout();
}

TEST_F(TokenLayer, FailuresCarryTheCallAndTheReturnCodeName) {
  auto m = module();
  pkcs11::Session session(m, slot(*m));
  try {
    session.login("000000");
    FAIL() << "a wrong PIN must fail";
  } catch (const pkcs11::Error& e) {
    EXPECT_EQ(e.call(), "C_Login");
    EXPECT_EQ(e.code_name(), "CKR_PIN_INCORRECT");
    EXPECT_EQ(e.fault(), pkcs11::Fault::PinIncorrect);
    EXPECT_NE(std::string(e.what()).find("C_Login failed: CKR_PIN_INCORRECT"), std::string::npos);
  }
  // Signing without login: the private key handle from another session is
  // not usable, and the error names C_SignInit.
  session.login(TokenRig::kPin);
  auto key = pkcs11::find_key(session, pkcs11::Uri::parse("pkcs11:object=firma-ec"));
  session.logout();
  ASSERT_TRUE(key && key->private_key);
  pkcs11::SignRequest req{pkcs11::Scheme::Ecdsa, pkcs11::Hash::Sha256, pkcs11::Bytes(32, 1), {}};
  try {
    pkcs11::sign(session, *key->private_key, key->type, req);
    FAIL() << "signing after logout must fail";
  } catch (const pkcs11::Error& e) {
    EXPECT_EQ(e.call(), "C_SignInit");
    EXPECT_EQ(e.code_name().rfind("CKR_", 0), 0u);
  }
}

TEST_F(TokenLayer, WrongDigestLengthOrSchemeIsRefusedBeforeTheToken) {
  auto m = module();
  pkcs11::Session session(m, slot(*m));
  pkcs11::SignRequest short_digest{pkcs11::Scheme::Ecdsa, pkcs11::Hash::Sha256, pkcs11::Bytes(31, 1), {}};
  EXPECT_THROW(pkcs11::sign(session, 1, pkcs11::KeyType::Ec, short_digest), std::invalid_argument);
  pkcs11::SignRequest wrong_scheme{pkcs11::Scheme::RsaPss, pkcs11::Hash::Sha256, pkcs11::Bytes(32, 1), {}};
  EXPECT_THROW(pkcs11::sign(session, 1, pkcs11::KeyType::Ec, wrong_scheme), std::invalid_argument);
}

TEST_F(TokenLayer, RsaCodeNamesAreKnown) {
  EXPECT_EQ(pkcs11::rv_name(0xa0), "CKR_PIN_INCORRECT");
  EXPECT_EQ(pkcs11::rv_name(0x12345678), "CKR_0x12345678");
}

}  // namespace
