// Hard limits of the wire protocol, enforced before anything is allocated.
#pragma once
#include <cstddef>

namespace firmad::protocol {

// A message (one JSON object, without its NUL terminator) may not exceed this.
inline constexpr std::size_t kMaxMessageBytes = 2 * 1024 * 1024;
// Arrays and objects may not nest deeper than this.
inline constexpr int kMaxJsonDepth = 32;
// Attached CMS content may not exceed this (its base64 fits in one message).
inline constexpr std::size_t kMaxCmsContentBytes = 1024 * 1024;

}  // namespace firmad::protocol
