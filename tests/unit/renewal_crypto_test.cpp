// Unit tests of what a renewal builds and checks with OpenSSL: subjects, CSRs, the acceptance, issued certificates.
#include <gtest/gtest.h>
#include <openssl/cms.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/renewal/crypto.hpp"
#include "pkcs11/openssl.hpp"
#include "protocol/base64.hpp"

namespace firmad::renewal {
namespace {

namespace fs = std::filesystem;

using NamePtr = std::unique_ptr<X509_NAME, ossl::Deleter<X509_NAME_free>>;
using ReqPtr = std::unique_ptr<X509_REQ, ossl::Deleter<X509_REQ_free>>;
using Pkcs7Ptr = std::unique_ptr<PKCS7, ossl::Deleter<PKCS7_free>>;
using StorePtr = std::unique_ptr<X509_STORE, ossl::Deleter<X509_STORE_free>>;

constexpr std::time_t kDay = 86400;
// "Now" for every validity check: 2026-03-01T00:00:00Z.
constexpr std::time_t kNow = 1772323200;

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }
std::string text_of(const Bytes& b) { return std::string(b.begin(), b.end()); }

// Keys are made once: generating them is the slow part.
EVP_PKEY* p256(int which) {
  static ossl::Pkey keys[] = {ossl::Pkey(EVP_EC_gen("P-256")), ossl::Pkey(EVP_EC_gen("P-256")),
                              ossl::Pkey(EVP_EC_gen("P-256")), ossl::Pkey(EVP_EC_gen("P-256"))};
  return keys[which].get();
}
EVP_PKEY* p384() {
  static ossl::Pkey key(EVP_EC_gen("P-384"));
  return key.get();
}
EVP_PKEY* rsa2048() {
  static ossl::Pkey key(EVP_RSA_gen(2048));
  return key.get();
}

Bytes spki_of(EVP_PKEY* key) {
  unsigned char* out = nullptr;
  const int len = i2d_PUBKEY(key, &out);
  if (len <= 0) throw std::runtime_error("i2d_PUBKEY: " + ossl::error_text());
  Bytes der(out, out + len);
  OPENSSL_free(out);
  return der;
}

Bytes der_of(X509* x) {
  unsigned char* out = nullptr;
  const int len = i2d_X509(x, &out);
  if (len <= 0) throw std::runtime_error("i2d_X509: " + ossl::error_text());
  Bytes der(out, out + len);
  OPENSSL_free(out);
  return der;
}

// The one-line text OpenSSL makes of a DER name ("/C=MX/CN=x").
std::string oneline_of(const Bytes& der_name) {
  const unsigned char* p = der_name.data();
  NamePtr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(der_name.size())));
  if (!name || p != der_name.data() + der_name.size()) return "<not a DER name>";
  char buf[2048];
  return X509_NAME_oneline(name.get(), buf, sizeof buf);
}

// The UTF-8 values of a DER name's entries, in order.
std::vector<std::string> values_of(const Bytes& der_name) {
  const unsigned char* p = der_name.data();
  NamePtr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(der_name.size())));
  std::vector<std::string> out;
  for (int i = 0; name && i < X509_NAME_entry_count(name.get()); ++i) {
    unsigned char* utf8 = nullptr;
    const int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name.get(), i)));
    if (len < 0) continue;
    out.emplace_back(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(len));
    OPENSSL_free(utf8);
  }
  return out;
}

struct CertSpec {
  std::string cn;
  EVP_PKEY* key = nullptr;         // the certified public key
  const X509* issuer = nullptr;    // nullptr: self-signed
  EVP_PKEY* issuer_key = nullptr;  // signs; nullptr: `key`
  std::time_t not_before = kNow - kDay;
  std::time_t not_after = kNow + 365 * kDay;
  bool ca = false;
  long serial = 1;
};

