// libfirma-pkcs11's pure parts: DigestInfo, ECDSA encodings, mechanism parameters, key entries, error codes.
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <span>

#include "client/pkcs11/mechanisms.hpp"
#include "client/pkcs11/objects.hpp"
#include "protocol/base64.hpp"

namespace firma::p11 {
namespace {

const Bytes kSha256Prefix{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                          0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

TEST(Pkcs11DigestInfo, RecognisesSha2AndRefusesEverythingElse) {
  Bytes info = kSha256Prefix;
  info.insert(info.end(), 32, 0xab);
  const auto parsed = parse_digest_info(info);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->first, "sha256");
  EXPECT_EQ(parsed->second, Bytes(32, 0xab));
  EXPECT_FALSE(parse_digest_info({}));                                              // empty
  EXPECT_FALSE(parse_digest_info(Bytes(info.begin(), info.end() - 1)));             // truncated
  Bytes longer = info;
  longer.push_back(0);
  EXPECT_FALSE(parse_digest_info(longer));                                          // oversize
  EXPECT_FALSE(parse_digest_info(Bytes(36, 0x11)));                                 // TLS 1.0 MD5+SHA-1
  const Bytes sha1{0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
  Bytes sha1_info = sha1;
  sha1_info.insert(sha1_info.end(), 20, 1);
  EXPECT_FALSE(parse_digest_info(sha1_info));                                       // SHA-1: not without opt-in
  const auto with_opt_in = parse_digest_info(sha1_info, true);                       // ... and with it (allow_sha1)
  ASSERT_TRUE(with_opt_in);
  EXPECT_EQ(with_opt_in->first, "sha1");
  EXPECT_EQ(with_opt_in->second, Bytes(20, 1));
  EXPECT_EQ(hash_for_digest_length(20), "");
  EXPECT_EQ(hash_for_digest_length(20, true), "sha1");
}

TEST(Pkcs11Ecdsa, DerBecomesFixedLengthRAndS) {
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_new();
  BIGNUM* s = BN_new();
  BN_set_word(r, 0x0102);
  BN_set_word(s, 0xff);
  ECDSA_SIG_set0(sig, r, s);
  unsigned char* der = nullptr;
  const int n = i2d_ECDSA_SIG(sig, &der);
  const Bytes encoded(der, der + n);
  OPENSSL_free(der);
  ECDSA_SIG_free(sig);
  const auto raw = ecdsa_der_to_raw(encoded, 32);
  ASSERT_TRUE(raw);
  Bytes want(64, 0);
  want[30] = 0x01;
  want[31] = 0x02;
  want[63] = 0xff;
  EXPECT_EQ(*raw, want);
  EXPECT_FALSE(ecdsa_der_to_raw({}, 32));
  EXPECT_FALSE(ecdsa_der_to_raw(Bytes(encoded.begin(), encoded.end() - 1), 32));  // truncated
  Bytes trailing = encoded;
  trailing.push_back(0);
  EXPECT_FALSE(ecdsa_der_to_raw(trailing, 32));                                     // trailing bytes
  EXPECT_FALSE(ecdsa_der_to_raw(encoded, 1));                                       // r does not fit
}

TEST(Pkcs11Mechanisms, ParametersAreCheckedAgainstTheKey) {
  KeyInfo rsa{"empresa", "demo", KeyKind::rsa, 2048, true, false, {}};
  KeyInfo ec{"firma-ec", "demo", KeyKind::ec, 256, false, false, {}};
  MechanismPlan plan;
  CK_MECHANISM m{CKM_RSA_X_509, nullptr, 0};
  EXPECT_EQ(plan_for(m, rsa, plan), CKR_MECHANISM_INVALID);
  m = {CKM_ECDSA, nullptr, 0};
  EXPECT_EQ(plan_for(m, rsa, plan), CKR_KEY_TYPE_INCONSISTENT);
  EXPECT_EQ(plan_for(m, ec, plan), CKR_OK);
  EXPECT_TRUE(plan.hash.empty());
  m = {CKM_ECDSA_SHA384, nullptr, 0};
  ASSERT_EQ(plan_for(m, ec, plan), CKR_OK);
  EXPECT_EQ(plan.hash, "sha384");
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA384, CKG_MGF1_SHA384, 48};
  m = {CKM_RSA_PKCS_PSS, &pss, sizeof pss};
  ASSERT_EQ(plan_for(m, rsa, plan), CKR_OK);
  EXPECT_TRUE(plan.pss);
  EXPECT_EQ(plan.pss_hash, "sha384");
  EXPECT_EQ(plan.salt, 48);
  m = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof pss};  // the parameters name another hash
  EXPECT_EQ(plan_for(m, rsa, plan), CKR_MECHANISM_PARAM_INVALID);
  pss = {CKM_SHA256, CKG_MGF1_SHA256, 256 - 32 - 1};  // emLen < hLen + sLen + 2
  EXPECT_EQ(plan_for(m, rsa, plan), CKR_MECHANISM_PARAM_INVALID);
  pss.sLen = 256 - 32 - 2;
  EXPECT_EQ(plan_for(m, rsa, plan), CKR_OK);
  m.ulParameterLen = sizeof pss - 1;  // truncated parameters
  EXPECT_EQ(plan_for(m, rsa, plan), CKR_MECHANISM_PARAM_INVALID);
  KeyInfo no_pss = rsa;
  no_pss.pss = false;  // a token that cannot make RSA-PSS
  m = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof pss};
  EXPECT_EQ(plan_for(m, no_pss, plan), CKR_MECHANISM_INVALID);
  EXPECT_EQ(signature_length(rsa), 256u);
  EXPECT_EQ(signature_length(ec), 64u);
  EXPECT_EQ(signature_length(KeyInfo{"e", "t", KeyKind::ec, 521, false, false, {}}), 132u);
}

