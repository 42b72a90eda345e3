// The one place where the wire names of firmad's states are written.
#include "protocol/states.hpp"

#include <array>
#include <utility>

namespace firmad::protocol {
namespace {

template <typename E, std::size_t N>
using Names = std::array<std::pair<E, std::string_view>, N>;

constexpr Names<LoginState, 8> kLoginStates{{
    {LoginState::Absent, "absent"},
    {LoginState::LoggedOut, "logged-out"},
    {LoginState::LoggedIn, "logged-in"},
    {LoginState::PinIncorrect, "pin-incorrect"},
    {LoginState::PinSourceUnavailable, "pin-source-unavailable"},
    {LoginState::PinFinalTry, "pin-final-try"},
    {LoginState::PinLocked, "pin-locked"},
    {LoginState::Error, "error"},
}};

constexpr Names<RenewalStep, 11> kRenewalSteps{{
    {RenewalStep::Started, "started"},
    {RenewalStep::KeyPending, "key-pending"},
    {RenewalStep::KeyReady, "key-ready"},
    {RenewalStep::RequestBuilt, "request-built"},
    {RenewalStep::Submitted, "submitted"},
    {RenewalStep::Waiting, "waiting"},
    {RenewalStep::Fetching, "fetching"},
    {RenewalStep::Issued, "issued"},
    {RenewalStep::Verified, "verified"},
    {RenewalStep::Installed, "installed"},
    {RenewalStep::Retired, "retired"},
}};

constexpr Names<RenewalFailure, 7> kRenewalFailures{{
    {RenewalFailure::CaUnreachable, "ca-unreachable"},
    {RenewalFailure::TokenAbsent, "token-absent"},
    {RenewalFailure::NeedsPin, "needs-pin"},
    {RenewalFailure::TokenError, "token-error"},
    {RenewalFailure::Rejected, "rejected"},
    {RenewalFailure::VerificationFailed, "verification-failed"},
    {RenewalFailure::Underconfigured, "underconfigured"},
}};

constexpr Names<RenewalOrigin, 3> kRenewalOrigins{{
    {RenewalOrigin::Manual, "manual"},
    {RenewalOrigin::Automatic, "automatic"},
    {RenewalOrigin::Fetch, "fetch"},
}};

template <typename E, std::size_t N>
constexpr std::string_view name_in(const Names<E, N>& names, E value) {
  for (const auto& [v, name] : names)
    if (v == value) return name;
  return "?";  // unreachable while every table lists every value (tests/unit/protocol_test.cpp)
}

template <typename E, std::size_t N>
constexpr std::optional<E> value_in(const Names<E, N>& names, std::string_view name) {
  for (const auto& [v, n] : names)
    if (n == name) return v;
  return std::nullopt;
}

}  // namespace

std::string_view wire_name(LoginState s) { return name_in(kLoginStates, s); }
std::string_view wire_name(RenewalStep s) { return name_in(kRenewalSteps, s); }
std::string_view wire_name(RenewalFailure f) { return name_in(kRenewalFailures, f); }
std::string_view wire_name(RenewalOrigin o) { return name_in(kRenewalOrigins, o); }

std::optional<LoginState> login_state_named(std::string_view name) { return value_in(kLoginStates, name); }
std::optional<RenewalStep> renewal_step_named(std::string_view name) { return value_in(kRenewalSteps, name); }
std::optional<RenewalFailure> renewal_failure_named(std::string_view name) { return value_in(kRenewalFailures, name); }
std::optional<RenewalOrigin> renewal_origin_named(std::string_view name) { return value_in(kRenewalOrigins, name); }

}  // namespace firmad::protocol
