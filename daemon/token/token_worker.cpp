// Per-token threads: the signing queue, discovery and refresh, sessions, and the cached state.
#include "daemon/token/token_worker.hpp"

#include <pthread.h>

#include "daemon/busy_poll.hpp"
#include "daemon/log.hpp"
#include "daemon/token/pin_source.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/key.hpp"

namespace firmad {

namespace perr = protocol::error;
using protocol::LoginState;
using protocol::VarlinkError;

namespace {

// The signing thread running now, if any: suspect_token() called from one of
// its jobs marks that thread's own session for a check after the job.
struct SigningThread {
  const TokenWorker* worker = nullptr;
  bool* session_suspect = nullptr;
};
thread_local SigningThread this_signing_thread;

}  // namespace

protocol::VarlinkError not_logged_in(const std::string& token, LoginState state) {
  return VarlinkError(perr::kNotLoggedIn, {{"token", token}, {"loginState", std::string(wire_name(state))}});
}

protocol::VarlinkError token_failure(const std::string& token, const std::exception& e) {
  if (const auto* v = dynamic_cast<const VarlinkError*>(&e)) return *v;
  if (const auto* p = dynamic_cast<const pkcs11::Error*>(&e)) {
    switch (p->fault()) {
      case pkcs11::Fault::TokenAbsent:
        return VarlinkError(perr::kTokenAbsent, {{"token", token}});
      // A dead session is not an absent token: this request failed, and the
      // signing thread reopens its session for the next one.
      case pkcs11::Fault::SessionLost:
        return VarlinkError(perr::kTokenError, {{"token", token}, {"call", p->call()}, {"code", p->code_name()}});
      case pkcs11::Fault::NotLoggedIn:
        return not_logged_in(token, LoginState::LoggedOut);
      case pkcs11::Fault::PinIncorrect:
        return VarlinkError(perr::kPinIncorrect, {{"token", token}});
      case pkcs11::Fault::PinLocked:
        return VarlinkError(perr::kPinLocked, {{"token", token}});
      default:
        return VarlinkError(perr::kTokenError, {{"token", token}, {"call", p->call()}, {"code", p->code_name()}});
    }
  }
  return VarlinkError(perr::kInternalError, {{"reason", e.what()}});
}

TokenWorker::TokenWorker(TokenConfig config, std::vector<KeyConfig> keys, std::chrono::microseconds busy_poll,
                         std::filesystem::path refused_pins)
    : config_(std::move(config)),
      keys_(keys),
      token_uri_(pkcs11::Uri::parse(config_.uri)),
      refused_pins_(std::move(refused_pins)),
      busy_poll_(busy_poll),
      snapshot_(std::make_shared<TokenSnapshot>()) {
  auto snap = std::make_shared<TokenSnapshot>();
  for (const auto& k : keys) snap->keys.push_back(KeyState{k, std::nullopt, std::nullopt});
  snapshot_ = std::move(snap);
}

TokenWorker::~TokenWorker() { stop(); }

void TokenWorker::start() {
  module_ = pkcs11::Module::shared(config_.module);
  module_->join();
  if (module_->one_call_at_a_time())
    log::info("token-module-one-call-at-a-time", {{"token", config_.name}, {"module", module_->path()},
                                                  {"why", pkcs11::Module::one_call_at_a_time_reason()}});
  sessions_ = SessionPool(config_.sessions);
  // Named for ps, top and firmad-load's CPU figures (at most 15 characters).
  control_thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "firmad-control");
    control_loop();
  });
  for (std::size_t i = 0; i < config_.sessions; ++i)
    sign_threads_.emplace_back([this, i] {
      ::pthread_setname_np(::pthread_self(), ("firmad-sign-" + std::to_string(i % 100)).c_str());
      sign_loop(i);
    });
}

void TokenWorker::stop() noexcept {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  work_cv_.notify_all();
  control_cv_.notify_all();
  room_cv_.notify_all();
  for (auto& t : sign_threads_) t.join();  // they drain the queue first
  if (control_thread_.joinable()) control_thread_.join();
  sign_threads_.clear();
  {
    std::lock_guard lock(mutex_);
    sessions_.drop_all(Handles::Close);
  }
  if (module_) module_->leave(parked_at_);  // no call into the module from here on (the threads are joined)
}

