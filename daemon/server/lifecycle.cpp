// The credential's life: Import onto the token, Cancel, and the in-person request deadline.
#include <ctime>
#include <optional>
#include <set>

#include "daemon/token/bridge.hpp"
#include "daemon/mx/credential.hpp"
#include "daemon/log.hpp"
#include "daemon/server/service.hpp"
#include "protocol/params.hpp"

namespace firmad {

namespace perr = protocol::error;
using protocol::Json;
using protocol::Params;
using protocol::VarlinkError;

Date local_today() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  return Date{tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday};
}

namespace {

// What the holder must still do in person once a credential is cancelled.
const char* const kCancelInstructions[] = {
    "Report the certificate as lost or compromised in person at your IMSS Subdelegación and ask for its "
    "revocation (revocación del certificado digital); until IMSS revokes it, a copy kept elsewhere could still be used.",
    "Bring an official photo ID of the holder and, for a company, the legal representative's power of attorney, "
    "with the NPIE and the registro patronal shown by 'firmactl status'.",
    "Request a new certificate (solicitud de certificado digital) and complete it in person within 10 business "
    "days; track it with 'firmactl request KEY' so status shows the deadline.",
    "Once the new certificate is issued, bring it onto the token with 'firmactl import'.",
};

const char* reason_name(CredentialError::Reason r) {
  switch (r) {
    case CredentialError::Reason::WrongPassword: return "wrong-password";
    case CredentialError::Reason::Corrupt: return "corrupt";
    case CredentialError::Reason::UnsupportedAlgorithm: return "unsupported-algorithm";
    case CredentialError::Reason::Mismatch: return "mismatch";
    case CredentialError::Reason::NoKey: return "no-key";
    case CredentialError::Reason::NoCertificate: return "no-certificate";
  }
  return "corrupt";
}

std::vector<std::int64_t> ids(Params& p, const std::string& name) {
  auto v = p.optional_int_array(name);
  if (!v) return {};
  for (auto id : *v)
    if (id < 0 || id > 0xfffffffeLL) throw protocol::invalid_parameter(name);
  return *v;
}

}  // namespace

Json Service::request_json(const std::string& alias, const Date& today) const {
  auto it = requests_.find(alias);
  if (it == requests_.end()) return nullptr;
  const auto submitted = Date::parse(it->second);
  if (!submitted) return nullptr;
  const RequestDeadline d = request_deadline(calendar_, *submitted, today);
  return {{"submitted", d.submitted.iso()},
          {"deadline", d.deadline.iso()},
          {"businessDaysLeft", d.business_days_left},
          {"state", d.cancelled ? "cancelled" : "pending"}};
}

boost::asio::awaitable<Json> Service::track_request(const Json& params, const Peer& peer) {
  Params p(params);
  const std::string alias = p.required_string("key");
  const auto submitted_text = p.optional_string("submitted");
  const bool clear = p.optional_bool("clear", false);
  p.finish();
  require_admin("TrackRequest", peer);
  if (importing_.count(alias)) throw VarlinkError(perr::kImportInProgress, {{"key", alias}});
  if (!find_key(alias)) throw VarlinkError(perr::kKeyNotFound, {{"key", alias}});
  std::optional<Date> submitted = submitted_text ? Date::parse(*submitted_text) : std::optional<Date>(local_today());
  if (!submitted) throw protocol::invalid_parameter("submitted");
  std::string state_error;
  try {
    const std::string day = submitted->iso();
    std::function<void(Json&)> change = [alias, day, clear](Json& doc) {
      if (!doc["requests"].is_object()) doc["requests"] = Json::object();
      if (clear) doc["requests"].erase(alias);
      else doc["requests"][alias] = {{"submitted", day}};
    };
    co_await update_state(std::move(change));
  } catch (const StateError& e) {
    state_error = e.what();
  }
  if (!state_error.empty()) throw VarlinkError(perr::kInternalError, {{"reason", state_error}});
  if (clear) requests_.erase(alias);
  else requests_[alias] = submitted->iso();
  log::throttled(log::Level::Notice, "request-tracked", peer.uid, {{"key", alias}, {"submitted", clear ? "cleared" : submitted->iso()},
                                  {"uid", peer.uid}, {"pid", peer.pid}});
  co_return Json{{"request", request_json(alias, local_today())}};
}

