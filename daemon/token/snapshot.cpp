// The login state machine of a token snapshot.
#include "daemon/token/snapshot.hpp"

namespace firmad {

using protocol::LoginState;

const KeyState* TokenSnapshot::key(const std::string& alias) const {
  for (const auto& k : keys)
    if (k.config.alias == alias) return &k;
  return nullptr;
}

void TokenSnapshot::absent(std::string why) {
  present = false, logged_in = false, login_state = LoginState::Absent, reason = std::move(why);
}

void TokenSnapshot::found(std::string waiting) {
  present = true, logged_in = false, login_state = LoginState::LoggedOut, reason = std::move(waiting);
}

void TokenSnapshot::logged_in_now() {
  present = true, logged_in = true, login_state = LoginState::LoggedIn, reason.clear();
}

void TokenSnapshot::logged_out(std::string why) {
  logged_in = false, login_state = present ? LoginState::LoggedOut : LoginState::Absent, reason = std::move(why);
}

void TokenSnapshot::login_failed(LoginState state, std::string why) {
  // A failed login never claims a login, nor presence it did not see.
  if (state == LoginState::LoggedIn || state == LoginState::LoggedOut) state = LoginState::Error;
  logged_in = false, login_state = state, reason = std::move(why);
}

void TokenSnapshot::failing(std::string why) { logged_in = false, login_state = LoginState::Error, reason = std::move(why); }

void TokenSnapshot::mark_refused(const std::string& why) {
  present = false, logged_in = false, login_state = LoginState::Error, reason = why;
  for (auto& k : keys) k.info.reset(), k.certificate.reset();
}

}  // namespace firmad