std::shared_ptr<const TokenSnapshot> TokenWorker::snapshot() const {
  std::lock_guard lock(snap_mutex_);
  return snapshot_;
}

std::size_t TokenWorker::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

void TokenWorker::publish(const std::function<void(TokenSnapshot&)>& change) {
  std::lock_guard writer(publish_mutex_);
  auto next = std::make_shared<TokenSnapshot>(*snapshot());
  change(*next);  // may talk to the token (a rescan): readers keep the old state meanwhile
  std::lock_guard lock(snap_mutex_);
  snapshot_ = std::move(next);
}

Admission TokenWorker::enqueue(Lane lane, Job job, std::chrono::milliseconds wait_for_room) {
  {
    std::unique_lock lock(mutex_);
    if (lane == Lane::Control) {
      if (stopping_) return Admission::Stopping;
      control_queue_.push_back(std::move(job));
    } else {
      auto room = [this] { return stopping_ || queue_.size() < config_.queue_limit; };
      if (!room() && wait_for_room.count() > 0) room_cv_.wait_for(lock, wait_for_room, room);
      if (stopping_) return Admission::Stopping;
      if (queue_.size() >= config_.queue_limit) return Admission::QueueFull;
      queue_.push_back(std::move(job));
      pending_.store(queue_.size(), std::memory_order_release);
    }
  }
  if (lane == Lane::Control) control_cv_.notify_all();
  else work_cv_.notify_one();
  return Admission::Queued;
}

void TokenWorker::wait_discovered() {
  std::unique_lock lock(mutex_);
  control_cv_.wait(lock, [this] { return discovered_ || stopping_; });
}

void TokenWorker::sign_loop(std::size_t index) {
  bool session_suspect = false;
  this_signing_thread = SigningThread{this, &session_suspect};
  std::optional<pkcs11::SlotId> reopen_on;  // this thread's session died and is not replaced yet
  for (;;) {
    Job job;
    WorkContext ctx{nullptr, nullptr};
    spin_until([this] { return pending_.load(std::memory_order_acquire) > 0; }, busy_poll_);
    {
      std::unique_lock lock(mutex_);
      work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued job answered
      job = std::move(queue_.front());
      queue_.pop_front();
      pending_.store(queue_.size(), std::memory_order_release);
      ++active_;
      room_cv_.notify_one();
      ctx.session = sessions_.at(index);
      ctx.snapshot = snapshot();
    }
    if (ctx.session) reopen_on.reset();  // a rediscovery gave every thread a new session
    else if (reopen_on && ctx.snapshot->present)
      ctx.session = reopen_session(index, *reopen_on, ctx.snapshot->logged_in, "an earlier reopen failed");
    session_suspect = false;
    job(ctx);  // jobs answer their caller themselves and do not throw
    // Still counted active: the control thread does not swap sessions meanwhile.
    if (session_suspect && ctx.session) check_session(index, *ctx.snapshot, reopen_on);
    {
      std::lock_guard lock(mutex_);
      --active_;
    }
    idle_cv_.notify_all();
  }
}

void TokenWorker::control_loop() {
  discover();
  {
    std::lock_guard lock(mutex_);
    discovered_ = true;
  }
  control_cv_.notify_all();
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      const bool woken = control_cv_.wait_for(lock, config_.refresh_interval,
                                              [this] { return stopping_ || !control_queue_.empty(); });
      if (!control_queue_.empty()) {
        job = std::move(control_queue_.front());
        control_queue_.pop_front();
      } else if (stopping_) {
        break;
      } else if (woken) {
        continue;
      }
    }
    if (job) {
      WorkContext ctx{nullptr, snapshot()};
      job(ctx);  // jobs answer their caller themselves and do not throw
    } else {
      refresh();
    }
  }
  // Signing threads have drained the queue (stop() joined them first only
  // after they saw stopping_; wait for them to be idle before logging out).
  {
    std::unique_lock lock(mutex_);
    idle_cv_.wait(lock, [this] { return active_ == 0 && queue_.empty(); });
  }
  if (control_session_) {
    try {
      if (control_session_->logged_in()) {
        control_session_->logout();
        log::info("token-logout", {{"token", config_.name}, {"why", "shutdown"}});
      }
    } catch (const std::exception& e) {
      log::warning("token-logout-failed", {{"token", config_.name}, {"error", e.what()}});
    }
    control_session_.reset();
  }
}