void add_extension(X509* x, X509V3_CTX* ctx, int nid, const char* value) {
  std::unique_ptr<X509_EXTENSION, ossl::Deleter<X509_EXTENSION_free>> ext(
      X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext || X509_add_ext(x, ext.get(), -1) != 1) throw std::runtime_error("extension: " + ossl::error_text());
}

ossl::X509Ptr make_certificate(const CertSpec& spec) {
  ossl::X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), X509_VERSION_3) != 1 ||
      ASN1_INTEGER_set(X509_get_serialNumber(x.get()), spec.serial) != 1 ||
      !ASN1_TIME_set(X509_getm_notBefore(x.get()), spec.not_before) ||
      !ASN1_TIME_set(X509_getm_notAfter(x.get()), spec.not_after) ||
      X509_NAME_add_entry_by_txt(X509_get_subject_name(x.get()), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(spec.cn.c_str()), -1, -1, 0) != 1 ||
      X509_set_issuer_name(x.get(), spec.issuer ? X509_get_subject_name(spec.issuer) : X509_get_subject_name(x.get())) != 1 ||
      X509_set_pubkey(x.get(), spec.key) != 1)
    throw std::runtime_error("certificate fields: " + ossl::error_text());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, spec.issuer ? const_cast<X509*>(spec.issuer) : x.get(), x.get(), nullptr, nullptr, 0);
  add_extension(x.get(), &ctx, NID_basic_constraints, spec.ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  add_extension(x.get(), &ctx, NID_key_usage, spec.ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  add_extension(x.get(), &ctx, NID_subject_key_identifier, "hash");
  if (X509_sign(x.get(), spec.issuer_key ? spec.issuer_key : spec.key, EVP_sha256()) <= 0)
    throw std::runtime_error("X509_sign: " + ossl::error_text());
  return x;
}

std::string pem_of(X509* x) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), x) != 1) throw std::runtime_error("PEM_write_bio_X509");
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio.get(), &mem);
  return std::string(mem->data, mem->length);
}

// DER of a PKCS#7 SignedData holding `certs` and nothing else, as
// `openssl crl2pkcs7 -nocrl` makes one (EST's certs-only).
Bytes certs_only(const std::vector<X509*>& certs) {
  Pkcs7Ptr p7(PKCS7_new());
  if (!p7 || PKCS7_set_type(p7.get(), NID_pkcs7_signed) != 1 || PKCS7_content_new(p7.get(), NID_pkcs7_data) != 1)
    throw std::runtime_error("PKCS7: " + ossl::error_text());
  for (X509* x : certs)
    if (PKCS7_add_certificate(p7.get(), x) != 1) throw std::runtime_error("PKCS7_add_certificate");
  unsigned char* out = nullptr;
  const int len = i2d_PKCS7(p7.get(), &out);
  if (len <= 0) throw std::runtime_error("i2d_PKCS7: " + ossl::error_text());
  Bytes der(out, out + len);
  OPENSSL_free(out);
  return der;
}

std::string with_line_breaks(const std::string& b64, std::string_view eol) {
  std::string out;
  for (std::size_t i = 0; i < b64.size(); i += 64) out += b64.substr(i, 64) + std::string(eol);
  return out;
}

// A root CA, an intermediate under it, and a leaf under that; plus their
// files in a temporary directory of the test's own.
class RenewalCryptoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/firmad-renewal-crypto-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << "mkdtemp: " << std::strerror(errno);
    dir_ = tmpl;
    root_ = make_certificate({.cn = "Test Root CA", .key = p256(0), .ca = true, .serial = 10});
    intermediate_ = make_certificate(
        {.cn = "Test Issuing CA", .key = p256(1), .issuer = root_.get(), .issuer_key = p256(0), .ca = true, .serial = 11});
    leaf_ = make_certificate({.cn = "EMPRESA EJEMPLO", .key = p256(2), .issuer = intermediate_.get(), .issuer_key = p256(1)});
    root_pem_ = write("root.pem", pem_of(root_.get()));
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  std::string write(const std::string& name, std::string_view text) {
    const fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    EXPECT_TRUE(out.good()) << "could not write " << path;
    return path.string();
  }

  // Asserts that verify_issued refuses and says `why`.
  void expect_refused(const Bytes& cert, const std::vector<Bytes>& intermediates, const Bytes& spki,
                      const std::vector<std::string>& anchors, std::time_t now, std::string_view why) {
    try {
      verify_issued(cert, intermediates, spki, anchors, now);
      ADD_FAILURE() << "verify_issued accepted the certificate";
    } catch (const VerificationError& e) {
      EXPECT_NE(std::string_view(e.what()).find(why), std::string_view::npos) << "'" << why << "' not in: " << e.what();
    }
  }

  fs::path dir_;
  ossl::X509Ptr root_, intermediate_, leaf_;
  std::string root_pem_;
};

