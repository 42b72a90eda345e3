// Unit tests of credential file parsing: .pfx (current and legacy), SAT-style .key with .cer, and every refusal.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "daemon/mx/credential.hpp"

namespace firmad {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;
using Reason = CredentialError::Reason;

// Not ASCII on purpose: SAT and IMSS passwords are whatever people type.
constexpr std::string_view kPassword = "Contraseña-2026 firma";
constexpr std::string_view kWrong = "contrasena-2026 firma";

const char* name(Reason r) {
  switch (r) {
    case Reason::WrongPassword: return "WrongPassword";
    case Reason::Corrupt: return "Corrupt";
    case Reason::UnsupportedAlgorithm: return "UnsupportedAlgorithm";
    case Reason::Mismatch: return "Mismatch";
    case Reason::NoKey: return "NoKey";
    case Reason::NoCertificate: return "NoCertificate";
  }
  return "?";
}

// Every credential file the tests read, made once per test process with the
// openssl command in a directory of its own, removed afterwards.
const char* const kMakeFiles = R"(set -eu
q() { "$@" 2>/dev/null; }
pw="file:password"
q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/O=firmad test/CN=firmad test CA"
q openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key.pem
q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key.pem
q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384.key.pem
q openssl genpkey -algorithm ED448 -out ed448.key.pem
q openssl genpkey -genparam -algorithm DSA -pkeyopt dsa_paramgen_bits:1024 -out dsa.param
q openssl genpkey -paramfile dsa.param -out dsa.key.pem
q openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa1024.key.pem
q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 -out k1.key.pem
for k in rsa ec p384; do
  q openssl req -new -key $k.key.pem -subj "/O=EMPRESA DEMO SA DE CV/serialNumber=EDE010101AAA/CN=EMPRESA DEMO $k" -out $k.csr
  q openssl x509 -req -in $k.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out $k.crt.pem
done
for k in ed448 dsa rsa1024 k1; do
  q openssl req -x509 -new -key $k.key.pem -subj "/CN=$k" -days 30 -out $k.crt.pem
done
for k in rsa ec p384 ed448 dsa rsa1024 k1; do
  openssl x509 -in $k.crt.pem -outform DER -out $k.cer
  openssl pkcs8 -topk8 -nocrypt -in $k.key.pem -outform DER -out $k.plain.der
done
for k in rsa ec; do
  openssl pkcs12 -export -inkey $k.key.pem -in $k.crt.pem -certfile ca.pem -passout $pw -out $k.pfx
  openssl pkcs12 -export -legacy -inkey $k.key.pem -in $k.crt.pem -certfile ca.pem -passout $pw -out $k.legacy.pfx
  openssl pkcs8 -topk8 -v2 des3 -in $k.key.pem -outform DER -passout $pw -out $k.sat.key
done
openssl pkcs8 -topk8 -v2 aes-256-cbc -in rsa.key.pem -passout $pw -out rsa.aes.pem
openssl pkcs8 -topk8 -nocrypt -in ec.key.pem -out ec.plain.pem
openssl pkey -in rsa.key.pem -traditional -out rsa.traditional.pem
openssl pkcs12 -export -inkey rsa.key.pem -in rsa.crt.pem -passout pass: -out rsa.nopass.pfx
openssl pkcs12 -export -nomac -certpbe AES-256-CBC -inkey rsa.key.pem -in rsa.crt.pem -passout $pw -out rsa.nomac.pfx
openssl pkcs12 -export -inkey ed448.key.pem -in ed448.crt.pem -passout $pw -out ed448.pfx
openssl pkcs12 -export -nokeys -in rsa.crt.pem -passout $pw -out nokey.pfx
openssl pkcs12 -export -nocerts -inkey rsa.key.pem -passout $pw -out nocert.pfx
cat ca.pem rsa.crt.pem > bundle.pem
openssl pkcs12 -info -noout -legacy -in rsa.legacy.pfx -passin $pw > legacy.info 2>&1
openssl asn1parse -inform DER -in rsa.sat.key > sat.info
)";

class CredentialTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/firmad-credential-test-XXXXXX";
    if (!mkdtemp(tmpl)) {
      setup_error_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    std::ofstream(dir_ / "password", std::ios::binary) << kPassword << "\n";
    std::ofstream(dir_ / "make.sh", std::ios::binary) << kMakeFiles;
    const std::string command = "cd '" + dir_.string() + "' && bash make.sh > make.log 2>&1";
    if (std::system(command.c_str()) != 0) setup_error_ = "making the credential files failed:\n" + text(dir_ / "make.log");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  static std::string text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  static Bytes file(const std::string& name) {
    const std::string t = text(dir_ / name);
    EXPECT_FALSE(t.empty()) << name << " is missing";
    return Bytes(t.begin(), t.end());
  }
  static Bytes first_half(const std::string& name) {
    Bytes b = file(name);
    b.resize(b.size() / 2);
    return b;
  }

  static std::string subject_cn(X509* x) {
    char buf[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof buf);
    return buf;
  }

  // Checks what a user relies on: a key that belongs to the certificate,
  // the expected type, and an error queue left empty.
  static void expect_credential(const Credential& c, const char* type, int bits, const std::string& cn) {
    ASSERT_TRUE(c.key);
    ASSERT_TRUE(c.certificate);
    EXPECT_TRUE(EVP_PKEY_is_a(c.key.get(), type)) << EVP_PKEY_get0_type_name(c.key.get());
    EXPECT_EQ(EVP_PKEY_get_bits(c.key.get()), bits);
    EXPECT_EQ(X509_check_private_key(c.certificate.get(), c.key.get()), 1);
    EXPECT_EQ(EVP_PKEY_eq(c.key.get(), X509_get0_pubkey(c.certificate.get())), 1);
    EXPECT_EQ(subject_cn(c.certificate.get()), cn);
    EXPECT_EQ(ERR_peek_error(), 0ul) << "OpenSSL's error queue is left empty";
  }

  // The same key as the one openssl generated (its PEM file).
  static bool same_key(EVP_PKEY* key, const std::string& pem_name) {
    const Bytes pem = file(pem_name);
    ossl::Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    ossl::Pkey original(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    return original && EVP_PKEY_eq(key, original.get()) == 1;
  }

  // Asserts that parse() throws CredentialError for `reason`, with a message
  // containing `contains` and never the password or the wrong one tried.
  static void expect_refused(const std::function<void()>& parse, Reason reason, std::string_view contains) {
    try {
      parse();
      ADD_FAILURE() << "accepted; expected " << name(reason);
    } catch (const CredentialError& e) {
      const std::string what = e.what();
      EXPECT_EQ(e.reason(), reason) << "expected " << name(reason) << ", got " << name(e.reason()) << ": " << what;
      EXPECT_NE(what.find(contains), std::string::npos) << "message: " << what;
      EXPECT_EQ(what.find(kPassword), std::string::npos) << "the password is in the message";
      EXPECT_EQ(what.find(kWrong), std::string::npos) << "the password tried is in the message";
      EXPECT_EQ(ERR_peek_error(), 0ul) << "OpenSSL's error queue is left empty";
    }
  }

  using Pkcs12 = std::unique_ptr<PKCS12, ossl::Deleter<PKCS12_free>>;
  using Sig = std::unique_ptr<X509_SIG, ossl::Deleter<X509_SIG_free>>;

  // Sets the PBKDF2 round count inside a PBES2 AlgorithmIdentifier.
  static bool set_rounds(X509_ALGOR* alg, long rounds) {
    PBE2PARAM* pbe2 = static_cast<PBE2PARAM*>(ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter));
    PBKDF2PARAM* kdf = pbe2 ? static_cast<PBKDF2PARAM*>(ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM),
                                                                                   pbe2->keyfunc->parameter))
                            : nullptr;
    const bool ok = kdf && ASN1_INTEGER_set(kdf->iter, rounds) == 1 &&
                    ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), kdf, &pbe2->keyfunc->parameter) &&
                    ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBE2PARAM), pbe2, &alg->parameter);
    PBKDF2PARAM_free(kdf);
    PBE2PARAM_free(pbe2);
    return ok;
  }

  // A .pfx file re-encoded after `change` edited it (its MAC, if any, no longer matches).
  static Bytes rewrite_pfx(const std::string& name, const std::function<bool(PKCS12*)>& change) {
    const Bytes d = file(name);
    const unsigned char* p = d.data();
    Pkcs12 p12(d2i_PKCS12(nullptr, &p, static_cast<long>(d.size())));
    EXPECT_TRUE(p12 && change(p12.get())) << "could not rewrite " << name;
    unsigned char* out = nullptr;
    const int len = p12 ? i2d_PKCS12(p12.get(), &out) : 0;
    Bytes b(out, out + (len > 0 ? len : 0));
    OPENSSL_free(out);
    return b;
  }

  // Edits each authenticated safe of a .pfx in place; change(p7) returns a replacement or null.
  static bool each_safe(PKCS12* p12, const std::function<PKCS7*(PKCS7*)>& change) {
    STACK_OF(PKCS7)* safes = PKCS12_unpack_authsafes(p12);
    if (!safes) return false;
    bool changed = false;
    for (int i = 0; i < sk_PKCS7_num(safes); ++i) {
      if (PKCS7* replacement = change(sk_PKCS7_value(safes, i))) {
        PKCS7* old = sk_PKCS7_value(safes, i);
        if (replacement != old) {
          sk_PKCS7_set(safes, i, replacement);  // returns the new element, not the old
          PKCS7_free(old);
        }
        changed = true;
      }
    }
    const bool ok = changed && PKCS12_pack_authsafes(p12, safes) == 1;
    sk_PKCS7_pop_free(safes, PKCS7_free);
    return ok;
  }

  static Credential pfx(const std::string& name, std::string_view password = kPassword) {
    return parse_pkcs12(file(name), password);
  }
  static Credential pair(const std::string& key, const std::string& cert, std::string_view password = kPassword) {
    return parse_key_and_certificate(file(key), file(cert), password);
  }

  static fs::path dir_;
  static std::string setup_error_;
};
fs::path CredentialTest::dir_;
std::string CredentialTest::setup_error_;

