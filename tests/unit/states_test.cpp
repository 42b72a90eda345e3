// The wire names of firmad's states: one name per value, both ways, as the interface documents them.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <string_view>

#include "protocol/interfaces.hpp"
#include "protocol/states.hpp"

namespace firmad::protocol {
namespace {

// Every value of E from First to Last has a distinct name that reads back as
// itself and that io.firmad.Signer.varlink documents.
template <typename E, typename Named>
void expect_names_round_trip(E first, E last, Named named) {
  const auto description = interface_description(kSignerInterface);
  ASSERT_TRUE(description.has_value());
  std::set<std::string_view> seen;
  for (int i = static_cast<int>(first); i <= static_cast<int>(last); ++i) {
    const E value = static_cast<E>(i);
    const std::string_view name = wire_name(value);
    EXPECT_NE(name, "?") << "value " << i << " has no wire name";
    EXPECT_TRUE(seen.insert(name).second) << "two values are named " << name;
    EXPECT_EQ(named(name), value) << name;
    EXPECT_NE(description->find("\"" + std::string(name) + "\""), std::string_view::npos)
        << name << " is not documented in io.firmad.Signer.varlink";
  }
}

TEST(WireStates, LoginStatesHaveOneDocumentedNameEach) {
  expect_names_round_trip(LoginState::Absent, LoginState::Error, login_state_named);
}

TEST(WireStates, RenewalStepsHaveOneDocumentedNameEach) {
  expect_names_round_trip(RenewalStep::Started, RenewalStep::Retired, renewal_step_named);
}

TEST(WireStates, RenewalFailuresHaveOneDocumentedNameEach) {
  expect_names_round_trip(RenewalFailure::CaUnreachable, RenewalFailure::Underconfigured, renewal_failure_named);
}

TEST(WireStates, RenewalOriginsHaveOneDocumentedNameEach) {
  expect_names_round_trip(RenewalOrigin::Manual, RenewalOrigin::Fetch, renewal_origin_named);
}

TEST(WireStates, UnknownNamesAreRefused) {
  for (std::string_view name : {"", "Logged-In", "logged_in", "retired ", "none", "stopping"}) {
    EXPECT_FALSE(login_state_named(name)) << name;
    EXPECT_FALSE(renewal_step_named(name)) << name;
    EXPECT_FALSE(renewal_failure_named(name)) << name;
    EXPECT_FALSE(renewal_origin_named(name)) << name;
  }
}

}  // namespace
}  // namespace firmad::protocol
