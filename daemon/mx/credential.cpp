// Reading .pfx and .key/.cer credential files with OpenSSL, telling a wrong password from a damaged file.
#include "daemon/mx/credential.hpp"

#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/proverr.h>
#include <openssl/provider.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>

namespace firmad {
namespace {

using Reason = CredentialError::Reason;
using Pkcs12 = std::unique_ptr<PKCS12, ossl::Deleter<PKCS12_free>>;
using X509Sig = std::unique_ptr<X509_SIG, ossl::Deleter<X509_SIG_free>>;
using P8Info = std::unique_ptr<PKCS8_PRIV_KEY_INFO, ossl::Deleter<PKCS8_PRIV_KEY_INFO_free>>;

constexpr const char* kAccepted = " (accepted: RSA 2048-4096 bits, EC P-256/P-384)";

// Which of the files a message is about.
enum class File { Pfx, Key, Cert };

const char* name_of(File f) {
  switch (f) {
    case File::Pfx: return "PKCS#12 (.pfx) file";
    case File::Key: return "key file";
    case File::Cert: return "certificate file";
  }
  return "file";
}

const char* damaged(File f) {
  switch (f) {
    case File::Pfx: return "the file is not a PKCS#12 (.pfx) file or is damaged (truncated?)";
    case File::Key: return "the key file is not a PKCS#8 private key (.key) or is damaged (truncated?)";
    case File::Cert: return "the certificate file is not an X.509 certificate (.cer) or is damaged (truncated?)";
  }
  return "the file is damaged";
}

void free_certs(STACK_OF(X509)* s) { sk_X509_pop_free(s, X509_free); }
using Certs = std::unique_ptr<STACK_OF(X509), ossl::Deleter<free_certs>>;
void free_p7s(STACK_OF(PKCS7)* s) { sk_PKCS7_pop_free(s, PKCS7_free); }
using P7s = std::unique_ptr<STACK_OF(PKCS7), ossl::Deleter<free_p7s>>;
void free_bags(STACK_OF(PKCS12_SAFEBAG)* s) { sk_PKCS12_SAFEBAG_pop_free(s, PKCS12_SAFEBAG_free); }
using Bags = std::unique_ptr<STACK_OF(PKCS12_SAFEBAG), ossl::Deleter<free_bags>>;
using PbeParam = std::unique_ptr<PBEPARAM, ossl::Deleter<PBEPARAM_free>>;
using Pbe2Param = std::unique_ptr<PBE2PARAM, ossl::Deleter<PBE2PARAM_free>>;
using Pbkdf2Param = std::unique_ptr<PBKDF2PARAM, ossl::Deleter<PBKDF2PARAM_free>>;

// The most key-derivation rounds a file may ask for. Real files use 2,048
// (OpenSSL) to about 1,300,000 (OWASP's 2023 advice for PBKDF2-SHA1); the
// count is an unauthenticated field, and a damaged or hostile one (2^31)
// would keep a token's control thread busy for many minutes.
constexpr std::int64_t kMaxKdfRounds = 2'000'000;

// Empties this thread's OpenSSL error queue on entry, so that what is read
// from it belongs to this call, and on every way out.
class ErrorQueueScope {
 public:
  ErrorQueueScope() { ERR_clear_error(); }
  ErrorQueueScope(const ErrorQueueScope&) = delete;  // one entry, one exit
  ErrorQueueScope& operator=(const ErrorQueueScope&) = delete;
  ~ErrorQueueScope() { ERR_clear_error(); }
};

// OpenSSL's legacy provider (RC2-40 of older .pfx files, single DES of old
// .key files) next to the default one. Loading any provider explicitly stops
// OpenSSL from loading "default" implicitly, so "default" is loaded first.
class Providers {
 public:
  Providers() : default_(OSSL_PROVIDER_load(nullptr, "default")), legacy_(OSSL_PROVIDER_load(nullptr, "legacy")) {
    ERR_clear_error();
  }
  Providers(const Providers&) = delete;  // unloads what it loaded, once
  Providers& operator=(const Providers&) = delete;
  // Runs at exit before OpenSSL's own cleanup (registered earlier, by the
  // loads above), which can then free everything.
  ~Providers() {
    if (legacy_) OSSL_PROVIDER_unload(legacy_);
    if (default_) OSSL_PROVIDER_unload(default_);
  }
  bool legacy() const noexcept { return legacy_ != nullptr; }

