// firmad's test hooks: none (see test_hooks.hpp).
#include "daemon/test_hooks.hpp"

namespace firmad::test_hooks {

void crash_point(std::string_view) noexcept {}

}  // namespace firmad::test_hooks
