// Importing a credential onto a real SoftHSM token: it signs, it cannot be read back, and a failed import leaves nothing.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sys/resource.h>

#include <csignal>
#include <string>
#include <vector>

#include "daemon/mx/credential.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/import.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/uri.hpp"
#include "rig.hpp"

using namespace firmad;
using firmad::test::TokenRig;

namespace {

constexpr const char* kPassword = "s3creto IMSS";

// Credentials made with the openssl command, as an employer would have them.
const char* const kMakeCredentials = R"(set -eu
q() { "$@" 2>/dev/null; }
pw="pass:s3creto IMSS"
q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/O=firmad test/CN=IMSS test CA"
for k in rsa ec p384 big; do
  case $k in
    rsa|big) q openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $k.key.pem ;;
    ec) q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $k.key.pem ;;
    p384) q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out $k.key.pem ;;
  esac
  q openssl req -new -key $k.key.pem -subj "/O=EMPRESA DEMO SA DE CV/serialNumber=EDE010101AAA/CN=EMPRESA DEMO $k" -out $k.csr
done
for k in rsa ec p384; do
  q openssl x509 -req -in $k.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out $k.crt.pem
  openssl x509 -in $k.crt.pem -outform DER -out $k.cer
done
# A certificate of about 200 KB (a long extension): too big for a nearly full token.
{ printf 'basicConstraints=CA:FALSE\n1.3.6.1.4.1.55555.1=ASN1:UTF8String:'; head -c 200000 /dev/zero | tr '\0' A; echo; } > big.ext
q openssl x509 -req -in big.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile big.ext -outform DER -out big.cer
openssl pkcs12 -export -inkey rsa.key.pem -in rsa.crt.pem -certfile ca.pem -passout "$pw" -out rsa.pfx
openssl pkcs8 -topk8 -v2 des3 -in ec.key.pem -outform DER -passout "$pw" -out ec.sat.key
openssl pkcs8 -topk8 -nocrypt -in p384.key.pem -outform DER -out p384.der
openssl pkcs8 -topk8 -nocrypt -in big.key.pem -outform DER -out big.der
)";

