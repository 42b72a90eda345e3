// C_SignInit/C_Sign on a pooled session.
#include "pkcs11/sign.hpp"

#include <array>
#include <span>
#include <stdexcept>

#include "pkcs11/error.hpp"
#include "pkcs11/openssl.hpp"

namespace firmad::pkcs11 {
namespace {

constexpr std::array<std::uint8_t, 19> kSha256Info = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                                      0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
constexpr std::array<std::uint8_t, 19> kSha384Info = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                                      0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
constexpr std::array<std::uint8_t, 15> kSha1Info = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                                    0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
constexpr std::array<std::uint8_t, 19> kSha512Info = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                                      0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};

CK_MECHANISM_TYPE hash_mechanism(Hash h) {
  switch (h) {
    case Hash::Sha256: return CKM_SHA256;
    case Hash::Sha384: return CKM_SHA384;
    case Hash::Sha512: return CKM_SHA512;
    case Hash::Sha1: return CKM_SHA_1;
  }
  return CKM_SHA256;
}

CK_RSA_PKCS_MGF_TYPE mgf_of(Hash h) {
  switch (h) {
    case Hash::Sha256: return CKG_MGF1_SHA256;
    case Hash::Sha384: return CKG_MGF1_SHA384;
    case Hash::Sha512: return CKG_MGF1_SHA512;
    case Hash::Sha1: return CKG_MGF1_SHA1;
  }
  return CKG_MGF1_SHA256;
}

bool fits(Scheme scheme, KeyType type) {
  switch (scheme) {
    case Scheme::RsaPkcs1: case Scheme::RsaPss: return type == KeyType::Rsa;
    case Scheme::Ecdsa: return type == KeyType::Ec;
    case Scheme::EdDsa: return type == KeyType::Ed25519;
  }
  return false;
}

// r || s, as PKCS#11 returns ECDSA signatures, to DER ECDSA-Sig-Value.
Bytes ecdsa_to_der(const Bytes& raw) {
  if (raw.empty() || raw.size() % 2) throw std::runtime_error("token returned a malformed ECDSA signature");
  const std::size_t half = raw.size() / 2;
  ossl::EcdsaSig sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(raw.data(), half, nullptr);
  BIGNUM* s = BN_bin2bn(raw.data() + half, half, nullptr);
  if (!sig || !r || !s || !ECDSA_SIG_set0(sig.get(), r, s)) {
    BN_free(r);
    BN_free(s);
    ossl::fail("cannot encode ECDSA signature");
  }
  unsigned char* der = nullptr;
  const int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0) ossl::fail("cannot encode ECDSA signature");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

// C_SignInit, the context login of a key that needs the PIN for every
// signature, and C_Sign; returns the signature as the token made it.
Bytes token_sign(const Session& session, ObjectHandle key, CK_MECHANISM& mech, std::span<const std::uint8_t> input,
                 const ContextPin& context_pin) {
  const auto fn = session.module().fn();
  check(fn->C_SignInit(session.handle(), &mech, key), "C_SignInit");
  if (context_pin) {
    auto* pin = reinterpret_cast<CK_UTF8CHAR*>(const_cast<char*>(context_pin->data()));
    const CK_RV rv = fn->C_Login(session.handle(), CKU_CONTEXT_SPECIFIC, pin, context_pin->size());
    if (rv != CKR_OK) {
      // The signing operation is still active: a C_Sign ends it (it fails
      // without the context login), so the session can sign again.
      std::array<std::uint8_t, 1024> scratch;
      CK_ULONG len = scratch.size();
      fn->C_Sign(session.handle(), const_cast<std::uint8_t*>(input.data()), input.size(), scratch.data(), &len);
      OPENSSL_cleanse(scratch.data(), scratch.size());
      check(rv, "C_Login(CKU_CONTEXT_SPECIFIC)");
    }
  }
  // One C_Sign with a buffer large enough for RSA-8192; a token that wants
  // more says so and keeps the operation active for the second call.
  Bytes out(1024);
  CK_ULONG len = out.size();
  CK_RV rv = fn->C_Sign(session.handle(), const_cast<std::uint8_t*>(input.data()), input.size(), out.data(), &len);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    out.resize(len);
    rv = fn->C_Sign(session.handle(), const_cast<std::uint8_t*>(input.data()), input.size(), out.data(), &len);
  }
  check(rv, "C_Sign");
  out.resize(len);
  return out;
}

}  // namespace

std::span<const std::uint8_t> digest_info_prefix(Hash hash) {
  switch (hash) {
    case Hash::Sha256: return kSha256Info;
    case Hash::Sha384: return kSha384Info;
    case Hash::Sha512: return kSha512Info;
    case Hash::Sha1: return kSha1Info;
  }
  return kSha256Info;
}

