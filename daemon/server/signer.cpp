// Sign and SignCms: parameters, access and audit on the I/O thread; the signature on a signing thread.
#include "daemon/server/signer.hpp"

#include "daemon/token/bridge.hpp"
#include "daemon/token/cms.hpp"
#include "daemon/token/signing.hpp"
#include "daemon/log.hpp"
#include "pkcs11/sign.hpp"
#include "protocol/base64.hpp"
#include "protocol/limits.hpp"
#include "protocol/params.hpp"

namespace firmad {
namespace {

namespace perr = protocol::error;
using protocol::Json;
using protocol::Params;
using protocol::VarlinkError;

pkcs11::Hash parse_hash(const std::optional<std::string>& name) {
  if (!name || *name == "sha256") return pkcs11::Hash::Sha256;
  if (*name == "sha384") return pkcs11::Hash::Sha384;
  if (*name == "sha512") return pkcs11::Hash::Sha512;
  if (*name == "sha1") return pkcs11::Hash::Sha1;
  throw protocol::invalid_parameter("hash");
}

// SHA-1 only for a key whose configuration allows it.
void check_hash_allowed(const KeyConfig& key, pkcs11::Hash hash) {
  if (hash == pkcs11::Hash::Sha1 && !key.allow_sha1)
    throw VarlinkError(perr::kHashNotAllowed, {{"key", key.alias}, {"hash", "sha1"}});
}

void check_digest(const pkcs11::Bytes& digest, pkcs11::Hash hash) {
  if (digest.size() != pkcs11::digest_size(hash))
    throw VarlinkError(perr::kDigestLengthMismatch, {{"hash", pkcs11::to_string(hash)},
                                                     {"expected", pkcs11::digest_size(hash)},
                                                     {"actual", digest.size()}});
}

// The key's state if the peer may use it and the token can sign with it now.
const KeyState& usable_key(const TokenSnapshot& snap, const TokenWorker& token, const KeyConfig& key, const Peer& peer,
                           const char* method) {
  if (!allowed(key.allow, peer)) {
    log::throttled(log::Level::Warning, "access-denied", peer.uid,
                   {{"method", method}, {"key", key.alias}, {"uid", peer.uid}, {"gid", peer.gid}, {"pid", peer.pid},
                    peer.program()});
    throw VarlinkError(perr::kAccessDenied, {{"method", method}, {"key", key.alias}});
  }
  return firmad::usable_key(snap, token, key.alias);
}

void require_scheme(const KeyState& k, pkcs11::Scheme s) {
  const auto& schemes = k.info->schemes;
  if (std::find(schemes.begin(), schemes.end(), s) == schemes.end())
    throw VarlinkError(perr::kMechanismNotSupported, {{"key", k.config.alias}, {"scheme", pkcs11::to_string(s)}});
}

}  // namespace

boost::asio::awaitable<Json> sign(TokenWorker& token, const KeyConfig& key, const Json& params, const Peer& peer,
                                  AuditRecord& record) {
  Params p(params);
  p.required_string("key");
  auto digest = p.optional_base64("digest");
  const auto hash_name = p.optional_string("hash");
  const auto padding = p.optional_string("padding");
  const auto salt = p.optional_int("saltLength");
  auto data = p.optional_base64("data");
  p.finish();

  const auto snap = token.snapshot();
  const KeyState& k = usable_key(*snap, token, key, peer, "Sign");
  pkcs11::SignRequest req;
  req.hash = parse_hash(hash_name);
  check_hash_allowed(key, req.hash);
  switch (k.info->type) {
    case pkcs11::KeyType::Rsa:
      if (!padding || *padding == "pkcs1") req.scheme = pkcs11::Scheme::RsaPkcs1;
      else if (*padding == "pss") req.scheme = pkcs11::Scheme::RsaPss;
      else throw protocol::invalid_parameter("padding");
      if (salt) {
        if (req.scheme != pkcs11::Scheme::RsaPss || *salt < 0 || *salt > 512) throw protocol::invalid_parameter("saltLength");
        req.salt_length = static_cast<unsigned long>(*salt);
      }
      break;
    case pkcs11::KeyType::Ec:
      req.scheme = pkcs11::Scheme::Ecdsa;
      if (padding) throw protocol::invalid_parameter("padding");
      if (salt) throw protocol::invalid_parameter("saltLength");
      break;
    case pkcs11::KeyType::Ed25519:
      req.scheme = pkcs11::Scheme::EdDsa;
      if (padding) throw protocol::invalid_parameter("padding");
      if (salt) throw protocol::invalid_parameter("saltLength");
      if (digest) throw protocol::invalid_parameter("digest");
      if (hash_name) throw protocol::invalid_parameter("hash");
      if (!data) throw protocol::invalid_parameter("data");
      if (data->size() > protocol::kMaxCmsContentBytes)
        throw VarlinkError(perr::kContentTooLarge, {{"limit", protocol::kMaxCmsContentBytes}, {"actual", data->size()}});
      break;
  }
  require_scheme(k, req.scheme);
  if (req.scheme != pkcs11::Scheme::EdDsa) {
    if (data) throw protocol::invalid_parameter("data");
    if (!digest) throw protocol::invalid_parameter("digest");
    check_digest(*digest, req.hash);
    req.input = std::move(*digest);
  } else {
    req.input = std::move(*data);
  }

  const std::string alias = key.alias;
  const char* scheme = pkcs11::to_string(req.scheme);
  record.add("scheme", scheme);
  if (req.scheme != pkcs11::Scheme::EdDsa) {
    record.add("hash", pkcs11::to_string(req.hash));
    record.add("digest", protocol::hex_encode(req.input));
  }
  auto job = [&token, alias, req = std::move(req)](WorkContext& ctx) { return sign_on_signing_thread(ctx, token, alias, req); };
  const pkcs11::Bytes signature = co_await run_on<pkcs11::Bytes>(token, Lane::Signing, std::move(job));
  co_return Json{{"signature", protocol::base64_encode(signature)}, {"scheme", scheme}};
}

boost::asio::awaitable<Json> sign_cms(TokenWorker& token, const KeyConfig& key, const Json& params, const Peer& peer,
                                      AuditRecord& record) {
  Params p(params);
  p.required_string("key");
  auto content = p.optional_base64("content");
  auto digest = p.optional_base64("digest");
  const auto hash_name = p.optional_string("hash");
  p.finish();

  CmsInput in;
  in.hash = parse_hash(hash_name);
  if (content.has_value() == digest.has_value()) throw protocol::invalid_parameter(content ? "digest" : "content");
  if (content && content->size() > protocol::kMaxCmsContentBytes)
    throw VarlinkError(perr::kContentTooLarge, {{"limit", protocol::kMaxCmsContentBytes}, {"actual", content->size()}});
  if (digest) check_digest(*digest, in.hash);

  const auto snap = token.snapshot();
  const KeyState& k = usable_key(*snap, token, key, peer, "SignCms");
  check_hash_allowed(key, in.hash);
  if (k.info->certificate.empty()) throw VarlinkError(perr::kCertificateMissing, {{"key", key.alias}});
  pkcs11::SignRequest req;
  req.hash = in.hash;
  if (k.info->type == pkcs11::KeyType::Rsa) req.scheme = pkcs11::Scheme::RsaPkcs1;
  else if (k.info->type == pkcs11::KeyType::Ec) req.scheme = pkcs11::Scheme::Ecdsa;
  else throw VarlinkError(perr::kMechanismNotSupported, {{"key", key.alias}, {"scheme", "cms-eddsa"}});
  require_scheme(k, req.scheme);
  in.certificate = k.info->certificate;
  record.add("scheme", pkcs11::to_string(req.scheme));
  record.add("hash", pkcs11::to_string(req.hash));
  if (digest) record.add("digest", protocol::hex_encode(*digest));
  in.digest = std::move(digest);

  const std::string alias = key.alias;
  auto shared_content = std::make_shared<pkcs11::Bytes>(content ? std::move(*content) : pkcs11::Bytes{});
  const bool attached = content.has_value();
  auto job = [&token, alias, req, in = std::move(in), shared_content, attached](WorkContext& ctx) mutable {
    if (attached) in.content = std::span<const std::uint8_t>(*shared_content);
    return build_cms(in, [&](const pkcs11::Bytes& d) {
      pkcs11::SignRequest r = req;
      r.input = d;
      return sign_on_signing_thread(ctx, token, alias, r);
    });
  };
  const pkcs11::Bytes cms = co_await run_on<pkcs11::Bytes>(token, Lane::Signing, std::move(job));
  co_return Json{{"cms", protocol::base64_encode(cms)}};
}

}  // namespace firmad