TEST_F(CredentialTest, ReadsCurrentPkcs12WithItsChain) {
  const Credential rsa = pfx("rsa.pfx");
  expect_credential(rsa, "RSA", 2048, "EMPRESA DEMO rsa");
  EXPECT_TRUE(same_key(rsa.key.get(), "rsa.key.pem"));
  ASSERT_EQ(rsa.chain.size(), 1u);
  EXPECT_EQ(subject_cn(rsa.chain[0].get()), "firmad test CA");

  const Credential ec = pfx("ec.pfx");
  expect_credential(ec, "EC", 256, "EMPRESA DEMO ec");
  EXPECT_TRUE(same_key(ec.key.get(), "ec.key.pem"));
  EXPECT_EQ(ec.chain.size(), 1u);
}

TEST_F(CredentialTest, ReadsLegacyRc2Pkcs12) {
  // The fixture really is what older Windows and SAT tools produce.
  EXPECT_NE(text(dir_ / "legacy.info").find("RC2"), std::string::npos) << text(dir_ / "legacy.info");
  const Credential rsa = pfx("rsa.legacy.pfx");
  expect_credential(rsa, "RSA", 2048, "EMPRESA DEMO rsa");
  EXPECT_TRUE(same_key(rsa.key.get(), "rsa.key.pem"));
  EXPECT_EQ(rsa.chain.size(), 1u);
  expect_credential(pfx("ec.legacy.pfx"), "EC", 256, "EMPRESA DEMO ec");
}

TEST_F(CredentialTest, ReadsLegacyPkcs12FromManyThreadsAtOnce) {
  // The first parse in the process loads the legacy provider; several at once must all get it.
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  const Bytes data = file("rsa.legacy.pfx");
  for (std::size_t i = 0; i < ok.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        const Credential c = parse_pkcs12(data, kPassword);
        ok[i] = c.key && c.certificate && ERR_peek_error() == 0;
      } catch (const std::exception&) {
        ok[i] = 0;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < ok.size(); ++i) EXPECT_TRUE(ok[i]) << "thread " << i;
}

