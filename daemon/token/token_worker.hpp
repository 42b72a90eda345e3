// One token: its sessions, its bounded queue of signing work, and its cached state.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "daemon/mx/identity.hpp"
#include "daemon/config.hpp"
#include "daemon/mx/credential.hpp"
#include "daemon/token/key_registry.hpp"
#include "daemon/token/pin_refusals.hpp"
#include "daemon/token/session_pool.hpp"
#include "daemon/token/snapshot.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/types.hpp"
#include "pkcs11/uri.hpp"
#include "protocol/errors.hpp"
#include "protocol/secret.hpp"
#include "protocol/states.hpp"

namespace firmad {

struct Cancellation {
  std::time_t at = 0;
  std::string reason;
};

// What a job sees on its worker thread: the worker's own session (null while
// the token is absent) and the state current when the job started.
struct WorkContext {
  pkcs11::Session* session;
  std::shared_ptr<const TokenSnapshot> snapshot;
};

// The two kinds of token thread a job can go to: a signing thread (its own
// session, a bounded queue) or the control thread (login, logout, writes;
// never behind signatures).
enum class Lane { Signing, Control };

// Whether enqueue() took a job.
enum class Admission {
  Queued,
  QueueFull,  // the signing queue stayed full
  Stopping,   // the worker is stopping: nothing new runs
};

// Runs one token. A control thread owns discovery, login, logout and the
// periodic refresh of the cached state; `sessions` signing threads each own
// one PKCS#11 session and take jobs from a queue of at most `queue_limit`.
// Nothing here blocks the caller except stop().
class TokenWorker {
 public:
  using Job = std::function<void(WorkContext&)>;

  // busy_poll: how long an idle signing thread polls the queue before it sleeps.
  // refused_pins: the file that remembers a PIN the token refused (see
  // PinRefusals; empty: in memory only).
  TokenWorker(TokenConfig config, std::vector<KeyConfig> keys,
              std::chrono::microseconds busy_poll = std::chrono::microseconds(0),
              std::filesystem::path refused_pins = {});
  TokenWorker(const TokenWorker&) = delete;  // owns threads and sessions
  TokenWorker& operator=(const TokenWorker&) = delete;
  ~TokenWorker();

  // Loads the module (throws std::runtime_error / pkcs11::Error if it cannot)
  // and starts the threads; discovery and the automatic login happen on the
  // control thread.
  void start();
  // Finishes queued and in-flight jobs, logs out, closes sessions, joins.
  void stop() noexcept;

  const TokenConfig& config() const noexcept { return config_; }
  std::shared_ptr<const TokenSnapshot> snapshot() const;
  std::size_t queued() const;

  // Queues `job` on `lane`; the only way work reaches the token's threads
  // (callers use token/bridge.hpp, which builds results on it). A signing
  // job waits up to `wait_for_room` for a place in a full queue. Returns
  // whether the job was taken; a job not taken is never run. Control jobs
  // see no session in their WorkContext (they call this worker's methods).
  Admission enqueue(Lane lane, Job job, std::chrono::milliseconds wait_for_room = std::chrono::milliseconds(0));
  // Blocks until the control thread has finished discovery (tests, startup log).
  void wait_discovered();

  // Where a login's PIN comes from.
  enum class PinFrom {
    Given,   // an administrator's PIN, or without one the configured unattended source
    Reader,  // the holder types it on the reader's PIN pad (a protected authentication path)
  };
  // Control thread only. Logs in with the given PIN or, without one, the
  // configured unattended source, or on the reader's PIN pad: exactly one
  // C_Login, never repeated. Returns the login state; throws
  // protocol::VarlinkError (PinIncorrect, PinFinalTry, PinLocked,
  // PinSourceUnavailable, TokenAbsent, TokenError, InvalidParameter pinPad
  // for a token without a PIN pad).
  protocol::LoginState login(std::optional<protocol::Secret> pin, bool force, bool automatic, PinFrom from = PinFrom::Given);
  // Control thread only. Waits for in-flight signatures, then logs out.
  protocol::LoginState logout();