 private:
  OSSL_PROVIDER* default_;
  OSSL_PROVIDER* legacy_;
};

// Loads the providers once per process (thread-safe) and keeps them until
// exit. Returns whether legacy is available: it is a separate module,
// legacy.so, that may be missing.
bool legacy_provider_loaded() {
  static const Providers providers;
  return providers.legacy();
}

// What OpenSSL's error queue said, read (and emptied) once.
struct Failure {
  bool empty = true;          // nothing was queued (a PKCS#12 MAC that does not match)
  bool unsupported = false;   // an algorithm OpenSSL does not know or has not loaded
  bool bad_password = false;  // decryption failed or produced garbage
  std::string detail;         // " (OpenSSL: lib::reason)" of the first error, or ""
};

Failure take_failure() {
  Failure f;
  while (const unsigned long e = ERR_get_error()) {
    const int lib = ERR_GET_LIB(e);
    const int reason = ERR_GET_REASON(e);
    if (f.empty) {
      const char* l = ERR_lib_error_string(e);
      const char* r = ERR_reason_error_string(e);
      f.detail = std::string(" (OpenSSL: ") + (l ? l : "?") + "::" + (r ? r : "?") + ")";
    }
    f.empty = false;
    if (reason == ERR_R_UNSUPPORTED ||
        (lib == ERR_LIB_EVP &&
         (reason == EVP_R_UNSUPPORTED_ALGORITHM || reason == EVP_R_UNSUPPORTED_CIPHER ||
          reason == EVP_R_UNSUPPORTED_KEYLENGTH || reason == EVP_R_UNSUPPORTED_KEY_DERIVATION_FUNCTION ||
          reason == EVP_R_UNSUPPORTED_PRF || reason == EVP_R_UNSUPPORTED_PRIVATE_KEY_ALGORITHM ||
          reason == EVP_R_UNKNOWN_CIPHER || reason == EVP_R_UNKNOWN_DIGEST || reason == EVP_R_UNKNOWN_PBE_ALGORITHM)) ||
        (lib == ERR_LIB_PKCS12 &&
         (reason == PKCS12_R_UNKNOWN_DIGEST_ALGORITHM || reason == PKCS12_R_UNSUPPORTED_PKCS12_MODE)))
      f.unsupported = true;
    // A wrong password fails the padding check after decryption (bad
    // decrypt, cipherfinal), or, about once in 256 tries, passes it and
    // yields bytes that do not decode (decode error).
    if ((lib == ERR_LIB_PROV && reason == PROV_R_BAD_DECRYPT) || (lib == ERR_LIB_EVP && reason == EVP_R_BAD_DECRYPT) ||
        (lib == ERR_LIB_PKCS12 && (reason == PKCS12_R_PKCS12_CIPHERFINAL_ERROR || reason == PKCS12_R_DECODE_ERROR ||
                                   reason == PKCS12_R_MAC_VERIFY_FAILURE)))
      f.bad_password = true;
  }
  return f;
}

[[noreturn]] void refuse(Reason reason, const std::string& message) { throw CredentialError(reason, message); }

[[noreturn]] void refuse_corrupt(File file, const Failure& f) {
  refuse(Reason::Corrupt, damaged(file) + f.detail);
}

[[noreturn]] void refuse_encryption(File file, const Failure& f) {
  std::string message =
      std::string("the ") + name_of(file) + " is encrypted with an algorithm OpenSSL cannot use here" + f.detail;
  if (!legacy_provider_loaded())
    message += "; OpenSSL's legacy provider (legacy.so), needed for RC2 and DES, could not be loaded";
  refuse(Reason::UnsupportedAlgorithm, message);
}

// Refuses an iteration count (absent means 1) outside 1..kMaxKdfRounds.
void check_rounds(const ASN1_INTEGER* iter, File file) {
  std::int64_t rounds = 1;
  if (iter && ASN1_INTEGER_get_int64(&rounds, iter) != 1) rounds = INT64_MAX;  // too big for 64 bits
  ERR_clear_error();
  if (rounds < 1) refuse(Reason::Corrupt, std::string(damaged(file)) + " (a key-derivation count below 1)");
  if (rounds > kMaxKdfRounds) {
    const std::string asked = rounds == INT64_MAX ? std::string("more than 2^63") : std::to_string(rounds);
    refuse(Reason::UnsupportedAlgorithm, std::string("the ") + name_of(file) + "'s password protection asks for " + asked +
                                             " key-derivation rounds; at most " + std::to_string(kMaxKdfRounds) +
                                             " are accepted");
  }
}

// Checks the rounds of a password-based encryption algorithm before OpenSSL
// runs it: PBES2 with PBKDF2, or PKCS#5 v1 / PKCS#12 PBE. Others (scrypt,
// whose cost OpenSSL bounds by memory, or unknown ones it will refuse) pass.
void check_pbe(const X509_ALGOR* alg, File file) {
  if (!alg || !alg->parameter) return;
  if (OBJ_obj2nid(alg->algorithm) == NID_pbes2) {
    Pbe2Param pbe2(static_cast<PBE2PARAM*>(ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter)));
    if (pbe2 && pbe2->keyfunc && pbe2->keyfunc->parameter && OBJ_obj2nid(pbe2->keyfunc->algorithm) == NID_id_pbkdf2) {
      Pbkdf2Param kdf(static_cast<PBKDF2PARAM*>(
          ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter)));
      if (kdf) check_rounds(kdf->iter, file);
    }
  } else {
    PbeParam pbe(static_cast<PBEPARAM*>(ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBEPARAM), alg->parameter)));
    if (pbe) check_rounds(pbe->iter, file);
  }
  ERR_clear_error();  // what did not decode here is refused by the decryption itself
}

