// Binary as text: strict base64 (RFC 4648, standard alphabet, padded) for fields, hex for ids and digests.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace firmad::protocol {

// Returns the padded base64 text of the bytes.
std::string base64_encode(std::span<const std::uint8_t> bytes);

// Returns the decoded bytes, or nullopt when the text is not canonical padded
// base64 (wrong characters, wrong length, bad padding, non-zero trailing bits).
// Whitespace is not accepted. Never throws except std::bad_alloc.
std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text);

// Returns the bytes as lower-case hex, two digits a byte ("01ab").
std::string hex_encode(std::span<const std::uint8_t> bytes);

}  // namespace firmad::protocol
