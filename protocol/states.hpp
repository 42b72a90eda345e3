// The states the wire names: a token's login, a renewal's steps, failures and origins.
//
// Inside firmad these are enums; their names on the wire (and in state.json,
// which stores the same names) are written once, in states.cpp.
// io.firmad.Signer.varlink documents each (Token.loginState, Renewal.state).
#pragma once
#include <optional>
#include <string_view>

namespace firmad::protocol {

// Token.loginState.
enum class LoginState {
  Absent,                // no matching token in any slot
  LoggedOut,             // present, waiting for a login
  LoggedIn,
  PinIncorrect,          // the token refused the PIN: not retried without an administrator
  PinSourceUnavailable,  // the PIN file or credential cannot be read
  PinFinalTry,           // the next wrong PIN locks the token
  PinLocked,
  Error,                 // the token answered with an error, or is refused
};

// Renewal.step: where a renewal is, in order (Fetching replaces the request
// steps when a certificate is fetched by serial).
enum class RenewalStep {
  Started,
  KeyPending,    // the new key's CKA_ID is chosen
  KeyReady,
  RequestBuilt,
  Submitted,
  Waiting,       // the CA has not issued yet
  Fetching,
  Issued,
  Verified,
  Installed,     // the commit point: the new certificate is on the token and served
  Retired,       // done
};

// Renewal.failure: the first four are retried by themselves with backoff,
// the last three wait for an administrator.
enum class RenewalFailure {
  CaUnreachable,
  TokenAbsent,
  NeedsPin,
  TokenError,
  Rejected,
  VerificationFailed,
  Underconfigured,
};

// Renewal.origin.
enum class RenewalOrigin { Manual, Automatic, Fetch };

// Renewal.state when there is no step to name: none ran, or firmad stops.
inline constexpr std::string_view kRenewalStateNone = "none";
inline constexpr std::string_view kRenewalStateStopping = "stopping";

// The wire name of each value.
std::string_view wire_name(LoginState s);
std::string_view wire_name(RenewalStep s);
std::string_view wire_name(RenewalFailure f);
std::string_view wire_name(RenewalOrigin o);

// The value a wire name stands for; nullopt for any other text.
std::optional<LoginState> login_state_named(std::string_view name);
std::optional<RenewalStep> renewal_step_named(std::string_view name);
std::optional<RenewalFailure> renewal_failure_named(std::string_view name);
std::optional<RenewalOrigin> renewal_origin_named(std::string_view name);

}  // namespace firmad::protocol
