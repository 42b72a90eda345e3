// Signing with a token's keys: checks on the caller's thread, signatures on a signing thread.
#include "daemon/token/signing.hpp"

#include <chrono>
#include <ctime>
#include <stdexcept>

#include "daemon/token/bridge.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/keygen.hpp"
#include "pkcs11/token_pkey.hpp"
#include "protocol/base64.hpp"

namespace firmad {

namespace perr = protocol::error;
using protocol::VarlinkError;

namespace {

// How long an OpenSSL operation of the daemon's own waits for room in a full queue.
constexpr std::chrono::milliseconds kRoomWait{5000};

// A failed token call that may mean the session died, the token or the
// module's backend went away, or the token logged firmad out behind its
// back: the worker looks at once.
void report(TokenWorker& token, const pkcs11::Error& e) {
  if (e.fault() == pkcs11::Fault::TokenAbsent || e.fault() == pkcs11::Fault::SessionLost ||
      e.fault() == pkcs11::Fault::NotLoggedIn || e.fault() == pkcs11::Fault::BackendLost)
    token.suspect_token(e.fault() == pkcs11::Fault::BackendLost);
}

std::string opt_in_missing(const std::string& alias) {
  return "its private key needs the PIN for every signature (CKA_ALWAYS_AUTHENTICATE) and firmad.toml does not allow "
         "firmad to keep the PIN for it: set pin_per_signature = true in [keys." + alias + "]";
}

}  // namespace

pkcs11::Bytes sign_as_key(TokenWorker& token, const KeyState* key, const std::string& name, bool always_authenticate,
                          const std::function<pkcs11::Bytes(const pkcs11::ContextPin&)>& sign) {
  try {
    if (!always_authenticate) return sign(std::nullopt);
    if (!key || !key->config.pin_per_signature)
      throw VarlinkError(perr::kKeyNeedsPinPerSignature, {{"key", name}, {"reason", opt_in_missing(key ? key->config.alias : name)}});
    return token.sign_with_context_pin(name, [&](std::string_view pin) { return sign(pkcs11::ContextPin(pin)); });
  } catch (const pkcs11::Error& e) {
    report(token, e);
    throw;
  }
}

const KeyState* key_with_id(const TokenSnapshot& snap, const pkcs11::Bytes& id) {
  for (const auto& k : snap.keys)
    if (k.info && k.info->id == id) return &k;
  return nullptr;
}

std::string pin_per_signature_refusal(const KeyState& k, const TokenWorker& token) {
  if (!k.info || !k.info->always_authenticate) return "";
  if (!k.config.pin_per_signature) return opt_in_missing(k.config.alias);
  std::string why;
  return token.signature_pin(&why) ? "" : "firmad holds no PIN to give the token: " + why;
}

const KeyState& usable_key(const TokenSnapshot& snap, const TokenWorker& token, const std::string& alias) {
  const std::string& name = token.config().name;
  if (!snap.present) throw VarlinkError(perr::kTokenAbsent, {{"token", name}});
  if (!snap.logged_in) throw not_logged_in(name, snap.login_state);
  if (auto c = token.cancellation(alias)) throw VarlinkError(perr::kKeyCancelled, {{"key", alias}, {"at", iso8601(c->at)}});
  const KeyState* k = snap.key(alias);
  if (!k || !k->info || !k->info->private_key) throw VarlinkError(perr::kKeyNotFound, {{"key", alias}});
  // The one signature IMSS requires from an expired certificate, the
  // renewal's acceptance, is made by the renewal itself, not through Sign.
  if (k->certificate && std::time(nullptr) > k->certificate->not_after)
    throw VarlinkError(perr::kCertificateExpired, {{"key", alias}, {"notAfter", iso8601(k->certificate->not_after)}});
  if (auto why = pin_per_signature_refusal(*k, token); !why.empty())
    throw VarlinkError(perr::kKeyNeedsPinPerSignature, {{"key", alias}, {"reason", why}});
  return *k;
}

pkcs11::Bytes sign_on_signing_thread(const WorkContext& ctx, TokenWorker& token, const std::string& alias,
                                     const pkcs11::SignRequest& req) {
  const KeyState* k = ctx.snapshot->key(alias);
  if (!ctx.snapshot->present || !ctx.session) throw VarlinkError(perr::kTokenAbsent, {{"token", token.config().name}});
  // Cancelled while this request waited in the queue.
  if (auto c = token.cancellation(alias)) throw VarlinkError(perr::kKeyCancelled, {{"key", alias}, {"at", iso8601(c->at)}});
  if (!ctx.snapshot->logged_in || !k || !k->info || !k->info->private_key)
    throw not_logged_in(token.config().name, ctx.snapshot->login_state);
  try {
    return sign_as_key(token, k, alias, k->info->always_authenticate, [&](const pkcs11::ContextPin& context_pin) {
      return pkcs11::sign(*ctx.session, *k->info->private_key, k->info->type, req, context_pin);
    });
  } catch (const pkcs11::Error& e) {
    // The token does not make this signature (tpm2-pkcs11 takes RSA-PSS
    // only with a salt as long as the digest): what the caller asked for is
    // not supported, the token is fine.
    if (e.fault() == pkcs11::Fault::MechanismInvalid && e.call() == "C_SignInit")
      throw VarlinkError(perr::kMechanismNotSupported, {{"key", alias}, {"scheme", pkcs11::to_string(req.scheme)}});
    throw token_failure(token.config().name, e);
  }
}

ossl::Pkey token_backed_key(TokenWorker& token, const pkcs11::Bytes& id, const pkcs11::Bytes& spki) {
  auto sign = [&token, id](pkcs11::RawOp op, const pkcs11::Bytes& input) {
    auto job = [&token, id, op, input](WorkContext& ctx) -> pkcs11::Bytes {
      if (!ctx.session) throw VarlinkError(perr::kTokenAbsent, {{"token", token.config().name}});
      if (!ctx.snapshot->logged_in)
        throw not_logged_in(token.config().name, ctx.snapshot->login_state);
      const std::string key = "CKA_ID " + protocol::hex_encode(id);
      std::optional<pkcs11::ObjectHandle> private_key;
      bool always = false;
      try {
        private_key = pkcs11::objects_by_id(*ctx.session, id).private_key;
        if (private_key) always = pkcs11::always_authenticate(*ctx.session, *private_key);
      } catch (const pkcs11::Error& e) {
        report(token, e);  // as for clients' signatures
        throw;
      }
      if (!private_key) throw std::runtime_error("no private key with " + key + " on the token");
      return sign_as_key(token, key_with_id(*ctx.snapshot, id), key, always, [&](const pkcs11::ContextPin& context_pin) {
        return pkcs11::sign_raw(*ctx.session, *private_key, op, input, context_pin);
      });
    };
    return run_blocking<pkcs11::Bytes>(token, Lane::Signing, std::move(job), kRoomWait);
  };
  return pkcs11::token_pkey(spki, std::move(sign));
}

}  // namespace firmad
