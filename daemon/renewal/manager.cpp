// The renewal state machine: each step persisted before the next, each safe to run again after a crash.
#include "daemon/renewal/manager.hpp"

#include <openssl/sha.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "daemon/mx/identity.hpp"
#include "daemon/token/bridge.hpp"
#include "daemon/token/signing.hpp"
#include "daemon/log.hpp"
#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/provider.hpp"
#include "daemon/renewal/schedule.hpp"
#include "daemon/renewal/subprocess.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/import.hpp"
#include "pkcs11/keygen.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/uri.hpp"
#include "protocol/base64.hpp"
#include "protocol/errors.hpp"

namespace firmad::renewal {

namespace perr = protocol::error;
using protocol::VarlinkError;
using Kind = Outcome::Kind;

namespace {

const std::vector<int> kDefaultWarnDays{30, 7, 1};

std::string hex(const Bytes& b) {
  static constexpr char k[] = "0123456789abcdef";
  std::string out;
  for (auto c : b) out += k[c >> 4], out += k[c & 15];
  return out;
}

Bytes unhex(const std::string& s) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < s.size(); i += 2) out.push_back(static_cast<std::uint8_t>(std::stoi(s.substr(i, 2), nullptr, 16)));
  return out;
}

std::string b64(const Bytes& b) { return protocol::base64_encode(b); }
Bytes unb64(const Json& j, const char* name) {
  if (!j.contains(name)) return {};
  auto v = protocol::base64_decode(j.at(name).get<std::string>());
  if (!v) throw std::runtime_error(std::string("bad base64 in ") + name);
  return *v;
}

std::string id_uri(const Bytes& id) {
  std::string uri = "pkcs11:id=";
  const std::string h = hex(id);
  for (std::size_t i = 0; i < h.size(); i += 2) uri += '%' + h.substr(i, 2);
  return uri;
}

std::string key_type_of(const pkcs11::KeyInfo& k) {
  if (k.type == pkcs11::KeyType::Rsa) return "rsa-" + std::to_string(k.bits);
  if (k.type == pkcs11::KeyType::Ec && k.curve == "P-256") return "ec-p256";
  if (k.type == pkcs11::KeyType::Ec && k.curve == "P-384") return "ec-p384";
  return {};
}

std::time_t now_s() { return std::time(nullptr); }