boost::asio::awaitable<Json> Service::cancel(const Json& params, const Peer& peer) {
  Params p(params);
  const std::string alias = p.required_string("key");
  const std::string reason = p.required_string("reason");
  p.finish();
  if (reason.empty() || reason.size() > 1000) throw protocol::invalid_parameter("reason");
  require_admin("Cancel", peer);
  if (importing_.count(alias)) throw VarlinkError(perr::kImportInProgress, {{"key", alias}});
  const KeyConfig* key = find_key(alias);
  if (!key) throw VarlinkError(perr::kKeyNotFound, {{"key", alias}});
  TokenWorker& worker = token_named(key->token);

  // Stop signing first, record it, then destroy: a crash in between leaves a
  // cancelled key whose objects the next Cancel destroys.
  Cancellation c{std::time(nullptr), reason};
  if (auto earlier = worker.cancellation(alias)) c = *earlier;
  worker.mark_cancelled(alias, c);
  std::string state_error;
  try {
    const std::string token = key->token;
    std::function<void(Json&)> change = [alias, c, token](Json& doc) {
      if (!doc["cancelled"].is_object()) doc["cancelled"] = Json::object();
      doc["cancelled"][alias] = {{"at", iso8601(c.at)}, {"time", c.at}, {"reason", c.reason}, {"token", token}};
    };
    co_await update_state(std::move(change));
  } catch (const StateError& e) {
    state_error = e.what();
  }
  if (!state_error.empty()) {
    log::error("state-write-failed", {{"key", alias}, {"error", state_error}});
    throw VarlinkError(perr::kInternalError, {{"reason", state_error}});
  }
  log::notice("key-cancelled", {{"key", alias}, {"uid", peer.uid}, {"pid", peer.pid}, {"reason", reason}});
  renewals_.cancel(alias);  // a renewal under way stops, and its uninstalled new key goes
  const std::string a = alias;
  auto job = [&worker, a] { return worker.destroy_key_objects(a); };
  const int destroyed = co_await run_on<int>(worker, Lane::Control, std::move(job));
  Json instructions = Json::array();
  for (const char* line : kCancelInstructions) instructions.push_back(line);
  co_return Json{{"cancelledAt", iso8601(c.at)}, {"objectsDestroyed", destroyed}, {"instructions", instructions}};
}

