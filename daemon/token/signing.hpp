// Signing with a token's keys: the checks a signature needs and the work done on a signing thread.
#pragma once
#include <functional>
#include <string>

#include "daemon/token/token_worker.hpp"
#include "pkcs11/openssl.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/types.hpp"

namespace firmad {

// The key's state if the token can sign with it now: present, logged in,
// the key found and not cancelled, its certificate (if any) not expired.
// Throws protocol::VarlinkError TokenAbsent, NotLoggedIn, KeyCancelled,
// KeyNotFound, CertificateExpired, KeyNeedsPinPerSignature. Any thread (reads the snapshot).
const KeyState& usable_key(const TokenSnapshot& snap, const TokenWorker& token, const std::string& alias);

// Why the key cannot sign although it is found: it needs the PIN for every
// signature and firmad.toml does not allow it, or firmad holds no PIN for
// it. Empty if nothing stands in the way. Any thread.
std::string pin_per_signature_refusal(const KeyState& key, const TokenWorker& token);

// The served key whose objects carry CKA_ID `id`, or null.
const KeyState* key_with_id(const TokenSnapshot& snap, const pkcs11::Bytes& id);

// On a signing thread: runs `sign` for `key` (named `name` in errors; null
// when firmad serves no key with those objects), giving it the kept PIN when
// the key needs one for every signature and firmad.toml allows it
// (TokenWorker::sign_with_context_pin). A failed token call is reported to
// the worker. Throws KeyNeedsPinPerSignature, or what `sign` threw.
pkcs11::Bytes sign_as_key(TokenWorker& token, const KeyState* key, const std::string& name, bool always_authenticate,
                          const std::function<pkcs11::Bytes(const pkcs11::ContextPin&)>& sign);

// On a signing thread: signs `req` with the key `alias` as the state current
// there has it (a login or logout since the request was queued is seen).
// A dead session or a pulled token is reported to the worker. Throws
// protocol::VarlinkError (TokenAbsent, KeyCancelled, NotLoggedIn,
// KeyNeedsPinPerSignature, what the token said). A key that needs the PIN
// for every signature gets the kept PIN after C_SignInit; one the token
// refuses is dropped at once (PinIncorrect), never offered again.
pkcs11::Bytes sign_on_signing_thread(const WorkContext& ctx, TokenWorker& token, const std::string& alias,
                                     const pkcs11::SignRequest& req);

// An EVP_PKEY for the key with CKA_ID `id` and public key `spki` whose
// private operations run on the token's signing threads, for OpenSSL to
// build CSRs, CMS and TLS client authentication with. Each operation blocks
// its caller (never the I/O thread or a token thread) and waits up to 5 s for
// room in a full queue: clients' signatures come first. A key that needs the
// PIN for every signature uses the token's kept PIN (see signature_pin()).
ossl::Pkey token_backed_key(TokenWorker& token, const pkcs11::Bytes& id, const pkcs11::Bytes& spki);

}  // namespace firmad