TEST_F(CredentialTest, ReadsSatStyleDesEde3KeyWithDerCertificate) {
  const std::string info = text(dir_ / "sat.info");
  EXPECT_NE(info.find("PBES2"), std::string::npos) << info;
  EXPECT_NE(info.find("des-ede3-cbc"), std::string::npos) << info;
  const Credential rsa = pair("rsa.sat.key", "rsa.cer");
  expect_credential(rsa, "RSA", 2048, "EMPRESA DEMO rsa");
  EXPECT_TRUE(same_key(rsa.key.get(), "rsa.key.pem"));
  EXPECT_TRUE(rsa.chain.empty());
  const Credential ec = pair("ec.sat.key", "ec.cer");
  expect_credential(ec, "EC", 256, "EMPRESA DEMO ec");
  EXPECT_TRUE(same_key(ec.key.get(), "ec.key.pem"));
}

TEST_F(CredentialTest, ReadsAesEncryptedPemKeyWithPemCertificate) {
  const Credential c = pair("rsa.aes.pem", "rsa.crt.pem");
  expect_credential(c, "RSA", 2048, "EMPRESA DEMO rsa");
  EXPECT_TRUE(same_key(c.key.get(), "rsa.key.pem"));
}

TEST_F(CredentialTest, ReadsUnencryptedKeysAndIgnoresThePassword) {
  expect_credential(pair("rsa.plain.der", "rsa.crt.pem", "anything"), "RSA", 2048, "EMPRESA DEMO rsa");
  expect_credential(pair("ec.plain.pem", "ec.cer", ""), "EC", 256, "EMPRESA DEMO ec");
  expect_credential(pair("rsa.key.pem", "rsa.cer", kWrong), "RSA", 2048, "EMPRESA DEMO rsa");
  expect_credential(pair("rsa.traditional.pem", "rsa.cer"), "RSA", 2048, "EMPRESA DEMO rsa");
  expect_credential(pair("p384.plain.der", "p384.cer"), "EC", 384, "EMPRESA DEMO p384");
}

TEST_F(CredentialTest, ReadsPkcs12WithAnEmptyPassword) {
  expect_credential(parse_pkcs12(file("rsa.nopass.pfx"), ""), "RSA", 2048, "EMPRESA DEMO rsa");
  expect_refused([] { pfx("rsa.nopass.pfx", kWrong); }, Reason::WrongPassword, "wrong password");
}

TEST_F(CredentialTest, ReadsPkcs12WithoutAMac) {
  // Without a MAC the password is only checked by decrypting.
  expect_credential(pfx("rsa.nomac.pfx"), "RSA", 2048, "EMPRESA DEMO rsa");
  expect_refused([] { pfx("rsa.nomac.pfx", kWrong); }, Reason::WrongPassword, "wrong password for the credential file");
}

