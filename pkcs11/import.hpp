// Putting a software key and its certificate on the token, where the key can no longer be read back.
#pragma once
#include <openssl/types.h>

#include <string>

#include "pkcs11/session.hpp"
#include "pkcs11/types.hpp"

namespace firmad::pkcs11 {

struct ImportedObjects {
  ObjectHandle private_key = 0;
  ObjectHandle public_key = 0;
  ObjectHandle certificate = 0;
};

// Stores an RSA (two-prime) or EC P-256/P-384 private key, its public key and
// its certificate on the token as three token objects sharing `label` and
// `id` (non-empty). The private key is private, sensitive, not extractable
// and may only sign; the public key and certificate are public. All objects
// are encoded before the first is created; if a later creation fails, the
// objects already created are destroyed before the error is rethrown.
// The session must be ReadWrite and logged in as the user. Returns the new
// objects' handles. Throws std::invalid_argument when the key type is not
// supported, id is empty or the certificate does not belong to the key,
// std::runtime_error when OpenSSL cannot encode a part, and Error when the
// token refuses; its call() then names the object, e.g.
// "C_CreateObject(certificate)".
ImportedObjects import_credential(const Session& session, EVP_PKEY* key, X509* certificate, const std::string& label,
                                  const Bytes& id);

// Rehearses import_credential: the private key is created as a session
// object (gone with the session, never on the token) and destroyed at once,
// so a token that takes no imported keys (tpm2-pkcs11: keys are made in the
// TPM) says so before anything is written. Throws what import_credential
// throws.
void rehearse_import(const Session& session, EVP_PKEY* key, X509* certificate, const Bytes& id);

// Returns a random 8-byte CKA_ID that no object the session can see carries
// (log in first so that private objects are seen too). Throws Error, or
// std::runtime_error if the random generator fails.
Bytes new_object_id(const Session& session);

}  // namespace firmad::pkcs11
