// A token worker's key changes: cancellation, objects destroyed, credentials imported, keys renewed.
#include "daemon/token/token_worker.hpp"

#include "daemon/log.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/import.hpp"
#include "pkcs11/keygen.hpp"
#include "pkcs11/key.hpp"
#include "protocol/base64.hpp"

namespace firmad {

namespace perr = protocol::error;
using protocol::LoginState;
using protocol::VarlinkError;

void TokenWorker::mark_cancelled(const std::string& alias, Cancellation cancellation) {
  std::lock_guard lock(cancel_mutex_);
  cancelled_[alias] = std::move(cancellation);
}

std::optional<Cancellation> TokenWorker::cancellation(const std::string& alias) const {
  std::lock_guard lock(cancel_mutex_);
  auto it = cancelled_.find(alias);
  if (it == cancelled_.end()) return std::nullopt;
  return it->second;
}

int TokenWorker::destroy_key_objects(const std::string& alias) {
  const std::string& name = config_.name;
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  const auto snap = snapshot();
  const KeyState* key = snap->key(alias);
  if (!key) throw VarlinkError(perr::kKeyNotFound, {{"key", alias}});
  if (!snap->logged_in) throw not_logged_in(name, snap->login_state);
  if (!key->info) return 0;  // nothing of it on the token
  {
    std::unique_lock lock(mutex_);
    idle_cv_.wait(lock, [this] { return active_ == 0; });
  }
  int destroyed = 0;
  try {
    pkcs11::Session rw(module_, control_session_->slot(), pkcs11::Session::Access::ReadWrite);
    destroyed = pkcs11::destroy_key_objects(rw, *key->info);
  } catch (const std::exception& e) {
    throw token_failure(name, e);
  }
  keys_.forget(alias);  // firmad removed it: a key under the alias later is a new one
  publish([&](TokenSnapshot& s) { rescan_keys(s, KeyScan::Adopt); });
  log::notice("key-objects-destroyed", {{"token", name}, {"key", alias}, {"objects", destroyed}});
  return destroyed;
}

KeyConfig TokenWorker::import_credential(const Credential& credential, KeyConfig key, bool replace) {
  const std::string& name = config_.name;
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  const auto snap = snapshot();
  if (!snap->logged_in) throw not_logged_in(name, snap->login_state);
  try {
    pkcs11::Session rw(module_, control_session_->slot(), pkcs11::Session::Access::ReadWrite);
    const pkcs11::Bytes id = pkcs11::new_object_id(rw);
    // What the token would refuse part-way is refused before anything is written.
    const pkcs11::Bytes certificate = pkcs11::encode_der(i2d_X509, static_cast<const X509*>(credential.certificate.get()), "certificate");
    if (auto why = probe_refusal(rw, certificate, id)) {
      log::warning("import-refused", {{"token", name}, {"key", key.alias}, {"why", *why}});
      throw VarlinkError(perr::kImportFailed, {{"reason", "unsupported"}, {"detail", *why}});
    }
    try {
      pkcs11::rehearse_import(rw, credential.key.get(), credential.certificate.get(), id);
    } catch (const pkcs11::Error& e) {
      // A token gone, a lost session or login is no answer about imports.
      if (e.fault() == pkcs11::Fault::TokenAbsent || e.fault() == pkcs11::Fault::SessionLost ||
          e.fault() == pkcs11::Fault::NotLoggedIn || e.fault() == pkcs11::Fault::BackendLost)
        throw;
      const std::string why = "the token takes no imported private keys (" + e.call() + ": " + e.code_name() +
                              "): its keys are made on it; give the key a certificate with a renewal (key = \"new\") instead";
      log::warning("import-refused", {{"token", name}, {"key", key.alias}, {"why", why}});
      throw VarlinkError(perr::kImportFailed, {{"reason", "unsupported"}, {"detail", why}});
    }
    pkcs11::import_credential(rw, credential.key.get(), credential.certificate.get(), key.alias, id);
    std::string uri = "pkcs11:object=" + key.alias + ";id=";
    const std::string digits = protocol::hex_encode(id);
    for (std::size_t i = 0; i < digits.size(); i += 2) uri += '%' + digits.substr(i, 2);
    key.uri = std::move(uri);
    key.configured_uri = key.uri;
  } catch (const VarlinkError&) {
    throw;
  } catch (const std::exception& e) {
    log::error("import-failed", {{"token", name}, {"key", key.alias}, {"error", e.what()}});
    throw VarlinkError(perr::kImportFailed, {{"reason", "token"}, {"detail", e.what()}});
  }
  if (!replace) add_key(key);
  return key;
}

std::optional<std::string> TokenWorker::probe_refusal(const pkcs11::Session& rw, const pkcs11::Bytes& certificate,
                                                      const pkcs11::Bytes& id) {
  const auto probe = pkcs11::probe_writes(rw, certificate, id);
  auto said = [&](const std::string& answer) {
    return !probe.create.empty() && &answer != &probe.create ? std::string("not tried") : answer.empty() ? std::string("yes") : answer;
  };
  log::info("token-write-probe", {{"token", config_.name}, {"create", said(probe.create)}, {"relabel", said(probe.relabel)},
                                  {"destroy", said(probe.destroy)}});
  if (!probe.destroy.empty()) {
    // It cannot take back what it wrote: refused, as a write failing part-way
    // would leave its objects behind too.
    const std::string label = probe.relabel.empty() ? "firmad-write-probe-relabelled" : "firmad-write-probe";
    log::warning("token-write-probe-left", {{"token", config_.name}, {"label", label}, {"error", probe.destroy}});
    return "the token does not let firmad destroy an object it wrote (" + probe.destroy + "); a certificate object labelled " +
           label + " was left on it";
  }
  // firmad never relabels: a token without C_SetAttributeValue is fine.
  if (probe.create.empty()) return std::nullopt;
  return "the token does not let firmad create objects with the CKA_ID it chose in a user session (" + probe.create +
         "); a PIV card, for one, creates them only for its security officer (write them there with the card's own tool "
         "and name them in firmad.toml)";
}

std::optional<std::string> TokenWorker::refuses_writes(const pkcs11::Bytes& certificate, const pkcs11::Bytes& id) {
  const std::string& name = config_.name;
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  const auto snap = snapshot();
  if (!snap->logged_in) throw not_logged_in(name, snap->login_state);
  pkcs11::Session rw(module_, control_session_->slot(), pkcs11::Session::Access::ReadWrite);
  return probe_refusal(rw, certificate, id);
}

void TokenWorker::serve_replacement(const std::string& alias, const std::string& uri) {
  {
    std::lock_guard lock(cancel_mutex_);
    cancelled_.erase(alias);
  }
  set_key_uri(alias, uri);
}

void TokenWorker::write_objects(const std::function<void(const pkcs11::Session&)>& write) {
  const std::string& name = config_.name;
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  const auto snap = snapshot();
  if (!snap->logged_in) throw not_logged_in(name, snap->login_state);
  struct Rescan {  // also after a failed write: some objects may have changed
    TokenWorker* w;
    ~Rescan() { w->publish([this](TokenSnapshot& s) { w->rescan_keys(s, KeyScan::Adopt); }); }
  } rescan{this};
  pkcs11::Session rw(module_, control_session_->slot(), pkcs11::Session::Access::ReadWrite);
  write(rw);
}

void TokenWorker::read_objects(const std::function<void(const pkcs11::Session&)>& read) {
  const std::string& name = config_.name;
  if (!control_session_) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  const auto snap = snapshot();
  if (!snap->logged_in) throw not_logged_in(name, snap->login_state);
  read(*control_session_);
}

void TokenWorker::set_key_uri(const std::string& alias, const std::string& uri) {
  if (!keys_.set_uri(alias, uri)) return;
  publish([&](TokenSnapshot& s) {
    for (auto& k : s.keys)
      if (k.config.alias == alias) k.config.uri = uri;
    rescan_keys(s, KeyScan::Adopt);  // the renewal's new key: what firmad serves from now on
  });
  log::info("key-uri-changed", {{"token", config_.name}, {"key", alias}, {"uri", uri}});
}

void TokenWorker::add_key(const KeyConfig& key) {
  keys_.add(key);
  publish([&](TokenSnapshot& s) {
    s.keys.push_back(KeyState{key, std::nullopt, std::nullopt});
    rescan_keys(s, KeyScan::Adopt);
  });
}

}  // namespace firmad
