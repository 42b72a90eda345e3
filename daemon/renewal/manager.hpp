// Certificate renewal: a persisted state machine per key, run on a thread of its own.
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

#include "daemon/config.hpp"
#include "daemon/renewal/provider.hpp"
#include "daemon/state.hpp"
#include "daemon/token/token_worker.hpp"
#include "pkcs11/types.hpp"

namespace firmad::renewal {

using pkcs11::Bytes;
using Json = nlohmann::json;

// One step of a renewal as it happens.
struct Event {
  std::string key;
  std::string state;    // the failure when it failed, else the step
  std::string step;     // the step reached (or being retried)
  std::string failure;  // empty, or a failure name (see Record)
  std::string message;
  std::time_t at = 0;
  std::time_t next_try = 0;  // when it rests and will try again by itself
  bool final = false;        // the renewal rests here: done, failed, or waiting for the CA

  Json to_json() const;
};
using Listener = std::function<void(const Event&)>;

// What is kept in state.json for each key's renewal.
//
// Steps, in order: started → key-pending (new key's CKA_ID chosen) →
// key-ready → request-built → submitted → waiting (the CA has not issued yet)
// → issued → verified → installed (the commit point: the new certificate is
// on the token and served) → retired (files written, post-install run, the
// previous certificate backed up and removed from the token).
//
// Failures keep the step they happened at; ca-unreachable, token-absent,
// needs-pin and token-error are retried with backoff, rejected,
// verification-failed and underconfigured wait for an administrator.
struct Record {
  std::string step = "started";
  std::string failure;
  std::string reason;
  std::string origin = "manual";  // "manual", "automatic", "fetch"
  bool new_key = true;
  std::string key_type;           // "rsa-2048", ... of the new key
  Bytes old_id, new_id;           // CKA_IDs
  Bytes old_spki, spki;           // public keys (DER SubjectPublicKeyInfo)
  Bytes old_certificate;          // the certificate being renewed (DER; may be empty for fetch)
  std::string for_serial;         // its serial (hex)
  Bytes csr, acceptance;
  std::string ticket;             // the CA's handle on the request: a serial, a cookie
  std::vector<Bytes> issued;      // the new certificate, then what came with it
  std::vector<Bytes> chain;       // above the new certificate, after verification
  Bytes cleanup_id;               // a key of an earlier, abandoned renewal to remove first
  unsigned attempts = 0;
  std::time_t started = 0, updated = 0, next_try = 0;

  bool done() const { return step == "retired"; }
  bool terminal() const;  // failed in a way only an administrator can resolve
  bool active() const { return !done() && !terminal(); }
  std::string state() const { return failure.empty() ? step : failure; }

  Json to_json() const;
  static Record from_json(const Json& j);  // throws on a malformed record
};

class Manager {
 public:
  // tokens: the daemon's workers (each key's token); state: where records
  // live. Records found in `state` resume once start() is called.
  Manager(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens, StateStore& state);
  Manager(const Manager&) = delete;  // owns a thread
  Manager& operator=(const Manager&) = delete;
  ~Manager();

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

  // The key was cancelled: its renewal stops for good and a new key it
  // made that was never installed is removed. Any thread; does not wait.
  void cancel(const std::string& alias);

  // The key's renewal as Status shows it; null when it has none configured
  // and none ever ran.
  Json status_json(const KeyState& key, std::time_t now) const;

 private:
  struct Target;
  // What callers ask of the renewal thread; only that thread changes records.
  struct Request {
    enum class Kind { Renew, Fetch, Cancel };
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
  void fail(Record& r, const std::string& failure, const std::string& reason, const Target& t);

  std::optional<Target> target(const std::string& alias) const;
  void persist(const std::string& alias, const Record& r, const std::string& message,
               const std::function<void(Json&)>& also = {});
  void notify(const std::string& alias, const Event& e);
  void warn_expiry(std::time_t now);

  const Config& config_;
  std::vector<std::unique_ptr<TokenWorker>>& tokens_;
  StateStore& state_;
  std::string crash_at_;  // $FIRMAD_TEST_CRASH_AT: a step or point where the daemon kills itself (tests)

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

// A crash point for tests: if `name` is what $FIRMAD_TEST_CRASH_AT names,
// the process kills itself with SIGKILL, as kill -9 would.
void crash_point(const std::string& configured, const std::string& name);

}  // namespace firmad::renewal
