// A token as last seen, and its login state machine: every change of presence and login goes through one method.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "daemon/config.hpp"
#include "daemon/mx/identity.hpp"
#include "pkcs11/types.hpp"
#include "protocol/states.hpp"

namespace firmad {

struct KeyState {
  KeyConfig config;
  std::optional<pkcs11::KeyInfo> info;        // nullopt: not on the token (or not visible)
  std::optional<CertificateIdentity> certificate;
};

// The token as last seen. Immutable once published: readers keep a
// shared_ptr and never wait for the token.
//
// present, logged_in, login_state and reason change only through the
// methods below, which keep them consistent: logged_in is true exactly in
// LoggedIn, which needs the token present; Absent means not present; every
// state but LoggedIn says why in `reason` (LoggedOut may say nothing when an
// unattended login follows).
struct TokenSnapshot {
  bool present = false;
  bool logged_in = false;
  protocol::LoginState login_state = protocol::LoginState::Absent;
  std::string reason = "not scanned yet";
  std::optional<pkcs11::TokenInfo> info;
  std::vector<KeyState> keys;
  std::uint64_t login_attempts = 0;  // C_Login calls made by this daemon

  const KeyState* key(const std::string& alias) const;

  // Not in any slot, gone, or its module lost its backend.
  void absent(std::string why);
  // Found in its slot (sessions open), not logged in yet; `waiting` says for
  // what (empty: an unattended login follows at once).
  void found(std::string waiting);
  // Logged in (by firmad, or found so).
  void logged_in_now();
  // Present, not logged in: an administrator logged out, or the token logged
  // firmad out behind its back.
  void logged_out(std::string why);
  // A login that did not happen: PinIncorrect, PinFinalTry, PinLocked,
  // PinSourceUnavailable or Error. Presence is unchanged.
  void login_failed(protocol::LoginState state, std::string why);
  // The token (or its module) fails to answer: Error, not logged in;
  // presence is unchanged (it is there, but cannot be used).
  void failing(std::string why);
  // A token firmad will not serve (another serial, other keys): not
  // present, not logged in, no keys, and why.
  void mark_refused(const std::string& why);
};

}  // namespace firmad