TEST_F(CredentialTest, HugeKeyDerivationCountsAreRefusedAtOnce) {
  // The counts are plain fields: 2^31 rounds would keep the daemon busy for minutes.
  const long kHuge = 0x7fffffff;
  const auto start = std::chrono::steady_clock::now();
  const Bytes mac = rewrite_pfx("rsa.pfx", [&](PKCS12* p12) {
    const ASN1_INTEGER* iter = nullptr;
    PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, p12);
    return iter && ASN1_INTEGER_set(const_cast<ASN1_INTEGER*>(iter), kHuge) == 1;
  });
  const Bytes encrypted_safe = rewrite_pfx("rsa.nomac.pfx", [&](PKCS12* p12) {
    return each_safe(p12, [&](PKCS7* p7) -> PKCS7* {
      if (OBJ_obj2nid(p7->type) != NID_pkcs7_encrypted) return nullptr;
      return set_rounds(p7->d.encrypted->enc_data->algorithm, kHuge) ? p7 : nullptr;
    });
  });
  const Bytes key_bag = rewrite_pfx("rsa.nomac.pfx", [&](PKCS12* p12) {
    return each_safe(p12, [&](PKCS7* p7) -> PKCS7* {
      if (OBJ_obj2nid(p7->type) != NID_pkcs7_data) return nullptr;
      STACK_OF(PKCS12_SAFEBAG)* bags = PKCS12_unpack_p7data(p7);
      bool ok = false;
      for (int i = 0; bags && i < sk_PKCS12_SAFEBAG_num(bags); ++i) {
        auto* sig = const_cast<X509_SIG*>(PKCS12_SAFEBAG_get0_pkcs8(sk_PKCS12_SAFEBAG_value(bags, i)));
        X509_ALGOR* alg = nullptr;
        if (sig) X509_SIG_getm(sig, &alg, nullptr);
        ok = ok || (alg && set_rounds(alg, kHuge));
      }
      PKCS7* repacked = ok ? PKCS12_pack_p7data(bags) : nullptr;
      sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
      return repacked;
    });
  });
  const Bytes sat = file("rsa.sat.key");
  const unsigned char* p = sat.data();
  Sig sig(d2i_X509_SIG(nullptr, &p, static_cast<long>(sat.size())));
  ASSERT_TRUE(sig);
  X509_ALGOR* alg = nullptr;
  X509_SIG_getm(sig.get(), &alg, nullptr);
  ASSERT_TRUE(set_rounds(alg, kHuge));
  unsigned char* out = nullptr;
  const int len = i2d_X509_SIG(sig.get(), &out);
  const Bytes key(out, out + (len > 0 ? len : 0));
  OPENSSL_free(out);
  ERR_clear_error();

  const char* kMessage = "2147483647 key-derivation rounds; at most 2000000 are accepted";
  expect_refused([&] { parse_pkcs12(mac, kPassword); }, Reason::UnsupportedAlgorithm, kMessage);
  expect_refused([&] { parse_pkcs12(encrypted_safe, kPassword); }, Reason::UnsupportedAlgorithm, kMessage);
  expect_refused([&] { parse_pkcs12(key_bag, kPassword); }, Reason::UnsupportedAlgorithm, kMessage);
  expect_refused([&] { parse_key_and_certificate(key, file("rsa.cer"), kPassword); }, Reason::UnsupportedAlgorithm,
                 "the key file's password protection asks for 2147483647");
  // A few milliseconds each; minutes if the counts were obeyed.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST_F(CredentialTest, PemBundlePicksTheCertificateOfTheKey) {
  // The CA comes first in the file; the key's own certificate is found anyway.
  const Credential c = pair("rsa.sat.key", "bundle.pem");
  expect_credential(c, "RSA", 2048, "EMPRESA DEMO rsa");
  ASSERT_EQ(c.chain.size(), 1u);
  EXPECT_EQ(subject_cn(c.chain[0].get()), "firmad test CA");
}

TEST_F(CredentialTest, WrongPasswordIsToldApartFromDamage) {
  expect_refused([] { pfx("rsa.pfx", kWrong); }, Reason::WrongPassword, "wrong password for the credential file");
  expect_refused([] { pfx("rsa.legacy.pfx", kWrong); }, Reason::WrongPassword, "wrong password for the credential file");
  expect_refused([] { pfx("rsa.pfx", ""); }, Reason::WrongPassword, "wrong password");
  expect_refused([] { pair("rsa.sat.key", "rsa.cer", kWrong); }, Reason::WrongPassword, "wrong password for the key file");
  expect_refused([] { pair("rsa.aes.pem", "rsa.cer", kWrong); }, Reason::WrongPassword, "wrong password for the key file");
  expect_refused([] { pair("ec.sat.key", "ec.cer", ""); }, Reason::WrongPassword, "wrong password");
}

TEST_F(CredentialTest, ManyWrongPasswordsAreAllWrongPasswords) {
  // About one wrong password in 256 passes DES-EDE3's padding check and
  // yields garbage instead: that too is a wrong password, not damage.
  const Bytes key = file("ec.sat.key");
  const Bytes cert = file("ec.cer");
  for (int i = 0; i < 600; ++i) {
    const std::string tried = "intento-" + std::to_string(i);
    try {
      parse_key_and_certificate(key, cert, tried);
      ADD_FAILURE() << "password " << tried << " accepted";
    } catch (const CredentialError& e) {
      ASSERT_EQ(e.reason(), Reason::WrongPassword) << tried << ": " << e.what();
    }
  }
}

