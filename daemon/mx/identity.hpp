// Who a Mexican SAT/IMSS certificate names (RFC, CURP, serial), as status shows it.
#pragma once
#include <cstdint>
#include <ctime>
#include <optional>
#include <span>
#include <string>

namespace firmad {

struct CertificateIdentity {
  std::string holder_name;  // subject CN, else subject O (UTF-8); empty if neither
  // From the subject's x500UniqueIdentifier (2.5.4.45), "RFC" or "RFC / RFC_REPRESENTATIVE".
  std::optional<std::string> rfc, rfc_representative;
  // From the subject's serialNumber (2.5.4.5), "CURP" or " / CURP_REPRESENTATIVE".
  std::optional<std::string> curp, curp_representative;
  std::string subject;         // the subject name in RFC 2253 form
  std::string issuer;          // issuer CN, else issuer O, else the issuer name in RFC 2253 form
  std::string serial_hex;      // upper-case hex, no separators, e.g. "3030303031"
  std::string serial_decimal;  // the same integer in decimal
  // The serial's bytes as text, when each is an ASCII digit: SAT's serials are
  // 20 digits ("00001000000504465028") stored as the bytes of that text.
  std::optional<std::string> serial_ascii;
  std::time_t not_before = 0;
  std::time_t not_after = 0;
};

// Returns what the DER certificate `der` says about its holder, or nullopt if
// `der` is not exactly one DER certificate (empty, truncated, trailing bytes,
// unreadable validity dates). An RFC or CURP without the expected shape (RFC:
// 12 or 13 ASCII letters, digits, '&', 'Ñ' or 'ñ'; CURP: 18 ASCII letters or
// digits) is left unset rather than shown wrong. Throws nothing for any input
// (std::bad_alloc aside); leaves OpenSSL's error queue as it found it.
std::optional<CertificateIdentity> identify_certificate(std::span<const std::uint8_t> der);

// Returns "YYYY-MM-DDTHH:MM:SSZ".
std::string iso8601(std::time_t t);

}  // namespace firmad