// ---- parse_subject -------------------------------------------------------------

TEST(ParseSubjectTest, ReadsAnOpenSslOneLineSubject) {
  const std::string subject = "/C=MX/O=Empresa Ejemplo SA de CV/CN=EMPRESA EJEMPLO/serialNumber=EEJ010101AAA";
  EXPECT_EQ(oneline_of(parse_subject(subject)), subject);
}

TEST(ParseSubjectTest, AcceptsLongNamesAndDottedOids) {
  EXPECT_EQ(oneline_of(parse_subject("/commonName=x/2.5.4.10=y/1.3.6.1.4.1.99999.1=z")), "/CN=x/O=y/1.3.6.1.4.1.99999.1=z");
}

TEST(ParseSubjectTest, KeepsUtf8AndPlusSignsInValues) {
  EXPECT_EQ(values_of(parse_subject("/CN=José Ñúñez/O=A+B")), (std::vector<std::string>{"José Ñúñez", "A+B"}));
}

TEST(ParseSubjectTest, ABackslashEscapesTheNextCharacter) {
  // SAT subjects hold " / " inside values, as `openssl req -subj` writes them.
  EXPECT_EQ(values_of(parse_subject("/x500UniqueIdentifier=AAA010101AAA \\/ HEGT7610034S2/serialNumber= \\/ HEGT761003MDFRNN09")),
            (std::vector<std::string>{"AAA010101AAA / HEGT7610034S2", " / HEGT761003MDFRNN09"}));
  EXPECT_EQ(values_of(parse_subject("/CN=back\\\\slash/O=a\\=b=c")), (std::vector<std::string>{"back\\slash", "a=b=c"}));
  EXPECT_THROW(parse_subject("/CN=dangling\\"), std::invalid_argument);
}

TEST(ParseSubjectTest, RefusesAnEmptyOrSlashlessSubject) {
  for (std::string_view s : {"", "CN=Nombre", " /CN=x"}) EXPECT_THROW(parse_subject(s), std::invalid_argument) << s;
}

TEST(ParseSubjectTest, RefusesAPartThatIsNotTypeEqualsValue) {
  for (std::string_view s : {"/", "/CN", "/CN=", "/=x", "/C=MX//CN=x", "/C=MX/", "/C=MX/CN"}) {
    try {
      parse_subject(s);
      ADD_FAILURE() << "accepted " << s;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string_view(e.what()).find("is not of the form type=value"), std::string_view::npos) << e.what();
    }
  }
}

TEST(ParseSubjectTest, RefusesAnUnknownAttributeType) {
  try {
    parse_subject("/C=MX/XX=y");
    ADD_FAILURE() << "accepted XX";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string_view(e.what()).find("unknown attribute type 'XX'"), std::string_view::npos) << e.what();
  }
}

TEST(ParseSubjectTest, RefusesAValueOpenSslRefuses) {
  const std::string cn65 = "/CN=" + std::string(65, 'a');  // CN is at most 64 characters
  EXPECT_NO_THROW(parse_subject("/CN=" + std::string(64, 'a')));
  for (std::string_view s : {std::string_view("/C=MEX"), std::string_view("/C=M"), std::string_view("/CN=\xff\xfe"),
                             std::string_view(cn65)}) {
    try {
      parse_subject(s);
      ADD_FAILURE() << "accepted " << s;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string_view(e.what()).find("is not a valid"), std::string_view::npos) << e.what();
    }
  }
}