boost::asio::awaitable<Json> Service::import_credential(const Json& params, const Peer& peer) {
  Params p(params);
  KeyConfig key;
  key.alias = p.required_string("key");
  key.token = p.required_string("token");
  auto pfx = p.optional_base64("pfx");
  auto private_key = p.optional_base64("privateKey");
  auto certificate = p.optional_base64("certificate");
  auto password = std::make_shared<protocol::Secret>();
  if (auto v = p.optional_string("password")) {
    password->assign(*v);
    protocol::wipe(*v);
  }
  for (auto id : ids(p, "allowUsers")) key.allow.users.push_back(static_cast<uid_t>(id));
  for (auto id : ids(p, "allowGroups")) key.allow.groups.push_back(static_cast<gid_t>(id));
  key.npie = p.optional_string("npie").value_or("");
  key.registro_patronal = p.optional_string("registroPatronal").value_or("");
  key.role = p.optional_string("role").value_or("principal");
  p.finish();
  if (!valid_key_name(key.alias)) throw protocol::invalid_parameter("key");
  if (key.role != "principal" && key.role != "additional") throw protocol::invalid_parameter("role");
  if (key.npie.size() > 64) throw protocol::invalid_parameter("npie");
  if (key.registro_patronal.size() > 64) throw protocol::invalid_parameter("registroPatronal");
  if (pfx.has_value() == (private_key.has_value() || certificate.has_value()))
    throw protocol::invalid_parameter(pfx ? "privateKey" : "pfx");
  if (!pfx && !(private_key && certificate)) throw protocol::invalid_parameter(private_key ? "certificate" : "privateKey");
  require_admin("Import", peer);
  // An alias in use is refused, unless its key was cancelled: the holder then
  // brings the replacement credential in under the same name (the cancelling
  // instructions say so). The replacement keeps the key's configuration
  // (token, allow lists, NPIE, registro patronal, role) and the cancellation
  // stays in the key's history. An import under way holds its alias too.
  const KeyConfig* existing = find_key(key.alias);
  std::optional<Cancellation> replaced;
  if (existing) {
    if (existing->token == key.token) replaced = token_named(key.token).cancellation(key.alias);
    if (!replaced) throw VarlinkError(perr::kKeyExists, {{"key", key.alias}});
    for (const char* name : {"allowUsers", "allowGroups", "npie", "registroPatronal", "role"})
      if (params.contains(name)) throw protocol::invalid_parameter(name);
    const std::string alias = key.alias, token = key.token;
    key = *existing;
    key.alias = alias, key.token = token;
  }
  if (!importing_.insert(key.alias).second) throw VarlinkError(perr::kKeyExists, {{"key", key.alias}});
  struct Release {
    std::set<std::string>& set;
    std::string alias;
    ~Release() { set.erase(alias); }
  } release{importing_, key.alias};
  TokenWorker& worker = token_named(key.token);
  const bool configured = existing && !existing->imported;
  const std::string configured_uri = existing ? (existing->configured_uri.empty() ? existing->uri : existing->configured_uri) : "";
  if (!existing) key.imported = true;

  // Parsing (PBKDF2, thousands of rounds) and token writes stay off the I/O thread.
  auto files = std::make_shared<std::array<pkcs11::Bytes, 3>>();
  (*files)[0] = pfx.value_or(pkcs11::Bytes{});
  (*files)[1] = private_key.value_or(pkcs11::Bytes{});
  (*files)[2] = certificate.value_or(pkcs11::Bytes{});
  const bool replace = replaced.has_value();
  auto job = [&worker, files, password, key, replace]() -> KeyConfig {
    Credential credential;
    try {
      credential = (*files)[0].empty() ? parse_key_and_certificate((*files)[1], (*files)[2], password->view())
                                       : parse_pkcs12((*files)[0], password->view());
    } catch (const CredentialError& e) {
      throw VarlinkError(perr::kImportFailed, {{"reason", reason_name(e.reason())}, {"detail", e.what()}});
    }
    password->clear();
    for (auto& f : *files) protocol::secure_zero(f.data(), f.size());
    return worker.import_credential(credential, key, replace);
  };
  KeyConfig stored = co_await run_on<KeyConfig>(worker, Lane::Control, std::move(job));

  const Json entry = replaced ? Json{{"cancelledAt", iso8601(replaced->at)}, {"reason", replaced->reason},
                                     {"replacedAt", iso8601(std::time(nullptr))}}
                            : Json();
  std::string state_error;
  try {
    std::function<void(Json&)> change = [stored, replaced, configured, configured_uri, entry](Json& doc) {
      if (configured) {
        // firmad.toml names the key: the new objects are recorded as a
        // renewal's are, applying while firmad.toml names the cancelled ones.
        if (!doc["keyUris"].is_object()) doc["keyUris"] = Json::object();
        doc["keyUris"][stored.alias] = {{"uri", stored.uri}, {"configured", configured_uri}};
      } else {
        // An earlier renewal's URI would win over keys[alias] at start.
        if (doc["keyUris"].is_object()) doc["keyUris"].erase(stored.alias);
        if (!doc["keys"].is_object()) doc["keys"] = Json::object();
        doc["keys"][stored.alias] = {{"token", stored.token},     {"uri", stored.uri},
                                     {"allowUsers", stored.allow.users}, {"allowGroups", stored.allow.groups},
                                     {"npie", stored.npie},       {"registroPatronal", stored.registro_patronal},
                                     {"role", stored.role}};
      }
      if (replaced) {
        if (!doc["history"].is_object()) doc["history"] = Json::object();
        if (!doc["history"][stored.alias].is_array()) doc["history"][stored.alias] = Json::array();
        doc["history"][stored.alias].push_back(entry);
        if (doc["cancelled"].is_object()) doc["cancelled"].erase(stored.alias);
        if (doc["requests"].is_object()) doc["requests"].erase(stored.alias);  // the request it tracked is served
      }
    };
    co_await update_state(std::move(change));
  } catch (const StateError& e) {
    state_error = e.what();
  }
  if (!state_error.empty()) {
    // Not recorded means not imported: take the objects off the token again
    // (a replacement's alias stays cancelled and served as before).
    const std::string a = stored.alias;
    auto undo = [&worker, a] { return worker.destroy_key_objects(a); };
    co_await run_on<int>(worker, Lane::Control, std::move(undo));
    throw VarlinkError(perr::kImportFailed, {{"reason", "state"}, {"detail", state_error}});
  }
  if (replaced) {
    // Recorded: now the new objects are served and the name no longer cancelled.
    const std::string a = stored.alias, uri = stored.uri;
    auto serve = [&worker, a, uri] { worker.serve_replacement(a, uri); };
    co_await run_on<void>(worker, Lane::Control, std::move(serve));
    history_[stored.alias].push_back(entry);
    requests_.erase(stored.alias);
  } else {
    imported_.push_back(stored);
  }
  log::notice(replaced ? "key-replaced" : "key-imported", {{"key", stored.alias}, {"token", stored.token}, {"uri", stored.uri},
                                                           {"uid", peer.uid}, {"pid", peer.pid}});
  const auto snap = worker.snapshot();
  const KeyState* state = snap->key(stored.alias);
  co_return Json{{"key", state ? key_json(*state, stored.token, std::time(nullptr)) : Json::object()}};
}

}  // namespace firmad