void TokenWorker::discover() {
  std::optional<pkcs11::SlotId> slot;
  try {
    const auto slots = module_->slots_with_token();
    for (pkcs11::SlotId s : slots) {
      if (token_uri_.matches_token(*module_, s)) {
        slot = s;
        break;
      }
    }
    // A module with no slot at all may have fixed its slot list at
    // C_Initialize (p11-kit-client.so whose server was not up yet): a
    // re-initialisation at each discovery asks it again, so the token is
    // found within two refresh intervals of its server starting. (An empty
    // reader is a slot: a card put in later shows there by itself.)
    if (slots.empty() && module_->slot_count() == 0) {
      lose_module("the module lists no slot", "no token in any slot of " + module_->path() + "; asking the module again");
      return;
    }
  } catch (const pkcs11::Error& e) {
    if (e.fault() == pkcs11::Fault::BackendLost) {
      lose_backend(e.what());
      return;
    }
    publish([&](TokenSnapshot& s) { s.failing(e.what()); });
    log::error("token-scan-failed", {{"token", config_.name}, {"error", e.what()}});
    return;
  } catch (const std::exception& e) {
    publish([&](TokenSnapshot& s) { s.failing(e.what()); });
    log::error("token-scan-failed", {{"token", config_.name}, {"error", e.what()}});
    return;
  }
  if (!slot) {
    publish([&](TokenSnapshot& s) { s.absent("no token matching " + config_.uri + " in any slot of " + module_->path()); });
    log::warning("token-absent", {{"token", config_.name}, {"uri", config_.uri}});
    return;
  }
  try {
    const auto found = module_->token_info(*slot);
    if (known_serial_ && found.serial != *known_serial_) {
      const std::string why = "the token in the slot (serial " + found.serial + ") is not the one firmad served (serial " +
                              *known_serial_ + "); not used";
      publish([&](TokenSnapshot& s) { s.mark_refused(why); });
      refuse_token(found.serial, why);
      return;
    }
    control_session_.emplace(module_, *slot);
    {
      auto opened = sessions_.open_all(module_, *slot);  // its size never changes: no lock needed to read it
      std::unique_lock lock(mutex_);
      idle_cv_.wait(lock, [this] { return active_ == 0; });
      sessions_.replace_all(std::move(opened));
    }
    const auto info = module_->token_info(*slot);
    std::optional<std::string> replaced;
    publish([&](TokenSnapshot& s) {
      s.info = info;
      s.found(unattended(config_) ? "" : "waiting for 'firmactl login " + config_.name + "'");
      replaced = rescan_keys(s, KeyScan::Verify);
      if (replaced) s.mark_refused(*replaced);  // never seen as present: no login, no signature
    });
    if (replaced) {
      refuse_token(info.serial, *replaced);
      return;
    }
    log::info("token-found", {{"token", config_.name}, {"label", info.label}, {"serial", info.serial},
                              {"sessions", config_.sessions}});
    backend_error_.clear();
  } catch (const std::exception& e) {
    control_session_.reset();  // the next refresh tries again
    publish([&](TokenSnapshot& s) { s.failing(e.what()); });
    log::error("token-open-failed", {{"token", config_.name}, {"error", e.what()}});
    return;
  }
  if (!known_serial_) known_serial_ = snapshot()->info->serial;
  if (unattended(config_) && !pin_refused_) {
    try {
      login(std::nullopt, false, true);
    } catch (const std::exception&) {
      // login() recorded the state and logged why.
    }
  }
}

