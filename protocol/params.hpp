// Typed access to a call's parameters: every field checked before anything acts.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "protocol/message.hpp"

namespace firmad::protocol {

// Reads parameters by name; each accessor throws InvalidParameter{parameter}
// when the field is missing (for required ones) or of the wrong type, and
// InvalidBase64{parameter} for binary fields that do not decode. finish()
// rejects any parameter that no accessor asked for.
class Params {
 public:
  explicit Params(const Json& parameters);

  std::string required_string(const std::string& name);
  std::optional<std::string> optional_string(const std::string& name);
  bool optional_bool(const std::string& name, bool fallback);
  std::optional<std::int64_t> optional_int(const std::string& name);
  // An array of integers (at most 1024 of them).
  std::optional<std::vector<std::int64_t>> optional_int_array(const std::string& name);
  std::vector<std::uint8_t> required_base64(const std::string& name);
  std::optional<std::vector<std::uint8_t>> optional_base64(const std::string& name);
  void finish() const;

 private:
  const Json* find(const std::string& name);
  const Json& params_;
  std::vector<std::string> known_;
};

// Returns the digest length in bytes of a hash name ("sha256", ...), or
// nullopt for a name firmad does not accept.
std::optional<std::size_t> digest_length(std::string_view hash);

}  // namespace firmad::protocol
