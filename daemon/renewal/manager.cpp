// The renewal manager: requests, the renewal thread, scheduling, listeners, persistence and status.
#include "daemon/renewal/manager.hpp"

#include <pthread.h>

#include <openssl/sha.h>

#include <algorithm>
#include <chrono>

#include "daemon/log.hpp"
#include "daemon/mx/identity.hpp"
#include "daemon/renewal/schedule.hpp"
#include "daemon/renewal/token_steps.hpp"
#include "daemon/test_hooks.hpp"
#include "protocol/errors.hpp"

namespace firmad::renewal {

namespace perr = protocol::error;
using protocol::VarlinkError;

namespace {

const std::vector<int> kDefaultWarnDays{30, 7, 1};

// A value in [0,1) fixed for a certificate: its renewal time does not move
// when the daemon restarts, and certificates of one batch spread out.
double stable_unit(const Bytes& certificate) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(certificate.data(), certificate.size(), d);
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | d[i];
  return static_cast<double>(v >> 11) / static_cast<double>(std::uint64_t(1) << 53);
}

// The system clock counts nanoseconds in 64 bits (to 2262): a certificate's
// "99991231235959Z" must not overflow it.
Clock::time_point tp(std::time_t t) { return Clock::from_time_t(std::clamp<std::time_t>(t, 0, 8'000'000'000)); }

}  // namespace


Manager::Manager(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens, StateStore& state)
    : config_(config), tokens_(tokens), state_(state) {

  const Json doc = state_.read();
  if (auto it = doc.find("renewals"); it != doc.end() && it->is_object()) {
    for (const auto& [alias, j] : it->items()) {
      try {
        records_[alias] = Record::from_json(j);
      } catch (const std::exception& e) {
        log::error("renewal-record-unreadable", {{"key", alias}, {"error", e.what()}});
      }
    }
  }
}

Manager::~Manager() { stop(); }

void Manager::remove_temporaries() noexcept {
  for (const auto& key : config_.keys) {
    if (!key.renewal) continue;
    for (const auto& file : {key.renewal->certificate_file, key.renewal->chain_file})
      if (!file.empty()) remove_temporaries_of(file);
  }
}

void Manager::start() {
  for (auto& [alias, r] : records_)
    if (r.active()) log::info("renewal-resuming", {{"key", alias}, {"step", protocol::wire_name(r.step)}});
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "firmad-renewal");
    run();
  });
}

void Manager::stop() noexcept {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Anyone still listening learns the renewal rests until the next start.
  std::map<std::string, std::vector<Listener>> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(listeners_);
    for (auto& [alias, req] : requests_)  // taken by no one now
      if (req.listener) left[alias].push_back(std::move(req.listener));
    requests_.clear();
  }
  for (auto& [alias, ls] : left) {
    Event e{alias, std::string(protocol::kRenewalStateStopping), std::nullopt, std::nullopt,
            "firmad is stopping; the renewal resumes when it starts again", now_s(), 0, true};
    {
      std::lock_guard lock(mutex_);
      if (auto it = records_.find(alias); it != records_.end()) e.state = it->second.state(), e.step = it->second.step;
    }
    for (auto& l : ls) l(e);
  }
}

std::optional<Manager::Target> Manager::target(const std::string& alias) const {
  for (auto& w : tokens_) {
    auto snap = w->snapshot();
    if (const KeyState* k = snap->key(alias)) {
      Target t;
      t.key = k->config;
      if (k->config.renewal) t.config = *k->config.renewal;
      t.worker = w.get();
      t.snapshot = std::move(snap);
      t.state = t.snapshot->key(alias);
      return t;
    }
  }
  return std::nullopt;
}

Manager::Target Manager::checked_target(const std::string& alias, bool fetch) const {
  auto t = target(alias);
  if (!t) throw VarlinkError(perr::kKeyNotFound, {{"key", alias}});
  if (!t->key.renewal || (fetch && t->key.renewal->provider != RenewalProvider::Idse))
    throw VarlinkError(perr::kRenewalNotConfigured, {{"key", alias}});
  if (auto c = t->worker->cancellation(alias)) throw VarlinkError(perr::kKeyCancelled, {{"key", alias}, {"at", iso8601(c->at)}});
  return std::move(*t);
}

