// Unit tests of reading RFC, CURP, serial and validity from SAT/IMSS-style certificates.
#include <gtest/gtest.h>
#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/mx/identity.hpp"
#include "pkcs11/openssl.hpp"

namespace firmad {
namespace {

using Bytes = std::vector<std::uint8_t>;
// An attribute as (OID in dotted or short-name form, UTF-8 value).
using Attributes = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kSatSerial = "00001000000504465028";

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }

struct CertSpec {
  Attributes subject;
  Attributes issuer;  // empty: same as subject (self-signed)
  Bytes serial = {0x01, 0x02, 0x03};
  std::string not_before = "20230101000000Z";
  std::string not_after = "20270101000000Z";
};

// Stops the test (via the returned failure) when OpenSSL refuses a step.
#define OSSL_CHECK(expr) ASSERT_TRUE(expr) << #expr << ": " << ossl::error_text()

// One P-256 key for all certificates: key generation is the slow part.
EVP_PKEY* test_key() {
  static ossl::Pkey key(EVP_EC_gen("P-256"));
  return key.get();
}

void fill_name(X509_NAME* name, const Attributes& attributes) {
  for (const auto& [oid, value] : attributes) {
    ossl::Asn1Object obj(OBJ_txt2obj(oid.c_str(), 0));
    OSSL_CHECK(obj);
    OSSL_CHECK(X509_NAME_add_entry_by_OBJ(name, obj.get(), MBSTRING_UTF8,
                                          reinterpret_cast<const unsigned char*>(value.data()),
                                          static_cast<int>(value.size()), -1, 0) == 1);
  }
}

void build_certificate(const CertSpec& spec, Bytes& der) {
  ASSERT_NE(test_key(), nullptr) << ossl::error_text();
  ossl::X509Ptr x(X509_new());
  OSSL_CHECK(x);
  OSSL_CHECK(X509_set_version(x.get(), X509_VERSION_3) == 1);

  ossl::Bn bn(BN_bin2bn(spec.serial.data(), static_cast<int>(spec.serial.size()), nullptr));
  OSSL_CHECK(bn);
  std::unique_ptr<ASN1_INTEGER, ossl::Deleter<ASN1_INTEGER_free>> serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  OSSL_CHECK(serial);
  OSSL_CHECK(X509_set_serialNumber(x.get(), serial.get()) == 1);

  OSSL_CHECK(ASN1_TIME_set_string_X509(X509_getm_notBefore(x.get()), spec.not_before.c_str()) == 1);
  OSSL_CHECK(ASN1_TIME_set_string_X509(X509_getm_notAfter(x.get()), spec.not_after.c_str()) == 1);

  ASSERT_NO_FATAL_FAILURE(fill_name(X509_get_subject_name(x.get()), spec.subject));
  ASSERT_NO_FATAL_FAILURE(fill_name(X509_get_issuer_name(x.get()), spec.issuer.empty() ? spec.subject : spec.issuer));

  OSSL_CHECK(X509_set_pubkey(x.get(), test_key()) == 1);
  OSSL_CHECK(X509_sign(x.get(), test_key(), EVP_sha256()) > 0);

  unsigned char* out = nullptr;
  const int len = i2d_X509(x.get(), &out);
  OSSL_CHECK(len > 0);
  der.assign(out, out + len);
  OPENSSL_free(out);
}

Bytes make_certificate(const CertSpec& spec) {
  Bytes der;
  build_certificate(spec, der);
  if (der.empty()) ADD_FAILURE() << "could not build the test certificate";
  return der;
}

// A SAT e.firma certificate of a legal entity, as SAT issues them.
CertSpec legal_entity() {
  CertSpec spec;
  spec.subject = {{"CN", "EMPRESA DEMO SA DE CV"},
                  {"O", "EMPRESA DEMO SA DE CV"},
                  {"2.5.4.45", "AAA010101AAA / HEGT7610034S2"},
                  {"2.5.4.5", " / HEGT761003MDFRNN09"},
                  {"OU", "Matriz"}};
  spec.issuer = {{"CN", "AC DEL SERVICIO DE ADMINISTRACION TRIBUTARIA"},
                 {"O", "SERVICIO DE ADMINISTRACION TRIBUTARIA"},
                 {"C", "MX"}};
  spec.serial = bytes_of(kSatSerial);
  return spec;
}

CertSpec natural_person() {
  CertSpec spec;
  spec.subject = {{"CN", "TERESA HERNANDEZ GARCIA"},
                  {"2.5.4.45", "HEGT7610034S2"},
                  {"2.5.4.5", "HEGT761003MDFRNN09"}};
  return spec;
}

// --- Holder, RFC, CURP -------------------------------------------------------

TEST(IdentifyCertificate, LegalEntityShowsItsRfcAndItsRepresentativesRfcAndCurp) {
  const auto id = identify_certificate(make_certificate(legal_entity()));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->holder_name, "EMPRESA DEMO SA DE CV");
  EXPECT_EQ(id->rfc, "AAA010101AAA");
  EXPECT_EQ(id->rfc_representative, "HEGT7610034S2");
  EXPECT_EQ(id->curp, std::nullopt);
  EXPECT_EQ(id->curp_representative, "HEGT761003MDFRNN09");
  EXPECT_EQ(id->issuer, "AC DEL SERVICIO DE ADMINISTRACION TRIBUTARIA");
}