TEST_F(CredentialTest, CertificateOfAnotherKeyIsAMismatch) {
  const char* kMessage = "the certificate does not belong to this key";
  expect_refused([] { pair("rsa.sat.key", "ec.cer"); }, Reason::Mismatch, kMessage);
  expect_refused([] { pair("rsa.sat.key", "ca.pem"); }, Reason::Mismatch, kMessage);  // RSA too, but not its own
  expect_refused([] { pair("ec.plain.pem", "p384.crt.pem"); }, Reason::Mismatch, kMessage);
}

TEST_F(CredentialTest, TruncatedFilesAreCorrupt) {
  expect_refused([] { parse_pkcs12(first_half("rsa.pfx"), kPassword); }, Reason::Corrupt, "damaged (truncated?)");
  expect_refused([] { parse_pkcs12(first_half("rsa.legacy.pfx"), kPassword); }, Reason::Corrupt, "PKCS#12");
  expect_refused([] { parse_key_and_certificate(first_half("rsa.sat.key"), file("rsa.cer"), kPassword); },
                 Reason::Corrupt, "key file");
  expect_refused([] { parse_key_and_certificate(first_half("rsa.aes.pem"), file("rsa.cer"), kPassword); },
                 Reason::Corrupt, "key file");
  expect_refused([] { parse_key_and_certificate(file("rsa.sat.key"), first_half("rsa.cer"), kPassword); },
                 Reason::Corrupt, "certificate file");
  expect_refused([] { parse_key_and_certificate(file("rsa.sat.key"), first_half("rsa.crt.pem"), kPassword); },
                 Reason::Corrupt, "certificate file");
}

TEST_F(CredentialTest, EveryPrefixOfADerFileIsCorrupt) {
  // Cutting a binary file anywhere is damage, never a crash or a wrong password.
  const Bytes p12 = file("rsa.pfx");
  const Bytes key = file("rsa.sat.key");
  const Bytes cert = file("rsa.cer");
  for (std::size_t n = 1; n < p12.size(); ++n) {
    try {
      parse_pkcs12(std::span(p12).first(n), kPassword);
      ADD_FAILURE() << "prefix " << n << " accepted";
    } catch (const CredentialError& e) {
      ASSERT_EQ(e.reason(), Reason::Corrupt) << "pfx prefix " << n << ": " << e.what();
    }
  }
  for (std::size_t n = 1; n < key.size(); ++n) {
    try {
      parse_key_and_certificate(std::span(key).first(n), cert, kPassword);
      ADD_FAILURE() << "prefix " << n << " accepted";
    } catch (const CredentialError& e) {
      ASSERT_EQ(e.reason(), Reason::Corrupt) << "key prefix " << n << ": " << e.what();
    }
  }
  for (std::size_t n = 1; n < cert.size(); ++n) {
    try {
      parse_key_and_certificate(file("rsa.plain.der"), std::span(cert).first(n), kPassword);
      ADD_FAILURE() << "prefix " << n << " accepted";
    } catch (const CredentialError& e) {
      ASSERT_EQ(e.reason(), Reason::Corrupt) << "certificate prefix " << n << ": " << e.what();
    }
  }
  EXPECT_EQ(ERR_peek_error(), 0ul);
}

TEST_F(CredentialTest, RandomBytesAreCorrupt) {
  std::mt19937 rng(20260101);
  const Bytes cert = file("rsa.cer");
  const Bytes key = file("rsa.plain.der");
  for (int i = 0; i < 200; ++i) {
    Bytes junk(1 + rng() % 4096);
    for (auto& b : junk) b = static_cast<std::uint8_t>(rng());
    // Half of them start like DER (a SEQUENCE), to get past the first byte.
    if (i % 2) junk[0] = 0x30;
    expect_refused([&] { parse_pkcs12(junk, kPassword); }, Reason::Corrupt, "damaged");
    expect_refused([&] { parse_key_and_certificate(junk, cert, kPassword); }, Reason::Corrupt, "key file");
    expect_refused([&] { parse_key_and_certificate(key, junk, kPassword); }, Reason::Corrupt, "certificate file");
  }
}

