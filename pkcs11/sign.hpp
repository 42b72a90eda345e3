// Making a signature on the token: mechanism choice, DigestInfo, ECDSA encoding.
#pragma once
#include <optional>
#include <span>
#include <string_view>

#include "pkcs11/session.hpp"
#include "pkcs11/types.hpp"

namespace firmad::pkcs11 {

// The PIN for a key with CKA_ALWAYS_AUTHENTICATE, given to C_Login
// (CKU_CONTEXT_SPECIFIC) between C_SignInit and C_Sign; nullopt for others.
// A refused context PIN ends the operation and throws Error (the caller
// never offers it again by itself).
using ContextPin = std::optional<std::string_view>;

// Signs req.input with the private key. For RSA PKCS#1 v1.5 the DigestInfo is
// added here; ECDSA signatures are returned DER-encoded (ECDSA-Sig-Value);
// RSA and EdDSA ones as the token made them. Throws std::invalid_argument
// when the input length does not fit the hash or the scheme does not fit the
// key type, Error when the token fails.
Bytes sign(const Session& session, ObjectHandle key, KeyType type, const SignRequest& req, const ContextPin& context_pin = std::nullopt);

// Returns the token's signature over `input` made by the bare operation `op`
// (see RawOp): the RSA signature as long as the modulus, or ECDSA r || s.
// Nothing is added to the input. The key's type (and for RsaX509 its
// modulus length) is read and checked first, because one token (SoftHSM)
// exits the process on a mismatch; other length errors are the token's to
// report. Throws std::invalid_argument when input is empty, the op does not
// fit the key type or a raw RSA block is longer than the modulus, Error
// when the token fails.
Bytes sign_raw(const Session& session, ObjectHandle key, RawOp op, const Bytes& input,
               const ContextPin& context_pin = std::nullopt);

// Returns the DER DigestInfo prefix for a hash (the bytes before the digest).
std::span<const std::uint8_t> digest_info_prefix(Hash hash);

}  // namespace firmad::pkcs11