TEST(IdentifyCertificate, NaturalPersonShowsOwnRfcAndCurpWithoutRepresentative) {
  const auto id = identify_certificate(make_certificate(natural_person()));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->holder_name, "TERESA HERNANDEZ GARCIA");
  EXPECT_EQ(id->rfc, "HEGT7610034S2");
  EXPECT_EQ(id->rfc_representative, std::nullopt);
  EXPECT_EQ(id->curp, "HEGT761003MDFRNN09");
  EXPECT_EQ(id->curp_representative, std::nullopt);
  EXPECT_EQ(id->issuer, "TERESA HERNANDEZ GARCIA");  // self-signed
}

TEST(IdentifyCertificate, CertificateWithoutSatAttributesHasNoRfcOrCurp) {
  CertSpec spec;
  spec.subject = {{"CN", "firmad test"}, {"O", "Example"}, {"C", "MX"}};
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->holder_name, "firmad test");
  EXPECT_EQ(id->rfc, std::nullopt);
  EXPECT_EQ(id->rfc_representative, std::nullopt);
  EXPECT_EQ(id->curp, std::nullopt);
  EXPECT_EQ(id->curp_representative, std::nullopt);
  EXPECT_EQ(id->serial_ascii, std::nullopt);
}

TEST(IdentifyCertificate, HolderFallsBackToOrganizationWithoutCommonName) {
  CertSpec spec;
  spec.subject = {{"O", "INSTITUTO MEXICANO DEL SEGURO SOCIAL"}, {"C", "MX"}};
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->holder_name, "INSTITUTO MEXICANO DEL SEGURO SOCIAL");
}

TEST(IdentifyCertificate, IssuerWithoutNamesIsShownInFull) {
  CertSpec spec = natural_person();
  spec.issuer = {{"C", "MX"}, {"L", "CDMX"}};
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->issuer, "L=CDMX,C=MX");
}

TEST(IdentifyCertificate, KeepsNonAsciiNamesAndRfcsInUtf8) {
  CertSpec spec;
  spec.subject = {{"CN", "JOSÉ MUÑOZ PEÑA"}, {"2.5.4.45", "MUPJ761003&Ñ1"}, {"2.5.4.5", "MUPJ761003HDFXXX01"}};
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->holder_name, "JOSÉ MUÑOZ PEÑA");
  EXPECT_EQ(id->rfc, "MUPJ761003&Ñ1");  // 13 characters, 14 bytes
  EXPECT_EQ(id->curp, "MUPJ761003HDFXXX01");
}