TEST(ParseSubjectTest, RefusesControlCharacters) {
  for (std::string_view s : {"/CN=a\nb", "/CN=a\tb", "/CN=a\x7f", "/CN=a\rb"})
    EXPECT_THROW(parse_subject(s), std::invalid_argument);
  EXPECT_THROW(parse_subject(std::string_view("/CN=a\0b", 7)), std::invalid_argument);
}

TEST(ParseSubjectTest, RefusesAnOversizeSubjectButNotOneAtTheLimit) {
  std::string subject;
  for (int i = 0; i < 16; ++i) subject += "/OU=" + std::string(60, static_cast<char>('a' + i));
  ASSERT_EQ(subject.size(), 1024u);
  EXPECT_EQ(values_of(parse_subject(subject)).size(), 16u);
  EXPECT_THROW(parse_subject(subject + "x"), std::invalid_argument);
}

// ---- certificates_from -----------------------------------------------------------

TEST_F(RenewalCryptoTest, ReadsADerCertificate) {
  const Bytes der = der_of(leaf_.get());
  EXPECT_EQ(certificates_from(text_of(der)), std::vector<Bytes>{der});
}

TEST_F(RenewalCryptoTest, ReadsOneOrSeveralPemCertificatesInOrder) {
  const Bytes leaf = der_of(leaf_.get()), inter = der_of(intermediate_.get()), root = der_of(root_.get());
  EXPECT_EQ(certificates_from(pem_of(leaf_.get())), std::vector<Bytes>{leaf});
  EXPECT_EQ(certificates_from("issued:\n" + pem_of(leaf_.get()) + "chain:\n" + pem_of(intermediate_.get()) +
                              pem_of(root_.get()) + "end\n"),
            (std::vector<Bytes>{leaf, inter, root}));
  // CRLF line ends, as a Windows CA writes them.
  std::string crlf;
  for (char c : pem_of(leaf_.get())) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  EXPECT_EQ(certificates_from(crlf), std::vector<Bytes>{leaf});
}

TEST_F(RenewalCryptoTest, ReadsABase64CertsOnlyPkcs7WithOrWithoutLineBreaks) {
  const Bytes leaf = der_of(leaf_.get()), inter = der_of(intermediate_.get());
  const std::string b64 = protocol::base64_encode(certs_only({leaf_.get(), intermediate_.get()}));
  EXPECT_EQ(certificates_from(b64), (std::vector<Bytes>{leaf, inter}));
  EXPECT_EQ(certificates_from(with_line_breaks(b64, "\n")), (std::vector<Bytes>{leaf, inter}));
  EXPECT_EQ(certificates_from(with_line_breaks(b64, "\r\n")), (std::vector<Bytes>{leaf, inter}));
  EXPECT_EQ(certificates_from("\n  " + b64 + "\t\n"), (std::vector<Bytes>{leaf, inter}));
}

TEST_F(RenewalCryptoTest, ReadsWhatTheOpenSslCommandLineMakes) {
  const std::string pem = write("leaf.pem", pem_of(leaf_.get()));
  const std::string p7 = (dir_ / "leaf.p7b").string();
  ASSERT_EQ(std::system(("openssl crl2pkcs7 -nocrl -certfile " + pem + " -outform DER | base64 > " + p7).c_str()), 0);
  std::ifstream in(p7, std::ios::binary);
  const std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(certificates_from(body), std::vector<Bytes>{der_of(leaf_.get())});
}