TEST_F(CredentialTest, EmptyInputIsCorrupt) {
  expect_refused([] { parse_pkcs12({}, kPassword); }, Reason::Corrupt, "the PKCS#12 (.pfx) file is empty");
  expect_refused([] { parse_key_and_certificate({}, file("rsa.cer"), kPassword); }, Reason::Corrupt,
                 "the key file is empty");
  expect_refused([] { parse_key_and_certificate(file("rsa.sat.key"), {}, kPassword); }, Reason::Corrupt,
                 "the certificate file is empty");
}

TEST_F(CredentialTest, OversizeInputIsRefusedBeforeParsing) {
  // A valid file followed by padding up to just over the limit.
  Bytes big = file("rsa.pfx");
  big.resize(kMaxCredentialFileBytes + 1, 0);
  expect_refused([&] { parse_pkcs12(big, kPassword); }, Reason::Corrupt, "larger than 1024 KiB");
  expect_refused([&] { parse_key_and_certificate(big, file("rsa.cer"), kPassword); }, Reason::Corrupt, "larger than");
  expect_refused([&] { parse_key_and_certificate(file("rsa.sat.key"), big, kPassword); }, Reason::Corrupt, "larger than");
  // Trailing bytes after a valid file are damage too.
  Bytes padded = file("rsa.pfx");
  padded.push_back(0);
  expect_refused([&] { parse_pkcs12(padded, kPassword); }, Reason::Corrupt, "damaged");
}

TEST_F(CredentialTest, UnsupportedAlgorithmsAreNamed) {
  const char* kAccepted = "(accepted: RSA 2048-4096 bits, EC P-256/P-384)";
  expect_refused([] { pfx("ed448.pfx"); }, Reason::UnsupportedAlgorithm, "unsupported key algorithm ED448");
  expect_refused([] { pair("ed448.plain.der", "ed448.cer"); }, Reason::UnsupportedAlgorithm, "ED448");
  expect_refused([] { pair("ed448.key.pem", "ed448.crt.pem"); }, Reason::UnsupportedAlgorithm, kAccepted);
  expect_refused([] { pair("dsa.plain.der", "dsa.cer"); }, Reason::UnsupportedAlgorithm, "unsupported key algorithm DSA");
  expect_refused([] { pair("rsa1024.plain.der", "rsa1024.cer"); }, Reason::UnsupportedAlgorithm,
                 "unsupported key algorithm RSA-1024");
  expect_refused([] { pair("k1.plain.der", "k1.cer"); }, Reason::UnsupportedAlgorithm,
                 "unsupported key algorithm EC secp256k1");
}

TEST_F(CredentialTest, FilesWithoutAKeyOrACertificateSaySo) {
  expect_refused([] { pfx("nokey.pfx"); }, Reason::NoKey, "holds no private key");
  expect_refused([] { pfx("nocert.pfx"); }, Reason::NoCertificate, "holds no certificate");
  expect_refused([] { pair("rsa.crt.pem", "rsa.cer"); }, Reason::NoKey, "the key file holds no private key");
  expect_refused([] { pair("rsa.cer", "rsa.cer"); }, Reason::NoKey, "the key file holds a certificate");
  expect_refused([] { pair("rsa.sat.key", "rsa.key.pem"); }, Reason::NoCertificate, "holds no certificate");
  expect_refused([] { pair("rsa.sat.key", "rsa.sat.key"); }, Reason::NoCertificate, "holds a private key");
}

TEST_F(CredentialTest, FilesSwappedAreRefusedClearly) {
  // A .pfx given where a .key is expected, and a .key given as a .pfx.
  expect_refused([] { pair("rsa.pfx", "rsa.cer"); }, Reason::Corrupt, "the key file is not a PKCS#8 private key");
  expect_refused([] { pfx("rsa.sat.key"); }, Reason::Corrupt, "the file is not a PKCS#12 (.pfx) file");
}

}  // namespace
}  // namespace firmad
