// Writing to the token: generated key pairs, certificates and labels, and the object templates import shares.
#pragma once
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pkcs11/openssl.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/types.hpp"

namespace firmad::pkcs11 {

// A key to generate: RSA 2048/3072/4096, or EC on "P-256"/"P-384".
struct KeySpec {
  KeyType type = KeyType::Rsa;
  int bits = 2048;
  std::string curve;  // EC only
};

// Parses "rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384" (exactly
// these, lower case). Returns nullopt for anything else.
std::optional<KeySpec> parse_key_spec(std::string_view text);

struct GeneratedKey {
  ObjectHandle private_key = 0;
  ObjectHandle public_key = 0;
  Bytes public_key_info;  // SubjectPublicKeyInfo DER, read back from the new public key object
  // The RSA private key may decrypt as well: the token signs PKCS#1 v1.5
  // with its RSA decryption (see generate_key_pair).
  bool may_decrypt = false;
};

// Generates a key pair on the token (C_GenerateKeyPair) as two token objects
// with `label` and `id` (non-empty). The private key is private, sensitive,
// not extractable and may only sign (no decrypt, unwrap or derive); the
// public key is public and may verify. The session must be ReadWrite and
// logged in as the user. If the new public key cannot be read back, both
// objects are destroyed before the error is rethrown. Returns the handles
// and the public key. Throws std::invalid_argument for a spec other than
// parse_key_spec's or an empty id, Error when the token refuses
// (call() "C_GenerateKeyPair"; CKR_MECHANISM_INVALID when it cannot make
// such keys).
GeneratedKey generate_key_pair(const Session& session, const KeySpec& spec, const std::string& label, const Bytes& id);

// Stores an X.509 certificate (DER) as a public token object with `label`
// and `id`, with the same attributes import gives certificates (subject,
// issuer, serial number, value). The session must be ReadWrite. Returns the
// new object's handle. Throws std::invalid_argument when `der` is not one
// DER certificate, Error when the token refuses
// (call() "C_CreateObject(certificate)").
ObjectHandle create_certificate(const Session& session, const Bytes& der, const std::string& label, const Bytes& id);

// Sets an object's CKA_LABEL. Private objects need a logged-in session,
// token objects a ReadWrite one. Throws Error (call() "C_SetAttributeValue").
void set_label(const Session& session, ObjectHandle object, const std::string& label);

// What a logged-in user session may write on the token, learnt before a
// write that matters (an import, a renewal's new key): a certificate object
// is created under `id` (the CKA_ID firmad chose) with the label
// "firmad-write-probe", relabelled, and destroyed again. Each field is empty
// where the token allowed it, or says what it answered ("C_CreateObject:
// CKR_USER_TYPE_INVALID"). A PIV module, for one, creates objects only for
// the security officer and reads CKA_ID as a PIV slot. Nothing is left on
// the token unless `destroy` says otherwise. The session must be ReadWrite.
struct WriteProbe {
  std::string create;
  std::string relabel;
  std::string destroy;
};
WriteProbe probe_writes(const Session& session, const Bytes& certificate_der, const Bytes& id);

// Every object the session can see that carries one CKA_ID.
struct ObjectsById {
  std::optional<ObjectHandle> private_key, public_key;
  std::vector<std::pair<ObjectHandle, Bytes>> certificates;  // handle and DER, in the token's order
};

// Returns the private key (visible only when logged in), public key and
// certificates with this CKA_ID. When several keys of one class share it,
// the first the token reports is returned. Throws Error.
ObjectsById objects_by_id(const Session& session, const Bytes& id);

// --- Building blocks shared by key generation and import (pkcs11/ only) ---

// An attribute template that owns its values. Some values are private key
// components (import), so all of them are wiped on destruction.
class Template {
 public:
  Template() = default;
  Template(const Template&) = delete;  // its attributes point into its own storage
  Template& operator=(const Template&) = delete;
  ~Template();

  // Takes the value over (moved, so no copy of a secret is left behind).
  void add(CK_ATTRIBUTE_TYPE type, Bytes&& value);
  void add_bool(CK_ATTRIBUTE_TYPE type, bool value);
  void add_ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value);
  void add_copy(CK_ATTRIBUTE_TYPE type, const Bytes& value) { add(type, Bytes(value)); }

  CK_ATTRIBUTE* data() noexcept { return attributes_.data(); }
  CK_ULONG size() const noexcept { return static_cast<CK_ULONG>(attributes_.size()); }

 private:
  std::list<Bytes> values_;  // a list: a value stays where its attribute points
  std::vector<CK_ATTRIBUTE> attributes_;
};

// Destroys the objects added to it unless released, newest first, so that a
// multi-object write leaves all of its objects on the token or none.
class ObjectGuard {
 public:
  explicit ObjectGuard(const Session& session) : session_(session) { objects_.reserve(3); }
  ObjectGuard(const ObjectGuard&) = delete;  // destroys its objects once
  ObjectGuard& operator=(const ObjectGuard&) = delete;
  ~ObjectGuard();
  void add(ObjectHandle object) { objects_.push_back(object); }
  void release() noexcept { objects_.clear(); }

 private:
  const Session& session_;
  std::vector<ObjectHandle> objects_;
};

// Adds what every key pair firmad writes carries: class, token object,
// label and id on both; the private key private, sensitive, not extractable,
// sign only; the public key public, verify.
// With `token` false they are session objects, gone with the session (an
// import's rehearsal).
// With `forbid_decrypt` false, CKA_DECRYPT is left to the token.
void add_key_pair_attributes(Template& private_key, Template& public_key, const std::string& label, const Bytes& id,
                             bool token = true, bool forbid_decrypt = true);

// Adds a certificate object's attributes for a DER certificate. Throws
// std::invalid_argument when `der` is not one DER certificate.
void add_certificate_attributes(Template& certificate, const Bytes& der, const std::string& label, const Bytes& id);

// Returns a value's DER encoding made by OpenSSL's i2d function for it.
// Throws std::runtime_error("cannot encode the <what>: <OpenSSL's errors>").
template <typename T>
Bytes encode_der(int (*i2d)(const T*, unsigned char**), const T* value, const char* what) {
  const int len = value ? i2d(value, nullptr) : -1;
  if (len <= 0) ossl::fail(std::string("cannot encode the ") + what);
  Bytes out(static_cast<std::size_t>(len));
  unsigned char* p = out.data();
  if (i2d(value, &p) != len) ossl::fail(std::string("cannot encode the ") + what);
  return out;
}

// C_CreateObject; `call` names the object in the Error ("C_CreateObject(public key)").
ObjectHandle create_object(const Session& session, Template& t, const char* call);

}  // namespace firmad::pkcs11