TEST_F(RenewalCryptoTest, RefusesAnAnswerWithoutACertificate) {
  for (std::string_view body : {std::string_view(""), std::string_view("\r\n"), std::string_view("0"),
                                std::string_view("<html>Service Unavailable</html>"), std::string_view("ESTADO=EMITIDO\n"),
                                std::string_view("\x30\x82\x01\x00", 4), std::string_view("AAAA"), std::string_view("====")})
    EXPECT_THROW(certificates_from(body), VerificationError) << "'" << body << "'";
}

TEST_F(RenewalCryptoTest, RefusesATruncatedDerCertificateOrOneWithTrailingBytes) {
  const std::string der = text_of(der_of(leaf_.get()));
  for (std::size_t cut : {std::size_t{1}, std::size_t{2}, std::size_t{10}, der.size() / 2, der.size() - 1})
    EXPECT_THROW(certificates_from(der.substr(0, cut)), VerificationError) << "cut at " << cut;
  EXPECT_THROW(certificates_from(der + '\0'), VerificationError);
}

TEST_F(RenewalCryptoTest, RefusesATruncatedPem) {
  const std::string pem = pem_of(leaf_.get());
  for (std::size_t cut : {std::size_t{30}, pem.size() / 2, pem.size() - 20}) {
    try {
      certificates_from(pem.substr(0, cut));
      ADD_FAILURE() << "accepted a PEM cut at " << cut;
    } catch (const VerificationError& e) {
      EXPECT_NE(std::string_view(e.what()).find("damaged or cut short"), std::string_view::npos) << e.what();
    }
  }
}

TEST_F(RenewalCryptoTest, RefusesAPemChainWhoseLastCertificateIsCutShort) {
  // Half a chain is a damaged answer, not a shorter chain.
  const std::string second = pem_of(intermediate_.get());
  EXPECT_THROW(certificates_from(pem_of(leaf_.get()) + second.substr(0, second.size() / 2)), VerificationError);
  std::string damaged = pem_of(leaf_.get()) + second;
  damaged[damaged.size() - 100] = '*';
  EXPECT_THROW(certificates_from(damaged), VerificationError);
}

TEST_F(RenewalCryptoTest, RefusesAPkcs7WithoutCertificatesOrThatIsNotCertsOnly) {
  EXPECT_THROW(certificates_from(protocol::base64_encode(certs_only({}))), VerificationError);
  // Truncated, or with bytes after it.
  const Bytes p7 = certs_only({leaf_.get()});
  EXPECT_THROW(certificates_from(protocol::base64_encode(Bytes(p7.begin(), p7.end() - 1))), VerificationError);
  Bytes longer = p7;
  longer.push_back(0);
  EXPECT_THROW(certificates_from(protocol::base64_encode(longer)), VerificationError);
  // base64 of a certificate (not of a PKCS#7) is not one of the accepted forms.
  EXPECT_THROW(certificates_from(protocol::base64_encode(der_of(leaf_.get()))), VerificationError);
  // Base64 with its padding cut off.
  const std::string b64 = protocol::base64_encode(p7);
  EXPECT_THROW(certificates_from(b64.substr(0, b64.size() - 3)), VerificationError);
}

// ---- to_pem, public_key_of, certificate_subject ------------------------------------

