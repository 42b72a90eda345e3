// The test hooks of firmad-testing (built only with FIRMAD_TEST_HOOKS=ON; see test_hooks.hpp).
#include "daemon/test_hooks.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "daemon/log.hpp"

namespace firmad::test_hooks {

void crash_point(std::string_view point) noexcept {
  static const std::string configured = [] {
    const char* c = std::getenv("FIRMAD_TEST_CRASH_AT");
    return std::string(c ? c : "");
  }();
  if (!configured.empty() && configured == point) {
    log::warning("test-crash", {{"at", point}});
    ::kill(::getpid(), SIGKILL);
  }
}

}  // namespace firmad::test_hooks
