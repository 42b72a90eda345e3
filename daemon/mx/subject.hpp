// Certificate subjects written the way OpenSSL's one-line form writes them.
#pragma once
#include <string_view>

#include "pkcs11/types.hpp"

namespace firmad {

// Returns the DER X509_NAME of an OpenSSL one-line subject, as `openssl req
// -subj` reads one: "/C=MX/O=Empresa/CN=Nombre", '\' escaping the next
// character ("/CN=A \/ B" for a '/' in a value), '+' taken literally, at
// most 1024 bytes, no control characters. Types are short or long names or
// dotted OIDs. Throws std::invalid_argument saying what is wrong (the part,
// an unknown type, a value OpenSSL refuses such as C=MEX).
pkcs11::Bytes parse_subject(std::string_view oneline);

}  // namespace firmad