TEST_F(RenewalCryptoTest, ToPemRoundTripsThroughOpenSsl) {
  const Bytes der = der_of(leaf_.get());
  const std::string pem = to_pem(der);
  EXPECT_EQ(pem.rfind("-----BEGIN CERTIFICATE-----\n", 0), 0u);
  ossl::Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ossl::X509Ptr back(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(back) << ossl::error_text();
  EXPECT_EQ(der_of(back.get()), der);
  EXPECT_EQ(pem, pem_of(leaf_.get()));  // 64-column lines, like OpenSSL's own
  EXPECT_EQ(certificates_from(to_pem(der)), std::vector<Bytes>{der});
  EXPECT_EQ(to_pem(bytes_of("abc"), "X"), "-----BEGIN X-----\nYWJj\n-----END X-----\n");
  EXPECT_EQ(to_pem({}, "X"), "-----BEGIN X-----\n-----END X-----\n");
}

TEST_F(RenewalCryptoTest, ReadsTheSubjectAndPublicKeyOfACertificate) {
  const Bytes der = der_of(leaf_.get());
  EXPECT_EQ(public_key_of(der), spki_of(p256(2)));
  EXPECT_EQ(certificate_subject(der), parse_subject("/CN=EMPRESA EJEMPLO"));
  EXPECT_THROW(public_key_of(bytes_of("garbage")), VerificationError);
  EXPECT_THROW(certificate_subject({}), VerificationError);
}

// ---- verify_issued ---------------------------------------------------------------

TEST_F(RenewalCryptoTest, AcceptsACertificateThatChainsToTheAnchorAndReturnsTheChainWithIt) {
  const std::vector<Bytes> chain =
      verify_issued(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {root_pem_}, kNow);
  EXPECT_EQ(chain, (std::vector<Bytes>{der_of(intermediate_.get()), der_of(root_.get())}));
}

TEST_F(RenewalCryptoTest, AcceptsACertificateIssuedByTheAnchorItself) {
  ossl::X509Ptr direct = make_certificate({.cn = "direct", .key = p256(2), .issuer = root_.get(), .issuer_key = p256(0)});
  EXPECT_EQ(verify_issued(der_of(direct.get()), {}, spki_of(p256(2)), {root_pem_}, kNow), std::vector<Bytes>{der_of(root_.get())});
}

TEST_F(RenewalCryptoTest, FindsTheAnchorInAnyOfSeveralFiles) {
  ossl::X509Ptr other = make_certificate({.cn = "Other Root", .key = p256(3), .ca = true, .serial = 12});
  const std::string other_pem = write("other.pem", pem_of(other.get()));
  EXPECT_NO_THROW(verify_issued(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {other_pem, root_pem_}, kNow));
}

TEST_F(RenewalCryptoTest, RefusesACertificateForAnotherKey) {
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(3)), {root_pem_}, kNow,
                 "for another key");
}

TEST_F(RenewalCryptoTest, RefusesAnExpiredCertificate) {
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {root_pem_}, kNow + 366 * kDay,
                 "has expired (notAfter 2027-03-01T00:00:00Z)");
}

TEST_F(RenewalCryptoTest, RefusesACertificateNotValidYet) {
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {root_pem_}, kNow - 2 * kDay,
                 "not valid yet (notBefore 2026-02-28T00:00:00Z)");
}

TEST_F(RenewalCryptoTest, RefusesACertificateWhoseIntermediateHasExpired) {
  ossl::X509Ptr old_ca = make_certificate({.cn = "Test Issuing CA", .key = p256(1), .issuer = root_.get(), .issuer_key = p256(0),
                                           .not_before = kNow - 30 * kDay, .not_after = kNow - kDay, .ca = true, .serial = 13});
  expect_refused(der_of(leaf_.get()), {der_of(old_ca.get())}, spki_of(p256(2)), {root_pem_}, kNow, "certificate has expired");
}

TEST_F(RenewalCryptoTest, RefusesACertificateFromAnUntrustedIssuer) {
  ossl::X509Ptr rogue_root = make_certificate({.cn = "Test Root CA", .key = p256(3), .ca = true, .serial = 10});
  ossl::X509Ptr rogue = make_certificate({.cn = "EMPRESA EJEMPLO", .key = p256(2), .issuer = rogue_root.get(), .issuer_key = p256(3)});
  expect_refused(der_of(rogue.get()), {der_of(rogue_root.get())}, spki_of(p256(2)), {root_pem_}, kNow,
                 "does not chain to a configured trust anchor");
  // Self-signed, or missing its intermediate: no better.
  ossl::X509Ptr self = make_certificate({.cn = "self", .key = p256(2)});
  expect_refused(der_of(self.get()), {}, spki_of(p256(2)), {root_pem_}, kNow, "does not chain");
  expect_refused(der_of(leaf_.get()), {}, spki_of(p256(2)), {root_pem_}, kNow, "unable to get local issuer certificate");
}

