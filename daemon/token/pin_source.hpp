// Reading a token's PIN from its unattended source: a private file or a systemd credential.
#pragma once
#include <stdexcept>
#include <string>

#include "daemon/config.hpp"
#include "protocol/secret.hpp"

namespace firmad {

// what() says why the source cannot be used; it never contains the PIN.
class PinSourceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Returns the PIN from the token's file or credential (one trailing newline
// removed). Throws PinSourceError if the source is "admin", the file is
// missing, not a regular file, readable or writable by group or others,
// empty, or longer than a PIN may be.
protocol::Secret read_pin(const TokenConfig& token);

// Names the token's PIN source for messages: "PIN file /etc/firmad/pin",
// "credential firmad-pin", "administrator".
std::string pin_source_name(const TokenConfig& token);

// Whether the token's PIN can be had without an administrator.
inline bool unattended(const TokenConfig& token) { return token.pin_source != PinSource::Admin; }

}  // namespace firmad