void Manager::request(const std::string& alias, Request req, Listener listener) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw VarlinkError(perr::kShuttingDown, Json::object());
    req.listener = std::move(listener);
    requests_.emplace_back(alias, std::move(req));
    kicked_ = true;
  }
  wake_.notify_all();
}

void Manager::renew(const std::string& alias, Listener listener) {
  checked_target(alias, false);
  request(alias, {Request::Kind::Renew, {}, {}}, std::move(listener));
}

void Manager::fetch(const std::string& alias, const std::string& serial, const std::string& npie, Listener listener) {
  auto t = checked_target(alias, true);
  {
    std::lock_guard lock(mutex_);
    auto it = records_.find(alias);
    if (it != records_.end() && it->second.active())
      throw VarlinkError(perr::kRenewalInProgress, {{"key", alias}, {"state", it->second.state()}});
  }
  const std::string ticket = serial.empty() ? "npie:" + (npie.empty() ? t.key.npie : npie) : serial;
  request(alias, {Request::Kind::Fetch, ticket, {}}, std::move(listener));
}

void Manager::abandon(const std::string& alias, Listener listener) {
  if (!target(alias)) throw VarlinkError(perr::kKeyNotFound, {{"key", alias}});
  request(alias, {Request::Kind::Abandon, {}, {}}, std::move(listener));
}

void Manager::cancel(const std::string& alias) {
  try {
    request(alias, {Request::Kind::Cancel, {}, {}}, nullptr);
  } catch (const VarlinkError&) {
    // Stopping: the next start sees the cancellation before anything else.
  }
}

