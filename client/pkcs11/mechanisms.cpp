// The signing mechanisms of libfirma-pkcs11: parameter checks, DigestInfo, ECDSA encodings, error codes.
#include "client/pkcs11/mechanisms.hpp"

#include <openssl/bn.h>
#include <openssl/ec.h>

#include <algorithm>
#include <map>
#include <memory>

namespace firma::p11 {
namespace {

// DigestInfo prefixes (RFC 8017 §9.2, note 1).
const Bytes kSha256Prefix{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
const Bytes kSha384Prefix{0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
const Bytes kSha1Prefix{0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
const Bytes kSha512Prefix{0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};

std::string hash_of_mechanism(CK_MECHANISM_TYPE m) {
  switch (m) {
    case CKM_SHA256: case CKM_SHA256_RSA_PKCS: case CKM_SHA256_RSA_PKCS_PSS: case CKM_ECDSA_SHA256: return "sha256";
    case CKM_SHA384: case CKM_SHA384_RSA_PKCS: case CKM_SHA384_RSA_PKCS_PSS: case CKM_ECDSA_SHA384: return "sha384";
    case CKM_SHA512: case CKM_SHA512_RSA_PKCS: case CKM_SHA512_RSA_PKCS_PSS: case CKM_ECDSA_SHA512: return "sha512";
    case CKM_SHA_1: case CKM_SHA1_RSA_PKCS: case CKM_SHA1_RSA_PKCS_PSS: case CKM_ECDSA_SHA1: return "sha1";
    default: return "";
  }
}

CK_MECHANISM_TYPE mgf_of_hash(const std::string& hash) {
  return hash == "sha256"   ? CKG_MGF1_SHA256
         : hash == "sha384" ? CKG_MGF1_SHA384
         : hash == "sha512" ? CKG_MGF1_SHA512
         : hash == "sha1"   ? CKG_MGF1_SHA1
                            : 0;
}

std::size_t digest_length(const std::string& hash) {
  return hash == "sha256" ? 32 : hash == "sha384" ? 48 : hash == "sha512" ? 64 : hash == "sha1" ? 20 : 0;
}

}  // namespace

std::vector<CK_MECHANISM_TYPE> mechanisms_for(KeyKind kind, bool pss, bool sha1) {
  switch (kind) {
    case KeyKind::rsa: {
      std::vector<CK_MECHANISM_TYPE> m{CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS};
      if (sha1) m.push_back(CKM_SHA1_RSA_PKCS);
      if (pss) m.insert(m.end(), {CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS});
      if (pss && sha1) m.push_back(CKM_SHA1_RSA_PKCS_PSS);
      return m;
    }
    case KeyKind::ec: {
      std::vector<CK_MECHANISM_TYPE> m{CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512};
      if (sha1) m.push_back(CKM_ECDSA_SHA1);
      return m;
    }
    case KeyKind::ed25519: return {CKM_EDDSA};
  }
  return {};
}

CK_RV plan_for(const CK_MECHANISM& mechanism, const KeyInfo& key, MechanismPlan& plan) {
  const auto all = mechanisms_for(key.kind, key.pss, key.sha1);
  if (std::find(all.begin(), all.end(), mechanism.mechanism) == all.end()) {
    // A mechanism of another key type: the key is wrong, not the mechanism.
    for (KeyKind k : {KeyKind::rsa, KeyKind::ec, KeyKind::ed25519}) {
      const auto other = mechanisms_for(k, true, true);
      if (k != key.kind && std::find(other.begin(), other.end(), mechanism.mechanism) != other.end()) return CKR_KEY_TYPE_INCONSISTENT;
    }
    return CKR_MECHANISM_INVALID;
  }
  plan = MechanismPlan{};
  plan.type = mechanism.mechanism;
  plan.kind = key.kind;
  plan.hash = hash_of_mechanism(mechanism.mechanism);
  switch (mechanism.mechanism) {
    case CKM_RSA_PKCS:
      plan.digest_info = true;
      [[fallthrough]];
    case CKM_SHA256_RSA_PKCS: case CKM_SHA384_RSA_PKCS: case CKM_SHA512_RSA_PKCS: case CKM_SHA1_RSA_PKCS:
    case CKM_ECDSA: case CKM_ECDSA_SHA256: case CKM_ECDSA_SHA384: case CKM_ECDSA_SHA512: case CKM_ECDSA_SHA1:
      if (mechanism.pParameter != nullptr || mechanism.ulParameterLen != 0) return CKR_MECHANISM_PARAM_INVALID;
      return CKR_OK;
    case CKM_EDDSA: {
      plan.message = true;
      if (mechanism.pParameter == nullptr && mechanism.ulParameterLen == 0) return CKR_OK;
      // Only pure Ed25519 without a context: what Sign makes.
      if (mechanism.pParameter == nullptr || mechanism.ulParameterLen != sizeof(CK_EDDSA_PARAMS)) return CKR_MECHANISM_PARAM_INVALID;
      const auto* p = static_cast<const CK_EDDSA_PARAMS*>(mechanism.pParameter);
      return p->phFlag == CK_FALSE && p->ulContextDataLen == 0 ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
    }
    default: break;  // the PSS family
  }
  if (mechanism.pParameter == nullptr || mechanism.ulParameterLen != sizeof(CK_RSA_PKCS_PSS_PARAMS)) return CKR_MECHANISM_PARAM_INVALID;
  const auto* p = static_cast<const CK_RSA_PKCS_PSS_PARAMS*>(mechanism.pParameter);
  const std::string named = hash_of_mechanism(p->hashAlg);
  if (named.empty() || (!plan.hash.empty() && named != plan.hash)) return CKR_MECHANISM_PARAM_INVALID;
  if (named == "sha1" && !key.sha1) return CKR_MECHANISM_PARAM_INVALID;  // SHA-1 only where firmad.toml allows it
  // firmad's RSA-PSS uses MGF1 with the signature's hash.
  if (p->mgf != mgf_of_hash(named)) return CKR_MECHANISM_PARAM_INVALID;
  // RFC 8017 §9.1.1: emLen >= hLen + sLen + 2.
  const long max_salt = static_cast<long>((key.bits + 7) / 8) - static_cast<long>(digest_length(named)) - 2;
  if (max_salt < 0 || p->sLen > static_cast<CK_ULONG>(max_salt)) return CKR_MECHANISM_PARAM_INVALID;
  plan.pss = true;
  plan.pss_hash = named;
  plan.salt = static_cast<int>(p->sLen);
  return CKR_OK;
}

CK_ULONG signature_length(const KeyInfo& key) {
  switch (key.kind) {
    case KeyKind::rsa: return static_cast<CK_ULONG>((key.bits + 7) / 8);
    case KeyKind::ec: return 2 * static_cast<CK_ULONG>((key.bits + 7) / 8);
    case KeyKind::ed25519: return 64;
  }
  return 0;
}

std::optional<std::pair<std::string, Bytes>> parse_digest_info(const Bytes& input, bool sha1) {
  for (const auto& [name, prefix] : {std::pair<std::string, const Bytes*>{"sha256", &kSha256Prefix}, {"sha384", &kSha384Prefix},
                                     {"sha512", &kSha512Prefix}, {"sha1", &kSha1Prefix}}) {
    if (name == "sha1" && !sha1) continue;
    if (input.size() == prefix->size() + digest_length(name) && std::equal(prefix->begin(), prefix->end(), input.begin()))
      return std::pair{name, Bytes(input.begin() + static_cast<long>(prefix->size()), input.end())};
  }
  return std::nullopt;
}

std::string hash_for_digest_length(std::size_t n, bool sha1) {
  return n == 32 ? "sha256" : n == 48 ? "sha384" : n == 64 ? "sha512" : n == 20 && sha1 ? "sha1" : "";
}

std::optional<Bytes> ecdsa_der_to_raw(const Bytes& der, std::size_t half) {
  const unsigned char* p = der.data();
  std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())), ECDSA_SIG_free);
  if (!sig || p != der.data() + der.size()) return std::nullopt;
  const BIGNUM* r = ECDSA_SIG_get0_r(sig.get());
  const BIGNUM* s = ECDSA_SIG_get0_s(sig.get());
  Bytes out(2 * half);
  if (BN_bn2binpad(r, out.data(), static_cast<int>(half)) < 0 || BN_bn2binpad(s, out.data() + half, static_cast<int>(half)) < 0)
    return std::nullopt;
  return out;
}

// firmad's errors as CK_RV: one code each, what a PKCS#11 caller can act on.
//   AccessDenied, CertificateExpired, KeyCancelled,
//   KeyNeedsPinPerSignature, HashNotAllowed   CKR_KEY_FUNCTION_NOT_PERMITTED (the key may not sign for this caller now)
//   KeyNotFound                               CKR_KEY_HANDLE_INVALID (gone from firmad since the slot list was read)
//   TokenAbsent, TokenNotFound                CKR_TOKEN_NOT_PRESENT
//   NotLoggedIn, PinIncorrect, PinFinalTry,
//   PinSourceUnavailable                      CKR_USER_NOT_LOGGED_IN (firmad is not logged in; an administrator must act)
//   PinLocked                                 CKR_PIN_LOCKED
//   MechanismNotSupported                     CKR_MECHANISM_INVALID
//   DigestLengthMismatch, ContentTooLarge     CKR_DATA_LEN_RANGE
//   InvalidBase64, InvalidParameter           CKR_DATA_INVALID
//   QueueFull, BuffersFull                    CKR_DEVICE_MEMORY (transient: the device has no room for the request now)
//   ShuttingDown, and no connection           CKR_DEVICE_REMOVED
//   TokenError, AuditUnavailable              CKR_DEVICE_ERROR
//   anything else                             CKR_FUNCTION_FAILED
CK_RV rv_for_error(const std::string& name) {
  static const std::map<std::string, CK_RV> table{
      {"AccessDenied", CKR_KEY_FUNCTION_NOT_PERMITTED}, {"CertificateExpired", CKR_KEY_FUNCTION_NOT_PERMITTED},
      {"KeyCancelled", CKR_KEY_FUNCTION_NOT_PERMITTED}, {"KeyNeedsPinPerSignature", CKR_KEY_FUNCTION_NOT_PERMITTED},
      {"HashNotAllowed", CKR_KEY_FUNCTION_NOT_PERMITTED},
      {"KeyNotFound", CKR_KEY_HANDLE_INVALID},          {"TokenAbsent", CKR_TOKEN_NOT_PRESENT},
      {"TokenNotFound", CKR_TOKEN_NOT_PRESENT},         {"NotLoggedIn", CKR_USER_NOT_LOGGED_IN},
      {"PinIncorrect", CKR_USER_NOT_LOGGED_IN},         {"PinFinalTry", CKR_USER_NOT_LOGGED_IN},
      {"PinSourceUnavailable", CKR_USER_NOT_LOGGED_IN}, {"PinLocked", CKR_PIN_LOCKED},
      {"MechanismNotSupported", CKR_MECHANISM_INVALID}, {"DigestLengthMismatch", CKR_DATA_LEN_RANGE},
      {"ContentTooLarge", CKR_DATA_LEN_RANGE},          {"InvalidBase64", CKR_DATA_INVALID},
      {"InvalidParameter", CKR_DATA_INVALID},           {"QueueFull", CKR_DEVICE_MEMORY},
      {"BuffersFull", CKR_DEVICE_MEMORY},               {"ShuttingDown", CKR_DEVICE_REMOVED},
      {"TokenError", CKR_DEVICE_ERROR},                 {"AuditUnavailable", CKR_DEVICE_ERROR}};
  const auto it = table.find(name);
  return it == table.end() ? CKR_FUNCTION_FAILED : it->second;
}

}  // namespace firma::p11