TEST_F(RenewalCryptoTest, RefusesWithoutTrustAnchors) {
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {}, kNow, "no trust anchors");
}

TEST_F(RenewalCryptoTest, RefusesWhenAnAnchorFileIsMissingEmptyOrNotPem) {
  const std::string missing = (dir_ / "missing.pem").string();
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {root_pem_, missing}, kNow,
                 "cannot read the trust anchors in " + missing);
  const std::string empty = write("empty.pem", "");
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {empty}, kNow,
                 "cannot read the trust anchors in " + empty);
  const std::string garbage = write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
  expect_refused(der_of(leaf_.get()), {der_of(intermediate_.get())}, spki_of(p256(2)), {garbage}, kNow,
                 "cannot read the trust anchors in " + garbage);
}

TEST_F(RenewalCryptoTest, RefusesGarbageAsTheCertificateOrAnIntermediate) {
  expect_refused({}, {}, spki_of(p256(2)), {root_pem_}, kNow, "not an X.509 certificate");
  expect_refused(bytes_of("garbage"), {}, spki_of(p256(2)), {root_pem_}, kNow, "not an X.509 certificate");
  expect_refused(der_of(leaf_.get()), {bytes_of("garbage")}, spki_of(p256(2)), {root_pem_}, kNow, "not an X.509 certificate");
}

// ---- build_csr and sign_acceptance ------------------------------------------------

ReqPtr parse_csr(const Bytes& der) {
  const unsigned char* p = der.data();
  ReqPtr req(d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));
  EXPECT_TRUE(req && p == der.data() + der.size()) << "not exactly one DER CSR";
  return req;
}

TEST(BuildCsrTest, MakesARequestSignedByTheKeyForItsSubject) {
  const Bytes subject = parse_subject("/C=MX/O=Empresa/CN=Nombre");
  ReqPtr req = parse_csr(build_csr(spki_of(p256(0)), subject, p256(0)));
  ASSERT_TRUE(req);
  EXPECT_EQ(X509_REQ_verify(req.get(), p256(0)), 1) << ossl::error_text();
  EXPECT_NE(X509_REQ_verify(req.get(), p256(1)), 1);
  ERR_clear_error();
  char buf[256];
  EXPECT_STREQ(X509_NAME_oneline(X509_REQ_get_subject_name(req.get()), buf, sizeof buf), "/C=MX/O=Empresa/CN=Nombre");
  EXPECT_EQ(X509_REQ_get_signature_nid(req.get()), NID_ecdsa_with_SHA256);
  ossl::Pkey pub(X509_REQ_get_pubkey(req.get()));
  EXPECT_EQ(spki_of(pub.get()), spki_of(p256(0)));
}

TEST(BuildCsrTest, UsesSha384ForP384AndSha256ForRsa) {
  const Bytes subject = parse_subject("/CN=x");
  ReqPtr ec = parse_csr(build_csr(spki_of(p384()), subject, p384()));
  ASSERT_TRUE(ec);
  EXPECT_EQ(X509_REQ_get_signature_nid(ec.get()), NID_ecdsa_with_SHA384);
  EXPECT_EQ(X509_REQ_verify(ec.get(), p384()), 1) << ossl::error_text();
  ReqPtr rsa = parse_csr(build_csr(spki_of(rsa2048()), subject, rsa2048()));
  ASSERT_TRUE(rsa);
  EXPECT_EQ(X509_REQ_get_signature_nid(rsa.get()), NID_sha256WithRSAEncryption);
  EXPECT_EQ(X509_REQ_verify(rsa.get(), rsa2048()), 1) << ossl::error_text();
}

