// Certificate fields for status, via OpenSSL.
#include "daemon/certificate.hpp"

#include "pkcs11/openssl.hpp"

namespace firmad {
namespace {

std::string name_text(const X509_NAME* name) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) return {};
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::optional<std::time_t> to_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return timegm(&tm);
}

}  // namespace

std::optional<CertificateSummary> summarize_certificate(const pkcs11::Bytes& der) {
  const unsigned char* p = der.data();
  ossl::X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!x) {
    ERR_clear_error();
    return std::nullopt;
  }
  CertificateSummary s;
  s.subject = name_text(X509_get_subject_name(x.get()));
  s.issuer = name_text(X509_get_issuer_name(x.get()));
  ossl::Bn bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(x.get()), nullptr));
  if (bn) {
    char* hex = BN_bn2hex(bn.get());
    if (hex) s.serial = hex;
    OPENSSL_free(hex);
  }
  auto nb = to_time(X509_get0_notBefore(x.get()));
  auto na = to_time(X509_get0_notAfter(x.get()));
  if (!nb || !na) return std::nullopt;
  s.not_before = *nb;
  s.not_after = *na;
  return s;
}

std::string iso8601(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace firmad
