// PINs a token refused, remembered across restarts: one try per wrong PIN, ever.
#pragma once
#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/secret.hpp"

namespace firmad {

// An unattended PIN source (a file, a systemd credential) holding a wrong
// PIN would cost one try at every start: three restarts lock a YubiKey PIV,
// whose module never says "final try". This remembers, in one small file of
// the state directory, that the token with a given serial refused the PIN
// a source held, so that no restart or reboot offers it again; a changed
// PIN (another content in the file or credential) is tried once.
//
// What is kept is a salted SHA-256 of the serial and the refused PIN, never
// the PIN; the file is the daemon's own (0600 in its 0700 state directory).
// Used by one token's control thread only.
class PinRefusals {
 public:
  // `file`: where the refusal is kept; an empty path keeps it in memory only.
  // An unreadable or malformed file is treated as no refusal (and replaced
  // at the next change).
  explicit PinRefusals(std::filesystem::path file);

  // Whether the token `serial` refused `pin` before.
  bool refused(std::string_view serial, const protocol::Secret& pin) const;
  // When and from which source the remembered refusal came, for messages.
  std::optional<std::time_t> refused_at() const;
  std::string refused_source() const;

  // Remembers that the token `serial` refused `pin` from `source` ("file
  // /etc/firmad/pin", "credential firmad-pin"), in place of an earlier one.
  // Returns an error message when it could not be written (it is still
  // remembered in memory); empty on success.
  std::string remember(std::string_view serial, std::string_view source, const protocol::Secret& pin);
  // Forgets the refusal (a login succeeded, or an administrator logged in).
  // Returns an error message when the file could not be removed.
  std::string forget();

  const std::filesystem::path& file() const noexcept { return file_; }

 private:
  struct Record {
    std::string salt;    // hex, 16 random bytes
    std::string digest;  // hex SHA-256(salt || serial || NUL || pin)
    std::string source;
    std::time_t at = 0;
  };
  static std::string digest_of(std::string_view salt_hex, std::string_view serial, const protocol::Secret& pin);

  std::filesystem::path file_;
  std::optional<Record> record_;
};

}  // namespace firmad