void TokenWorker::refresh() {
  if (parked_at_) {
    if (module_->generation() == *parked_at_) return;  // re-initialisation under way: no call into the module
    parked_at_.reset();
  }
  if (module_->reinit_pending()) {
    // Another token of this module lost the backend: let go, then find the
    // token again once the module is re-initialised.
    if (control_session_) lose_token("the module " + module_->path() + " is being re-initialised");
    park();
    return;
  }
  if (!control_session_) {
    discover();
    return;
  }
  try {
    const auto info = module_->token_info(control_session_->slot());
    // A session that died with a removed token says so here; a live one
    // says whether the token still has firmad logged in.
    const bool logged_in = control_session_->logged_in();
    // A signature met what a lost backend says: ask the device itself.
    if (reach_device_.exchange(false)) control_session_->reach_device();
    publish([&](TokenSnapshot& s) { s.info = info; });
    log::debug("token-refresh", {{"token", config_.name}, {"count_low", info.pin.count_low ? "yes" : "no"},
                                 {"final_try", info.pin.final_try ? "yes" : "no"}, {"locked", info.pin.locked ? "yes" : "no"}});
    refresh_answered(logged_in);
  } catch (const pkcs11::Error& e) {
    if (e.fault() == pkcs11::Fault::TokenAbsent || e.fault() == pkcs11::Fault::SessionLost) lose_token(e.what());
    else if (e.fault() == pkcs11::Fault::BackendLost) lose_backend(e.what());
    else refresh_failed(e.what());
  } catch (const std::exception& e) {
    refresh_failed(e.what());
  }
}

// Control thread only. The module lost its backend (its server died, pcscd
// restarted, the TPM's context broke): the token is absent until the module,
// re-initialised, finds it again.
void TokenWorker::lose_backend(const std::string& why) {
  lose_module(why, "the module lost its backend (" + why + "); re-initialising it");
}

// Control thread only. The module cannot serve the token until it is
// re-initialised (its backend is lost, or it lists no slot at all, which
// p11-kit-client.so fixes at C_Initialize): its sessions are forgotten,
// status says `status`, one log line per new `why` (never one per refresh),
// and the module is re-initialised once every token of it has let go.
void TokenWorker::lose_module(const std::string& why, const std::string& status) {
  publish([&](TokenSnapshot& s) { s.absent(status); });
  forget_sessions();
  if (backend_error_ != why) log::warning("token-backend-lost", {{"token", config_.name}, {"module", module_->path()}, {"error", why}});
  backend_error_ = why;
  module_->request_reinit();
  park();
}

// Control thread only. Holds no session (lose_token() forgot them and
// waited for the signing threads) and makes no call into the module until
// it is re-initialised; the last of the module's tokens to park does it.
void TokenWorker::park() {
  const auto parking = module_->park();
  using Outcome = pkcs11::Module::Parking::Outcome;
  if (parking.outcome == Outcome::Parked) parked_at_ = parking.generation;
  if (parking.outcome == Outcome::Reinitialised)
    log::debug("module-reinitialised", {{"module", module_->path()}, {"by", config_.name},
                                       {"result", pkcs11::rv_name(parking.initialize_result)}});
}

// Control thread only. The token did not answer a refresh: status says so
// (not logged in: signatures are refused at once, not sent to a token in
// error), with one log line per new error and a count every minute while
// it lasts, never a line per refresh.
void TokenWorker::refresh_failed(const std::string& why) {
  const auto now = std::chrono::steady_clock::now();
  if (!refresh_error_) {
    const auto snap = snapshot();
    refresh_error_ = RefreshError{why, 0, now, snap->logged_in};
    publish([&](TokenSnapshot& s) { s.failing("the token does not answer (" + why + ")"); });
  }
  ++refresh_error_->failures;
  if (refresh_error_->failures == 1 || refresh_error_->error != why) {
    refresh_error_->error = why;
    refresh_error_->logged = now;
    publish([&](TokenSnapshot& s) { s.failing("the token does not answer (" + why + ")"); });
    log::warning("token-refresh-failed", {{"token", config_.name}, {"error", why}});
  } else if (now - refresh_error_->logged >= std::chrono::minutes(1)) {
    refresh_error_->logged = now;
    log::warning("token-refresh-still-failing", {{"token", config_.name}, {"failures", refresh_error_->failures}, {"error", why}});
  }
}

