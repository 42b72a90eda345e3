// libFuzzer target: libfirma-pkcs11's parsing of firmad's key entries, attribute templates (C_FindObjects,
// C_GetAttributeValue) and mechanism parameters.
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "client/pkcs11/mechanisms.hpp"
#include "client/pkcs11/objects.hpp"
#include "protocol/base64.hpp"

namespace {

using namespace firma::p11;

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

// A Status key entry (JSON) becomes objects or a clean refusal; each object
// matches a template of its own attributes and not one with a changed value.
void key_entry(const std::uint8_t* data, std::size_t size) {
  const auto json = nlohmann::json::parse(data, data + size, nullptr, false);
  if (json.is_discarded()) return;
  KeyInfo info;
  if (!key_info(json, info)) return;
  std::vector<Object> objects;
  try {
    objects = objects_of(json, info);
  } catch (const std::runtime_error&) {
    return;  // objects_of's documented refusal
  }
  require(objects.size() >= 2 && objects.size() <= 3, "two or three objects per key");
  for (const auto& o : objects) {
    std::vector<CK_ATTRIBUTE> templ;
    for (const auto& [type, value] : o.attributes)
      templ.push_back({type, const_cast<std::uint8_t*>(value.data()), static_cast<CK_ULONG>(value.size())});
    require(o.matches(templ.data(), templ.size()), "an object matches its own attributes");
    std::vector<std::uint8_t> changed = o.attributes.at(CKA_CLASS);
    changed[0] ^= 1;
    CK_ATTRIBUTE other{CKA_CLASS, changed.data(), static_cast<CK_ULONG>(changed.size())};
    require(!o.matches(&other, 1), "a changed class does not match");
  }
}

// The objects of a real P-256 key (made once): what C_GetAttributeValue and
// C_FindObjectsInit are asked about.
const std::vector<Object>& real_objects() {
  static const std::vector<Object> objects = [] {
    EVP_PKEY* pkey = EVP_EC_gen("P-256");
    unsigned char* der = nullptr;
    const int n = pkey != nullptr ? i2d_PUBKEY(pkey, &der) : 0;
    require(n > 0, "a P-256 public key");
    const std::string spki = firmad::protocol::base64_encode(std::span<const std::uint8_t>(der, static_cast<std::size_t>(n)));
    OPENSSL_free(der);
    EVP_PKEY_free(pkey);
    const nlohmann::json entry{{"alias", "firma-ec"}, {"token", "demo"}, {"found", true}, {"type", "ec"}, {"bits", 256},
                               {"publicKey", spki}, {"schemes", {"ecdsa"}}, {"objectId", "02"}, {"objectLabel", "firma-ec"}};
    KeyInfo info;
    require(key_info(entry, info), "the real key is read");
    return objects_of(entry, info);
  }();
  return objects;
}

// A template of up to 8 attributes, each with a type and a buffer (none, or
// exactly as long as the input says: AddressSanitizer sees any byte written
// past it), asked of each object: values copied only into buffers that fit,
// lengths and return codes as C_GetAttributeValue's rules say; the same
// template as a search matches only objects that have every value.
void attributes(const std::uint8_t* data, std::size_t size) {
  constexpr CK_ATTRIBUTE_TYPE kTypes[] = {CKA_CLASS, CKA_ID, CKA_LABEL, CKA_KEY_TYPE, CKA_EC_POINT, CKA_EC_PARAMS, CKA_VALUE,
                                          CKA_SIGN, CKA_PRIVATE, CKA_TOKEN, CKA_MODULUS, CKA_SUBJECT, CKA_PRIVATE_EXPONENT};
  struct Entry {
    CK_ATTRIBUTE_TYPE type;
    bool buffer;
    std::size_t length;
  };
  std::vector<Entry> entries;
  for (std::size_t i = 0; i + 2 < size && entries.size() < 8; i += 3)
    entries.push_back({data[i] < 0xf0 ? kTypes[data[i] % std::size(kTypes)] : CK_ATTRIBUTE_TYPE{data[i]} << 8, (data[i + 1] & 1) != 0,
                       static_cast<std::size_t>(data[i + 2])});
  for (const auto& o : real_objects()) {
    // (new[] even for 0 bytes: a buffer that is there but holds nothing, never NULL.)
    std::vector<std::unique_ptr<std::uint8_t[]>> buffers;
    std::vector<CK_ATTRIBUTE> templ;
    for (const auto& e : entries) {
      buffers.emplace_back(e.buffer ? new std::uint8_t[e.length] : nullptr);
      templ.push_back({e.type, buffers.back().get(), static_cast<CK_ULONG>(e.length)});
    }
    const CK_RV rv = o.copy_attributes(templ.data(), templ.size());
    bool all_given = true;
    for (std::size_t i = 0; i < templ.size(); ++i) {
      const auto it = o.attributes.find(entries[i].type);
      if (templ[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        all_given = false;
        continue;
      }
      require(it != o.attributes.end(), "a length only for an attribute the object has");
      require(templ[i].ulValueLen == it->second.size(), "the attribute's own length");
      if (entries[i].buffer) {
        require(it->second.size() <= entries[i].length, "a value only into a buffer it fits");
        require(std::equal(it->second.begin(), it->second.end(), buffers[i].get()), "the attribute's own bytes");
      }
    }
    require((rv == CKR_OK) == all_given, "CKR_OK exactly when every attribute was given");
    if (rv == CKR_OK && std::all_of(entries.begin(), entries.end(), [](const Entry& e) { return e.buffer; })) {
      // Every value was copied: as a search template it matches this object.
      require(o.matches(templ.data(), templ.size()), "an object matches the values it gave");
    }
  }
}

// Any mechanism and parameter bytes against any key: CKR_OK only with a plan firmad can make.
void mechanism(const std::uint8_t* data, std::size_t size) {
  if (size < 6) return;
  KeyInfo key;
  key.kind = static_cast<KeyKind>(data[0] % 3);
  key.bits = 256 + (data[1] << 5);
  key.pss = data[2] & 1;
  CK_MECHANISM m{};
  std::memcpy(&m.mechanism, data + 3, 2);
  m.mechanism = (m.mechanism & 0x0fff) | ((data[5] & 1) ? 0x1000 : 0);
  std::vector<std::uint8_t> param(data + 6, data + size);  // exactly the given length
  m.pParameter = param.empty() ? nullptr : param.data();
  m.ulParameterLen = static_cast<CK_ULONG>(param.size());
  MechanismPlan plan;
  if (plan_for(m, key, plan) != CKR_OK) return;
  require(plan.type == m.mechanism, "the plan is for the mechanism asked");
  require(plan.kind == key.kind, "the plan is for the key's kind");
  if (plan.pss) {
    require(plan.salt && *plan.salt >= 0 && *plan.salt <= (key.bits + 7) / 8, "a PSS salt that fits the key");
    require(!plan.pss_hash.empty(), "a PSS hash");
  }
}

void digest_info(const std::uint8_t* data, std::size_t size) {
  const auto parsed = parse_digest_info(firma::Bytes(data, data + size));
  if (parsed) require(hash_for_digest_length(parsed->second.size()) == parsed->first, "digest length matches its hash");
}

void ecdsa(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return;
  const std::size_t half = 1 + data[0] % 80;
  const auto raw = ecdsa_der_to_raw(firma::Bytes(data + 1, data + size), half);
  if (raw) require(raw->size() == 2 * half, "r||s is twice the field size");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  switch (data[0] % 5) {
    case 0: key_entry(data + 1, size - 1); break;
    case 1: mechanism(data + 1, size - 1); break;
    case 2: digest_info(data + 1, size - 1); break;
    case 3: ecdsa(data + 1, size - 1); break;
    case 4: attributes(data + 1, size - 1); break;
  }
  return 0;
}
