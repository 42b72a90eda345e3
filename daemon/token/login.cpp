// A token's login custody: exactly one C_Login per attempt, never repeated by itself after a refusal.
#include "daemon/token/token_worker.hpp"

#include "daemon/log.hpp"
#include "daemon/token/pin_source.hpp"
#include "pkcs11/error.hpp"

namespace firmad {

namespace perr = protocol::error;
using protocol::LoginState;
using protocol::VarlinkError;

LoginState TokenWorker::login(std::optional<protocol::Secret> pin, bool force, bool automatic, PinFrom from) {
  const std::string& name = config_.name;
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  // Keys only the login shows may tell the token is not the one firmad served.
  auto refuse = [&](const std::string& why) -> VarlinkError {
    const auto snap = snapshot();
    try {
      control_session_->logout();
    } catch (const std::exception&) {
      // Closing every session below ends the login as well.
    }
    refuse_token(snap->info ? snap->info->serial : "", why);
    return VarlinkError(perr::kTokenAbsent, {{"token", name}});
  };
  auto fail = [&](LoginState state, std::string reason, const char* error, nlohmann::json params) -> VarlinkError {
    publish([&](TokenSnapshot& s) { s.login_failed(state, reason); });
    log::warning("token-login-refused", {{"token", name}, {"state", wire_name(state)}, {"reason", reason},
                                         {"automatic", automatic ? "yes" : "no"}});
    return VarlinkError(error, std::move(params));
  };
  // Logged in: published together with the key check, so a token whose keys
  // changed is never seen usable.
  auto publish_logged_in = [&] {
    std::optional<std::string> replaced;
    publish([&](TokenSnapshot& s) {
      s.logged_in_now();
      replaced = rescan_keys(s, KeyScan::Verify);
      if (replaced) s.mark_refused(*replaced);
    });
    if (replaced) throw refuse(*replaced);
  };
  try {
    if (control_session_->logged_in()) {
      // Logged in already (a failed logout, another login): say so everywhere.
      if (!signature_pin())
        drop_signature_pin("firmad found the token logged in and holds no PIN for it; run 'firmactl logout " + name +
                           "' and 'firmactl login " + name + "'");
      publish_logged_in();
      return LoginState::LoggedIn;
    }
    const auto info = module_->token_info(control_session_->slot());
    publish([&](TokenSnapshot& s) { s.info = info; });
    if (info.pin.locked)
      throw fail(LoginState::PinLocked, "the token's user PIN is locked; the security officer must unlock it", perr::kPinLocked,
                 {{"token", name}});
    if (automatic && pin_refused_)
      throw fail(LoginState::PinIncorrect, "a wrong PIN was refused before; not retried automatically", perr::kPinIncorrect,
                 {{"token", name}});
    if (info.pin.final_try && (automatic || !force))
      throw fail(LoginState::PinFinalTry, "the next wrong PIN locks the token; log in with 'firmactl login --force'",
                 perr::kPinFinalTry, {{"token", name}});
    if (from == PinFrom::Reader && !info.protected_path)
      throw protocol::invalid_parameter("pinPad");  // the token has no PIN pad
    protocol::Secret secret;
    const bool from_source = !pin && from == PinFrom::Given;
    if (from == PinFrom::Reader) {
      log::notice("token-login-on-reader", {{"token", name}});
    } else if (pin) {
      secret = std::move(*pin);
    } else {
      try {
        secret = read_pin(config_);
      } catch (const PinSourceError& e) {
        throw fail(LoginState::PinSourceUnavailable, e.what(), perr::kPinSourceUnavailable, {{"token", name}, {"reason", e.what()}});
      }
    }
    // The token refused this very PIN before, maybe in an earlier run: an
    // automatic login does not offer it again (an administrator's does).
    if (automatic && from_source && refused_pins_.refused(info.serial, secret))
      throw fail(LoginState::PinIncorrect,
                 "the token refused the PIN of " + refused_pins_.refused_source() + " at " +
                     iso8601(*refused_pins_.refused_at()) + "; not tried again until it changes or an administrator runs 'firmactl login " +
                     name + "'",
                 perr::kPinIncorrect, {{"token", name}});
    publish([&](TokenSnapshot& s) { ++s.login_attempts; });
    try {
      if (from == PinFrom::Reader) control_session_->login_on_reader();
      else control_session_->login(secret.view());
    } catch (const pkcs11::Error& e) {
      const auto after = module_->token_info(control_session_->slot());
      publish([&](TokenSnapshot& s) { s.info = after; });
      if (e.fault() == pkcs11::Fault::PinIncorrect) {
        pin_refused_ = true;
        if (from_source) {
          if (auto error = refused_pins_.remember(info.serial, pin_source_name(config_), secret); !error.empty())
            log::error("pin-refusal-not-saved", {{"token", name}, {"error", error}});
        }
        throw fail(LoginState::PinIncorrect, "the token refused the PIN (" + e.code_name() + "); not retried", perr::kPinIncorrect,
                   {{"token", name}});
      }
      if (e.fault() == pkcs11::Fault::PinLocked) {
        // Locked without saying so in its flags: the token refuses every
        // login for a while, whatever the PIN (a TPM in dictionary-attack
        // lockout answers so even to the right PIN, and clears by itself).
        if (!after.pin.locked)
          throw fail(LoginState::PinLocked,
                     "the token refuses every login for now (" + e.code_name() +
                         ", its PIN not marked locked): a TPM's dictionary-attack lockout clears by itself after its recovery "
                         "time; then run 'firmactl login " + name + "'",
                     perr::kPinLocked, {{"token", name}});
        throw fail(LoginState::PinLocked, "the token's user PIN is locked; the security officer must unlock it", perr::kPinLocked,
                   {{"token", name}});
      }
      throw fail(LoginState::Error, e.what(), perr::kTokenError, {{"token", name}, {"call", e.call()}, {"code", e.code_name()}});
    }
    keep_signature_pin(std::move(secret));
  } catch (const pkcs11::Error& e) {
    throw fail(LoginState::Error, e.what(), perr::kTokenError, {{"token", name}, {"call", e.call()}, {"code", e.code_name()}});
  }
  pin_refused_ = false;
  if (refused_pins_.refused_at()) {
    if (auto error = refused_pins_.forget(); !error.empty()) log::error("pin-refusal-not-saved", {{"token", name}, {"error", error}});
  }
  publish_logged_in();
  log::notice("token-login", {{"token", name}, {"automatic", automatic ? "yes" : "no"}});
  return LoginState::LoggedIn;
}

LoginState TokenWorker::logout() {
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", config_.name}});
  drop_signature_pin("the token was logged out by an administrator");
  // New jobs see a logged-out token from here on; wait for those already running.
  publish([&](TokenSnapshot& s) {
    s.logged_out("logged out by an administrator");
  });
  {
    std::unique_lock lock(mutex_);
    idle_cv_.wait(lock, [this] { return active_ == 0; });
  }
  try {
    control_session_->logout();
  } catch (const std::exception& e) {
    // Say what the token says, not what was hoped.
    bool still = false;
    try {
      still = control_session_->logged_in();
    } catch (const std::exception&) {
    }
    if (still) publish([&](TokenSnapshot& s) { s.logged_in_now(); });
    throw token_failure(config_.name, e);
  }
  std::optional<std::string> replaced;
  publish([&](TokenSnapshot& s) {
    replaced = rescan_keys(s, KeyScan::Verify);
    if (replaced) s.mark_refused(*replaced);
  });
  log::notice("token-logout", {{"token", config_.name}, {"why", "administrator"}});
  if (replaced) refuse_token(snapshot()->info ? snapshot()->info->serial : "", *replaced);
  return LoginState::LoggedOut;
}

std::shared_ptr<const protocol::Secret> TokenWorker::signature_pin(std::string* why) const {
  std::lock_guard lock(signature_pin_mutex_);
  if (!signature_pin_ && why) *why = no_signature_pin_;
  return signature_pin_;
}

void TokenWorker::keep_signature_pin(protocol::Secret pin) {
  const bool wanted = keys_.wants_signature_pin();
  std::lock_guard lock(signature_pin_mutex_);
  if (wanted && !pin.empty()) {
    signature_pin_ = std::make_shared<const protocol::Secret>(std::move(pin));
    no_signature_pin_.clear();
  } else {
    signature_pin_.reset();
    no_signature_pin_ = wanted ? "the token was logged in without a PIN firmad could keep (a PIN pad)"
                               : "no key of the token has pin_per_signature = true";
  }
}

void TokenWorker::drop_signature_pin(const std::string& why) {
  std::lock_guard lock(signature_pin_mutex_);
  signature_pin_.reset();  // wiped once the last signature using it returns
  no_signature_pin_ = why;
}

pkcs11::Bytes TokenWorker::sign_with_context_pin(const std::string& key,
                                                 const std::function<pkcs11::Bytes(std::string_view pin)>& sign) {
  std::lock_guard serial(context_login_mutex_);
  std::string why;
  const auto pin = signature_pin(&why);  // fetched in turn: one refused a moment ago is gone
  if (!pin) throw VarlinkError(perr::kKeyNeedsPinPerSignature, {{"key", key}, {"reason", why}});
  try {
    return sign(pin->view());
  } catch (const pkcs11::Error& e) {
    if (e.fault() != pkcs11::Fault::PinIncorrect && e.fault() != pkcs11::Fault::PinLocked) throw;
    {
      std::lock_guard lock(signature_pin_mutex_);
      if (signature_pin_ == pin) {  // not a PIN a login kept meanwhile
        signature_pin_.reset();
        no_signature_pin_ = "the token refused the kept PIN for a signature with " + key + " (" + e.code_name() +
                            "); not offered again until firmad logs in again ('firmactl logout " + config_.name +
                            "' and 'firmactl login " + config_.name + "')";
      }
    }
    log::error("signature-pin-refused", {{"token", config_.name}, {"key", key}, {"error", e.code_name()}});
    throw;
  }
}

}  // namespace firmad