// On the renewal thread: what a queued request does to the key's record.
void Manager::handle(const std::string& alias, const Request& req) {
  if (req.listener) {
    std::lock_guard lock(mutex_);
    listeners_[alias].push_back(req.listener);
  }
  std::optional<Record> current;
  {
    std::lock_guard lock(mutex_);
    if (auto it = records_.find(alias); it != records_.end()) current = it->second;
  }
  if (req.kind == Request::Kind::Abandon) {
    auto tell = [&](const std::string& message) {
      notify(alias, Event{alias, current ? current->state() : std::string(protocol::kRenewalStateNone),
                          current ? std::optional<Step>(current->step) : std::nullopt,
                          current ? current->failure : std::nullopt, message, now_s(), 0, true});
    };
    if (!current || !current->active()) {
      tell(current ? "no renewal under way (the last one rests as " + current->state() + "): nothing abandoned"
                   : "no renewal under way: nothing abandoned");
      return;
    }
    if (current->step == Step::Installed) {
      tell("the new certificate is installed and served already; the renewal finishes by itself: nothing abandoned");
      return;
    }
    Record r = *current;
    const std::string at = std::string(protocol::wire_name(r.step));
    const Bytes pending = r.abandoned_key();
    r.failure = Failure::Underconfigured;
    r.next_try = 0;
    r.reason = "abandoned by an administrator at " + at + ": no new key of its own to remove";
    if (!pending.empty()) {
      // Recorded as ended before its key goes: a crash in between leaves an
      // ended renewal whose key the next one removes, never a renewal that
      // resumes without its key.
      r.reason = "abandoned by an administrator at " + at + ": removing its new key (CKA_ID " + hex(pending) + ")";
      try {
        record_quietly(alias, r);
      } catch (const StateError& e) {
        log::error("renewal-state-unwritable", {{"key", alias}, {"error", e.what()}});
        tell(std::string("cannot record that the renewal ends (") + e.what() + "): nothing abandoned");
        return;
      }
      std::string did = "its new key (CKA_ID " + hex(pending) + ") removed from the token";
      try {
        auto t = target(alias);
        if (!t) throw std::runtime_error("the key is no longer configured");
        destroy_key(*t->worker, pending);
        r.new_id.clear();  // gone: nothing of it is left to remove
      } catch (const std::exception& e) {
        log::warning("renewal-key-not-removed", {{"key", alias}, {"id", hex(pending)}, {"error", e.what()}});
        did = "its new key (CKA_ID " + hex(pending) + ") could not be removed now (" + e.what() +
              "); the next renewal removes it";
      }
      r.reason = "abandoned by an administrator at " + at + ": " + did;
    }
    log::notice("renewal-abandoned", {{"key", alias}, {"step", at}, {"what", r.reason}});
    persist_or_keep(alias, r, r.reason);
    return;
  }
  if (req.kind == Request::Kind::Cancel) {
    if (!current || current->done()) return;
    Record r = *current;
    r.failure = Failure::Underconfigured;
    r.reason = "the key was cancelled";
    r.next_try = 0;
    if (const Bytes pending = r.abandoned_key(); !pending.empty()) {
      if (auto t = target(alias)) {
        try {
          destroy_key(*t->worker, pending);
        } catch (const std::exception& e) {
          log::warning("renewal-key-not-removed", {{"key", alias}, {"id", hex(pending)}, {"error", e.what()}});
          r.cleanup_id = pending;
        }
      }
    }
    persist_or_keep(alias, r, "renewal stopped: the key was cancelled");
    return;
  }
  Record r;
  if (req.kind == Request::Kind::Renew) {
    if (current && (current->active() || (current->step == Step::Installed && current->files_blocked))) {
      // Under way, or stopped because its files could not be written (the
      // token serves the new pair already): its next step now.
      r = *current;
      r.failure.reset(), r.reason.clear();
      r.next_try = 0;
    } else {
      r.origin = Origin::Manual;
      r.started = now_s();
      if (current) r.cleanup_id = current->abandoned_key();
    }
  } else {
    if (current && current->active()) {
      notify(alias, Event{alias, current->state(), current->step, current->failure,
                          "a renewal is under way; it fetches its certificate by itself", now_s(), current->next_try, true});
      return;
    }
    // Keep what an ended renewal knew: the certificate may be for its new key.
    if (current && !current->done()) r = *current;
    r.origin = Origin::Fetch;
    r.failure.reset(), r.reason.clear();
    r.step = Step::Fetching;
    r.ticket = req.ticket;
    r.issued.clear(), r.chain.clear();
    r.attempts = 0;
    r.next_try = 0;
    r.started = now_s();
  }
  {
    std::lock_guard lock(mutex_);
    records_[alias] = r;
  }
  advance(alias);
}

void Manager::notify(const std::string& alias, const Event& e) {
  std::vector<Listener> ls;
  {
    std::lock_guard lock(mutex_);
    auto it = listeners_.find(alias);
    if (it == listeners_.end()) return;
    ls = it->second;
    if (e.final) listeners_.erase(it);
  }
  for (auto& l : ls) l(e);
}

void Manager::release_listeners(const std::string& alias) {
  Event e{alias, std::string(protocol::kRenewalStateNone), std::nullopt, std::nullopt, "the renewal rests", now_s(), 0, true};
  {
    std::lock_guard lock(mutex_);
    if (!listeners_.count(alias)) return;
    if (auto it = records_.find(alias); it != records_.end()) {
      const Record& r = it->second;
      e.state = r.state(), e.step = r.step, e.failure = r.failure, e.next_try = r.next_try;
      e.message = r.reason.empty() ? "the renewal rests at " + r.state() : r.reason;
    }
  }
  notify(alias, e);
}

void Manager::persist_or_keep(const std::string& alias, const Record& r, const std::string& message) {
  try {
    persist(alias, r, message);
  } catch (const StateError& e) {
    // Kept in memory and tried again later; listeners still hear how it ended.
    log::error("renewal-state-unwritable", {{"key", alias}, {"error", e.what()}});
    {
      std::lock_guard lock(mutex_);
      records_[alias] = r;
    }
    notify(alias, Event{alias, r.state(), r.step, r.failure, message, now_s(), r.next_try, true});
  }
}