// Text from a CA or helper as it may be stored, logged and sent: printable
// ASCII only (anything else becomes '?'), at most `max` bytes.
std::string printable(std::string_view text, std::size_t max = 400) {
  std::string out;
  for (char c : text.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

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

ossl::X509Ptr x509_of(const Bytes& der) {
  const unsigned char* p = der.data();
  return ossl::X509Ptr(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

// A failure a step reports by throwing.
struct StepFailure {
  std::string failure;
  std::string reason;
};

// Token trouble found inside an OpenSSL callback comes back as a generic
// failure: look first, so absent and not-logged-in keep their names.
void require_token(const TokenWorker& w) {
  const auto snap = w.snapshot();
  if (!snap->present) throw StepFailure{"token-absent", "the token is not present"};
  if (!snap->logged_in)
    throw StepFailure{"needs-pin", "the token is not logged in: 'firmactl login " + w.config().name + "'"};
}

// Names what went wrong with the token for the record.
StepFailure token_problem(const std::exception& e) {
  if (auto* v = dynamic_cast<const VarlinkError*>(&e)) {
    if (v->name() == perr::kTokenAbsent) return {"token-absent", "the token is not present"};
    if (v->name() == perr::kNotLoggedIn || v->name() == perr::kPinSourceUnavailable)
      return {"needs-pin", "the token is not logged in: 'firmactl login' it"};
    return {"token-error", std::string(v->name()) + " " + v->parameters().dump()};
  }
  return {"token-error", e.what()};
}

// Removes every object carrying `id`: a half-made or abandoned renewal key.
void destroy_objects_by_id(const pkcs11::Session& s, const Bytes& id) {
  auto objects = pkcs11::objects_by_id(s, id);
  for (const auto& [handle, der] : objects.certificates) s.destroy(handle);
  if (objects.private_key) s.destroy(*objects.private_key);
  if (objects.public_key) s.destroy(*objects.public_key);
}

}  // namespace

void crash_point(const std::string& configured, const std::string& name) {
  if (!configured.empty() && configured == name) {
    log::warning("test-crash", {{"at", name}});
    ::kill(::getpid(), SIGKILL);
  }
}

// ---- Record ----------------------------------------------------------------

bool Record::terminal() const {
  return failure == "rejected" || failure == "verification-failed" || failure == "underconfigured";
}

Json Record::to_json() const {
  Json j = {{"step", step},       {"origin", origin},   {"newKey", new_key},   {"keyType", key_type},
            {"oldId", hex(old_id)}, {"newId", hex(new_id)}, {"oldSpki", b64(old_spki)}, {"spki", b64(spki)},
            {"oldCertificate", b64(old_certificate)}, {"forSerial", for_serial}, {"csr", b64(csr)},
            {"acceptance", b64(acceptance)}, {"ticket", ticket}, {"attempts", attempts}, {"started", started},
            {"updated", updated}, {"nextTry", next_try}, {"cleanupId", hex(cleanup_id)}};
  if (!failure.empty()) j["failure"] = failure;
  if (!reason.empty()) j["reason"] = reason;
  j["issued"] = Json::array();
  for (const auto& c : issued) j["issued"].push_back(b64(c));
  j["chain"] = Json::array();
  for (const auto& c : chain) j["chain"].push_back(b64(c));
  return j;
}

Record Record::from_json(const Json& j) {
  Record r;
  r.step = j.at("step").get<std::string>();
  r.failure = j.value("failure", "");
  r.reason = j.value("reason", "");
  r.origin = j.value("origin", "manual");
  r.new_key = j.value("newKey", true);
  r.key_type = j.value("keyType", "");
  r.old_id = unhex(j.value("oldId", ""));
  r.new_id = unhex(j.value("newId", ""));
  r.cleanup_id = unhex(j.value("cleanupId", ""));
  r.old_spki = unb64(j, "oldSpki");
  r.spki = unb64(j, "spki");
  r.old_certificate = unb64(j, "oldCertificate");
  r.for_serial = j.value("forSerial", "");
  r.csr = unb64(j, "csr");
  r.acceptance = unb64(j, "acceptance");
  r.ticket = j.value("ticket", "");
  auto certificates = [&j](const char* name) {
    std::vector<Bytes> out;
    for (const auto& c : j.value(name, Json::array())) {
      auto der = protocol::base64_decode(c.get<std::string>());
      if (!der) throw std::runtime_error(std::string("bad base64 in ") + name);
      out.push_back(std::move(*der));
    }
    return out;
  };
  r.issued = certificates("issued");
  r.chain = certificates("chain");
  r.attempts = j.value("attempts", 0u);
  r.started = j.value("started", std::time_t{0});
  r.updated = j.value("updated", std::time_t{0});
  r.next_try = j.value("nextTry", std::time_t{0});
  return r;
}

Json Event::to_json() const {
  Json j = {{"key", key}, {"state", state}, {"step", step}, {"message", message}, {"at", iso8601(at)}, {"final", final}};
  if (!failure.empty()) j["failure"] = failure;
  if (next_try) j["nextTry"] = iso8601(next_try);
  return j;
}

// ---- Manager ---------------------------------------------------------------

struct Manager::Target {
  KeyConfig key;             // as the token worker serves it now (URI included)
  RenewalConfig config;
  TokenWorker* worker = nullptr;
  std::shared_ptr<const TokenSnapshot> snapshot;
  const KeyState* state = nullptr;  // in snapshot
};

Manager::Manager(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens, StateStore& state)
    : config_(config), tokens_(tokens), state_(state) {
  if (const char* c = std::getenv("FIRMAD_TEST_CRASH_AT")) crash_at_ = c;
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

void Manager::start() {
  for (auto& [alias, r] : records_)
    if (r.active()) log::info("renewal-resuming", {{"key", alias}, {"step", r.step}});
  thread_ = std::thread([this] { run(); });
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
    Event e{alias, "stopping", "", "", "firmad is stopping; the renewal resumes when it starts again", now_s(), 0, true};
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
  // A new key of an earlier renewal that never got installed.
  auto abandoned = [](const Record& old) {
    return old.new_key && !old.new_id.empty() && old.new_id != old.old_id && old.step != "installed" && !old.done()
               ? old.new_id
               : Bytes{};
  };
  if (req.kind == Request::Kind::Cancel) {
    if (!current || current->done()) return;
    Record r = *current;
    r.failure = "underconfigured";
    r.reason = "the key was cancelled";
    r.next_try = 0;
    if (const Bytes pending = abandoned(r); !pending.empty()) {
      if (auto t = target(alias)) {
        try {
          run_blocking<int>(*t->worker, Lane::Control, [&] {
            t->worker->write_objects([&](const pkcs11::Session& s) { destroy_objects_by_id(s, pending); });
            return 0;
          });
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
    if (current && current->active()) {
      r = *current;
      r.next_try = 0;  // under way: its next step now
    } else {
      r.origin = "manual";
      r.started = now_s();
      if (current) r.cleanup_id = abandoned(*current);
    }
  } else {
    if (current && current->active()) {
      notify(alias, Event{alias, current->state(), current->step, current->failure,
                          "a renewal is under way; it fetches its certificate by itself", now_s(), current->next_try, true});
      return;
    }
    // Keep what an ended renewal knew: the certificate may be for its new key.
    if (current && !current->done()) r = *current;
    r.origin = "fetch";
    r.failure.clear(), r.reason.clear();
    r.step = "fetching";
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
  Event e{alias, "none", "", "", "the renewal rests", now_s(), 0, true};
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
  const bool resting = copy.done() || !copy.failure.empty() || copy.next_try > copy.updated;
  Event e{alias, copy.state(), copy.step, copy.failure, said, copy.updated, resting ? copy.next_try : 0, resting};
  log::write(copy.failure.empty() ? log::Level::Info : log::Level::Warning, "renewal-step",
           {{"key", alias}, {"step", copy.step}, {"state", copy.state()}, {"message", said}});
  notify(alias, e);
  crash_point(crash_at_, copy.state());
}

void Manager::fail(Record& r, const std::string& failure, const std::string& reason, const Target& t) {
  r.failure = failure;
  r.reason = printable(reason);
  if (!r.terminal()) {
    ++r.attempts;
    r.next_try = now_s() + retry_delay(r.attempts, t.config, random_unit()).count();
  }
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
      r.origin = "automatic";
      r.started = now;
      if (it != records_.end() && it->second.new_key && !it->second.done() && it->second.step != "installed" &&
          it->second.new_id != it->second.old_id)
        r.cleanup_id = it->second.new_id;
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

// Runs steps until the renewal rests (done, failed, waiting for the CA).
void Manager::advance(const std::string& alias) {
  Record r;
  {
    std::lock_guard lock(mutex_);
    r = records_[alias];
  }
  auto t = target(alias);
  if (!t || !t->key.renewal) {
    r.failure = "underconfigured", r.reason = "the key or its [keys." + alias + ".renewal] table is no longer configured";
    persist_or_keep(alias, r, r.reason);
    return;
  }
  if (r.step == "started") {
    r.failure.clear(), r.reason.clear();
    try {
      persist(alias, r, "renewal started (" + r.origin + ")");
    } catch (const StateError& e) {
      fail(r, "token-error", std::string("cannot record the renewal: ") + e.what(), *t);
      persist_or_keep(alias, r, r.reason);
      return;
    }
  }
  while (!stopping_) {
    const std::string before = r.step;
    r.failure.clear();
    try {
      // A key cancelled while its renewal runs signs nothing more, here too.
      if (t->worker->cancellation(alias)) throw StepFailure{"underconfigured", "the key was cancelled"};
      step(r, *t);
    } catch (const StepFailure& f) {
      fail(r, f.failure, f.reason, *t);
    } catch (const VerificationError& e) {
      fail(r, "verification-failed", e.what(), *t);
    } catch (const StateError& e) {
      // What was not recorded did not happen: go on from the last record.
      log::error("renewal-state-unwritable", {{"key", alias}, {"error", e.what()}});
      {
        std::lock_guard lock(mutex_);
        r = records_[alias];
      }
      fail(r, "token-error", std::string("cannot record the renewal: ") + e.what(), *t);
    } catch (const std::exception& e) {
      const StepFailure f = token_problem(e);
      fail(r, f.failure, f.reason, *t);
    }
    if (!r.failure.empty()) {
      persist_or_keep(alias, r, r.reason);
      return;
    }
    if (r.step == before) return;  // the step persisted its own resting state
    if (r.done() || r.step == "waiting") return;
    auto fresh = target(alias);  // installs change what the worker serves
    if (fresh) t = std::move(fresh);
  }
}

void Manager::step(Record& r, Target& t) {
  if (r.step == "started") return begin(r, t);
  if (r.step == "key-pending") return make_key(r, t);
  if (r.step == "key-ready") return build_request(r, t);
  if (r.step == "submitted" && !r.issued.empty()) return settle(r, Outcome::issued(r.issued), t);
  if (r.step == "request-built" || r.step == "submitted" || r.step == "waiting") return submit(r, t);
  if (r.step == "fetching") return fetch_by_serial(r, t);
  if (r.step == "issued") return verify(r, t);
  if (r.step == "verified") return install(r, t);
  if (r.step == "installed") return retire(r, t);
  throw StepFailure{"underconfigured", "unknown renewal step '" + r.step + "' in the state file"};
}

void Manager::begin(Record& r, Target& t) {
  const TokenSnapshot& snap = *t.snapshot;
  if (!snap.present) throw StepFailure{"token-absent", "the token is not present"};
  if (!snap.logged_in) throw StepFailure{"needs-pin", "the token is not logged in: 'firmactl login " + t.key.token + "'"};
  if (!t.state || !t.state->info) throw StepFailure{"underconfigured", "the key is not on the token (" + t.key.uri + ")"};
  if (t.worker->cancellation(t.key.alias)) throw StepFailure{"underconfigured", "the key was cancelled"};
  const pkcs11::KeyInfo& info = *t.state->info;
  r.old_id = info.id;
  r.old_spki = info.public_key;
  r.old_certificate = info.certificate;
  r.for_serial = t.state->certificate ? t.state->certificate->serial_hex : "";
  if (t.config.provider == RenewalProvider::Idse && t.key.npie.empty())
    throw StepFailure{"underconfigured", "the idse provider needs the key's npie in firmad.toml"};
  if (r.old_certificate.empty() && (t.config.provider != RenewalProvider::Helper || t.config.subject.empty()))
    throw StepFailure{"underconfigured", "the key has no certificate on the token to renew"};
  r.key_type = t.config.key_type.empty() ? key_type_of(info) : t.config.key_type;
  if (!pkcs11::parse_key_spec(r.key_type))
    throw StepFailure{"underconfigured", "renewal needs an RSA or ECDSA P-256/P-384 key; this one is " + std::string(pkcs11::to_string(info.type))};
  if (r.old_id.empty()) throw StepFailure{"underconfigured", "the key has no CKA_ID to tie a certificate to"};
  const Bytes cleanup = r.cleanup_id;
  if (!cleanup.empty() && cleanup != r.old_id) {
    run_blocking<int>(*t.worker, Lane::Control, [&] {
      t.worker->write_objects([&](const pkcs11::Session& s) { destroy_objects_by_id(s, cleanup); });
      return 0;
    });
  }
  r.cleanup_id.clear();
  if (!t.config.new_key) {
    r.new_key = false;
    r.new_id = r.old_id;
    r.spki = r.old_spki;
    r.step = "key-ready";
    persist(t.key.alias, r, "reusing the current key (CKA_ID " + hex(r.old_id) + ")");
    return;
  }
  r.new_key = true;
  r.new_id = run_blocking<Bytes>(*t.worker, Lane::Control, [&] {
    Bytes id;
    t.worker->write_objects([&](const pkcs11::Session& s) { id = pkcs11::new_object_id(s); });
    return id;
  });
  r.step = "key-pending";
  persist(t.key.alias, r, "generating a new " + r.key_type + " key on the token (CKA_ID " + hex(r.new_id) + ")");
}

void Manager::make_key(Record& r, Target& t) {
  require_token(*t.worker);
  const auto spec = pkcs11::parse_key_spec(r.key_type);
  if (!spec) throw StepFailure{"underconfigured", "unknown key type '" + r.key_type + "'"};
  const std::string label = t.key.alias + ".renewal";
  r.spki = run_blocking<Bytes>(*t.worker, Lane::Control, [&] {
    Bytes spki;
    t.worker->write_objects([&](const pkcs11::Session& s) {
      // A crash may have left the pair (use it) or part of it (start again).
      auto existing = pkcs11::objects_by_id(s, r.new_id);
      if (existing.private_key && existing.public_key) {
        if (auto k = pkcs11::find_key(s, pkcs11::Uri::parse(id_uri(r.new_id))); k && !k->public_key.empty()) {
          spki = k->public_key;
          return;
        }
      }
      destroy_objects_by_id(s, r.new_id);
      spki = pkcs11::generate_key_pair(s, *spec, label, r.new_id).public_key_info;
    });
    return spki;
  });
  r.step = "key-ready";
  persist(t.key.alias, r, "new " + r.key_type + " key generated on the token; it never leaves it");
}

void Manager::build_request(Record& r, Target& t) {
  require_token(*t.worker);
  const Bytes subject = t.config.subject.empty() ? certificate_subject(r.old_certificate) : parse_subject(t.config.subject);
  {
    auto key = token_backed_key(*t.worker, r.new_id, r.spki);
    r.csr = build_csr(r.spki, subject, key.get());
  }
  if (t.config.provider == RenewalProvider::Idse) {
    // Signed with the current key, expired or not: the one such signature.
    auto current = token_backed_key(*t.worker, r.old_id, r.old_spki);
    r.acceptance = sign_acceptance(t.config.acceptance_text, r.old_certificate, current.get());
  }
  r.step = "request-built";
  persist(t.key.alias, r,
          t.config.provider == RenewalProvider::Idse ? "request and acceptance of terms signed on the token"
                                                     : "certificate request signed on the token");
}

void Manager::submit(Record& r, Target& t) {
  Submission s;
  s.key = t.key.alias;
  s.npie = t.key.npie;
  s.csr = r.csr;
  s.acceptance = r.acceptance;
  s.current_certificate = r.old_certificate;
  ossl::Pkey client_key;
  ossl::X509Ptr client_cert;
  if (t.config.provider == RenewalProvider::Est) {
    client_key = token_backed_key(*t.worker, r.old_id, r.old_spki);
    client_cert = x509_of(r.old_certificate);
    s.client_key = client_key.get();
    s.client_certificate = client_cert.get();
  }
  if (client_key) require_token(*t.worker);
  auto provider = make_provider(t.config);
  const bool first = r.step == "request-built";
  const Outcome o = first ? provider->submit(s) : provider->poll(s, r.ticket);
  if (first && (o.kind == Kind::Issued || o.kind == Kind::Pending)) {
    r.step = "submitted";
    if (!o.ticket.empty() && printable(o.ticket, 512) == o.ticket) r.ticket = o.ticket;
    if (o.kind == Kind::Issued) r.issued = o.certificates;  // a crash before "issued" keeps them
    persist(t.key.alias, r, "request accepted by the CA" + (r.ticket.empty() ? std::string() : " (" + r.ticket + ")"));
  }
  settle(r, o, t);
}

// What the CA's answer means for the record.
void Manager::settle(Record& r, const Outcome& o, const Target& t) {
  if (o.ticket.size() > 512 || printable(o.ticket, 512) != o.ticket)
    return fail(r, "ca-unreachable", "the CA's handle on the request is not printable text; not kept", t);
  switch (o.kind) {
    case Kind::Issued:
      if (!o.ticket.empty()) r.ticket = o.ticket;
      r.issued = o.certificates;
      r.attempts = 0;
      r.next_try = 0;
      r.step = "issued";
      if (auto id = r.issued.empty() ? std::nullopt : identify_certificate(r.issued.front()))
        persist(t.key.alias, r, "certificate issued (serial " + id->serial_hex + ")");
      else
        persist(t.key.alias, r, "certificate received");
      return;
    case Kind::Pending: {
      if (!o.ticket.empty()) r.ticket = o.ticket;
      ++r.attempts;
      const auto delay = o.retry_after.count() > 0 ? o.retry_after : retry_delay(r.attempts, t.config, random_unit());
      r.next_try = now_s() + delay.count();
      if (r.step != "fetching") r.step = "waiting";
      persist(t.key.alias, r, o.reason + "; next try at " + iso8601(r.next_try));
      return;
    }
    case Kind::Unreachable:
      if (!o.ticket.empty()) r.ticket = o.ticket;
      fail(r, "ca-unreachable", o.reason, t);
      if (o.retry_after.count() > 0) r.next_try = std::max<std::time_t>(r.next_try, now_s() + o.retry_after.count());
      return;
    case Kind::Rejected:
      if (!o.ticket.empty()) r.ticket = o.ticket;
      return fail(r, "rejected", o.reason, t);
    case Kind::Underconfigured: return fail(r, "underconfigured", o.reason, t);
    case Kind::Invalid: return fail(r, "verification-failed", o.reason, t);
  }
}

void Manager::fetch_by_serial(Record& r, Target& t) {
  std::string serial = r.ticket;
  if (serial.rfind("npie:", 0) == 0) {
    const std::string npie = serial.substr(5);
    if (npie.empty()) throw StepFailure{"underconfigured", "no NPIE given and none configured for the key"};
    const Outcome found = idse_lookup_serial(t.config, npie);
    if (found.kind != Kind::Pending) return settle(r, found, t);
    serial = found.ticket;
  }
  const Outcome o = idse_fetch(t.config, serial);
  if (o.kind != Kind::Issued) {
    if (o.kind == Kind::Pending) r.ticket = serial;
    return settle(r, o, t);
  }
  // Installed if and only if it is for a key on the token: the current key,
  // or the new key of the renewal under way.
  const Bytes spki = public_key_of(o.certificates.front());
  const pkcs11::KeyInfo* current = t.state && t.state->info ? &*t.state->info : nullptr;
  if (!r.spki.empty() && spki == r.spki) {
    // the renewal's new key: carry on with it
  } else if (current && spki == current->public_key) {
    if (r.new_key && !r.new_id.empty() && r.new_id != current->id) r.cleanup_id = r.new_id;
    r.new_key = false;
    r.old_id = r.new_id = current->id;
    r.old_spki = r.spki = current->public_key;
    r.old_certificate = current->certificate;
    r.for_serial = t.state->certificate ? t.state->certificate->serial_hex : "";
  } else {
    throw VerificationError("certificate " + serial + " is for a key that is not on the token; not installed");
  }
  r.ticket = serial;
  settle(r, o, t);
}

void Manager::verify(Record& r, Target& t) {
  if (r.issued.empty()) throw VerificationError("no certificate was received");
  const std::vector<Bytes> others(r.issued.begin() + 1, r.issued.end());
  r.chain = verify_issued(r.issued.front(), others, r.spki, t.config.trust_anchors, now_s());
  const auto id = identify_certificate(r.issued.front());
  r.step = "verified";
  persist(t.key.alias, r,
          "certificate verified: the token key's, chains to a trust anchor, valid until " + (id ? iso8601(id->not_after) : "?"));
}

void Manager::install(Record& r, Target& t) {
  require_token(*t.worker);
  const std::string alias = t.key.alias;
  const Bytes cert = r.issued.front();
  run_blocking<int>(*t.worker, Lane::Control, [&] {
    t.worker->write_objects([&](const pkcs11::Session& s) {
      auto objects = pkcs11::objects_by_id(s, r.new_id);
      if (!objects.private_key) throw std::runtime_error("the key with CKA_ID " + hex(r.new_id) + " is gone from the token");
      for (const auto& [handle, der] : objects.certificates)
        if (der == cert) return;  // written before a crash
      pkcs11::create_certificate(s, cert, alias, r.new_id);
    });
    return 0;
  });
  crash_point(crash_at_, "certificate-written");
  // The commit: from here the daemon serves the new pair, also after a restart.
  const std::string uri = id_uri(r.new_id);
  r.step = "installed";
  r.reason.clear();
  const KeyConfig* configured = config_.key(alias);
  persist(alias, r, "certificate installed on the token next to its key", [&](Json& doc) {
    if (!r.new_key) return;
    if (!doc["keyUris"].is_object()) doc["keyUris"] = Json::object();
    // The URI firmad.toml names: applied at start only while it still does.
    // When an earlier renewal's URI is in force, the file's is the one it kept.
    std::string file_uri = configured ? configured->uri : t.key.uri;
    if (auto old = doc["keyUris"].find(alias); old != doc["keyUris"].end() && old->is_object() &&
                                               old->value("uri", "") == file_uri)
      file_uri = old->value("configured", file_uri);
    doc["keyUris"][alias] = {{"uri", uri}, {"configured", file_uri}};
  });
  run_blocking<int>(*t.worker, Lane::Control, [&] {
    if (r.new_key) t.worker->set_key_uri(alias, uri);
    else t.worker->write_objects([](const pkcs11::Session&) {});  // rescan: serve the new certificate
    return 0;
  });
}

void Manager::retire(Record& r, Target& t) {
  require_token(*t.worker);
  const std::string alias = t.key.alias;
  const RenewalConfig& c = t.config;
  const Bytes cert = r.issued.front();
  std::string note;
  if (r.new_key) {
    // The old objects go only once the new key is what firmad serves.
    const std::string uri = id_uri(r.new_id);
    const Json doc = state_.read();
    const Json* recorded = nullptr;
    if (auto u = doc.find("keyUris"); u != doc.end() && u->is_object())
      if (auto k = u->find(alias); k != u->end() && k->is_object()) recorded = &*k;
    if (!recorded || recorded->value("uri", "") != uri) {
      r.step = "verified";  // the commit did not take: install again
      return;
    }
    if (t.key.uri != uri) run_blocking<int>(*t.worker, Lane::Control, [&] {
        t.worker->set_key_uri(alias, uri);
        return 0;
      });
  }
  try {
    if (!c.certificate_file.empty())
      replace_file(c.certificate_file, to_pem(cert), c.file_mode, c.file_owner, c.file_group);
    if (!c.chain_file.empty()) {
      std::string pem;
      for (const auto& x : r.chain) pem += to_pem(x);
      replace_file(c.chain_file, pem, c.file_mode, c.file_owner, c.file_group);
    }
  } catch (const StateError& e) {
    // The token holds the new pair already; the files are retried.
    throw StepFailure{"token-error", std::string("cannot write the certificate files: ") + e.what()};
  }
  if (!c.post_install.empty()) {
    ProgramResult p;
    try {
      p = run_program(c.post_install, {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", "FIRMAD_KEY=" + alias},
                      c.post_install_timeout, 64 * 1024);
    } catch (const std::exception& e) {
      p.errors = e.what();
    }
    if (p.exit_code != 0) {
      note = "; post-install command failed (" + p.describe(c.post_install_timeout, 64 * 1024) + ")";
      log::warning("post-install-failed", {{"key", alias}, {"result", p.describe(c.post_install_timeout, 64 * 1024)},
                                           {"stderr", p.errors.substr(0, 200)}});
    }
  }
  std::string backup;
  if (!r.old_certificate.empty() && r.old_certificate != cert) {
    const auto dir = state_.directory() / "backup";
    ::mkdir(dir.c_str(), 0700);
    backup = (dir / (alias + "-" + (r.for_serial.empty() ? "unknown" : r.for_serial) + ".pem")).string();
    replace_file(backup, to_pem(r.old_certificate), 0600);
  }
  const Bytes old_certificate = r.old_certificate;
  run_blocking<int>(*t.worker, Lane::Control, [&] {
    t.worker->write_objects([&](const pkcs11::Session& s) {
      auto old = pkcs11::objects_by_id(s, r.old_id);
      for (const auto& [handle, der] : old.certificates)
        if (der != cert) s.destroy(handle);
      crash_point(crash_at_, "old-certificate-removed");
      if (!r.cleanup_id.empty() && r.cleanup_id != r.new_id && r.cleanup_id != r.old_id) destroy_objects_by_id(s, r.cleanup_id);
      if (r.new_key) {
        // The old key stays (non-extractable, harmless) under a name that says what it is.
        if (old.private_key) pkcs11::set_label(s, *old.private_key, alias + ".previous");
        if (old.public_key) pkcs11::set_label(s, *old.public_key, alias + ".previous");
        auto fresh = pkcs11::objects_by_id(s, r.new_id);
        if (fresh.private_key) pkcs11::set_label(s, *fresh.private_key, alias);
        if (fresh.public_key) pkcs11::set_label(s, *fresh.public_key, alias);
      }
    });
    return 0;
  });
  r.step = "retired";
  r.next_try = 0;
  r.csr.clear(), r.acceptance.clear();
  persist(alias, r, "previous certificate retired" + (backup.empty() ? std::string() : " (backup in " + backup + ")") + note);
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
    j["step"] = r->step;
    if (!r->failure.empty()) j["failure"] = r->failure;
    if (!r->reason.empty()) j["reason"] = r->reason;
    j["origin"] = r->origin;
    j["attempts"] = r->attempts;
    j["startedAt"] = iso8601(r->started);
    j["updatedAt"] = iso8601(r->updated);
    if (r->active() && r->next_try > now) j["nextTry"] = iso8601(r->next_try);
  } else {
    j["state"] = "none";
  }
  return j;
}

}  // namespace firmad::renewal
