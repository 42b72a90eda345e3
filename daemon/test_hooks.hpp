// Switches only the tests use, linked into firmad-testing and never into firmad.
//
// firmad links test_hooks_release.cpp, where every hook does nothing and no
// test's name appears; the firmad-testing binary the suite runs links
// test_hooks.cpp instead, which CMake compiles only with FIRMAD_TEST_HOOKS=ON
// (the tests' build). `strings firmad | grep -c FIRMAD_TEST` prints 0
// (tests/layout/release-has-no-test-hooks.sh checks it).
#pragma once
#include <string_view>

namespace firmad::test_hooks {

// A point where a test may have the daemon die: in firmad-testing, if
// $FIRMAD_TEST_CRASH_AT names `point`, the process kills itself with SIGKILL
// as kill -9 would. In firmad, nothing.
void crash_point(std::string_view point) noexcept;

}  // namespace firmad::test_hooks