TEST(IdentifyCertificate, LeavesMisshapenRfcAndCurpUnset) {
  struct Case {
    std::string unique_identifier, serial_number;
  };
  for (const Case& c : {Case{"NOT AN RFC", "12345"},
                        Case{"AAA010101AA", "HEGT761003MDFRNN0"},                // one short
                        Case{"AAA010101AAAAA", "HEGT761003MDFRNN099"},           // one long
                        Case{"AAA010101-AA", "HEGT761003-DFRNN09"},              // punctuation
                        Case{"AAA010101AAA / HEGT7610034S2 / X", " / HEGT761003MDFRNN09 / "},
                        Case{" / ", "/"},
                        Case{"", ""}}) {
    SCOPED_TRACE(c.unique_identifier + " | " + c.serial_number);
    CertSpec spec;
    spec.subject = {{"CN", "x"}};
    if (!c.unique_identifier.empty()) spec.subject.emplace_back("2.5.4.45", c.unique_identifier);
    if (!c.serial_number.empty()) spec.subject.emplace_back("2.5.4.5", c.serial_number);
    const auto id = identify_certificate(make_certificate(spec));
    ASSERT_TRUE(id.has_value());
    EXPECT_EQ(id->rfc_representative, std::nullopt);
    EXPECT_EQ(id->curp, std::nullopt);
    EXPECT_EQ(id->curp_representative, std::nullopt);
    // Only the case with two slashes has a well-shaped first RFC; the second '/' spoils the representative.
    if (c.unique_identifier.starts_with("AAA010101AAA /")) {
      EXPECT_EQ(id->rfc, "AAA010101AAA");
    } else {
      EXPECT_EQ(id->rfc, std::nullopt);
    }
  }
}

TEST(IdentifyCertificate, AcceptsOnlyRfcsOf12Or13AndCurpsOf18Characters) {
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  for (std::size_t len = 1; len <= 20; ++len) {
    const std::string value = alphabet.substr(0, len);
    SCOPED_TRACE(value);
    CertSpec spec;
    spec.subject = {{"CN", "x"}, {"2.5.4.45", value}, {"2.5.4.5", value}};
    const auto id = identify_certificate(make_certificate(spec));
    ASSERT_TRUE(id.has_value());
    EXPECT_EQ(id->rfc.has_value(), len == 12 || len == 13);
    EXPECT_EQ(id->curp.has_value(), len == 18);
  }
}

TEST(IdentifyCertificate, TrimsSpacesAroundEachPart) {
  CertSpec spec;
  spec.subject = {{"CN", "x"}, {"2.5.4.45", "  AAA010101AAA/HEGT7610034S2  "}, {"2.5.4.5", "HEGT761003MDFRNN09 /"}};
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->rfc, "AAA010101AAA");
  EXPECT_EQ(id->rfc_representative, "HEGT7610034S2");
  EXPECT_EQ(id->curp, "HEGT761003MDFRNN09");
  EXPECT_EQ(id->curp_representative, std::nullopt);
}

// --- Serial and validity -----------------------------------------------------

TEST(IdentifyCertificate, SatDigitSerialIsShownAsItsText) {
  const auto id = identify_certificate(make_certificate(legal_entity()));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->serial_ascii, std::string(kSatSerial));
  // The same 20 bytes, 0x30 0x30 0x30 0x30 0x31 ..., as hex and as one big integer.
  EXPECT_EQ(id->serial_hex, "3030303031303030303030353034343635303238");
  EXPECT_EQ(id->serial_decimal, "275106190557734483187066766829380167334928331320");
}

TEST(IdentifyCertificate, OrdinarySerialHasHexAndDecimalButNoText) {
  CertSpec spec = natural_person();
  spec.serial = {0x01, 0xAB};
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->serial_hex, "01AB");
  EXPECT_EQ(id->serial_decimal, "427");
  EXPECT_EQ(id->serial_ascii, std::nullopt);
}

TEST(IdentifyCertificate, SerialWithOneNonDigitByteHasNoText) {
  CertSpec spec = natural_person();
  spec.serial = bytes_of("0000100000050446502A");
  const auto id = identify_certificate(make_certificate(spec));
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->serial_ascii, std::nullopt);
  EXPECT_EQ(id->serial_hex, "3030303031303030303030353034343635303241");
}