// Checks the shrouded key bags of a plain safe, nested safes included. Bags
// inside encrypted safes are reached only with the right password and are
// left to OpenSSL.
void check_bags(const STACK_OF(PKCS12_SAFEBAG)* bags, int depth) {
  if (!bags || depth > 8) return;
  for (int i = 0; i < sk_PKCS12_SAFEBAG_num(bags); ++i) {
    const PKCS12_SAFEBAG* bag = sk_PKCS12_SAFEBAG_value(bags, i);
    switch (PKCS12_SAFEBAG_get_nid(bag)) {
      case NID_pkcs8ShroudedKeyBag: {
        const X509_ALGOR* alg = nullptr;
        if (const X509_SIG* sig = PKCS12_SAFEBAG_get0_pkcs8(bag)) X509_SIG_get0(sig, &alg, nullptr);
        check_pbe(alg, File::Pfx);
        break;
      }
      case NID_safeContentsBag: check_bags(PKCS12_SAFEBAG_get0_safes(bag), depth + 1); break;
      default: break;
    }
  }
}

// Checks every key derivation a PKCS#12 file asks for before any runs.
void check_pkcs12_rounds(const PKCS12* p12) {
  if (PKCS12_mac_present(p12)) {
    const ASN1_INTEGER* iter = nullptr;
    PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, p12);
    check_rounds(iter, File::Pfx);
  }
  const P7s safes(PKCS12_unpack_authsafes(p12));
  ERR_clear_error();  // a structure that does not unpack is refused by PKCS12_parse
  for (int i = 0; safes && i < sk_PKCS7_num(safes.get()); ++i) {
    PKCS7* p7 = sk_PKCS7_value(safes.get(), i);
    switch (OBJ_obj2nid(p7->type)) {
      case NID_pkcs7_encrypted:
        if (p7->d.encrypted && p7->d.encrypted->enc_data) check_pbe(p7->d.encrypted->enc_data->algorithm, File::Pfx);
        break;
      case NID_pkcs7_data: {
        const Bags bags(PKCS12_unpack_p7data(p7));
        ERR_clear_error();
        check_bags(bags.get(), 0);
        break;
      }
      default: break;
    }
  }
}