  // Says a token call just failed as if the token or a session went away.
  // Any thread. From a job on a signing thread, that thread checks its own
  // session once the job returns: a dead session is closed and reopened
  // there (the new one shares the token's login; the other sessions go on
  // signing); only a token that is gone, or a session that cannot be
  // reopened, reaches the control thread. From any other thread the control
  // thread checks the token at once.
  // With `reach_device`, the failure was one a lost backend gives
  // (CKR_DEVICE_ERROR, CKR_GENERAL_ERROR, ...): the check then also makes a
  // call that must reach the device (C_GenerateRandom), because some modules
  // answer the refresh's calls from a cache (tpm2-pkcs11).
  void suspect_token(bool reach_device = false);

  // The PIN kept for keys that need it for every signature
  // (pin_per_signature in firmad.toml, CKA_ALWAYS_AUTHENTICATE on the
  // token): held in locked memory, wiped when the last signature using it
  // returns. Null when none is kept; then `why` says why. Any thread.
  std::shared_ptr<const protocol::Secret> signature_pin(std::string* why = nullptr) const;
  // Signing thread. Runs `sign` with the kept PIN for `key`'s context
  // login. One at a time per token, the PIN fetched inside: a PIN the token
  // refuses is offered once, not once per signing thread, and is then wiped
  // and never offered again until the next login keeps one. Throws
  // KeyNeedsPinPerSignature when no PIN is kept, or what `sign` threw.
  pkcs11::Bytes sign_with_context_pin(const std::string& key,
                                      const std::function<pkcs11::Bytes(std::string_view pin)>& sign);

  // Stops all signing with a key at once: jobs not yet started (queued
  // included) see the cancellation and refuse. Any thread; never waits for
  // the token.
  void mark_cancelled(const std::string& alias, Cancellation cancellation);
  // The key's cancellation, if it was cancelled. Any thread.
  std::optional<Cancellation> cancellation(const std::string& alias) const;
  // Control thread only. Waits for in-flight signatures, then destroys the
  // key's private key, public key and certificate objects on the token.
  // Returns how many objects were destroyed; throws VarlinkError.
  int destroy_key_objects(const std::string& alias);
  // Control thread only. Writes the credential to the token under a new
  // CKA_ID and `key.alias` as label (nothing left behind on failure) and
  // serves it; returns `key` with its URI set. With `replace`, the alias is
  // a cancelled key's: the objects are written but not served (the caller
  // records them first, then calls serve_replacement). Throws VarlinkError.
  KeyConfig import_credential(const Credential& credential, KeyConfig key, bool replace = false);
  // Control thread only. The cancelled `alias` is served from `uri` (its
  // replacement's objects) and is no longer cancelled.
  void serve_replacement(const std::string& alias, const std::string& uri);
  // Control thread only. Runs `write` with a read-write session on the
  // present, logged-in token, then rescans the keys. Throws VarlinkError
  // TokenAbsent or NotLoggedIn, or what `write` threw.
  void write_objects(const std::function<void(const pkcs11::Session&)>& write);
  // Control thread only. Runs `read` with the control session of the
  // present, logged-in token (reads only; nothing is rescanned). Throws
  // VarlinkError TokenAbsent or NotLoggedIn, or what `read` threw.
  void read_objects(const std::function<void(const pkcs11::Session&)>& read);
  // Control thread only. Whether the present, logged-in token lets firmad
  // write a key's objects under `id` (see pkcs11::probe_writes: a
  // certificate object, here `certificate`, created, relabelled and
  // destroyed). Returns why not, for a refusal made before anything is
  // written; nullopt if it does. Throws VarlinkError TokenAbsent or
  // NotLoggedIn, what the token said otherwise.
  std::optional<std::string> refuses_writes(const pkcs11::Bytes& certificate, const pkcs11::Bytes& id);
  // Control thread only. Serves `alias` from the objects `uri` selects from
  // now on (a renewal installed a new key). Throws std::invalid_argument for
  // a bad URI.
  void set_key_uri(const std::string& alias, const std::string& uri);