// Control thread only. A refresh got answers, and the token says whether
// firmad is logged in: a login lost behind firmad's back is noticed here,
// and a refresh error ends (unless an administrator logged in or out
// meanwhile, the login state follows what the token says).
void TokenWorker::refresh_answered(bool token_logged_in) {
  if (!refresh_error_) {
    if (snapshot()->logged_in && !token_logged_in) lose_login();
    return;
  }
  const RefreshError ended = *refresh_error_;
  refresh_error_.reset();
  log::notice("token-refresh-recovered", {{"token", config_.name}, {"failures", ended.failures}});
  if (snapshot()->login_state != LoginState::Error) return;
  if (token_logged_in) {
    publish([&](TokenSnapshot& s) { s.logged_in_now(); });
  } else if (ended.was_logged_in) {
    lose_login();
  } else {
    publish([&](TokenSnapshot& s) { s.logged_out(unattended(config_) ? "" : "waiting for 'firmactl login " + config_.name + "'"); });
  }
}

// Control thread only. The token logged firmad out behind its back (another
// program reset the card, an HSM's session timed out): status says so, and
// an unattended PIN source logs in again with exactly one C_Login; with
// pin_source = "admin" the token waits for 'firmactl login'.
void TokenWorker::lose_login() {
  const bool again = unattended(config_) && !pin_refused_;
  drop_signature_pin("the token logged firmad out");
  publish([&](TokenSnapshot& s) {
    s.logged_out(std::string("the token logged firmad out (reset by another program, or a session timeout)") +
                 (again ? "" : "; waiting for 'firmactl login " + config_.name + "'"));
  });
  log::warning("token-login-lost", {{"token", config_.name}, {"login_again", again ? "yes" : "no"}});
  if (!again) return;
  try {
    login(std::nullopt, false, true);
  } catch (const std::exception&) {
    // login() recorded the state and logged why.
  }
}

// Control thread only. The module said the token or its sessions are gone:
// their handles are forgotten, never closed one by one (the module may have
// handed the numbers to new sessions of another token already); whatever
// the module still keeps on the slot is closed with C_CloseAllSessions.
void TokenWorker::lose_token(const std::string& why) {
  publish([&](TokenSnapshot& s) { s.absent("the token went away (" + why + "); waiting for it to come back"); });
  forget_sessions();
  log::warning("token-removed", {{"token", config_.name}, {"why", why}});
}

// Control thread only. Forgets every session of the token (new jobs see it
// absent first; those running finish) and the PIN kept for signatures.
void TokenWorker::forget_sessions() {
  drop_signature_pin("the token went away");
  refresh_error_.reset();  // what follows is the next discovery's to say
  const auto slot = control_session_ ? std::optional(control_session_->slot()) : std::nullopt;
  if (control_session_) control_session_->forget();
  control_session_.reset();
  close_signing_sessions(Handles::Forget);
  if (slot) module_->close_all_sessions(*slot);
}

// Control thread only: after mark_refused() was published. Closes every session
// (which also ends a login), so nothing touches the token until a refresh
// finds the one firmad served back in the slot.
void TokenWorker::refuse_token(const std::string& serial, const std::string& why) {
  drop_signature_pin("the token in the slot is not the one firmad served");
  refresh_error_.reset();
  control_session_.reset();
  close_signing_sessions();
  log::error("token-replaced", {{"token", config_.name}, {"serial", serial},
                                {"expected", known_serial_.value_or("")}, {"why", why}});
}

void TokenWorker::close_signing_sessions(Handles handles) {
  std::unique_lock lock(mutex_);
  idle_cv_.wait(lock, [this] { return active_ == 0; });
  sessions_.drop_all(handles);
}

void TokenWorker::suspect_token(bool reach_device) {
  if (reach_device) reach_device_ = true;
  if (this_signing_thread.worker == this) {
    *this_signing_thread.session_suspect = true;  // sign_loop checks the session once the job returns
    return;
  }
  check_token();
}