void check_size(std::span<const std::uint8_t> data, File file) {
  if (data.empty()) refuse(Reason::Corrupt, std::string("the ") + name_of(file) + " is empty");
  if (data.size() > kMaxCredentialFileBytes)
    refuse(Reason::Corrupt, std::string("the ") + name_of(file) + " is larger than " +
                                std::to_string(kMaxCredentialFileBytes / 1024) + " KiB: not a credential file");
}

// The password as a NUL-terminated copy for OpenSSL, wiped on destruction.
class Password {
 public:
  explicit Password(std::string_view p) : buf_(p.size() + 1, '\0') {
    if (p.size() > static_cast<std::size_t>(INT_MAX) - 1) refuse(Reason::WrongPassword, "the password is too long");
    std::copy(p.begin(), p.end(), buf_.begin());
  }
  Password(const Password&) = delete;  // one copy of a secret, not two
  Password& operator=(const Password&) = delete;
  ~Password() { OPENSSL_cleanse(buf_.data(), buf_.size()); }

  const char* c_str() const noexcept { return buf_.data(); }
  int size() const noexcept { return static_cast<int>(buf_.size() - 1); }
  bool empty() const noexcept { return buf_.size() == 1; }
  // Whether it holds a NUL byte, which a text password cannot.
  bool has_nul() const noexcept { return std::find(buf_.begin(), buf_.end() - 1, '\0') != buf_.end() - 1; }

 private:
  std::vector<char> buf_;
};

// Decodes the whole of `data` as one DER object, or returns null (trailing
// bytes included: the file is then not what it seems).
template <typename T, typename Free>
std::unique_ptr<T, Free> d2i_whole(T* (*d2i)(T**, const unsigned char**, long), std::span<const std::uint8_t> data) {
  const unsigned char* p = data.data();
  std::unique_ptr<T, Free> out(d2i(nullptr, &p, static_cast<long>(data.size())));
  if (out && p != data.data() + data.size()) out.reset();
  return out;
}

Pkcs12 d2i_pkcs12(std::span<const std::uint8_t> d) {
  return d2i_whole<PKCS12, ossl::Deleter<PKCS12_free>>(d2i_PKCS12, d);
}
X509Sig d2i_sig(std::span<const std::uint8_t> d) {
  return d2i_whole<X509_SIG, ossl::Deleter<X509_SIG_free>>(d2i_X509_SIG, d);
}
P8Info d2i_p8(std::span<const std::uint8_t> d) {
  return d2i_whole<PKCS8_PRIV_KEY_INFO, ossl::Deleter<PKCS8_PRIV_KEY_INFO_free>>(d2i_PKCS8_PRIV_KEY_INFO, d);
}
ossl::X509Ptr d2i_cert(std::span<const std::uint8_t> d) { return d2i_whole<X509, ossl::Deleter<X509_free>>(d2i_X509, d); }

// Refuses keys firmad does not put on tokens.
void check_algorithm(EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "RSA")) {
    const int bits = EVP_PKEY_get_bits(key);
    if (bits < 2048 || bits > 4096)
      refuse(Reason::UnsupportedAlgorithm, "unsupported key algorithm RSA-" + std::to_string(bits) + kAccepted);
    return;
  }
  if (EVP_PKEY_is_a(key, "EC")) {
    char group[80] = {};
    std::size_t len = 0;
    if (!EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len))
      refuse(Reason::UnsupportedAlgorithm,
             std::string("unsupported key algorithm EC with explicit curve parameters") + kAccepted);
    int nid = OBJ_txt2nid(group);
    if (nid == NID_undef) nid = EC_curve_nist2nid(group);
    if (nid == NID_X9_62_prime256v1 || nid == NID_secp384r1) return;
    refuse(Reason::UnsupportedAlgorithm, std::string("unsupported key algorithm EC ") + group + kAccepted);
  }
  const char* name = EVP_PKEY_get0_type_name(key);
  refuse(Reason::UnsupportedAlgorithm,
         std::string("unsupported key algorithm ") + (name ? name : "(unknown)") + kAccepted);
}

