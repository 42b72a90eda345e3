// Reads holder, RFC, CURP, serial and validity of a SAT/IMSS certificate via OpenSSL.
#include "daemon/mx/identity.hpp"

#include <openssl/asn1.h>
#include <openssl/objects.h>

#include <climits>
#include <string_view>
#include <utility>

#include "pkcs11/openssl.hpp"

namespace firmad {
namespace {

// Whatever this parse pushes onto OpenSSL's error queue is dropped on the way
// out, so a refused certificate does not show up in someone else's error text.
class ErrorMark {
 public:
  ErrorMark() noexcept { ERR_set_mark(); }
  ~ErrorMark() { ERR_pop_to_mark(); }
  ErrorMark(const ErrorMark&) = delete;  // one mark, popped once
  ErrorMark& operator=(const ErrorMark&) = delete;
};

struct OpensslString {
  void operator()(char* p) const noexcept { OPENSSL_free(p); }
  void operator()(unsigned char* p) const noexcept { OPENSSL_free(p); }
};

// The UTF-8 text of the first entry `nid` of `name`, or nullopt if there is
// none or it is not a string type OpenSSL can convert.
std::optional<std::string> entry_text(const X509_NAME* name, int nid) {
  const int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) return std::nullopt;
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  unsigned char* raw = nullptr;
  const int len = ASN1_STRING_to_UTF8(&raw, data);
  std::unique_ptr<unsigned char, OpensslString> owner(raw);
  if (len < 0 || !raw) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(raw), static_cast<std::size_t>(len));
}

// CN, else O: what a person calls the holder (or the CA).
std::optional<std::string> display_name(const X509_NAME* name) {
  if (auto cn = entry_text(name, NID_commonName); cn && !cn->empty()) return cn;
  if (auto o = entry_text(name, NID_organizationName); o && !o->empty()) return o;
  return std::nullopt;
}

std::string rfc2253(const X509_NAME* name) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) return {};
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || !data) return {};
  return std::string(data, static_cast<std::size_t>(len));
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t";
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(kSpace) - first + 1);
}

// "A / B" -> {"A", "B"}; "A" -> {"A", ""}; " / B" -> {"", "B"}. Only the first
// '/' splits, so a second one stays in B and fails the shape check there.
std::pair<std::string_view, std::string_view> split_pair(std::string_view s) {
  const auto slash = s.find('/');
  if (slash == std::string_view::npos) return {trim(s), {}};
  return {trim(s.substr(0, slash)), trim(s.substr(slash + 1))};
}

bool is_ascii_alnum(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

// Loose on purpose: length and alphabet only, no check digit, since a shown
// RFC that is slightly off is still more useful than none; anything else is
// another CA's use of the attribute and is not shown as an RFC.
bool looks_like_rfc(std::string_view s) {
  std::size_t chars = 0;
  for (std::size_t i = 0; i < s.size(); ++chars) {
    if (is_ascii_alnum(s[i]) || s[i] == '&') {
      ++i;
    } else if (s.substr(i, 2) == "\xC3\x91" || s.substr(i, 2) == "\xC3\xB1") {  // Ñ, ñ
      i += 2;
    } else {
      return false;
    }
  }
  return chars == 12 || chars == 13;
}

bool looks_like_curp(std::string_view s) {
  if (s.size() != 18) return false;
  for (char c : s)
    if (!is_ascii_alnum(c)) return false;
  return true;
}

std::optional<std::string> keep_if(std::string_view s, bool (*fits)(std::string_view)) {
  if (s.empty() || !fits(s)) return std::nullopt;
  return std::string(s);
}

std::optional<std::time_t> to_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return timegm(&tm);
}

// Fills the three serial fields; false if the serial cannot be read.
bool read_serial(const ASN1_INTEGER* serial, CertificateIdentity& id) {
  ossl::Bn bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return false;
  std::unique_ptr<char, OpensslString> hex(BN_bn2hex(bn.get()));
  std::unique_ptr<char, OpensslString> dec(BN_bn2dec(bn.get()));
  if (!hex || !dec) return false;
  id.serial_hex = hex.get();
  id.serial_decimal = dec.get();

  if (BN_is_negative(bn.get())) return true;
  std::string bytes(static_cast<std::size_t>(BN_num_bytes(bn.get())), '\0');
  if (bytes.empty()) return true;
  BN_bn2bin(bn.get(), reinterpret_cast<unsigned char*>(bytes.data()));
  for (char c : bytes)
    if (c < '0' || c > '9') return true;
  id.serial_ascii = std::move(bytes);
  return true;
}

}  // namespace

std::optional<CertificateIdentity> identify_certificate(std::span<const std::uint8_t> der) {
  if (der.empty() || der.size() > static_cast<std::size_t>(LONG_MAX)) return std::nullopt;
  const ErrorMark mark;

  const unsigned char* p = der.data();
  ossl::X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  // Bytes after the certificate mean this is not the object we were told it is.
  if (!x || p != der.data() + der.size()) return std::nullopt;

  CertificateIdentity id;
  const X509_NAME* subject = X509_get_subject_name(x.get());
  const X509_NAME* issuer = X509_get_issuer_name(x.get());
  if (!subject || !issuer) return std::nullopt;

  id.holder_name = display_name(subject).value_or("");
  id.subject = rfc2253(subject);
  if (auto issuer_name = display_name(issuer)) {
    id.issuer = std::move(*issuer_name);
  } else {
    id.issuer = rfc2253(issuer);
  }

  if (auto text = entry_text(subject, NID_x500UniqueIdentifier)) {
    const auto [own, representative] = split_pair(*text);
    id.rfc = keep_if(own, looks_like_rfc);
    id.rfc_representative = keep_if(representative, looks_like_rfc);
  }
  if (auto text = entry_text(subject, NID_serialNumber)) {
    const auto [own, representative] = split_pair(*text);
    id.curp = keep_if(own, looks_like_curp);
    id.curp_representative = keep_if(representative, looks_like_curp);
  }

  if (!read_serial(X509_get0_serialNumber(x.get()), id)) return std::nullopt;

  const auto not_before = to_time(X509_get0_notBefore(x.get()));
  const auto not_after = to_time(X509_get0_notAfter(x.get()));
  if (!not_before || !not_after) return std::nullopt;
  id.not_before = *not_before;
  id.not_after = *not_after;
  return id;
}

std::string iso8601(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace firmad