void TokenWorker::check_token() {
  if (suspected_.exchange(true)) return;  // a check is already on its way
  const auto queued = enqueue(Lane::Control, [this](WorkContext&) {
    suspected_ = false;
    refresh();
    if (control_session_) log::info("token-checked", {{"token", config_.name}, {"present", "yes"}});
  });
  if (queued != Admission::Queued) suspected_ = false;  // stopping: nothing more to check
}

// Signing thread `index`, still counted active, after a job on `seen` said
// its session failed.
void TokenWorker::check_session(std::size_t index, const TokenSnapshot& seen,
                                std::optional<pkcs11::SlotId>& reopen_on) {
  pkcs11::Session& own = *sessions_.at(index);
  const pkcs11::SlotId slot = own.slot();
  std::string why;
  try {
    own.logged_in();
    check_token();  // the session answers: what failed was the token
    return;
  } catch (const pkcs11::Error& e) {
    if (e.fault() != pkcs11::Fault::SessionLost) {
      check_token();  // the device went away, or something worse: the control thread decides
      return;
    }
    why = e.what();
  } catch (const std::exception&) {
    check_token();
    return;
  }
  {
    // Forgotten, not closed: the module declared the handle invalid and may
    // give its number to a new session (SoftHSM does), maybe another
    // thread's, which a C_CloseSession would end.
    std::lock_guard lock(mutex_);
    sessions_.drop(index, Handles::Forget);
  }
  if (!reopen_session(index, slot, seen.logged_in, why)) reopen_on = slot;
}

// Signing thread `index`. Opens its session anew; returns it, or null (the
// control thread is then asked to check the token).
pkcs11::Session* TokenWorker::reopen_session(std::size_t index, pkcs11::SlotId slot, bool expect_login,
                                             const std::string& why) {
  try {
    auto fresh = std::make_unique<pkcs11::Session>(module_, slot);
    const bool logged_in = fresh->logged_in();  // it answers, and shares the token's login
    pkcs11::Session* opened = fresh.get();
    {
      std::lock_guard lock(mutex_);
      sessions_.reopen(index, std::move(fresh));
    }
    log::throttled(log::Level::Notice, "session-reopened", log::kNoUid, {{"token", config_.name}, {"session", index}, {"why", why},
                                     {"logged_in", logged_in ? "yes" : "no"}});
    if (expect_login && !logged_in) check_token();  // the token forgot its login: reset or replaced
    return opened;
  } catch (const std::exception& e) {
    log::throttled(log::Level::Warning, "session-reopen-failed", log::kNoUid, {{"token", config_.name}, {"session", index}, {"error", e.what()}});
    check_token();  // perhaps the token is gone
    return nullptr;
  }
}

std::optional<std::string> TokenWorker::rescan_keys(TokenSnapshot& snap, KeyScan scan) {
  std::map<std::string, pkcs11::Bytes> seen;  // remembered only if the token is accepted
  std::optional<std::string> replaced;
  for (std::size_t i = 0; i < snap.keys.size(); ++i) {
    KeyState& k = snap.keys[i];
    try {
      k.info = control_session_ ? pkcs11::find_key(*control_session_, keys_.uri(i)) : std::nullopt;
    } catch (const std::exception& e) {
      k.info.reset();
      log::warning("key-scan-failed", {{"token", config_.name}, {"key", k.config.alias}, {"error", e.what()}});
    }
    k.certificate = k.info && !k.info->certificate.empty() ? identify_certificate(k.info->certificate) : std::nullopt;
    if (!k.info || k.info->public_key.empty()) continue;
    const auto compared = keys_.compare(k.config.alias, k.info->public_key);
    if (scan == KeyScan::Adopt || compared == KeyRegistry::Seen::First) {
      seen[k.config.alias] = k.info->public_key;
    } else if (compared == KeyRegistry::Seen::Other && !replaced) {
      const std::string serial = snap.info ? snap.info->serial : "?";
      replaced = "the token in the slot (serial " + serial + ") is not the one firmad served: key " + k.config.alias +
                 " (" + k.config.uri + ") has another public key than when firmad last saw it (re-initialised or "
                 "altered while away); not used";
    }
  }
  if (!replaced)
    for (auto& [alias, spki] : seen) keys_.remember(alias, std::move(spki));
  return replaced;
}

}  // namespace firmad