// The short name of an algorithm OID, or its dotted form.
std::string oid_name(const ASN1_OBJECT* obj) {
  if (!obj) return "(none)";
  if (const int nid = OBJ_obj2nid(obj); nid != NID_undef) return OBJ_nid2sn(nid);
  char buf[128] = {};
  OBJ_obj2txt(buf, sizeof buf, obj, 1);
  return buf;
}

ossl::Pkey key_from_p8(const PKCS8_PRIV_KEY_INFO* info) {
  const ASN1_OBJECT* alg = nullptr;
  PKCS8_pkey_get0(&alg, nullptr, nullptr, nullptr, info);
  ossl::Pkey key(EVP_PKCS82PKEY(info));
  if (key) return key;
  const Failure f = take_failure();
  const int nid = alg ? OBJ_obj2nid(alg) : NID_undef;
  if (f.unsupported || (nid != NID_rsaEncryption && nid != NID_X9_62_id_ecPublicKey))
    refuse(Reason::UnsupportedAlgorithm, "unsupported key algorithm " + oid_name(alg) + kAccepted);
  refuse_corrupt(File::Key, f);
}

ossl::Pkey decrypt_p8(const X509_SIG* sig, const Password& password) {
  const X509_ALGOR* alg = nullptr;
  X509_SIG_get0(sig, &alg, nullptr);
  check_pbe(alg, File::Key);
  P8Info info(PKCS8_decrypt_ex(sig, password.c_str(), password.size(), nullptr, nullptr));
  if (!info) {
    const Failure f = take_failure();
    if (f.unsupported) refuse_encryption(File::Key, f);
    if (f.bad_password) refuse(Reason::WrongPassword, "wrong password for the key file");
    refuse_corrupt(File::Key, f);
  }
  return key_from_p8(info.get());
}

// One PEM block, its buffers freed (and the body wiped) on destruction.
struct PemBlock {
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* body = nullptr;
  long length = 0;

  PemBlock() = default;
  PemBlock(const PemBlock&) = delete;  // owns OpenSSL's buffers
  PemBlock& operator=(const PemBlock&) = delete;
  ~PemBlock() {
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_clear_free(body, static_cast<std::size_t>(length));
  }
  std::span<const std::uint8_t> der() const { return {body, static_cast<std::size_t>(length)}; }
};

bool looks_like_pem(std::span<const std::uint8_t> data) {
  static constexpr std::string_view kBegin = "-----BEGIN ";
  return std::search(data.begin(), data.end(), kBegin.begin(), kBegin.end()) != data.end();
}

// Calls on_block(block) for each PEM block until it returns true. Returns
// the labels of the blocks seen. Refuses a damaged block as Corrupt.
template <typename OnBlock>
std::vector<std::string> read_pem(std::span<const std::uint8_t> data, File file, OnBlock on_block) {
  ossl::Bio bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (!bio) throw std::bad_alloc();
  std::vector<std::string> labels;
  for (;;) {
    PemBlock block;
    if (!PEM_read_bio(bio.get(), &block.name, &block.header, &block.body, &block.length)) {
      const unsigned long last = ERR_peek_last_error();
      // The end of the input: no further BEGIN line after at least one block.
      if (!labels.empty() && ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return labels;
      }
      refuse_corrupt(file, take_failure());
    }
    labels.emplace_back(block.name);
    if (on_block(block)) return labels;
  }
}

