// The one-line subject parser (firmad.toml's renewal `subject`), with OpenSSL doing the checks.
#include "daemon/mx/subject.hpp"

#include <openssl/objects.h>
#include <openssl/x509.h>

#include <algorithm>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "pkcs11/openssl.hpp"

namespace firmad {

using pkcs11::Bytes;

namespace {

constexpr std::size_t kMaxSubject = 1024;
using NamePtr = std::unique_ptr<X509_NAME, ossl::Deleter<X509_NAME_free>>;

}  // namespace

Bytes parse_subject(std::string_view oneline) {
  if (oneline.empty() || oneline.front() != '/' || oneline.size() > kMaxSubject ||
      std::any_of(oneline.begin(), oneline.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
    throw std::invalid_argument("must start with '/' and be one line of at most " + std::to_string(kMaxSubject) +
                                " characters");
  NamePtr name(X509_NAME_new());
  if (!name) throw std::bad_alloc();
  for (std::size_t pos = 1;; ++pos) {  // each time round: one "type=value", pos just past its '/'
    const std::size_t start = pos;
    std::string type, value;
    bool seen_eq = false;
    for (; pos < oneline.size() && oneline[pos] != '/'; ++pos) {
      char c = oneline[pos];
      if (c == '\\') {
        if (++pos == oneline.size()) throw std::invalid_argument("ends with a lone '\\' (write '\\\\' for a backslash)");
        c = oneline[pos];
      } else if (c == '=' && !seen_eq) {
        seen_eq = true;
        continue;
      }
      (seen_eq ? value : type) += c;
    }
    const std::string_view part = oneline.substr(start, pos - start);
    if (!seen_eq || type.empty() || value.empty())
      throw std::invalid_argument("'" + std::string(part) + "' is not of the form type=value");
    if (!ossl::Asn1Object(OBJ_txt2obj(type.c_str(), 0))) {
      ERR_clear_error();
      throw std::invalid_argument("unknown attribute type '" + type +
                                  "' (accepted: C, ST, L, O, OU, CN, serialNumber, ... or a dotted OID)");
    }
    if (X509_NAME_add_entry_by_txt(name.get(), type.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.data()), static_cast<int>(value.size()),
                                   -1, 0) != 1) {
      ERR_clear_error();
      throw std::invalid_argument("'" + value + "' is not a valid " + type + " value (wrong length or characters)");
    }
    if (pos == oneline.size()) break;
  }
  const int len = i2d_X509_NAME(name.get(), nullptr);
  if (len <= 0) ossl::fail("cannot encode the subject");
  Bytes out(static_cast<std::size_t>(len));
  unsigned char* p = out.data();
  i2d_X509_NAME(name.get(), &p);
  return out;
}

}  // namespace firmad
