// Certificate renewal: a persisted state machine per key, run on a thread of its own.
//
// manager.cpp: requests, the thread, scheduling, listeners, persistence, status.
// machine.cpp: the steps and what each persists; token_steps.cpp and
// install_steps.cpp: what the steps do to the token and outside it.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/audit.hpp"
#include "daemon/config.hpp"
#include "daemon/renewal/provider.hpp"
#include "daemon/renewal/record.hpp"
#include "daemon/state.hpp"
#include "daemon/token/token_worker.hpp"

namespace firmad::renewal {

class Manager {
 public:
  // tokens: the daemon's workers (each key's token); state: where records
  // live. Records found in `state` resume once start() is called.
  Manager(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens, StateStore& state);
  Manager(const Manager&) = delete;  // owns a thread
  // Where the renewal's own signatures (CSR, acceptance, self-test) are
  // audited. Set before start().
  void set_audit(Audit* audit) { audit_ = audit; }
  Manager& operator=(const Manager&) = delete;
  ~Manager();

  // Removes what an interrupted install left next to the certificate and
  // chain files (once this process is the only firmad, as StateStore's).
  void remove_temporaries() noexcept;

  void start();
  // Finishes the step under way (bounded by the network time limits), tells
  // every listener the renewal rests until the next start, and joins.
  void stop() noexcept;

  // Starts a renewal of `alias` now — or, when one is under way, tries its
  // next step now — and reports its steps to `listener` (on the renewal
  // thread) up to and including the final one. Throws
  // protocol::VarlinkError KeyNotFound, RenewalNotConfigured, KeyCancelled.
  void renew(const std::string& alias, Listener listener);

  // Recovers a certificate the CA issued but that was never installed (IDSE):
  // by serial, or by the serial the CA has for `npie`. Installs it if and
  // only if it belongs to the key on the token or to the new key of the
  // last renewal. Throws like renew(), and RenewalInProgress while a renewal
  // is under way (it fetches by itself).
  void fetch(const std::string& alias, const std::string& serial, const std::string& npie, Listener listener);

  // An administrator ends the key's renewal in whatever state it is: a new
  // key it made that was never installed is removed, and the record rests
  // as underconfigured, saying what was done (one final event to
  // `listener`). Throws KeyNotFound.
  void abandon(const std::string& alias, Listener listener);

  // The key was cancelled: its renewal stops for good and a new key it
  // made that was never installed is removed. Any thread; does not wait.
  void cancel(const std::string& alias);

  // The key's renewal as Status shows it; null when it has none configured
  // and none ever ran.
  Json status_json(const KeyState& key, std::time_t now) const;

 private:
  // The key a renewal works on, as its token worker serves it now.
  struct Target {
    KeyConfig key;  // URI included
    RenewalConfig config;
    TokenWorker* worker = nullptr;
    std::shared_ptr<const TokenSnapshot> snapshot;
    const KeyState* state = nullptr;  // in snapshot
  };
  // What callers ask of the renewal thread; only that thread changes records.
  struct Request {
    enum class Kind { Renew, Fetch, Cancel, Abandon };
    Kind kind;
    std::string ticket;  // Fetch: a serial, or "npie:<NPIE>"
    // Attached when the renewal thread takes the request, so it hears only
    // what this request makes happen (not the end of a step already running).
    Listener listener;
  };
  Target checked_target(const std::string& alias, bool fetch) const;
  void request(const std::string& alias, Request req, Listener listener);
  void handle(const std::string& alias, const Request& req);
  void release_listeners(const std::string& alias);
  void persist_or_keep(const std::string& alias, const Record& r, const std::string& message);
  void run();
  std::optional<std::string> next_work(std::time_t now, std::time_t& wake);
  void advance(const std::string& alias);
  void step(Record& r, Target& t);
  void begin(Record& r, Target& t);
  void make_key(Record& r, Target& t);
  void build_request(Record& r, Target& t);
  void submit(Record& r, Target& t);
  void fetch_by_serial(Record& r, Target& t);
  void verify(Record& r, Target& t);
  void install(Record& r, Target& t);
  void retire(Record& r, Target& t);
  void settle(Record& r, const Outcome& o, const Target& t);
  void fail(Record& r, Failure failure, const std::string& reason, const Target& t);

  std::optional<Target> target(const std::string& alias) const;
  // Writes the record without telling anyone (a step within a request). Throws StateError.
  void record_quietly(const std::string& alias, const Record& r);
  void persist(const std::string& alias, const Record& r, const std::string& message,
               const std::function<void(Json&)>& also = {});
  void notify(const std::string& alias, const Event& e);
  void warn_expiry(std::time_t now);

  const Config& config_;
  std::vector<std::unique_ptr<TokenWorker>>& tokens_;
  StateStore& state_;
  Audit* audit_ = nullptr;
  // Audits a signature the renewal made with the key `id_hex` of `alias`.
  void audit_signature(const std::string& alias, const char* what, const Bytes& id);

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<bool> stopping_{false};  // also read between steps without the lock
  bool kicked_ = false;
  std::map<std::string, Record> records_;
  std::deque<std::pair<std::string, Request>> requests_;
  std::map<std::string, std::vector<Listener>> listeners_;
  std::set<std::string> warned_;  // "alias/serial/threshold" already logged
  std::thread thread_;
};

}  // namespace firmad::renewal
