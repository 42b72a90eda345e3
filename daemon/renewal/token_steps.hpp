// What a renewal does to the token: each a job on the token's control thread, run and waited for.
//
// The state machine (machine.cpp) decides when; these only do. Each blocks
// the renewal thread until the token's control thread has finished, and
// throws what the token or the worker threw (protocol::VarlinkError
// TokenAbsent / NotLoggedIn, pkcs11::Error, std::runtime_error).
#pragma once
#include <functional>
#include <optional>
#include <string>

#include "daemon/token/token_worker.hpp"
#include "pkcs11/keygen.hpp"
#include "pkcs11/types.hpp"

namespace firmad::renewal {

using pkcs11::Bytes;

// "pkcs11:id=%01%02": the URI that serves exactly the objects with CKA_ID `id`.
std::string id_uri(const Bytes& id);
// "rsa-2048", "ec-p256", "ec-p384" for a key renewal can make; empty otherwise.
std::string key_type_of(const pkcs11::KeyInfo& key);

// Removes every object carrying `id`: a half-made or abandoned renewal key.
void destroy_key(TokenWorker& token, const Bytes& id);

// A CKA_ID no object on the token has yet.
Bytes choose_key_id(TokenWorker& token);

// Why the token would refuse the new key's objects under `id` (probed with
// `certificate`, see TokenWorker::refuses_writes), or nullopt.
std::optional<std::string> refuses_key_writes(TokenWorker& token, const Bytes& id, const Bytes& certificate);

// The key pair with CKA_ID `id`: made now (labelled `label`), or the whole
// pair a crashed run already made. A partial pair is removed and made again.
// Returns its public key (DER SubjectPublicKeyInfo).
Bytes make_key_pair(TokenWorker& token, const Bytes& id, const pkcs11::KeySpec& spec, const std::string& label);

// Writes `certificate` next to the key with CKA_ID `id` (labelled `alias`),
// unless it is there already. Throws std::runtime_error when that key is gone.
void write_certificate(TokenWorker& token, const Bytes& id, const Bytes& certificate, const std::string& alias);

// The worker serves `alias` from the objects `uri` selects from now on.
void serve_key(TokenWorker& token, const std::string& alias, const std::string& uri);
// The worker reads the token's keys again (a new certificate of the same key).
void rescan_keys(TokenWorker& token);

// Why the pair with CKA_ID `id` cannot serve `certificate`, or nullopt when
// it can: its private key, public key and `certificate` objects are on the
// token, the public key is the certificate's, and a signature the token makes
// with it verifies with the certificate. Throws what the token threw when it
// could not be asked (absent, not logged in). `signed_once` is called once
// the token made that signature (the caller audits it).
std::optional<std::string> damaged_pair(TokenWorker& token, const Bytes& id, const Bytes& certificate,
                                        const std::function<void()>& signed_once = {});

// The last step on the token: the old certificates of `old_id` other than
// `certificate` are removed, then an abandoned key (`cleanup_id`). No key
// object is ever written to once made: a token that rewrites an object in
// place (SoftHSM truncates, then writes) would lose the key to a kill in
// between. The previous pair stays as it was, found by its CKA_ID.
struct Retirement {
  Bytes old_id, new_id, cleanup_id;
  Bytes certificate;  // the one installed, kept
};
void retire_old_objects(TokenWorker& token, const Retirement& what);

}  // namespace firmad::renewal