class Import : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rig_ = new TokenRig();
    const auto made = test::run("mkdir -p " + test::quote(dir().string()) + " && cd " + test::quote(dir().string()) +
                                    " && bash -c " + test::quote(kMakeCredentials),
                                180);
    if (made.exit_code != 0) setup_error_ = "making the credentials failed:\n" + made.out;
  }
  static void TearDownTestSuite() {
    delete rig_;
    rig_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  static test::fs::path dir() { return rig_->dir() / "credentials"; }
  static std::vector<std::uint8_t> bytes(const std::string& name) {
    const std::string s = test::read_file(dir() / name);
    EXPECT_FALSE(s.empty()) << name << " is missing";
    return {s.begin(), s.end()};
  }

  static std::shared_ptr<pkcs11::Module> module() { return pkcs11::Module::shared(TokenRig::kModule); }
  static pkcs11::SlotId slot(pkcs11::Module& m) {
    const auto uri = pkcs11::Uri::parse("pkcs11:token=firmad-demo");
    for (auto s : m.slots_with_token())
      if (uri.matches_token(m, s)) return s;
    throw std::runtime_error("token not found");
  }
  static pkcs11::Session logged_in(pkcs11::Session::Access access = pkcs11::Session::Access::ReadWrite) {
    auto m = module();
    pkcs11::Session s(m, slot(*m), access);
    s.login(TokenRig::kPin);
    return s;
  }

  static std::string uri_of(const pkcs11::Bytes& id) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string uri = "pkcs11:id=";
    for (auto b : id) uri += '%', uri += kHex[b >> 4], uri += kHex[b & 15];
    return uri;
  }

  // Every object on the token with this CKA_ID, of any class (log in to see private ones).
  static std::size_t count_with_id(const pkcs11::Session& s, const pkcs11::Bytes& id) {
    pkcs11::Bytes copy = id;
    CK_ATTRIBUTE match{CKA_ID, copy.data(), copy.size()};
    const auto fn = s.module().fn();
    EXPECT_EQ(fn->C_FindObjectsInit(s.handle(), &match, 1), static_cast<CK_RV>(CKR_OK));
    std::vector<CK_OBJECT_HANDLE> found(64);
    CK_ULONG n = 0;
    EXPECT_EQ(fn->C_FindObjects(s.handle(), found.data(), found.size(), &n), static_cast<CK_RV>(CKR_OK));
    fn->C_FindObjectsFinal(s.handle());
    return n;
  }

  static pkcs11::Bytes der(X509* x) {
    unsigned char* p = nullptr;
    const int len = i2d_X509(x, &p);
    pkcs11::Bytes out(p, p + (len > 0 ? len : 0));
    OPENSSL_free(p);
    return out;
  }
  static pkcs11::Bytes spki(EVP_PKEY* k) {
    unsigned char* p = nullptr;
    const int len = i2d_PUBKEY(k, &p);
    pkcs11::Bytes out(p, p + (len > 0 ? len : 0));
    OPENSSL_free(p);
    return out;
  }
  static pkcs11::Bytes digest(const EVP_MD* md, const std::string& text) {
    pkcs11::Bytes out(EVP_MD_get_size(md));
    EVP_Digest(text.data(), text.size(), out.data(), nullptr, md, nullptr);
    return out;
  }
  // Verifies with OpenSSL against the certificate's own public key.
  static bool verify(X509* cert, const pkcs11::Bytes& dgst, const pkcs11::Bytes& sig, const EVP_MD* md, bool pss) {
    ossl::PkeyCtx ctx(EVP_PKEY_CTX_new(X509_get0_pubkey(cert), nullptr));
    bool ok = ctx && EVP_PKEY_verify_init(ctx.get()) > 0 && EVP_PKEY_CTX_set_signature_md(ctx.get(), md) > 0;
    if (ok && pss) ok = EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING) > 0;
    ok = ok && EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), dgst.data(), dgst.size()) == 1;
    ERR_clear_error();
    return ok;
  }

  // Imports, finds the key back by its new id, and checks what find_key reports.
  static pkcs11::KeyInfo import_and_find(const pkcs11::Session& s, const Credential& c, const std::string& label,
                                         pkcs11::Bytes* id_out = nullptr) {
    const pkcs11::Bytes id = pkcs11::new_object_id(s);
    const auto objects = pkcs11::import_credential(s, c.key.get(), c.certificate.get(), label, id);
    EXPECT_NE(objects.private_key, objects.public_key);
    EXPECT_NE(objects.public_key, objects.certificate);
    EXPECT_EQ(count_with_id(s, id), 3u);
    auto key = pkcs11::find_key(s, pkcs11::Uri::parse(uri_of(id)));
    if (!key) throw std::runtime_error("imported key not found by " + uri_of(id));
    EXPECT_EQ(key->id, id);
    EXPECT_EQ(key->label, label);
    EXPECT_TRUE(key->private_key);
    EXPECT_EQ(key->private_key, objects.private_key);
    EXPECT_EQ(key->certificate, der(c.certificate.get()));
    EXPECT_EQ(key->public_key, spki(X509_get0_pubkey(c.certificate.get())));
    if (id_out) *id_out = id;
    return *key;
  }

  static void sign_and_verify(const pkcs11::Session& s, const pkcs11::KeyInfo& key, X509* cert, pkcs11::Scheme scheme,
                              pkcs11::Hash hash, const EVP_MD* md) {
    const bool pss = scheme == pkcs11::Scheme::RsaPss;
    pkcs11::SignRequest req{scheme, hash, digest(md, "acuse IDSE 2026"), std::nullopt};
    const auto sig = pkcs11::sign(s, *key.private_key, key.type, req);
    EXPECT_TRUE(verify(cert, req.input, sig, md, pss)) << pkcs11::to_string(scheme) << " " << pkcs11::to_string(hash);
    // And not another digest: the check can fail.
    EXPECT_FALSE(verify(cert, digest(md, "acuse IDSE 2027"), sig, md, pss));
  }

  // C_GetAttributeValue's own answer for one attribute.
  static CK_RV raw_get(const pkcs11::Session& s, pkcs11::ObjectHandle o, CK_ATTRIBUTE_TYPE type) {
    std::vector<std::uint8_t> buf(4096);
    CK_ATTRIBUTE a{type, buf.data(), buf.size()};
    return s.module().fn()->C_GetAttributeValue(s.handle(), o, &a, 1);
  }
  static std::optional<bool> bool_attribute(const pkcs11::Session& s, pkcs11::ObjectHandle o, CK_ATTRIBUTE_TYPE type) {
    auto v = s.attribute(o, type);
    if (!v || v->size() != 1) return std::nullopt;
    return (*v)[0] != CK_FALSE;
  }

  static TokenRig* rig_;
  static std::string setup_error_;
};
TokenRig* Import::rig_ = nullptr;
std::string Import::setup_error_;