std::string join(const std::vector<std::string>& labels) {
  std::string out;
  for (const auto& l : labels) out += (out.empty() ? "" : ", ") + l;
  return out;
}

ossl::Pkey read_private_key(std::span<const std::uint8_t> data, const Password& password) {
  if (looks_like_pem(data)) {
    ossl::Pkey key;
    const auto labels = read_pem(data, File::Key, [&](const PemBlock& b) {
      const std::string_view name = b.name;
      if (name == "ENCRYPTED PRIVATE KEY") {
        X509Sig sig = d2i_sig(b.der());
        if (!sig) refuse_corrupt(File::Key, take_failure());
        key = decrypt_p8(sig.get(), password);
      } else if (name == "PRIVATE KEY") {
        P8Info info = d2i_p8(b.der());
        if (!info) refuse_corrupt(File::Key, take_failure());
        key = key_from_p8(info.get());
      } else if (name == "RSA PRIVATE KEY" || name == "EC PRIVATE KEY") {
        // OpenSSL's older format: accepted unencrypted; its encryption
        // (Proc-Type: 4,ENCRYPTED) is MD5-based, convert instead.
        if (b.header && std::strstr(b.header, "ENCRYPTED"))
          refuse(Reason::UnsupportedAlgorithm,
                 "the key file uses OpenSSL's old encrypted PEM format; "
                 "convert it with 'openssl pkcs8 -topk8 -v2 aes-256-cbc'");
        const unsigned char* p = b.body;
        key.reset(d2i_PrivateKey(name == "RSA PRIVATE KEY" ? EVP_PKEY_RSA : EVP_PKEY_EC, nullptr, &p, b.length));
        if (!key || p != b.body + b.length) refuse_corrupt(File::Key, take_failure());
      }
      return key != nullptr;
    });
    if (!key) refuse(Reason::NoKey, "the key file holds no private key (it holds: " + join(labels) + ")");
    return key;
  }
  if (X509Sig sig = d2i_sig(data)) return decrypt_p8(sig.get(), password);
  const Failure as_encrypted = take_failure();
  if (P8Info info = d2i_p8(data)) return key_from_p8(info.get());
  ERR_clear_error();
  if (d2i_cert(data)) refuse(Reason::NoKey, "the key file holds a certificate, not a private key");
  ERR_clear_error();
  refuse_corrupt(File::Key, as_encrypted);
}

std::vector<ossl::X509Ptr> read_certificates(std::span<const std::uint8_t> data) {
  std::vector<ossl::X509Ptr> certs;
  if (looks_like_pem(data)) {
    const auto labels = read_pem(data, File::Cert, [&](const PemBlock& b) {
      const std::string_view name = b.name;
      if (name == "CERTIFICATE" || name == "X509 CERTIFICATE") {
        ossl::X509Ptr x = d2i_cert(b.der());
        if (!x) refuse_corrupt(File::Cert, take_failure());
        certs.push_back(std::move(x));
      }
      return false;  // read them all
    });
    if (certs.empty())
      refuse(Reason::NoCertificate, "the certificate file holds no certificate (it holds: " + join(labels) + ")");
    return certs;
  }
  if (ossl::X509Ptr x = d2i_cert(data)) {
    certs.push_back(std::move(x));
    return certs;
  }
  const Failure f = take_failure();
  if (d2i_sig(data) || d2i_p8(data))
    refuse(Reason::NoCertificate, "the certificate file holds a private key, not a certificate");
  ERR_clear_error();
  refuse_corrupt(File::Cert, f);
}

bool belongs(X509* cert, EVP_PKEY* key) {
  const bool ok = X509_check_private_key(cert, key) == 1;
  ERR_clear_error();
  return ok;
}

[[noreturn]] void refuse_mismatch() { refuse(Reason::Mismatch, "the certificate does not belong to this key"); }

}  // namespace