Bytes sign(const Session& session, ObjectHandle key, KeyType type, const SignRequest& req, const ContextPin& context_pin) {
  if (!fits(req.scheme, type))
    throw std::invalid_argument(std::string("scheme ") + to_string(req.scheme) + " does not fit a " + to_string(type) + " key");
  if (req.scheme != Scheme::EdDsa && req.input.size() != digest_size(req.hash))
    throw std::invalid_argument("digest length does not match " + std::string(to_string(req.hash)));

  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  CK_RSA_PKCS_PSS_PARAMS pss{};
  // Stack buffer for DigestInfo || digest: no allocation on the hot path.
  std::array<std::uint8_t, 19 + 64> info{};
  std::span<const std::uint8_t> input(req.input);
  switch (req.scheme) {
    case Scheme::RsaPkcs1: {
      auto prefix = digest_info_prefix(req.hash);
      std::copy(prefix.begin(), prefix.end(), info.begin());
      std::copy(req.input.begin(), req.input.end(), info.begin() + prefix.size());
      input = std::span<const std::uint8_t>(info.data(), prefix.size() + req.input.size());
      break;
    }
    case Scheme::RsaPss:
      pss.hashAlg = hash_mechanism(req.hash);
      pss.mgf = mgf_of(req.hash);
      pss.sLen = req.salt_length.value_or(digest_size(req.hash));
      mech = {CKM_RSA_PKCS_PSS, &pss, sizeof pss};
      break;
    case Scheme::Ecdsa: mech = {CKM_ECDSA, nullptr, 0}; break;
    case Scheme::EdDsa: mech = {CKM_EDDSA, nullptr, 0}; break;
  }

  Bytes out = token_sign(session, key, mech, input, context_pin);
  return req.scheme == Scheme::Ecdsa ? ecdsa_to_der(out) : out;
}

Bytes sign_raw(const Session& session, ObjectHandle key, RawOp op, const Bytes& input, const ContextPin& context_pin) {
  if (input.empty()) throw std::invalid_argument("nothing to sign: the input is empty");
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  CK_KEY_TYPE wanted = CKK_RSA;
  switch (op) {
    case RawOp::RsaPkcs1: break;
    case RawOp::RsaX509: mech.mechanism = CKM_RSA_X_509; break;
    case RawOp::Ecdsa: mech.mechanism = CKM_ECDSA, wanted = CKK_EC; break;
  }
  // Checked here rather than left to the token: SoftHSM 2.6 takes
  // CKM_RSA_X_509 with an EC key, or with a block longer than the modulus,
  // into C_Sign and there exits the whole process ("A fatal exception
  // occurred; exiting...").
  if (session.ulong_attribute(key, CKA_KEY_TYPE) != wanted)
    throw std::invalid_argument(std::string(to_string(op)) + " needs an " + (wanted == CKK_RSA ? "RSA" : "EC") +
                                " private key");
  if (op == RawOp::RsaX509) {
    const auto modulus = session.attribute(key, CKA_MODULUS);
    if (!modulus || input.size() > modulus->size())
      throw std::invalid_argument("a raw RSA block must not be longer than the key's modulus");
  }
  return token_sign(session, key, mech, input, context_pin);
}

const char* to_string(KeyType t) {
  switch (t) {
    case KeyType::Rsa: return "rsa";
    case KeyType::Ec: return "ec";
    case KeyType::Ed25519: return "ed25519";
  }
  return "?";
}

const char* to_string(Scheme s) {
  switch (s) {
    case Scheme::RsaPkcs1: return "rsa-pkcs1";
    case Scheme::RsaPss: return "rsa-pss";
    case Scheme::Ecdsa: return "ecdsa";
    case Scheme::EdDsa: return "eddsa";
  }
  return "?";
}

const char* to_string(RawOp op) {
  switch (op) {
    case RawOp::RsaPkcs1: return "rsa-pkcs1-raw";
    case RawOp::RsaX509: return "rsa-x509-raw";
    case RawOp::Ecdsa: return "ecdsa-raw";
  }
  return "?";
}

const char* to_string(Hash h) {
  switch (h) {
    case Hash::Sha256: return "sha256";
    case Hash::Sha384: return "sha384";
    case Hash::Sha512: return "sha512";
    case Hash::Sha1: return "sha1";
  }
  return "?";
}

std::size_t digest_size(Hash h) {
  switch (h) {
    case Hash::Sha256: return 32;
    case Hash::Sha384: return 48;
    case Hash::Sha512: return 64;
    case Hash::Sha1: return 20;
  }
  return 0;
}

}  // namespace firmad::pkcs11