// Limits the size of any file this process writes, as a token whose storage
// is nearly full would: SoftHSM writes its object files from inside the
// process. Restored on destruction.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &old_);
    // Without this the kernel ends the process (SIGXFSZ) instead of failing the write.
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = old_;
    limit.rlim_cur = bytes;
    ok_ = setrlimit(RLIMIT_FSIZE, &limit) == 0;
  }
  FileSizeLimit(const FileSizeLimit&) = delete;  // restores the limit once
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }
  bool ok() const { return ok_; }

 private:
  rlimit old_{};
  void (*old_handler_)(int) = SIG_DFL;
  bool ok_ = false;
};

TEST_F(Import, RsaPkcs12KeySignsAndVerifiesAgainstItsCertificate) {
  const Credential c = parse_pkcs12(bytes("rsa.pfx"), kPassword);
  auto s = logged_in();
  const auto key = import_and_find(s, c, "imss-rsa");
  EXPECT_EQ(key.type, pkcs11::KeyType::Rsa);
  EXPECT_EQ(key.bits, 2048);
  sign_and_verify(s, key, c.certificate.get(), pkcs11::Scheme::RsaPkcs1, pkcs11::Hash::Sha256, EVP_sha256());
  sign_and_verify(s, key, c.certificate.get(), pkcs11::Scheme::RsaPss, pkcs11::Hash::Sha256, EVP_sha256());
  sign_and_verify(s, key, c.certificate.get(), pkcs11::Scheme::RsaPkcs1, pkcs11::Hash::Sha512, EVP_sha512());
}

TEST_F(Import, SatStyleEcKeySignsAndVerifiesAgainstItsCertificate) {
  const Credential c = parse_key_and_certificate(bytes("ec.sat.key"), bytes("ec.cer"), kPassword);
  auto s = logged_in();
  const auto key = import_and_find(s, c, "sat-ec");
  EXPECT_EQ(key.type, pkcs11::KeyType::Ec);
  EXPECT_EQ(key.curve, "P-256");
  sign_and_verify(s, key, c.certificate.get(), pkcs11::Scheme::Ecdsa, pkcs11::Hash::Sha256, EVP_sha256());
}

TEST_F(Import, P384KeySignsAndVerifiesAgainstItsCertificate) {
  const Credential c = parse_key_and_certificate(bytes("p384.der"), bytes("p384.cer"), "");
  auto s = logged_in();
  const auto key = import_and_find(s, c, "p384");
  EXPECT_EQ(key.curve, "P-384");
  EXPECT_EQ(key.bits, 384);
  sign_and_verify(s, key, c.certificate.get(), pkcs11::Scheme::Ecdsa, pkcs11::Hash::Sha384, EVP_sha384());
}