 private:
  void control_loop();
  void sign_loop(std::size_t index);
  void discover();
  void refresh();
  void lose_token(const std::string& why);
  void lose_login();
  void lose_backend(const std::string& why);
  void lose_module(const std::string& why, const std::string& status);
  void forget_sessions();
  void park();
  void refresh_failed(const std::string& why);
  void refresh_answered(bool token_logged_in);
  void check_token();
  using Handles = SessionPool::Handles;
  // Waits for the signing threads to be idle, then drops their sessions.
  void close_signing_sessions(Handles handles = Handles::Close);
  void check_session(std::size_t index, const TokenSnapshot& seen, std::optional<pkcs11::SlotId>& reopen_on);
  pkcs11::Session* reopen_session(std::size_t index, pkcs11::SlotId slot, bool expect_login, const std::string& why);
  // How a rescan treats a key whose public key is not the remembered one.
  enum class KeyScan {
    Verify,  // the token may have changed behind firmad's back: report it
    Adopt,   // firmad itself just wrote the token's objects: remember the new key
  };
  // Control thread only. Rescans the keys into `snap`; keys seen for the
  // first time are remembered. Returns why the token is not the one firmad
  // served when a remembered key now has another public key (Verify only).
  std::optional<std::string> rescan_keys(TokenSnapshot& snap, KeyScan scan);
  void refuse_token(const std::string& serial, const std::string& why);
  std::optional<std::string> probe_refusal(const pkcs11::Session& rw, const pkcs11::Bytes& certificate, const pkcs11::Bytes& id);
  // Control thread only. After a C_Login: keeps the PIN if a key needs it
  // for every signature; drops it (with why) on logout or a lost login.
  void keep_signature_pin(protocol::Secret pin);
  void drop_signature_pin(const std::string& why);
  void publish(const std::function<void(TokenSnapshot&)>& change);
  void add_key(const KeyConfig& key);

  TokenConfig config_;
  KeyRegistry keys_;  // control thread
  pkcs11::Uri token_uri_;
  std::shared_ptr<pkcs11::Module> module_;

  // Control thread state.
  std::optional<pkcs11::Session> control_session_;
  std::thread control_thread_;
  std::deque<Job> control_queue_;
  std::condition_variable control_cv_;
  bool discovered_ = false;
  std::atomic<bool> suspected_{false};
  std::atomic<bool> reach_device_{false};  // the next refresh also calls C_GenerateRandom
  // What the token was when first seen: a different one in its place is
  // refused. Keys change only through firmad (import, renewal) while served.
  std::optional<std::string> known_serial_;
  // The token stopped answering refreshes: since when, how often, what it
  // said last, and whether firmad was logged in before.
  struct RefreshError {
    std::string error;
    std::uint64_t failures = 0;
    std::chrono::steady_clock::time_point logged;
    bool was_logged_in = false;
  };
  std::optional<RefreshError> refresh_error_;
  // The module's generation this worker parked at, waiting for its
  // re-initialisation; and the last backend error logged (one line each).
  std::optional<std::uint64_t> parked_at_;
  std::string backend_error_;
  bool pin_refused_ = false;  // a wrong PIN was refused: never again without an administrator
  PinRefusals refused_pins_;  // ... nor after a restart, while the source holds the same PIN

  // Signing state, guarded by mutex_.
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::condition_variable room_cv_;  // a signing job left the queue
  std::deque<Job> queue_;
  std::atomic<std::size_t> pending_{0};  // queue_.size(), readable without the lock
  std::chrono::microseconds busy_poll_;
  SessionPool sessions_;
  std::vector<std::thread> sign_threads_;
  std::size_t active_ = 0;
  bool stopping_ = false;

  std::mutex context_login_mutex_;  // one context login at a time (sign_with_context_pin)
  mutable std::mutex signature_pin_mutex_;
  std::shared_ptr<const protocol::Secret> signature_pin_;
  std::string no_signature_pin_ = "the token is not logged in";

  mutable std::mutex cancel_mutex_;
  std::map<std::string, Cancellation> cancelled_;

  std::mutex publish_mutex_;      // one writer of the snapshot at a time
  mutable std::mutex snap_mutex_;  // guards only the pointer: readers never wait for the token
  std::shared_ptr<const TokenSnapshot> snapshot_;
};

// NotLoggedIn for `token`, whose login is in `state`.
protocol::VarlinkError not_logged_in(const std::string& token, protocol::LoginState state);
// Maps a token failure to the Varlink error a client sees.
protocol::VarlinkError token_failure(const std::string& token, const std::exception& e);

}  // namespace firmad
