// EVP_PKEYs whose RSA or EC_KEY carries a method that hands the private key operation to a TokenSigner.
//
// OpenSSL 3.0 offers no way to attach a signing callback to a provider-side
// key short of writing a whole provider (key management, signature and
// encoder/decoder dispatch tables). What it keeps is the legacy path: an
// EVP_PKEY whose RSA or EC_KEY has a method other than the default one is
// "foreign", and every EVP operation on it (EVP_DigestSign, ASN1_item_sign,
// CMS, libssl) goes through the legacy EVP_PKEY_METHODs, which call the
// key's method. Those APIs are deprecated in 3.0, so the deprecation
// warnings are silenced for this one file.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "pkcs11/token_pkey.hpp"

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>

namespace firmad::pkcs11 {
namespace {

using RsaPtr = std::unique_ptr<RSA, ossl::Deleter<RSA_free>>;
using EcKeyPtr = std::unique_ptr<EC_KEY, ossl::Deleter<EC_KEY_free>>;

// What the key's ex_data holds. The signer is shared so that OpenSSL's
// copies of the RSA/EC_KEY (EC_KEY_dup, ossl_rsa_dup) each own a Binding
// without copying the callable.
struct Binding {
  std::shared_ptr<const TokenSigner> signer;
};

thread_local std::string t_last_error;

// Our own OpenSSL error library, so the queue says "firmad token" and the
// reason rather than a bare number.
constexpr int kReasonSignFailed = 1;
int error_library() {
  static const int lib = [] {
    const int l = ERR_get_next_error_library();
    static ERR_STRING_DATA reasons[] = {{ERR_PACK(0, 0, kReasonSignFailed), "token signature failed"}, {0, nullptr}};
    // The library's own name has code ERR_PACK(l, 0, 0), and a 0 code ends
    // a list, so it goes in a list of its own with the code set beforehand.
    static ERR_STRING_DATA name[] = {{0, "firmad token"}, {0, nullptr}};
    name[0].error = ERR_PACK(l, 0, 0);
    ERR_load_strings(l, reasons);
    ERR_load_strings(l, name);
    return l;
  }();
  return lib;
}

void record_failure(const char* why) noexcept {
  try {
    t_last_error = why;
  } catch (...) {
    // Out of memory: the OpenSSL error below still reports the failure.
  }
  ERR_raise_data(error_library(), kReasonSignFailed, "%s", why);
}

// ex_data callbacks: the key owns its Binding.
void free_binding(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<Binding*>(ptr); }
int dup_binding(CRYPTO_EX_DATA*, const CRYPTO_EX_DATA*, void** from_d, int, long, void*) {
  auto** binding = reinterpret_cast<Binding**>(from_d);
  if (*binding) *binding = new (std::nothrow) Binding(**binding);
  return *binding != nullptr;
}

int rsa_index() {
  static const int index = RSA_get_ex_new_index(0, nullptr, nullptr, dup_binding, free_binding);
  return index;
}
int ec_index() {
  static const int index = EC_KEY_get_ex_new_index(0, nullptr, nullptr, dup_binding, free_binding);
  return index;
}

// Runs the signer; returns its signature, or nullopt after recording why
// it failed. This runs inside OpenSSL's C frames, so nothing may unwind out.
std::optional<Bytes> call_signer(const Binding* binding, RawOp op, const unsigned char* in, std::size_t len) noexcept {
  try {
    t_last_error.clear();
    if (!binding) throw std::logic_error("the key has no token signer (a copy OpenSSL made without it?)");
    return (*binding->signer)(op, Bytes(in, in + len));
  } catch (const std::exception& e) {
    record_failure(e.what());
  } catch (...) {
    record_failure("the token signer threw something other than a std::exception");
  }
  return std::nullopt;
}

// RSA_private_encrypt for the key: PKCS#1 v1.5 type 1 (RSA_sign, after it
// has added the DigestInfo itself, for any digest) or no padding (RSA-PSS,
// padded by OpenSSL). Returns the signature length (the modulus length), or
// -1. rsa_sign is left unset on purpose: OpenSSL's RSA_sign then encodes the
// DigestInfo for every digest it knows (and MD5-SHA1 for old TLS) and comes
// here, so no table of DigestInfo prefixes is needed.
int rsa_priv_enc(int flen, const unsigned char* from, unsigned char* to, RSA* rsa, int padding) {
  const int size = RSA_size(rsa);
  RawOp op;
  if (padding == RSA_PKCS1_PADDING) {
    op = RawOp::RsaPkcs1;
    if (flen > size - RSA_PKCS1_PADDING_SIZE) {
      ERR_raise(ERR_LIB_RSA, RSA_R_DATA_TOO_LARGE_FOR_KEY_SIZE);
      return -1;
    }
  } else if (padding == RSA_NO_PADDING) {
    op = RawOp::RsaX509;
    if (flen != size) {
      ERR_raise(ERR_LIB_RSA, RSA_R_DATA_TOO_LARGE_FOR_KEY_SIZE);
      return -1;
    }
  } else {
    ERR_raise(ERR_LIB_RSA, RSA_R_UNKNOWN_PADDING_TYPE);
    return -1;
  }
  const auto sig = call_signer(static_cast<const Binding*>(RSA_get_ex_data(rsa, rsa_index())), op, from,
                               static_cast<std::size_t>(flen));
  if (!sig) return -1;
  if (sig->empty() || sig->size() > static_cast<std::size_t>(size)) {
    record_failure("the token returned an RSA signature of the wrong length");
    return -1;
  }
  // PKCS#11 returns modulus-length signatures; a shorter one lost its
  // leading zero bytes and is padded back.
  const std::size_t pad = static_cast<std::size_t>(size) - sig->size();
  std::memset(to, 0, pad);
  std::memcpy(to + pad, sig->data(), sig->size());
  return size;
}

// Decryption needs the private exponent, which is on the token and not
// ours to use for that: refuse rather than let the default method run
// without it.
int rsa_priv_dec(int, const unsigned char*, unsigned char*, RSA*, int) {
  ERR_raise(ERR_LIB_RSA, RSA_R_OPERATION_NOT_SUPPORTED_FOR_THIS_KEYTYPE);
  return -1;
}

// ECDSA_do_sign for the key (the method's default `sign` ends up here).
// Precomputed kinv/r cannot be used by a token and are ignored.
ECDSA_SIG* ec_sign_sig(const unsigned char* dgst, int dlen, const BIGNUM*, const BIGNUM*, EC_KEY* ec) {
  // ECDSA uses the leftmost order-length bits of the digest; for P-256 and
  // P-384 that is whole bytes, so a longer digest is cut here rather than
  // trusting every token to do it.
  const int order_bytes = (EC_GROUP_order_bits(EC_KEY_get0_group(ec)) + 7) / 8;
  const int len = dlen < order_bytes ? dlen : order_bytes;
  if (len <= 0) {
    record_failure("nothing to sign: the digest is empty");
    return nullptr;
  }
  const auto sig = call_signer(static_cast<const Binding*>(EC_KEY_get_ex_data(ec, ec_index())), RawOp::Ecdsa, dgst,
                               static_cast<std::size_t>(len));
  if (!sig) return nullptr;
  if (sig->size() != 2 * static_cast<std::size_t>(order_bytes)) {
    record_failure("the token returned an ECDSA signature that is not r || s for the curve");
    return nullptr;
  }
  ossl::EcdsaSig out(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(sig->data(), order_bytes, nullptr);
  BIGNUM* s = BN_bin2bn(sig->data() + order_bytes, order_bytes, nullptr);
  if (!out || !r || !s || !ECDSA_SIG_set0(out.get(), r, s)) {
    BN_free(r);
    BN_free(s);
    return nullptr;
  }
  return out.release();
}

// The methods live as long as the process: keys anywhere may still point
// at them while static destructors run.
const RSA_METHOD* rsa_method() {
  static RSA_METHOD* const method = [] {
    RSA_METHOD* m = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    if (!m || !RSA_meth_set1_name(m, "firmad token RSA") || !RSA_meth_set_priv_enc(m, rsa_priv_enc) ||
        !RSA_meth_set_priv_dec(m, rsa_priv_dec)) {
      RSA_meth_free(m);
      ossl::fail("cannot make the token RSA method");
    }
    return m;
  }();
  return method;
}

const EC_KEY_METHOD* ec_method() {
  static EC_KEY_METHOD* const method = [] {
    EC_KEY_METHOD* m = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (!m) ossl::fail("cannot make the token EC method");
    int (*sign)(int, const unsigned char*, int, unsigned char*, unsigned int*, const BIGNUM*, const BIGNUM*,
                EC_KEY*) = nullptr;
    int (*sign_setup)(EC_KEY*, BN_CTX*, BIGNUM**, BIGNUM**) = nullptr;
    EC_KEY_METHOD_get_sign(m, &sign, &sign_setup, nullptr);
    EC_KEY_METHOD_set_sign(m, sign, sign_setup, ec_sign_sig);
    return m;
  }();
  return method;
}

ossl::Pkey rsa_token_key(EVP_PKEY* pub, std::unique_ptr<Binding> binding) {
  // A legacy RSA of our own: `pub` is about to be freed with its cache.
  RsaPtr rsa(EVP_PKEY_get1_RSA(pub));
  if (!rsa || !RSA_set_method(rsa.get(), rsa_method())) ossl::fail("cannot make a token RSA key");
  if (!RSA_set_ex_data(rsa.get(), rsa_index(), binding.get())) ossl::fail("cannot attach the token signer");
  binding.release();  // the RSA owns it now (free_binding)
  ossl::Pkey out(EVP_PKEY_new());
  // EVP_PKEY_assign notes here that the key is foreign (non-default method).
  if (!out || !EVP_PKEY_assign_RSA(out.get(), rsa.get())) ossl::fail("cannot make a token RSA key");
  rsa.release();
  return out;
}

ossl::Pkey ec_token_key(EVP_PKEY* pub, std::unique_ptr<Binding> binding) {
  EcKeyPtr ec(EVP_PKEY_get1_EC_KEY(pub));
  if (!ec) ossl::fail("cannot read the EC public key");
  const int nid = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec.get()));
  if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1)
    throw std::invalid_argument("a token key must be RSA or EC on P-256 or P-384");
  if (!EC_KEY_set_method(ec.get(), ec_method())) ossl::fail("cannot make a token EC key");
  if (!EC_KEY_set_ex_data(ec.get(), ec_index(), binding.get())) ossl::fail("cannot attach the token signer");
  binding.release();  // the EC_KEY owns it now (free_binding)
  ossl::Pkey out(EVP_PKEY_new());
  if (!out || !EVP_PKEY_assign_EC_KEY(out.get(), ec.get())) ossl::fail("cannot make a token EC key");
  ec.release();
  return out;
}

}  // namespace

ossl::Pkey token_pkey(const Bytes& spki, TokenSigner signer) {
  if (!signer) throw std::invalid_argument("a token key needs a signer");
  const unsigned char* p = spki.data();
  ossl::Pkey pub(spki.empty() ? nullptr : d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  if (!pub || p != spki.data() + spki.size()) {
    ERR_clear_error();
    throw std::invalid_argument("not one DER SubjectPublicKeyInfo");
  }
  auto binding = std::make_unique<Binding>(Binding{std::make_shared<const TokenSigner>(std::move(signer))});
  switch (EVP_PKEY_get_base_id(pub.get())) {
    case EVP_PKEY_RSA: return rsa_token_key(pub.get(), std::move(binding));
    case EVP_PKEY_EC: return ec_token_key(pub.get(), std::move(binding));
    default: {
      const char* name = EVP_PKEY_get0_type_name(pub.get());
      throw std::invalid_argument(std::string("a token key must be RSA or EC on P-256 or P-384, not ") +
                                  (name ? name : "an unknown type"));
    }
  }
}

std::string last_token_error() { return t_last_error; }

}  // namespace firmad::pkcs11