TEST(Pkcs11KeyEntries, OnlyWellFormedFoundKeysGetObjects) {
  KeyInfo info;
  EXPECT_FALSE(key_info(Json::object(), info));
  EXPECT_FALSE(key_info(Json::array(), info));
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", "yes"}, {"type", "ec"}, {"bits", 256}, {"publicKey", "AA=="}}, info));
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", false}, {"type", "ec"}, {"bits", 256}, {"publicKey", "AA=="}}, info));
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", true}, {"type", "dsa"}, {"bits", 256}, {"publicKey", "AA=="}}, info));
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", true}, {"type", "ec"}, {"bits", 256}, {"publicKey", "%%"}}, info));
  // A real P-256 public key.
  std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)> pkey(EVP_EC_gen("P-256"), EVP_PKEY_free);
  ASSERT_NE(pkey, nullptr);
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(pkey.get(), &der);
  ASSERT_GT(n, 0);
  const std::string spki = firmad::protocol::base64_encode(std::span<const std::uint8_t>(der, static_cast<std::size_t>(n)));
  OPENSSL_free(der);
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", true}, {"type", "ec"}, {"bits", 256}, {"publicKey", "AA=="}}, info))
      << "a public key that does not parse";
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", true}, {"type", "rsa"}, {"bits", 256}, {"publicKey", spki}}, info))
      << "firmad's type is not the public key's";
  EXPECT_FALSE(key_info(Json{{"alias", "a"}, {"token", "t"}, {"found", true}, {"type", "ec"}, {"bits", 384}, {"publicKey", spki}}, info))
      << "firmad's size is not the public key's";
  const Json good{{"alias", "a"}, {"token", "t"}, {"found", true}, {"type", "ec"}, {"bits", 256}, {"publicKey", spki},
                  {"schemes", {"ecdsa"}}, {"objectId", "zz"}};
  ASSERT_TRUE(key_info(good, info));
  EXPECT_EQ(info.kind, KeyKind::ec);
  EXPECT_EQ(info.bits, 256);
  EXPECT_EQ(signature_length(info), 64u);
  EXPECT_THROW(objects_of(good, info), std::runtime_error);  // the id does not parse
}

TEST(Pkcs11Errors, EachFirmadErrorHasItsCode) {
  EXPECT_EQ(rv_for_error("AccessDenied"), CKR_KEY_FUNCTION_NOT_PERMITTED);
  EXPECT_EQ(rv_for_error("TokenAbsent"), CKR_TOKEN_NOT_PRESENT);
  EXPECT_EQ(rv_for_error("NotLoggedIn"), CKR_USER_NOT_LOGGED_IN);
  EXPECT_EQ(rv_for_error("QueueFull"), CKR_DEVICE_MEMORY);
  EXPECT_EQ(rv_for_error("KeyCancelled"), CKR_KEY_FUNCTION_NOT_PERMITTED);
  EXPECT_EQ(rv_for_error("SomethingNew"), CKR_FUNCTION_FAILED);
}

}  // namespace
}  // namespace firma::p11