TEST_F(Import, ImportedPrivateKeysCannotBeReadBack) {
  auto s = logged_in();
  const Credential rsa = parse_pkcs12(bytes("rsa.pfx"), kPassword);
  const Credential ec = parse_key_and_certificate(bytes("ec.sat.key"), bytes("ec.cer"), kPassword);
  const auto rsa_key = import_and_find(s, rsa, "rsa-sensitive");
  const auto ec_key = import_and_find(s, ec, "ec-sensitive");

  for (CK_ATTRIBUTE_TYPE secret : {CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2,
                                   CKA_COEFFICIENT}) {
    EXPECT_EQ(raw_get(s, *rsa_key.private_key, secret), static_cast<CK_RV>(CKR_ATTRIBUTE_SENSITIVE)) << secret;
    EXPECT_FALSE(s.attribute(*rsa_key.private_key, secret)) << secret;
  }
  EXPECT_EQ(raw_get(s, *ec_key.private_key, CKA_VALUE), static_cast<CK_RV>(CKR_ATTRIBUTE_SENSITIVE));
  EXPECT_FALSE(s.attribute(*ec_key.private_key, CKA_VALUE));
  // The public parts stay readable: the check above is about secrecy, not a broken object.
  EXPECT_EQ(raw_get(s, *rsa_key.private_key, CKA_MODULUS), static_cast<CK_RV>(CKR_OK));

  for (const auto* key : {&rsa_key, &ec_key}) {
    const auto h = *key->private_key;
    EXPECT_EQ(bool_attribute(s, h, CKA_SENSITIVE), true);
    EXPECT_EQ(bool_attribute(s, h, CKA_EXTRACTABLE), false);
    EXPECT_EQ(bool_attribute(s, h, CKA_PRIVATE), true);
    EXPECT_EQ(bool_attribute(s, h, CKA_TOKEN), true);
    EXPECT_EQ(bool_attribute(s, h, CKA_SIGN), true);
    // An imported key was once outside the token, so NEVER_EXTRACTABLE may
    // honestly be false; it must be readable either way.
    EXPECT_TRUE(bool_attribute(s, h, CKA_NEVER_EXTRACTABLE).has_value());
    // And the protection cannot be switched off again.
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE extractable{CKA_EXTRACTABLE, &yes, sizeof yes};
    CK_ATTRIBUTE sensitive{CKA_SENSITIVE, &no, sizeof no};
    EXPECT_NE(s.module().fn()->C_SetAttributeValue(s.handle(), h, &extractable, 1), static_cast<CK_RV>(CKR_OK));
    EXPECT_NE(s.module().fn()->C_SetAttributeValue(s.handle(), h, &sensitive, 1), static_cast<CK_RV>(CKR_OK));
    EXPECT_EQ(bool_attribute(s, h, CKA_EXTRACTABLE), false);
    EXPECT_EQ(bool_attribute(s, h, CKA_SENSITIVE), true);
  }
}

TEST_F(Import, ImportedObjectsStayOnTheToken) {
  pkcs11::Bytes id;
  const Credential c = parse_pkcs12(bytes("rsa.pfx"), kPassword);
  {
    auto s = logged_in();
    import_and_find(s, c, "persistent", &id);
  }
  // A new, read-only session: public key and certificate without login, the private key after.
  auto m = module();
  pkcs11::Session s(m, slot(*m));
  s.logout();
  auto before = pkcs11::find_key(s, pkcs11::Uri::parse(uri_of(id)));
  ASSERT_TRUE(before);
  EXPECT_FALSE(before->private_key);
  EXPECT_EQ(before->certificate, der(c.certificate.get()));
  s.login(TokenRig::kPin);
  auto after = pkcs11::find_key(s, pkcs11::Uri::parse(uri_of(id)));
  ASSERT_TRUE(after && after->private_key);
  sign_and_verify(s, *after, c.certificate.get(), pkcs11::Scheme::RsaPkcs1, pkcs11::Hash::Sha256, EVP_sha256());
}

