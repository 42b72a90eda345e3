// What a renewal keeps in state.json for each key, and the events it reports while it runs.
#pragma once
#include <ctime>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkcs11/types.hpp"
#include "protocol/states.hpp"

namespace firmad::renewal {

using pkcs11::Bytes;
using Json = nlohmann::json;
using Step = protocol::RenewalStep;
using Failure = protocol::RenewalFailure;
using Origin = protocol::RenewalOrigin;

// One step of a renewal as it happens.
struct Event {
  std::string key;
  std::string state;            // the failure when it failed, else the step ("stopping", "none" when neither)
  std::optional<Step> step;     // the step reached (or being retried)
  std::optional<Failure> failure;
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
  Step step = Step::Started;
  std::optional<Failure> failure;
  std::string reason;
  Origin origin = Origin::Manual;
  bool new_key = true;
  std::string key_type;           // "rsa-2048", ... of the new key
  Bytes old_id, new_id;           // CKA_IDs
  Bytes old_spki, spki;           // public keys (DER SubjectPublicKeyInfo)
  Bytes old_certificate;          // the certificate being renewed (DER; may be empty for fetch)
  std::string for_serial;         // its serial (hex)
  Bytes csr, acceptance;
  std::string ticket;             // the CA's handle on the request: a serial, a cookie
  bool submitting = false;        // a submission was sent (or about to be) and its answer not yet recorded
  // The final step's effects outside the token, each done once per installed
  // certificate: the files written; the post-install command started (marked
  // before it runs, so it never runs twice, also across a crash).
  bool files_written = false;
  bool post_install_started = false;
  // Stopped because the files could not be written: 'renew' finishes it.
  bool files_blocked = false;
  std::vector<Bytes> issued;      // the new certificate, then what came with it
  std::vector<Bytes> chain;       // above the new certificate, after verification
  Bytes cleanup_id;               // a key of an earlier, abandoned renewal to remove first
  unsigned attempts = 0;
  std::time_t started = 0, updated = 0, next_try = 0;

  bool done() const { return step == Step::Retired; }
  bool terminal() const;  // failed in a way only an administrator can resolve
  bool active() const { return !done() && !terminal(); }
  // Renewal.state: the failure's name when it failed, else the step's.
  std::string state() const;
  // The new key this renewal made that was never installed (empty if none):
  // what a later renewal, or a cancellation, removes.
  Bytes abandoned_key() const;

  Json to_json() const;
  // Throws on a malformed record. A step this firmad does not know becomes
  // an underconfigured failure that names it.
  static Record from_json(const Json& j);
};

// Seconds since the epoch, now.
std::time_t now_s();
// Text from a CA or helper as it may be stored, logged and sent: printable
// ASCII only (anything else becomes '?'), at most `max` bytes.
std::string printable(std::string_view text, std::size_t max = 400);

// Lower-case hex of a CKA_ID, and back (as state.json and the logs write it).
std::string hex(const Bytes& b);
Bytes unhex(const std::string& s);

}  // namespace firmad::renewal