TEST(IdentifyCertificate, ValidityIsInUnixSeconds) {
  CertSpec spec = natural_person();
  spec.not_before = "20230101000000Z";  // UTCTime in the certificate
  spec.not_after = "20550630123456Z";   // GeneralizedTime (2050 and later)
  const Bytes der = make_certificate(spec);
  // The certificate's times are UTC whatever the machine's zone is.
  const char* old_tz = std::getenv("TZ");
  const std::string saved = old_tz ? old_tz : "";
  ::setenv("TZ", "CST6", 1);  // Mexico City, UTC-6, no tz database needed
  ::tzset();
  const auto id = identify_certificate(der);
  if (old_tz) {
    ::setenv("TZ", saved.c_str(), 1);
  } else {
    ::unsetenv("TZ");
  }
  ::tzset();
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->not_before, 1672531200);
  EXPECT_EQ(id->not_after, 2697971696);
}

// --- Refusals ------------------------------------------------------------------

TEST(IdentifyCertificate, RefusesEmptyInput) {
  EXPECT_EQ(identify_certificate({}), std::nullopt);
  const Bytes empty;
  EXPECT_EQ(identify_certificate(empty), std::nullopt);
}

TEST(IdentifyCertificate, RefusesEveryTruncation) {
  const Bytes der = make_certificate(legal_entity());
  ASSERT_TRUE(identify_certificate(der).has_value());
  for (std::size_t len = 0; len < der.size(); ++len)
    EXPECT_EQ(identify_certificate(std::span(der.data(), len)), std::nullopt) << "first " << len << " bytes";
}

TEST(IdentifyCertificate, RefusesTrailingAndOversizeInput) {
  Bytes der = make_certificate(natural_person());
  ASSERT_TRUE(identify_certificate(der).has_value());
  der.push_back(0x00);
  EXPECT_EQ(identify_certificate(der), std::nullopt);
  der.resize(der.size() + (1u << 20), 0x30);
  EXPECT_EQ(identify_certificate(der), std::nullopt);
}

TEST(IdentifyCertificate, RefusesRandomBytes) {
  std::mt19937 rng(20250203);
  std::uniform_int_distribution<int> byte(0, 255);
  for (std::size_t size : {1u, 2u, 16u, 64u, 512u, 4096u, 65536u}) {
    for (int round = 0; round < 20; ++round) {
      Bytes junk(size);
      for (auto& b : junk) b = static_cast<std::uint8_t>(byte(rng));
      EXPECT_EQ(identify_certificate(junk), std::nullopt) << size << " random bytes, round " << round;
    }
  }
}

TEST(IdentifyCertificate, RefusesCorruptedCertificatesWithoutThrowing) {
  // Every single-byte change either still parses or is refused cleanly; none crash or throw.
  const Bytes der = make_certificate(legal_entity());
  std::size_t refused = 0;
  for (std::size_t i = 0; i < der.size(); ++i) {
    Bytes bad = der;
    bad[i] ^= 0xFF;
    std::optional<CertificateIdentity> id;
    EXPECT_NO_THROW(id = identify_certificate(bad)) << "byte " << i;
    if (!id) ++refused;
  }
  EXPECT_GT(refused, 0u);
}

TEST(IdentifyCertificate, LeavesOpenSslErrorQueueAsItFoundIt) {
  ERR_clear_error();
  ERR_raise(ERR_LIB_USER, 42);  // someone else's pending error
  const unsigned long theirs = ERR_peek_last_error();
  ASSERT_NE(theirs, 0u);
  EXPECT_EQ(identify_certificate(bytes_of("definitely not DER")), std::nullopt);
  const Bytes truncated = [] {
    Bytes der = make_certificate(natural_person());
    der.resize(der.size() / 2);
    return der;
  }();
  EXPECT_EQ(identify_certificate(truncated), std::nullopt);
  EXPECT_EQ(ERR_get_error(), theirs);
  EXPECT_EQ(ERR_get_error(), 0u) << "the parse left errors behind";
}

}  // namespace
}  // namespace firmad
