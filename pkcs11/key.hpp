// Finding a key on the token by URI and describing it: type, size, public key, certificate.
#pragma once
#include <optional>

#include "pkcs11/session.hpp"
#include "pkcs11/types.hpp"
#include "pkcs11/uri.hpp"

namespace firmad::pkcs11 {

// Returns the key the URI's object label/id names, or nullopt if the token
// holds none of its private key, public key or certificate. The private key
// handle is set only when the session can see it (logged in). When several
// certificates carry the key's CKA_ID (a renewal that kept the key, until the
// old certificate is removed), KeyInfo::certificate is the one with the
// latest notAfter; ties go to the latest notBefore, then to the smallest DER,
// so the choice never depends on the token's object order. Throws Error,
// or std::runtime_error when the URI matches more than one private key.
// Whether the private key needs the PIN for every signature
// (CKA_ALWAYS_AUTHENTICATE). Throws Error.
bool always_authenticate(const Session& s, ObjectHandle private_key);

std::optional<KeyInfo> find_key(const Session& session, const Uri& uri);

// Returns the SubjectPublicKeyInfo DER of a public key object (RSA, EC
// P-256/P-384 or Ed25519), built from its attributes. Throws
// std::runtime_error when the object is no such key or lacks them, Error
// when the token fails.
Bytes public_key_info(const Session& session, ObjectHandle public_key);

// Destroys every object of the key on the token: its private key, public
// key and certificate, found by the key's CKA_ID (or label when it has no id).
// The session must be read-write and logged in. Returns how many objects
// were destroyed. Throws Error.
int destroy_key_objects(const Session& session, const KeyInfo& key);

}  // namespace firmad::pkcs11
