// Method dispatch, Status/ListKeys from cached state, Login/Logout for administrators.
#include "daemon/server/service.hpp"

#include "daemon/asio.hpp"

#include <algorithm>
#include <ctime>

#include "daemon/token/bridge.hpp"
#include "daemon/token/signing.hpp"
#include "daemon/log.hpp"
#include "daemon/server/signer.hpp"
#include "firmad_version.hpp"
#include "protocol/base64.hpp"
#include "protocol/interfaces.hpp"
#include "protocol/params.hpp"

namespace firmad {

namespace perr = protocol::error;
using protocol::Json;
using protocol::Params;
using protocol::VarlinkError;

Service::Service(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens, StateStore& state,
                 BusinessCalendar calendar, renewal::Manager& renewals, Audit& audit, SerialThread& disk)
    : config_(config),
      tokens_(tokens),
      state_(state),
      calendar_(std::move(calendar)),
      renewals_(renewals),
      audit_(audit),
      disk_(disk) {
  const Json doc = state_.read();
  if (auto it = doc.find("requests"); it != doc.end() && it->is_object()) {
    for (const auto& [alias, r] : it->items())
      if (r.is_object() && r.contains("submitted") && r["submitted"].is_string()) requests_[alias] = r["submitted"];
  }
  if (auto it = doc.find("history"); it != doc.end() && it->is_object()) {
    for (const auto& [alias, h] : it->items())
      if (h.is_array()) history_[alias] = h;
  }
}

const KeyConfig* Service::find_key(const std::string& alias) const {
  if (const KeyConfig* k = config_.key(alias)) return k;
  for (const auto& k : imported_)
    if (k.alias == alias) return &k;
  return nullptr;
}

namespace {
// Whole days until t, rounded down: -1 from the first second after expiry.
long long days_until(std::time_t t, std::time_t now) {
  const long long secs = static_cast<long long>(t) - static_cast<long long>(now);
  return secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
}
}  // namespace

Json Service::key_json(const KeyState& key, const std::string& token, std::time_t now) const {
  Json j = {{"alias", key.config.alias}, {"token", token}, {"uri", key.config.uri}, {"found", key.info.has_value()},
            {"schemes", Json::array()}};
  if (key.info) {
    j["type"] = pkcs11::to_string(key.info->type);
    if (key.info->bits) j["bits"] = key.info->bits;
    if (!key.info->curve.empty()) j["curve"] = key.info->curve;
    for (auto s : key.info->schemes) j["schemes"].push_back(pkcs11::to_string(s));
    if (!key.info->public_key.empty()) j["publicKey"] = protocol::base64_encode(key.info->public_key);
    // What a PKCS#11 view of the key needs: the objects' CKA_ID and
    // CKA_LABEL on the token, and the certificate itself.
    if (!key.info->id.empty()) j["objectId"] = protocol::hex_encode(key.info->id);
    if (!key.info->label.empty()) j["objectLabel"] = key.info->label;
    if (!key.info->certificate.empty()) j["certificateDer"] = protocol::base64_encode(key.info->certificate);
    if (key.info->private_key) j["pinPerSignature"] = key.info->always_authenticate;
    if (auto why = pin_per_signature_refusal(key, token_named(token)); !why.empty()) j["unusable"] = why;
  }
  if (key.certificate) {
    const auto& c = *key.certificate;
    Json cert = {{"subject", c.subject},
                 {"holderName", c.holder_name},
                 {"issuer", c.issuer},
                 {"serial", c.serial_hex},
                 {"serialDecimal", c.serial_decimal},
                 {"notBefore", iso8601(c.not_before)},
                 {"notAfter", iso8601(c.not_after)},
                 {"daysLeft", days_until(c.not_after, now)},
                 {"renewalState", "none"}};
    auto put = [&cert](const char* name, const std::optional<std::string>& v) {
      if (v) cert[name] = *v;
    };
    put("rfc", c.rfc);
    put("rfcRepresentative", c.rfc_representative);
    put("curp", c.curp);
    put("curpRepresentative", c.curp_representative);
    put("serialText", c.serial_ascii);
    j["certificate"] = std::move(cert);
  }
  if (key.config.allow_sha1) j["allowSha1"] = true;
  j["role"] = key.config.role;
  j["imported"] = key.config.imported;
  if (!key.config.npie.empty()) j["npie"] = key.config.npie;
  if (!key.config.registro_patronal.empty()) j["registroPatronal"] = key.config.registro_patronal;
  if (auto c = token_named(token).cancellation(key.config.alias)) j["cancelled"] = {{"at", iso8601(c->at)}, {"reason", c->reason}};
  if (auto h = history_.find(key.config.alias); h != history_.end()) j["history"] = h->second;
  if (Json r = request_json(key.config.alias, local_today()); !r.is_null()) j["request"] = std::move(r);
  if (Json r = renewals_.status_json(key, now); !r.is_null()) {
    if (j.contains("certificate")) j["certificate"]["renewalState"] = r["state"];
    j["renewal"] = std::move(r);
  }
  return j;
}

Json Service::list_keys(const Peer& peer) const {
  const bool admin = allowed(config_.admins, peer);
  const std::time_t now = std::time(nullptr);
  Json keys = Json::array();
  for (const auto& t : tokens_) {
    const auto snap = t->snapshot();
    for (const auto& k : snap->keys) {
      const bool may_use = allowed(k.config.allow, peer);
      if (!admin && !may_use) continue;
      Json j = key_json(k, t->config().name, now);
      j["mayUse"] = may_use;  // an administrator sees every key, but signs only with those it is allowed
      keys.push_back(std::move(j));
    }
  }
  return keys;
}

Json Service::status(const Peer& peer) const {
  const bool admin = allowed(config_.admins, peer);
  Json keys = list_keys(peer);
  Json tokens = Json::array();
  for (const auto& t : tokens_) {
    const auto snap = t->snapshot();
    const auto& cfg = t->config();
    const bool holds_visible_key = std::any_of(keys.begin(), keys.end(), [&](const Json& k) { return k.at("token") == cfg.name; });
    if (!admin && !holds_visible_key) continue;
    Json j = {{"name", cfg.name},
              {"present", snap->present},
              {"loggedIn", snap->logged_in},
              {"loginState", std::string(protocol::wire_name(snap->login_state))},
              {"pinSource", cfg.pin_source == PinSource::File         ? "file"
                            : cfg.pin_source == PinSource::Credential ? "credential"
                                                                      : "admin"},
              {"sessions", cfg.sessions},
              {"queued", t->queued()},
              {"queueLimit", cfg.queue_limit},
              {"loginAttempts", snap->login_attempts}};
    if (!snap->reason.empty()) j["reason"] = snap->reason;
    if (snap->info) {
      const auto& i = *snap->info;
      j["label"] = i.label, j["serial"] = i.serial, j["manufacturer"] = i.manufacturer, j["model"] = i.model;
      j["pinFlags"] = {{"countLow", i.pin.count_low}, {"finalTry", i.pin.final_try}, {"locked", i.pin.locked},
                       {"toBeChanged", i.pin.to_be_changed}};
      j["pinPad"] = i.protected_path;
    }
    tokens.push_back(std::move(j));
  }
  Json out = {{"version", FIRMAD_VERSION}, {"tokens", std::move(tokens)}, {"keys", std::move(keys)}};
  if (admin && peers_report_) out["heldBack"] = peers_report_();
  if (admin)
    out["audit"] = {{"file", audit_.file()}, {"queued", audit_.queued()}, {"waiting", audit_.waiting()},
                    {"written", audit_.written()}};
  return out;
}

TokenWorker& Service::token_named(const std::string& name) const {
  for (auto& t : tokens_)
    if (t->config().name == name) return *t;
  throw VarlinkError(perr::kTokenNotFound, {{"token", name}});
}

void Service::require_admin(const char* method, const Peer& peer) const {
  if (allowed(config_.admins, peer)) return;
  log::throttled(log::Level::Warning, "access-denied", peer.uid,
                 {{"method", method}, {"uid", peer.uid}, {"gid", peer.gid}, {"pid", peer.pid}, peer.program()});
  throw VarlinkError(perr::kAccessDenied, {{"method", method}});
}

boost::asio::awaitable<Json> Service::login(const Json& params, const Peer& peer) {
  Params p(params);
  const std::string token = p.required_string("token");
  std::optional<protocol::Secret> pin;
  if (auto v = p.optional_string("pin")) {
    const bool too_long = v->size() > protocol::Secret::kCapacity;
    if (!too_long) pin.emplace(*v);
    protocol::wipe(*v);
    if (too_long) throw protocol::invalid_parameter("pin");  // never tried cut short
  }
  const bool force = p.optional_bool("force", false);
  const bool pin_pad = p.optional_bool("pinPad", false);
  p.finish();
  if (pin_pad && pin) throw protocol::invalid_parameter("pinPad");  // a PIN pad's PIN is typed on the reader
  require_admin("Login", peer);
  TokenWorker& worker = token_named(token);
  log::throttled(log::Level::Notice, "admin-login", peer.uid, {{"token", token}, {"uid", peer.uid}, {"pid", peer.pid}, {"force", force ? "yes" : "no"},
                              {"pin", pin ? "given" : pin_pad ? "pin-pad" : "configured-source"}});
  auto shared_pin = std::make_shared<std::optional<protocol::Secret>>(std::move(pin));
  const auto from = pin_pad ? TokenWorker::PinFrom::Reader : TokenWorker::PinFrom::Given;
  auto job = [&worker, shared_pin, force, from] { return worker.login(std::move(*shared_pin), force, false, from); };
  const protocol::LoginState state = co_await run_on<protocol::LoginState>(worker, Lane::Control, std::move(job));
  co_return Json{{"loginState", std::string(protocol::wire_name(state))}};
}

boost::asio::awaitable<Json> Service::logout(const Json& params, const Peer& peer) {
  Params p(params);
  const std::string token = p.required_string("token");
  p.finish();
  require_admin("Logout", peer);
  TokenWorker& worker = token_named(token);
  log::throttled(log::Level::Notice, "admin-logout", peer.uid, {{"token", token}, {"uid", peer.uid}, {"pid", peer.pid}});
  auto job = [&worker] { return worker.logout(); };
  const protocol::LoginState state = co_await run_on<protocol::LoginState>(worker, Lane::Control, std::move(job));
  co_return Json{{"loginState", std::string(protocol::wire_name(state))}};
}

boost::asio::awaitable<Json> Service::dispatch(const protocol::Call& call, const Peer& peer, const Stream& stream,
                                               AuditRecord& record) {
  const std::string_view iface = protocol::interface_of(call.method);
  const std::string_view method = std::string_view(call.method).substr(iface.size() + 1);
  if (iface == protocol::kServiceInterface) {
    Params p(call.parameters);
    if (method == "GetInfo") {
      p.finish();
      Json ifaces = Json::array();
      for (auto n : protocol::interface_names()) ifaces.push_back(n);
      co_return Json{{"vendor", "firmad"}, {"product", "firmad"}, {"version", FIRMAD_VERSION},
                     {"url", "https://firmad.io"}, {"interfaces", ifaces}};
    }
    if (method == "GetInterfaceDescription") {
      const std::string name = p.required_string("interface");
      p.finish();
      auto d = protocol::interface_description(name);
      if (!d) throw VarlinkError(perr::kInterfaceNotFound, {{"interface", name}});
      co_return Json{{"description", *d}};
    }
  } else if (iface == protocol::kSignerInterface) {
    if (method == "Status") {
      Params(call.parameters).finish();
      co_return status(peer);
    }
    if (method == "ListKeys") {
      Params(call.parameters).finish();
      co_return Json{{"keys", list_keys(peer)}};
    }
    if (method == "Sign" || method == "SignCms") {
      const Json& params = call.parameters;
      auto it = params.find("key");
      if (it == params.end() || !it->is_string()) throw protocol::invalid_parameter("key");
      const KeyConfig* key = find_key(it->get<std::string>());
      if (!key) throw VarlinkError(perr::kKeyNotFound, {{"key", it->get<std::string>()}});
      TokenWorker& worker = token_named(key->token);
      if (method == "Sign") co_return co_await sign(worker, *key, params, peer, record);
      co_return co_await sign_cms(worker, *key, params, peer, record);
    }
    if (method == "Import") co_return co_await import_credential(call.parameters, peer);
    if (method == "Cancel") co_return co_await cancel(call.parameters, peer);
    if (method == "TrackRequest") co_return co_await track_request(call.parameters, peer);
    if (method == "Renew" || method == "Fetch") co_return co_await renew(call, peer, stream);
    if (method == "Login") co_return co_await login(call.parameters, peer);
    if (method == "Logout") co_return co_await logout(call.parameters, peer);
  } else {
    throw VarlinkError(perr::kInterfaceNotFound, {{"interface", iface}});
  }
  throw VarlinkError(perr::kMethodNotFound, {{"method", call.method}});
}

boost::asio::awaitable<void> Service::update_state(std::function<void(Json&)> change) {
  auto job = [this, change = std::move(change)] { state_.update(change); };
  co_await run_on<void>(disk_, std::move(job));
}

namespace {

// The calls that leave a record: every io.firmad.Signer call but the two
// that only read what any peer may read.
bool audited(std::string_view iface, std::string_view method) {
  return iface == protocol::kSignerInterface && method != "Status" && method != "ListKeys";
}

// "io.firmad.Signer.AccessDenied" -> "AccessDenied".
std::string short_name(const std::string& error) { return error.substr(error.rfind('.') + 1); }

}  // namespace

boost::asio::awaitable<Service::Answer> Service::handle(const protocol::Call& call, const Peer& peer, const Stream& stream) {
  const std::string_view iface = protocol::interface_of(call.method);
  const std::string_view method = std::string_view(call.method).substr(std::min(call.method.size(), iface.size() + 1));
  AuditRecord record;
  Audit::Slot slot;
  Answer out;
  try {
    if (audited(iface, method)) {
      Audit::Slot reserved = co_await audit_.reserve();
      slot = std::move(reserved);
      record.event = method == "Sign" || method == "SignCms" ? "sign" : "call";
      record.method = method;
      record.uid = peer.uid, record.gid = peer.gid, record.pid = peer.pid, record.program = peer.program();
      for (const char* name : {"key", "token"}) {
        auto it = call.parameters.find(name);
        if (it != call.parameters.end() && it->is_string()) record.add(name, it->get<std::string>());
      }
    }
    Json reply = co_await dispatch(call, peer, stream, record);
    record.result = "ok";
    if (!call.oneway) out.frame = protocol::encode_reply(reply);
  } catch (const VarlinkError& e) {
    record.result = short_name(e.name());
    out.refused = e.name() == perr::kAccessDenied;
    if (!call.oneway) out.frame = protocol::encode_error(e.name(), e.parameters());
  } catch (const std::exception& e) {
    log::error("request-failed", {{"method", call.method}, {"error", e.what()}});
    record.result = "InternalError";
    if (!call.oneway) out.frame = protocol::encode_error(perr::kInternalError, {{"reason", e.what()}});
  }
  slot.commit(std::move(record));
  co_return out;
}

}  // namespace firmad