void Manager::record_quietly(const std::string& alias, const Record& r) {
  Record copy = r;
  copy.updated = now_s();
  state_.update([&](Json& doc) {
    if (!doc["renewals"].is_object()) doc["renewals"] = Json::object();
    doc["renewals"][alias] = copy.to_json();
  });
  std::lock_guard lock(mutex_);
  records_[alias] = copy;
}

void Manager::persist(const std::string& alias, const Record& r, const std::string& message,
                      const std::function<void(Json&)>& also) {
  Record copy = r;
  copy.updated = now_s();
  const std::string said = printable(message, 600);
  state_.update([&](Json& doc) {
    if (!doc["renewals"].is_object()) doc["renewals"] = Json::object();
    doc["renewals"][alias] = copy.to_json();
    if (also) also(doc);
  });
  {
    std::lock_guard lock(mutex_);
    records_[alias] = copy;
  }
  const bool resting = copy.done() || copy.failure || copy.next_try > copy.updated;
  Event e{alias, copy.state(), copy.step, copy.failure, said, copy.updated, resting ? copy.next_try : 0, resting};
  log::write(!copy.failure ? log::Level::Info : log::Level::Warning, "renewal-step",
           {{"key", alias}, {"step", protocol::wire_name(copy.step)}, {"state", copy.state()}, {"message", said}});
  notify(alias, e);
  test_hooks::crash_point(copy.state());
}

// ---- the thread --------------------------------------------------------------

void Manager::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    kicked_ = false;
    std::optional<std::pair<std::string, Request>> req;
    std::optional<std::string> alias;
    std::time_t wake = 0;
    if (!requests_.empty()) {
      req = std::move(requests_.front());
      requests_.pop_front();
    } else {
      const std::time_t now = now_s();
      wake = now + 60;
      lock.unlock();
      warn_expiry(now);
      lock.lock();
      alias = next_work(now, wake);
    }
    if (req || alias) {
      lock.unlock();
      const std::string key = req ? req->first : *alias;
      try {
        if (req) handle(req->first, req->second);
        else advance(*alias);
      } catch (const std::exception& e) {
        // Never takes the daemon down: the record stays as last written and
        // is tried again after a pause.
        log::error("renewal-failed", {{"key", key}, {"error", e.what()}});
        std::lock_guard l(mutex_);
        if (auto it = records_.find(key); it != records_.end() && it->second.active())
          it->second.next_try = now_s() + 60;
      }
      release_listeners(key);
      lock.lock();
      continue;
    }
    wake_.wait_until(lock, Clock::from_time_t(wake), [this] { return stopping_ || kicked_; });
  }
}

std::optional<std::string> Manager::next_work(std::time_t now, std::time_t& wake) {
  // Renewals under way whose time has come.
  for (auto& [alias, r] : records_) {
    if (!r.active()) continue;
    if (r.next_try <= now) return alias;
    wake = std::min(wake, r.next_try);
  }
  // Certificates that reached their renewal window.
  for (auto& w : tokens_) {
    auto snap = w->snapshot();
    for (const auto& k : snap->keys) {
      if (!k.config.renewal || !k.config.renewal->automatic) continue;
      if (!k.certificate || !k.info || k.info->certificate.empty()) {
        wake = std::min(wake, now + 5);  // not seen yet (token absent, not logged in)
        continue;
      }
      if (w->cancellation(k.config.alias)) continue;
      auto it = records_.find(k.config.alias);
      if (it != records_.end() && it->second.active()) continue;  // under way, waiting for its next try
      const std::string serial = k.certificate->serial_hex;
      // A renewal of this very certificate failed for good: never again by itself.
      if (it != records_.end() && it->second.terminal() && it->second.for_serial == serial) continue;
      const std::time_t due = Clock::to_time_t(due_time(tp(k.certificate->not_before), tp(k.certificate->not_after),
                                                        *k.config.renewal, stable_unit(k.info->certificate)));
      if (due > now) {
        wake = std::min(wake, due);
        continue;
      }
      // A certificate this daemon just installed that was due on arrival: the
      // window is set too early for the CA's lifetimes. Renewing again would
      // loop, so it waits for an administrator.
      if (it != records_.end() && it->second.done() && !it->second.issued.empty() &&
          it->second.issued.front() == k.info->certificate && it->second.updated >= due) {
        if (warned_.insert(k.config.alias + "/" + serial + "/window").second)
          log::warning("renewal-window-too-early", {{"key", k.config.alias}, {"serial", serial}, {"due", iso8601(due)},
                                                    {"why", "the certificate just installed is already due; check before_days / lifetime_fraction"}});
        continue;
      }
      Record r;
      r.origin = Origin::Automatic;
      r.started = now;
      if (it != records_.end()) r.cleanup_id = it->second.abandoned_key();
      records_[k.config.alias] = std::move(r);
      log::notice("renewal-due", {{"key", k.config.alias}, {"serial", serial}, {"due", iso8601(due)}});
      return k.config.alias;
    }
  }
  return std::nullopt;
}