TEST_F(Import, StorageFailureAfterThePrivateKeyLeavesNothingBehind) {
  const Credential big = parse_key_and_certificate(bytes("big.der"), bytes("big.cer"), "");
  const Credential small = parse_key_and_certificate(bytes("p384.der"), bytes("p384.cer"), "");
  auto s = logged_in();
  const pkcs11::Bytes id = pkcs11::new_object_id(s);
  ASSERT_EQ(count_with_id(s, id), 0u);
  {
    // Room for key objects (a few KB each), not for a 200 KB certificate.
    FileSizeLimit limit(64 * 1024);
    ASSERT_TRUE(limit.ok());
    try {
      pkcs11::import_credential(s, big.key.get(), big.certificate.get(), "too-big", id);
      ADD_FAILURE() << "the import succeeded on a full token";
    } catch (const pkcs11::Error& e) {
      // The certificate is created last: the key objects were on the token when it failed.
      EXPECT_EQ(e.call(), "C_CreateObject(certificate)") << e.what();
    }
    EXPECT_EQ(count_with_id(s, id), 0u) << "the private and public key were not taken off the token again";
    // The limit alone does not stop an import: small objects still fit.
    const pkcs11::Bytes other = pkcs11::new_object_id(s);
    EXPECT_NO_THROW(pkcs11::import_credential(s, small.key.get(), small.certificate.get(), "fits", other));
    EXPECT_EQ(count_with_id(s, other), 3u);
  }
  EXPECT_EQ(count_with_id(s, id), 0u);
  EXPECT_FALSE(pkcs11::find_key(s, pkcs11::Uri::parse("pkcs11:object=too-big")));
}

TEST_F(Import, ReadOnlySessionIsRefusedAndLeavesNothing) {
  const Credential c = parse_pkcs12(bytes("rsa.pfx"), kPassword);
  auto s = logged_in(pkcs11::Session::Access::ReadOnly);
  const pkcs11::Bytes id = pkcs11::new_object_id(s);
  try {
    pkcs11::import_credential(s, c.key.get(), c.certificate.get(), "read-only", id);
    FAIL() << "a read-only session imported a key";
  } catch (const pkcs11::Error& e) {
    EXPECT_EQ(e.call(), "C_CreateObject(private key)");
    EXPECT_EQ(e.code_name(), "CKR_SESSION_READ_ONLY");
  }
  EXPECT_EQ(count_with_id(s, id), 0u);
}

TEST_F(Import, ImportWithoutLoginIsRefusedAndLeavesNothing) {
  const Credential c = parse_pkcs12(bytes("rsa.pfx"), kPassword);
  auto m = module();
  pkcs11::Session s(m, slot(*m), pkcs11::Session::Access::ReadWrite);
  s.logout();
  ASSERT_FALSE(s.logged_in());
  const pkcs11::Bytes id = pkcs11::new_object_id(s);
  try {
    pkcs11::import_credential(s, c.key.get(), c.certificate.get(), "no-login", id);
    FAIL() << "imported without login";
  } catch (const pkcs11::Error& e) {
    EXPECT_EQ(e.code_name(), "CKR_USER_NOT_LOGGED_IN");
    EXPECT_EQ(e.fault(), pkcs11::Fault::NotLoggedIn);
  }
  s.login(TokenRig::kPin);
  EXPECT_EQ(count_with_id(s, id), 0u);
}

TEST_F(Import, CertificateOfAnotherKeyIsRefusedBeforeTheToken) {
  const Credential rsa = parse_pkcs12(bytes("rsa.pfx"), kPassword);
  const Credential ec = parse_key_and_certificate(bytes("ec.sat.key"), bytes("ec.cer"), kPassword);
  auto s = logged_in();
  const pkcs11::Bytes id = pkcs11::new_object_id(s);
  EXPECT_THROW(pkcs11::import_credential(s, rsa.key.get(), ec.certificate.get(), "mismatch", id), std::invalid_argument);
  EXPECT_THROW(pkcs11::import_credential(s, rsa.key.get(), rsa.certificate.get(), "no-id", {}), std::invalid_argument);
  EXPECT_EQ(count_with_id(s, id), 0u);
  EXPECT_EQ(ERR_peek_error(), 0ul);
}

TEST_F(Import, NewObjectIdIsRandomAndUnused) {
  auto s = logged_in();
  // The count sees the token's existing keys, so a zero below means something.
  EXPECT_GE(count_with_id(s, {0x01}), 2u);
  const auto a = pkcs11::new_object_id(s);
  const auto b = pkcs11::new_object_id(s);
  EXPECT_EQ(a.size(), 8u);
  EXPECT_NE(a, b);
  EXPECT_EQ(count_with_id(s, a), 0u);
  EXPECT_EQ(count_with_id(s, b), 0u);
}

}  // namespace