TEST(BuildCsrTest, RefusesAGarbageSubjectOrPublicKey) {
  const Bytes subject = parse_subject("/CN=x");
  EXPECT_THROW(build_csr(spki_of(p256(0)), bytes_of("garbage"), p256(0)), std::runtime_error);
  EXPECT_THROW(build_csr(spki_of(p256(0)), {}, p256(0)), std::runtime_error);
  EXPECT_THROW(build_csr(bytes_of("garbage"), subject, p256(0)), std::runtime_error);
  EXPECT_THROW(build_csr({}, subject, p256(0)), std::runtime_error);
  ERR_clear_error();
}

void free_stack(STACK_OF(X509) * s) { sk_X509_free(s); }  // the certificates are not owned

// CMS_verify's answer for `cms_der` with `signer` trusted, the content put in
// `content`. With `instead`, that certificate stands in for the signer's own
// (which the message carries).
int verify_cms(const Bytes& cms_der, X509* signer, std::string& content, unsigned flags = 0, X509* instead = nullptr) {
  const unsigned char* p = cms_der.data();
  ossl::Cms cms(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(cms_der.size())));
  if (!cms || p != cms_der.data() + cms_der.size()) return -1;
  StorePtr store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), signer);
  std::unique_ptr<STACK_OF(X509), ossl::Deleter<free_stack>> certs(sk_X509_new_null());
  if (instead) {
    sk_X509_push(certs.get(), instead);
    flags |= CMS_NOINTERN;
  }
  ossl::Bio out(BIO_new(BIO_s_mem()));
  const int ok = CMS_verify(cms.get(), certs.get(), store.get(), nullptr, out.get(), CMS_BINARY | flags);
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(out.get(), &mem);
  content.assign(mem->data, mem->length);
  ERR_clear_error();
  return ok;
}

TEST(SignAcceptanceTest, MakesAnAttachedSignatureThatVerifiesWithTheCertificate) {
  ossl::X509Ptr cert = make_certificate({.cn = "firmante", .key = p256(0)});
  const std::string text = "ACEPTO los terminos y condiciones del certificado digital IMSS";
  const Bytes cms = sign_acceptance(text, der_of(cert.get()), p256(0));
  std::string content;
  EXPECT_EQ(verify_cms(cms, cert.get(), content), 1);
  EXPECT_EQ(content, text);
  // The same name and serial with another key: the signature is not its.
  ossl::X509Ptr impostor = make_certificate({.cn = "firmante", .key = p256(1)});
  EXPECT_NE(verify_cms(cms, impostor.get(), content, 0, impostor.get()), 1);
}

TEST(SignAcceptanceTest, SignsWithAnExpiredCertificate) {
  ossl::X509Ptr expired =
      make_certificate({.cn = "vencido", .key = p256(0), .not_before = kNow - 800 * kDay, .not_after = kNow - 400 * kDay});
  const Bytes cms = sign_acceptance("ACEPTO", der_of(expired.get()), p256(0));
  std::string content;
  // The signature itself is good; only the certificate's dates are past.
  EXPECT_EQ(verify_cms(cms, expired.get(), content, CMS_NO_SIGNER_CERT_VERIFY), 1);
  EXPECT_EQ(content, "ACEPTO");
}

TEST(SignAcceptanceTest, RefusesAKeyThatIsNotTheCertificates) {
  ossl::X509Ptr cert = make_certificate({.cn = "firmante", .key = p256(0)});
  EXPECT_THROW(sign_acceptance("ACEPTO", der_of(cert.get()), p256(1)), std::runtime_error);
  EXPECT_THROW(sign_acceptance("ACEPTO", bytes_of("garbage"), p256(0)), VerificationError);
  ERR_clear_error();
}

TEST(SignAcceptanceTest, SignsAnEmptyText) {
  ossl::X509Ptr cert = make_certificate({.cn = "firmante", .key = p256(0)});
  std::string content = "x";
  EXPECT_EQ(verify_cms(sign_acceptance("", der_of(cert.get()), p256(0)), cert.get(), content), 1);
  EXPECT_EQ(content, "");
}

}  // namespace
}  // namespace firmad::renewal