void Manager::warn_expiry(std::time_t now) {
  for (auto& w : tokens_) {
    auto snap = w->snapshot();
    for (const auto& k : snap->keys) {
      if (!k.certificate) continue;
      const auto& days = k.config.renewal ? k.config.renewal->warn_days : kDefaultWarnDays;
      auto threshold = warning_threshold(tp(k.certificate->not_after), tp(now), days);
      if (!threshold) continue;
      const std::string mark = k.config.alias + "/" + k.certificate->serial_hex + "/" + std::to_string(*threshold);
      {
        std::lock_guard lock(mutex_);
        if (!warned_.insert(mark).second) continue;
      }
      log::warning("certificate-expiring", {{"key", k.config.alias}, {"serial", k.certificate->serial_hex},
                                            {"notAfter", iso8601(k.certificate->not_after)}, {"threshold_days", *threshold}});
    }
  }
}

Json Manager::status_json(const KeyState& key, std::time_t now) const {
  std::optional<Record> r;
  {
    std::lock_guard lock(mutex_);
    if (auto it = records_.find(key.config.alias); it != records_.end()) r = it->second;
  }
  if (!key.config.renewal && !r) return nullptr;
  Json j = Json::object();
  if (key.config.renewal) {
    const auto& c = *key.config.renewal;
    j["provider"] = c.provider == RenewalProvider::Idse ? "idse" : c.provider == RenewalProvider::Helper ? "helper" : "est";
    j["automatic"] = c.automatic;
    if (key.certificate && key.info) {
      const std::time_t due = Clock::to_time_t(
          due_time(tp(key.certificate->not_before), tp(key.certificate->not_after), c, stable_unit(key.info->certificate)));
      j["dueAt"] = iso8601(due);
      j["needed"] = due <= now;
      // Installed by the last renewal and due on arrival: renewing again would loop.
      if (due <= now && r && r->done() && !r->issued.empty() && r->issued.front() == key.info->certificate && r->updated >= due)
        j["windowTooEarly"] = true;
    }
  }
  if (key.certificate) {
    const auto& days = key.config.renewal ? key.config.renewal->warn_days : kDefaultWarnDays;
    if (auto w = warning_threshold(tp(key.certificate->not_after), tp(now), days)) j["warningDays"] = *w;
  }
  if (r) {
    j["state"] = r->state();
    j["step"] = protocol::wire_name(r->step);
    if (r->failure) j["failure"] = protocol::wire_name(*r->failure);
    if (!r->reason.empty()) j["reason"] = r->reason;
    j["origin"] = protocol::wire_name(r->origin);
    j["attempts"] = r->attempts;
    j["startedAt"] = iso8601(r->started);
    j["updatedAt"] = iso8601(r->updated);
    if (r->active() && r->next_try > now) j["nextTry"] = iso8601(r->next_try);
  } else {
    j["state"] = protocol::kRenewalStateNone;
  }
  return j;
}


}  // namespace firmad::renewal
