// The keys a token serves: their configuration, their parsed URIs, and the public key each had when firmad last saw it.
#pragma once
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "daemon/config.hpp"
#include "pkcs11/types.hpp"
#include "pkcs11/uri.hpp"

namespace firmad {

// Control thread only (the token worker owns one). Keys are kept in the
// order they were configured or added; an alias appears once.
class KeyRegistry {
 public:
  // Throws std::invalid_argument for a key whose URI does not parse.
  explicit KeyRegistry(std::vector<KeyConfig> keys);

  std::size_t size() const noexcept { return configs_.size(); }
  const KeyConfig& config(std::size_t i) const { return configs_.at(i); }
  const pkcs11::Uri& uri(std::size_t i) const { return uris_.at(i); }
  // Whether some key needs the PIN kept for every signature.
  bool wants_signature_pin() const;

  // A key imported while firmad runs. Throws std::invalid_argument for a
  // bad URI or an alias already there.
  void add(const KeyConfig& key);
  // Serves `alias` from the objects `uri` selects (a renewal's new key).
  // Returns false when no key has that alias; throws std::invalid_argument
  // for a bad URI (nothing changes then).
  bool set_uri(const std::string& alias, const std::string& uri);

  // How a public key a scan found under `alias` compares with the one firmad
  // saw there before.
  enum class Seen {
    First,  // none seen yet: it is remembered by the caller
    Same,
    Other,  // the token is not the one firmad served (or was re-keyed while away)
  };
  Seen compare(const std::string& alias, const pkcs11::Bytes& public_key) const;
  // Remembers the public key under `alias` (first seen, or written by firmad).
  void remember(const std::string& alias, pkcs11::Bytes public_key);
  // firmad removed the key's objects: a key under the alias later is a new one.
  void forget(const std::string& alias);

 private:
  std::vector<KeyConfig> configs_;
  std::vector<pkcs11::Uri> uris_;
  std::map<std::string, pkcs11::Bytes> known_;  // alias -> SubjectPublicKeyInfo DER
};

}  // namespace firmad
