// A renewal's writes to the token, each run on the token's control thread.
#include "daemon/renewal/token_steps.hpp"

#include <openssl/sha.h>

#include <chrono>
#include <stdexcept>
#include <string_view>

#include "daemon/log.hpp"
#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/record.hpp"
#include "daemon/test_hooks.hpp"
#include "daemon/token/bridge.hpp"
#include "daemon/token/signing.hpp"
#include "pkcs11/import.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/uri.hpp"
#include "protocol/errors.hpp"

namespace firmad::renewal {
namespace {

Bytes sha256_of(std::string_view text) {
  Bytes digest(SHA256_DIGEST_LENGTH);
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

protocol::VarlinkError token_absent(const TokenWorker& token) {
  return protocol::VarlinkError(protocol::error::kTokenAbsent, {{"token", token.config().name}});
}

void destroy_objects_by_id(const pkcs11::Session& s, const Bytes& id) {
  auto objects = pkcs11::objects_by_id(s, id);
  for (const auto& [handle, der] : objects.certificates) s.destroy(handle);
  if (objects.private_key) s.destroy(*objects.private_key);
  if (objects.public_key) s.destroy(*objects.public_key);
}

// Runs `write` with a read-write session on the control thread and waits.
template <typename Write>
void write_on_token(TokenWorker& token, Write write) {
  run_blocking<void>(token, Lane::Control, [&] { token.write_objects(write); });
}

}  // namespace

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

void destroy_key(TokenWorker& token, const Bytes& id) {
  write_on_token(token, [&](const pkcs11::Session& s) { destroy_objects_by_id(s, id); });
}

Bytes choose_key_id(TokenWorker& token) {
  Bytes id;
  write_on_token(token, [&](const pkcs11::Session& s) { id = pkcs11::new_object_id(s); });
  return id;
}

std::optional<std::string> refuses_key_writes(TokenWorker& token, const Bytes& id, const Bytes& certificate) {
  return run_blocking<std::optional<std::string>>(token, Lane::Control, [&] { return token.refuses_writes(certificate, id); });
}

Bytes make_key_pair(TokenWorker& token, const Bytes& id, const pkcs11::KeySpec& spec, const std::string& label) {
  Bytes spki;
  write_on_token(token, [&](const pkcs11::Session& s) {
    // A crash may have left the pair (use it) or part of it, or objects
    // whose attributes were only half written (start again).
    auto existing = pkcs11::objects_by_id(s, id);
    if (existing.private_key && existing.public_key) {
      try {
        if (auto k = pkcs11::find_key(s, pkcs11::Uri::parse(id_uri(id))); k && !k->public_key.empty()) {
          spki = k->public_key;
          return;
        }
      } catch (const std::exception& e) {
        log::warning("renewal-key-incomplete", {{"id", hex(id)}, {"error", e.what()}, {"action", "made again"}});
      }
    }
    destroy_objects_by_id(s, id);
    const auto key = pkcs11::generate_key_pair(s, spec, label, id);
    if (key.may_decrypt)
      log::notice("renewal-key-may-decrypt", {{"id", hex(id)}, {"module", s.module().library_manufacturer()},
                                              {"why", "the module signs RSA PKCS#1 v1.5 with its RSA decryption"}});
    spki = key.public_key_info;
  });
  return spki;
}

void write_certificate(TokenWorker& token, const Bytes& id, const Bytes& certificate, const std::string& alias) {
  write_on_token(token, [&](const pkcs11::Session& s) {
    auto objects = pkcs11::objects_by_id(s, id);
    if (!objects.private_key) throw std::runtime_error("the key with CKA_ID " + hex(id) + " is gone from the token");
    for (const auto& [handle, der] : objects.certificates)
      if (der == certificate) return;  // written before a crash
    pkcs11::create_certificate(s, certificate, alias, id);
  });
}

void serve_key(TokenWorker& token, const std::string& alias, const std::string& uri) {
  run_blocking<void>(token, Lane::Control, [&] { token.set_key_uri(alias, uri); });
}

void rescan_keys(TokenWorker& token) {
  write_on_token(token, [](const pkcs11::Session&) {});  // write_objects rescans afterwards
}

std::optional<std::string> damaged_pair(TokenWorker& token, const Bytes& id, const Bytes& certificate,
                                        const std::function<void()>& signed_once) {
  std::optional<std::string> why;
  std::optional<pkcs11::KeyInfo> key;
  auto inspect = [&](const pkcs11::Session& session) {
    try {
      const auto objects = pkcs11::objects_by_id(session, id);
      bool has_certificate = false;
      for (const auto& [handle, der] : objects.certificates) has_certificate = has_certificate || der == certificate;
      if (!objects.private_key) return void(why = "no private key with CKA_ID " + hex(id));
      if (!objects.public_key) return void(why = "no public key with CKA_ID " + hex(id));
      if (!has_certificate) return void(why = "the certificate is not on the token next to CKA_ID " + hex(id));
      key = pkcs11::find_key(session, pkcs11::Uri::parse(id_uri(id)));
      if (!key || key->public_key.empty() || !key->private_key)
        return void(why = "the key with CKA_ID " + hex(id) + " cannot be read");
    } catch (const pkcs11::Error& e) {
      if (e.fault() == pkcs11::Fault::TokenAbsent || e.fault() == pkcs11::Fault::SessionLost) throw;
      why = "the objects with CKA_ID " + hex(id) + " cannot be read (" + e.what() + ")";  // half-written attributes
    } catch (const std::invalid_argument& e) {
      why = "the key with CKA_ID " + hex(id) + " cannot be read (" + e.what() + ")";
    } catch (const std::runtime_error& e) {
      why = "the key with CKA_ID " + hex(id) + " cannot be read (" + e.what() + ")";
    }
  };
  run_blocking<void>(token, Lane::Control, [&] { token.read_objects(inspect); });
  if (why) return why;
  if (key->public_key != public_key_of(certificate)) return "the public key with CKA_ID " + hex(id) + " is not the certificate's";
  // A test signature on a signing thread. What stops it for a while (a full
  // queue, the token gone, no login) is thrown and retried; what the token
  // says about the key itself means the key is damaged.
  pkcs11::SignRequest req;
  req.scheme = key->type == pkcs11::KeyType::Rsa ? pkcs11::Scheme::RsaPkcs1 : pkcs11::Scheme::Ecdsa;
  req.hash = pkcs11::Hash::Sha256;
  req.input = sha256_of("firmad: does the served key sign for its certificate?");
  const pkcs11::ObjectHandle handle = *key->private_key;
  const pkcs11::KeyType type = key->type;
  const bool always = key->always_authenticate;
  Bytes signature;
  try {
    signature = run_blocking<Bytes>(token, Lane::Signing, [&](WorkContext& ctx) -> Bytes {
      if (!ctx.session) throw token_absent(token);
      // A key that needs the PIN for every signature gets the kept one, where firmad.toml allows it.
      return sign_as_key(token, key_with_id(*ctx.snapshot, id), "CKA_ID " + hex(id), always,
                         [&](const pkcs11::ContextPin& pin) { return pkcs11::sign(*ctx.session, handle, type, req, pin); });
    }, std::chrono::seconds(5));
  } catch (const pkcs11::Error& e) {
    // What stops the test for a while, or a refused PIN, is not the key's damage.
    if (e.fault() == pkcs11::Fault::TokenAbsent || e.fault() == pkcs11::Fault::SessionLost ||
        e.fault() == pkcs11::Fault::NotLoggedIn || e.fault() == pkcs11::Fault::PinIncorrect || e.fault() == pkcs11::Fault::PinLocked)
      throw;
    return "the token cannot sign with the key with CKA_ID " + hex(id) + " (" + e.what() + ")";
  }
  if (signed_once) signed_once();
  if (!verifies_with(certificate, req.input, signature))
    return "a signature of the key with CKA_ID " + hex(id) + " does not verify with the certificate";
  return std::nullopt;
}

void retire_old_objects(TokenWorker& token, const Retirement& what) {
  write_on_token(token, [&](const pkcs11::Session& s) {
    auto old = pkcs11::objects_by_id(s, what.old_id);
    for (const auto& [handle, der] : old.certificates)
      if (der != what.certificate) s.destroy(handle);
    test_hooks::crash_point("old-certificate-removed");
    const Bytes& cleanup = what.cleanup_id;
    if (!cleanup.empty() && cleanup != what.new_id && cleanup != what.old_id) destroy_objects_by_id(s, cleanup);
  });
}

}  // namespace firmad::renewal
