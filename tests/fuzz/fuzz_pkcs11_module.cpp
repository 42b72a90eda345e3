// libFuzzer target: libfirma-pkcs11's parsing of firmad's key entries, attribute templates and mechanism parameters.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "client/pkcs11/mechanisms.hpp"
#include "client/pkcs11/objects.hpp"

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
  switch (data[0] % 4) {
    case 0: key_entry(data + 1, size - 1); break;
    case 1: mechanism(data + 1, size - 1); break;
    case 2: digest_info(data + 1, size - 1); break;
    case 3: ecdsa(data + 1, size - 1); break;
  }
  return 0;
}
