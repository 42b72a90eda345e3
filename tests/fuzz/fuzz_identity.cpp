// libFuzzer target: any bytes given to identify_certificate get an identity or nullopt, never a crash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "daemon/mx/identity.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto id = firmad::identify_certificate(std::span<const std::uint8_t>(data, size));
  // What it promises of an identity: a serial in both forms, and a text form
  // only when the serial's bytes are all ASCII digits.
  if (id && (id->serial_hex.empty() != id->serial_decimal.empty())) {
    std::fprintf(stderr, "invariant broken: serial forms disagree\n");
    std::abort();
  }
  if (id && id->serial_ascii) {
    for (char c : *id->serial_ascii) {
      if (c < '0' || c > '9') {
        std::fprintf(stderr, "invariant broken: serial text is not digits\n");
        std::abort();
      }
    }
  }
  return 0;
}