Credential parse_pkcs12(std::span<const std::uint8_t> pfx, std::string_view password) {
  ErrorQueueScope errors;
  check_size(pfx, File::Pfx);
  legacy_provider_loaded();
  const Password pass(password);
  Pkcs12 p12 = d2i_pkcs12(pfx);
  if (!p12) refuse_corrupt(File::Pfx, take_failure());
  check_pkcs12_rounds(p12.get());
  // PKCS#12 passwords are text, handed to OpenSSL NUL-terminated.
  if (pass.has_nul()) refuse(Reason::WrongPassword, "wrong password for the credential file");

  // The MAC check tells a wrong password from a damaged file: a MAC that
  // does not match queues no error; one that cannot be computed does.
  // PKCS#12 does not tell an empty password from none, so both are tried.
  if (PKCS12_mac_present(p12.get())) {
    const bool verified =
        pass.empty() ? PKCS12_verify_mac(p12.get(), nullptr, 0) == 1 || PKCS12_verify_mac(p12.get(), "", 0) == 1
                     : PKCS12_verify_mac(p12.get(), pass.c_str(), pass.size()) == 1;
    if (!verified) {
      const Failure f = take_failure();
      if (f.empty) refuse(Reason::WrongPassword, "wrong password for the credential file");
      if (f.unsupported) refuse_encryption(File::Pfx, f);
      refuse_corrupt(File::Pfx, f);
    }
    ERR_clear_error();
  } else if (!pass.empty()) {
    // OpenSSL 3.0's PKCS12_parse demands a MAC whenever it is given a
    // password. A file without one gets a MAC made with this password on our
    // copy, so that decryption alone checks the password, as it must here.
    if (PKCS12_set_mac(p12.get(), pass.c_str(), pass.size(), nullptr, 0, 1, nullptr) != 1) {
      const Failure f = take_failure();
      if (f.unsupported) refuse_encryption(File::Pfx, f);
      refuse_corrupt(File::Pfx, f);
    }
  }

  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  STACK_OF(X509)* ca = nullptr;
  const int parsed = PKCS12_parse(p12.get(), pass.c_str(), &key, &cert, &ca);
  Credential c;
  c.key.reset(key);
  c.certificate.reset(cert);
  const Certs others(ca);
  while (others && sk_X509_num(others.get()) > 0) {
    ossl::X509Ptr x(sk_X509_shift(others.get()));
    c.chain.push_back(std::move(x));
  }
  if (parsed != 1) {
    const Failure f = take_failure();
    if (f.unsupported) refuse_encryption(File::Pfx, f);
    if (f.bad_password) refuse(Reason::WrongPassword, "wrong password for the credential file");
    refuse_corrupt(File::Pfx, f);
  }

  if (!c.key) refuse(Reason::NoKey, std::string("the ") + name_of(File::Pfx) + " holds no private key");
  check_algorithm(c.key.get());
  // PKCS12_parse picks the certificate that belongs to the key; the others
  // go to the chain.
  if (!c.certificate) {
    if (!c.chain.empty()) refuse_mismatch();
    refuse(Reason::NoCertificate, std::string("the ") + name_of(File::Pfx) + " holds no certificate");
  }
  if (!belongs(c.certificate.get(), c.key.get())) refuse_mismatch();
  return c;
}

Credential parse_key_and_certificate(std::span<const std::uint8_t> key, std::span<const std::uint8_t> cert,
                                     std::string_view password) {
  ErrorQueueScope errors;
  check_size(key, File::Key);
  check_size(cert, File::Cert);
  legacy_provider_loaded();
  const Password pass(password);

  Credential c;
  c.key = read_private_key(key, pass);
  std::vector<ossl::X509Ptr> certs = read_certificates(cert);
  check_algorithm(c.key.get());
  for (auto& x : certs) {
    if (!c.certificate && belongs(x.get(), c.key.get())) c.certificate = std::move(x);
    else c.chain.push_back(std::move(x));
  }
  if (!c.certificate) refuse_mismatch();
  return c;
}

}  // namespace firmad
