// The token's key registry: aliases, URIs and the public keys firmad saw.
#include "daemon/token/key_registry.hpp"

#include <algorithm>
#include <stdexcept>

namespace firmad {

KeyRegistry::KeyRegistry(std::vector<KeyConfig> keys) {
  for (const auto& k : keys) add(k);
}

bool KeyRegistry::wants_signature_pin() const {
  return std::any_of(configs_.begin(), configs_.end(), [](const KeyConfig& k) { return k.pin_per_signature; });
}

void KeyRegistry::add(const KeyConfig& key) {
  for (const auto& k : configs_)
    if (k.alias == key.alias) throw std::invalid_argument("key " + key.alias + " is already served by this token");
  auto uri = pkcs11::Uri::parse(key.uri);  // before anything changes
  configs_.push_back(key);
  uris_.push_back(std::move(uri));
}

bool KeyRegistry::set_uri(const std::string& alias, const std::string& uri) {
  for (std::size_t i = 0; i < configs_.size(); ++i) {
    if (configs_[i].alias != alias) continue;
    auto parsed = pkcs11::Uri::parse(uri);
    configs_[i].uri = uri;
    uris_[i] = std::move(parsed);
    return true;
  }
  return false;
}

KeyRegistry::Seen KeyRegistry::compare(const std::string& alias, const pkcs11::Bytes& public_key) const {
  const auto known = known_.find(alias);
  if (known == known_.end()) return Seen::First;
  return known->second == public_key ? Seen::Same : Seen::Other;
}

void KeyRegistry::remember(const std::string& alias, pkcs11::Bytes public_key) { known_[alias] = std::move(public_key); }

void KeyRegistry::forget(const std::string& alias) { known_.erase(alias); }

}  // namespace firmad
