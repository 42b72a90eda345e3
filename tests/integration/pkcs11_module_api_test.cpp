// libfirma-pkcs11.so called directly through its function list: the PKCS#11
// semantics the programs of pkcs11_module_test.cpp do not show (argument and
// buffer rules, searches NSS and Java make, fork, threads, firmad restarting
// under a running program), against a real firmad on SoftHSM.
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <cstdlib>
#include <thread>
#include <vector>

#include "client/firma.hpp"
#include "daemon_fixture.hpp"
#include "rig.hpp"

namespace firmad::test {
namespace {

// PKCS#11 3.0's CK_INTERFACE, which p11-kit 0.24's header lacks.
struct Interface {
  CK_CHAR* name;
  void* functions;
  CK_FLAGS flags;
};
// The start of PKCS#11 3.0's function list (§5.4, as a caller reads it): the
// 2.40 list, then C_GetInterfaceList, C_GetInterface, C_LoginUser,
// C_SessionCancel and the message-based functions.
struct FunctionList30 {
  CK_FUNCTION_LIST v2;
  void* get_interface_list;
  void* get_interface;
  CK_RV (*login_user)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG);
  CK_RV (*session_cancel)(CK_SESSION_HANDLE, CK_FLAGS);
  void* message_functions[20];
};

// The lowercase hex of `data`, as the audit trail writes digests.
std::string hex_of(const firma::Bytes& data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (auto b : data) out += std::string{kDigits[b >> 4], kDigits[b & 15]};
  return out;
}
std::string audited_digest(const std::string& text) {
  return "digest=" + hex_of(firma::digest("sha256", firma::Bytes(text.begin(), text.end())));
}
constexpr CK_FLAGS kForkSafe = 1;

// The module, loaded as a program loads it.
class Module {
 public:
  Module() {
    // (RTLD_NODELETE: the module keeps its state in a static it never frees,
    // on purpose; unmapped by dlclose, LeakSanitizer would call it lost.)
    handle_ = ::dlopen(FIRMA_PKCS11_MODULE, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (handle_ == nullptr) throw std::runtime_error(::dlerror());
    auto get = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(handle_, "C_GetFunctionList"));
    if (get == nullptr || get(&f_) != CKR_OK) throw std::runtime_error("no function list");
  }
  Module(const Module&) = delete;  // owns the dlopen handle
  Module& operator=(const Module&) = delete;
  ~Module() {
    f_->C_Finalize(nullptr);
    ::dlclose(handle_);
  }
  CK_FUNCTION_LIST_PTR operator->() const { return f_; }
  void* symbol(const char* name) const { return ::dlsym(handle_, name); }

  std::vector<CK_SLOT_ID> slots(bool present = true) const {
    CK_ULONG n = 0;
    EXPECT_EQ(f_->C_GetSlotList(present, nullptr, &n), CKR_OK);
    std::vector<CK_SLOT_ID> out(n);
    EXPECT_EQ(f_->C_GetSlotList(present, out.data(), &n), CKR_OK);
    out.resize(n);
    return out;
  }
  CK_SESSION_HANDLE open(CK_SLOT_ID slot) const {
    CK_SESSION_HANDLE s = 0;
    EXPECT_EQ(f_->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &s), CKR_OK);
    return s;
  }
  std::vector<CK_OBJECT_HANDLE> find(CK_SESSION_HANDLE s, std::vector<CK_ATTRIBUTE> templ) const {
    EXPECT_EQ(f_->C_FindObjectsInit(s, templ.data(), templ.size()), CKR_OK);
    std::vector<CK_OBJECT_HANDLE> out(16);
    CK_ULONG n = 0;
    EXPECT_EQ(f_->C_FindObjects(s, out.data(), out.size(), &n), CKR_OK);
    EXPECT_EQ(f_->C_FindObjectsFinal(s), CKR_OK);
    out.resize(n);
    return out;
  }
  // The private key with this CKA_ID.
  CK_OBJECT_HANDLE key(CK_SESSION_HANDLE s, unsigned char id) const {
    static CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    static CK_BBOOL yes = CK_TRUE;
    static unsigned char ids[256];
    ids[id] = id;
    const auto found = find(s, {{CKA_CLASS, &cls, sizeof cls}, {CKA_ID, &ids[id], 1}, {CKA_SIGN, &yes, sizeof yes}});
    EXPECT_EQ(found.size(), 1u);
    return found.empty() ? 0 : found[0];
  }
  // One ECDSA signature over a 32-byte digest; returns the CK_RV.
  CK_RV sign_ecdsa(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key) const {
    CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
    if (const CK_RV rv = f_->C_SignInit(s, &m, key); rv != CKR_OK) return rv;
    unsigned char digest[32] = {1, 2, 3};
    unsigned char sig[64];
    CK_ULONG len = sizeof sig;
    const CK_RV rv = f_->C_Sign(s, digest, sizeof digest, sig, &len);
    return rv == CKR_OK && len != 64 ? CKR_GENERAL_ERROR : rv;
  }

 private:
  void* handle_ = nullptr;
  CK_FUNCTION_LIST_PTR f_ = nullptr;
};

int threads_of_this_process() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

class Pkcs11ModuleApi : public DaemonSuite {
 protected:
  void SetUp() override { ::setenv("FIRMAD_SOCKET", rig_->socket().c_str(), 1); }
};

TEST_F(Pkcs11ModuleApi, InitializesWithOsLockingAndOffersForkSafe30And240Interfaces) {
  Module m;
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS;
  const int threads = threads_of_this_process();
  ASSERT_EQ(m->C_Initialize(&args), CKR_OK);
  EXPECT_EQ(m->C_Initialize(nullptr), CKR_CRYPTOKI_ALREADY_INITIALIZED);
  const auto slots = m.slots();
  ASSERT_EQ(slots.size(), 2u);
  const auto s = m.open(slots[0]);
  EXPECT_EQ(m.sign_ecdsa(s, m.key(s, 2)), CKR_OK);
  EXPECT_EQ(threads_of_this_process(), threads);  // no thread of its own
  EXPECT_EQ(m->C_Finalize(nullptr), CKR_OK);
  EXPECT_EQ(m->C_GetSlotList(CK_TRUE, nullptr, nullptr), CKR_CRYPTOKI_NOT_INITIALIZED);
  args.pReserved = &args;
  EXPECT_EQ(m->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(m->C_Initialize(nullptr), CKR_OK);

  using GetInterface = CK_RV (*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, Interface**, CK_FLAGS);
  using GetInterfaceList = CK_RV (*)(Interface*, CK_ULONG_PTR);
  auto get = reinterpret_cast<GetInterface>(m.symbol("C_GetInterface"));
  auto list = reinterpret_cast<GetInterfaceList>(m.symbol("C_GetInterfaceList"));
  ASSERT_NE(get, nullptr);
  ASSERT_NE(list, nullptr);
  // "PKCS 11" 3.0 by default (what NSS asks for), 2.40 on request (the list
  // C_GetFunctionList gives); both fork-safe, both the same functions.
  Interface* iface = nullptr;
  CK_UTF8CHAR name[] = "PKCS 11";
  ASSERT_EQ(get(name, nullptr, &iface, kForkSafe), CKR_OK);
  const auto* v3 = static_cast<const FunctionList30*>(iface->functions);
  EXPECT_EQ(v3->v2.version.major, 3);
  EXPECT_EQ(v3->v2.version.minor, 0);
  EXPECT_EQ(v3->v2.C_SignInit, m->C_SignInit);
  // C_GetInfo tells each caller the version of the list it holds.
  CK_INFO info{};
  ASSERT_EQ(v3->v2.C_GetInfo(&info), CKR_OK);
  EXPECT_EQ(info.cryptokiVersion.major, 3);
  EXPECT_EQ(info.cryptokiVersion.minor, 0);
  ASSERT_EQ(m->C_GetInfo(&info), CKR_OK);
  EXPECT_EQ(info.cryptokiVersion.major, 2);
  EXPECT_EQ(info.cryptokiVersion.minor, 40);
  EXPECT_EQ(v3->get_interface, reinterpret_cast<void*>(get));
  EXPECT_EQ(v3->get_interface_list, reinterpret_cast<void*>(list));
  ASSERT_EQ(get(nullptr, nullptr, &iface, 0), CKR_OK);
  EXPECT_EQ(iface->functions, v3) << "the default interface";
  CK_VERSION v240{2, 40};
  ASSERT_EQ(get(name, &v240, &iface, kForkSafe), CKR_OK);
  EXPECT_EQ(static_cast<CK_FUNCTION_LIST_PTR>(iface->functions), m.operator->());
  CK_VERSION v31{3, 1};
  EXPECT_NE(get(name, &v31, &iface, 0), CKR_OK);
  CK_UTF8CHAR other[] = "Vendor NSS";
  EXPECT_NE(get(other, nullptr, &iface, 0), CKR_OK);
  CK_ULONG n = 0;
  EXPECT_EQ(list(nullptr, &n), CKR_OK);
  EXPECT_EQ(n, 2u);
  std::vector<Interface> all(n);
  n = 1;
  EXPECT_EQ(list(all.data(), &n), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(list(all.data(), &n), CKR_OK);
  EXPECT_EQ(all[0].functions, v3);
  EXPECT_EQ(all[1].functions, m.operator->());
}

// PKCS#11 3.0's C_SessionCancel ends a signature operation without making a
// signature (a 2.40 program can only finish it, which signs and is audited);
// C_LoginUser without a user name is C_Login.
TEST_F(Pkcs11ModuleApi, SessionCancelEndsAnOperationWithoutASignature) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  using GetInterface = CK_RV (*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, Interface**, CK_FLAGS);
  Interface* iface = nullptr;
  ASSERT_EQ(reinterpret_cast<GetInterface>(m.symbol("C_GetInterface"))(nullptr, nullptr, &iface, 0), CKR_OK);
  const auto* v3 = static_cast<const FunctionList30*>(iface->functions);
  const auto s = m.open(m.slots().at(0));
  const CK_OBJECT_HANDLE ec = m.key(s, 2);

  CK_UTF8CHAR user[] = "alice";
  EXPECT_EQ(v3->login_user(s, CKU_USER, nullptr, 0, user, 5), CKR_ARGUMENTS_BAD) << "the tokens have no user names";
  EXPECT_EQ(v3->login_user(s, CKU_USER, nullptr, 0, nullptr, 0), CKR_OK);

  const std::string text = "cancelled before signing " + std::to_string(::getpid());
  CK_MECHANISM mech{CKM_ECDSA_SHA256, nullptr, 0};
  ASSERT_EQ(m->C_SignInit(s, &mech, ec), CKR_OK);
  std::string part = text;
  ASSERT_EQ(m->C_SignUpdate(s, reinterpret_cast<CK_BYTE_PTR>(part.data()), part.size()), CKR_OK);
  EXPECT_EQ(v3->session_cancel(s, CKF_SIGN), CKR_OK);
  unsigned char sig[64];
  CK_ULONG len = sizeof sig;
  EXPECT_EQ(m->C_SignFinal(s, sig, &len), CKR_OPERATION_NOT_INITIALIZED) << "the operation ended";
  EXPECT_EQ(v3->session_cancel(s, CKF_SIGN), CKR_OK) << "nothing active: nothing to do";
  EXPECT_EQ(v3->session_cancel(0xdeadbeef, CKF_SIGN), CKR_SESSION_HANDLE_INVALID);
  ASSERT_EQ(m->C_SignInit(s, &mech, ec), CKR_OK) << "a new operation may start";
  EXPECT_EQ(m->C_SignFinal(s, sig, &len), CKR_OK);
  // A search, cancelled with CKF_FIND_OBJECTS (0x40), may start again at once.
  ASSERT_EQ(m->C_FindObjectsInit(s, nullptr, 0), CKR_OK);
  EXPECT_EQ(m->C_FindObjectsInit(s, nullptr, 0), CKR_OPERATION_ACTIVE);
  EXPECT_EQ(v3->session_cancel(s, 0x40), CKR_OK);
  EXPECT_EQ(m->C_FindObjectsInit(s, nullptr, 0), CKR_OK);
  EXPECT_EQ(m->C_FindObjectsFinal(s), CKR_OK);

  // No signature of the cancelled text: a marker signed after it is on
  // record (the audit writer keeps order), the text's digest is not.
  const std::string marker = text + " marker";
  firma::Client(rig_->socket().string()).sign_data("firma-ec", firma::Bytes(marker.begin(), marker.end()));
  ASSERT_TRUE(eventually([&] { return read_file(rig_->audit_log()).find(audited_digest(marker)) != std::string::npos; }));
  EXPECT_EQ(read_file(rig_->audit_log()).find(audited_digest(text)), std::string::npos) << "the cancelled text was signed";
}

TEST_F(Pkcs11ModuleApi, AttributesAndSearchesFollowTheSpecification) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto s = m.open(m.slots().at(0));
  const CK_OBJECT_HANDLE rsa = m.key(s, 1);
  ASSERT_NE(rsa, 0u);

  // Size query, then a buffer too small, then the value.
  CK_ATTRIBUTE a{CKA_MODULUS, nullptr, 0};
  ASSERT_EQ(m->C_GetAttributeValue(s, rsa, &a, 1), CKR_OK);
  EXPECT_EQ(a.ulValueLen, 256u);
  unsigned char buf[256];
  a = {CKA_MODULUS, buf, 10};
  EXPECT_EQ(m->C_GetAttributeValue(s, rsa, &a, 1), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
  a = {CKA_MODULUS, buf, sizeof buf};
  EXPECT_EQ(m->C_GetAttributeValue(s, rsa, &a, 1), CKR_OK);
  // Secret parts are sensitive; attributes a private key lacks are invalid,
  // and the others of the same template are still answered.
  CK_BBOOL sensitive = CK_FALSE, always_auth = CK_TRUE, priv = CK_TRUE;
  CK_ATTRIBUTE several[] = {{CKA_PRIVATE_EXPONENT, nullptr, 0}, {CKA_SENSITIVE, &sensitive, 1}, {CKA_EC_POINT, nullptr, 0},
                            {CKA_ALWAYS_AUTHENTICATE, &always_auth, 1}, {CKA_PRIVATE, &priv, 1}};
  const CK_RV rv = m->C_GetAttributeValue(s, rsa, several, 5);
  EXPECT_TRUE(rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID) << rv;
  EXPECT_EQ(several[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(several[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(sensitive, CK_TRUE);
  EXPECT_EQ(always_auth, CK_FALSE);
  EXPECT_EQ(priv, CK_FALSE);
  CK_ATTRIBUTE bogus{0x8000ABCDUL, nullptr, 0};
  EXPECT_EQ(m->C_GetAttributeValue(s, rsa, &bogus, 1), CKR_ATTRIBUTE_TYPE_INVALID);

  // Classes the module does not have (Java's secret keys, NSS's trust
  // objects): zero results, not an error.
  for (CK_OBJECT_CLASS cls : {CKO_SECRET_KEY, CKO_DATA, static_cast<CK_OBJECT_CLASS>(0xCE534353UL)}) {
    EXPECT_TRUE(m.find(s, {{CKA_CLASS, &cls, sizeof cls}}).empty()) << cls;
  }
  EXPECT_EQ(m.find(s, {}).size(), 9u);  // three keys, three objects each
  // A certificate by issuer and serial, as NSS and Java look for it.
  CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
  unsigned char id = 2;
  auto certs = m.find(s, {{CKA_CLASS, &cert, sizeof cert}, {CKA_ID, &id, 1}});
  ASSERT_EQ(certs.size(), 1u);
  std::vector<unsigned char> issuer(1024), serial(64);
  CK_ATTRIBUTE is[] = {{CKA_ISSUER, issuer.data(), issuer.size()}, {CKA_SERIAL_NUMBER, serial.data(), serial.size()}};
  ASSERT_EQ(m->C_GetAttributeValue(s, certs[0], is, 2), CKR_OK);
  EXPECT_EQ(m.find(s, {{CKA_CLASS, &cert, sizeof cert}, is[0], is[1]}), certs);
  EXPECT_EQ(m->C_FindObjects(s, nullptr, 0, nullptr), CKR_OPERATION_NOT_INITIALIZED);
}

TEST_F(Pkcs11ModuleApi, SigningFollowsTheSpecification) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto s = m.open(m.slots().at(0));
  const CK_OBJECT_HANDLE ec = m.key(s, 2), rsa = m.key(s, 1);
  EXPECT_EQ(m->C_Login(s, CKU_USER, nullptr, 0), CKR_OK);  // nothing sent: firmad holds the PIN
  EXPECT_EQ(m->C_Login(s, CKU_USER, nullptr, 0), CKR_USER_ALREADY_LOGGED_IN);

  unsigned char digest[32] = {9};
  unsigned char sig[512];
  CK_ULONG len = sizeof sig;
  EXPECT_EQ(m->C_Sign(s, digest, sizeof digest, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
  CK_MECHANISM raw{CKM_RSA_X_509, nullptr, 0};
  EXPECT_EQ(m->C_SignInit(s, &raw, rsa), CKR_MECHANISM_INVALID);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  EXPECT_EQ(m->C_SignInit(s, &ecdsa, rsa), CKR_KEY_TYPE_INCONSISTENT);

  // Too small: the length, and the operation goes on.
  ASSERT_EQ(m->C_SignInit(s, &ecdsa, ec), CKR_OK);
  EXPECT_EQ(m->C_SignInit(s, &ecdsa, ec), CKR_OPERATION_ACTIVE);
  len = 10;
  EXPECT_EQ(m->C_Sign(s, digest, sizeof digest, sig, &len), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(len, 64u);
  len = sizeof sig;
  EXPECT_EQ(m->C_Sign(s, digest, sizeof digest, sig, &len), CKR_OK);
  EXPECT_EQ(len, 64u);
  EXPECT_EQ(m->C_Sign(s, digest, sizeof digest, sig, &len), CKR_OPERATION_NOT_INITIALIZED);  // it ended
  // A digest of no SHA-2 length (SHA-1's 20 bytes).
  ASSERT_EQ(m->C_SignInit(s, &ecdsa, ec), CKR_OK);
  EXPECT_EQ(m->C_Sign(s, digest, 20, sig, &len), CKR_DATA_LEN_RANGE);

  // RSA-PSS parameters: hash and MGF1 must agree; the salt must fit.
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA384, 32};
  CK_MECHANISM pss_mech{CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof pss};
  EXPECT_EQ(m->C_SignInit(s, &pss_mech, rsa), CKR_MECHANISM_PARAM_INVALID);
  pss = {CKM_SHA256, CKG_MGF1_SHA256, 1000};
  EXPECT_EQ(m->C_SignInit(s, &pss_mech, rsa), CKR_MECHANISM_PARAM_INVALID);
  pss_mech.pParameter = nullptr;
  EXPECT_EQ(m->C_SignInit(s, &pss_mech, rsa), CKR_MECHANISM_PARAM_INVALID);
  pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  pss_mech.pParameter = &pss;
  ASSERT_EQ(m->C_SignInit(s, &pss_mech, rsa), CKR_OK);
  const unsigned char text[] = "recibo";
  len = sizeof sig;
  EXPECT_EQ(m->C_Sign(s, const_cast<unsigned char*>(text), sizeof text - 1, sig, &len), CKR_OK);
  EXPECT_EQ(len, 256u);

  CK_BYTE random[8];
  EXPECT_EQ(m->C_GenerateRandom(s, random, sizeof random), CKR_RANDOM_NO_RNG);  // NSS asks; no CKF_RNG
  EXPECT_EQ(m->C_CloseAllSessions(m.slots().at(0)), CKR_OK);
  EXPECT_EQ(m->C_SignInit(s, &ecdsa, ec), CKR_SESSION_HANDLE_INVALID);
}

// Multi-part signing (Java signs only so): the parts are hashed here, a
// C_SignFinal with no buffer answers the length and makes no signature, a
// short buffer keeps the operation, and the one signature made is over the
// whole text (its digest is on the audit record, once).
TEST_F(Pkcs11ModuleApi, MultiPartLengthQueryAndShortBufferMakeOneSignature) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto s = m.open(m.slots().at(0));
  const CK_OBJECT_HANDLE ec = m.key(s, 2);
  CK_MECHANISM mech{CKM_ECDSA_SHA256, nullptr, 0};
  ASSERT_EQ(m->C_SignInit(s, &mech, ec), CKR_OK);
  std::string text = "nomina quincenal ";
  text += std::to_string(::getpid());  // a digest no earlier test signed
  std::string first = text.substr(0, 7), rest = text.substr(7);
  ASSERT_EQ(m->C_SignUpdate(s, reinterpret_cast<CK_BYTE_PTR>(first.data()), first.size()), CKR_OK);
  ASSERT_EQ(m->C_SignUpdate(s, reinterpret_cast<CK_BYTE_PTR>(rest.data()), rest.size()), CKR_OK);
  CK_ULONG len = 0;
  EXPECT_EQ(m->C_SignFinal(s, nullptr, &len), CKR_OK);
  EXPECT_EQ(len, 64u);
  unsigned char sig[64];
  len = 10;
  EXPECT_EQ(m->C_SignFinal(s, sig, &len), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(len, 64u);
  len = sizeof sig;
  ASSERT_EQ(m->C_SignFinal(s, sig, &len), CKR_OK);
  EXPECT_EQ(len, 64u);
  EXPECT_EQ(m->C_SignFinal(s, sig, &len), CKR_OPERATION_NOT_INITIALIZED) << "the operation ended";

  // The audit writer keeps order: a marker signed after it is recorded after it.
  const std::string marker = text + " marker";
  firma::Client(rig_->socket().string()).sign_data("firma-ec", firma::Bytes(marker.begin(), marker.end()));
  const std::string text_digest = audited_digest(text), marker_digest = audited_digest(marker);
  ASSERT_TRUE(eventually([&] { return read_file(rig_->audit_log()).find(marker_digest) != std::string::npos; }));
  const std::string audit = read_file(rig_->audit_log());
  const auto at = audit.find(text_digest);
  ASSERT_NE(at, std::string::npos) << "the signature is over the whole text\n" << audit;
  EXPECT_EQ(audit.find(text_digest, at + 1), std::string::npos) << "signed once\n" << audit;
}

// C_Finalize while other threads sign: each call in flight ends with its
// signature or a clean error, nothing crashes, and the program can
// initialise again and sign (run under ASan and TSan too).
TEST_F(Pkcs11ModuleApi, FinalizeWhileThreadsSignEndsThemCleanly) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const CK_SLOT_ID slot = m.slots().at(0);
  std::atomic<int> signed_ok{0};
  std::atomic<bool> finalized{false};
  std::vector<CK_RV> unexpected;
  std::mutex unexpected_mutex;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      CK_SESSION_HANDLE s = 0;
      if (m->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &s) != CKR_OK) return;
      const auto key = m.key(s, 2);
      for (int i = 0; i < 200; ++i) {
        const CK_RV rv = m.sign_ecdsa(s, key);
        if (rv == CKR_OK) {
          ++signed_ok;
          continue;
        }
        // After C_Finalize: not initialised, or (a call that raced it) its session is gone.
        if (!finalized || (rv != CKR_CRYPTOKI_NOT_INITIALIZED && rv != CKR_SESSION_HANDLE_INVALID)) {
          std::lock_guard lock(unexpected_mutex);
          unexpected.push_back(rv);
        }
        return;
      }
    });
  ASSERT_TRUE(eventually([&] { return signed_ok >= 20; }));
  finalized = true;
  EXPECT_EQ(m->C_Finalize(nullptr), CKR_OK);
  for (auto& t : threads) t.join();
  EXPECT_TRUE(unexpected.empty()) << "first unexpected CK_RV 0x" << std::hex << (unexpected.empty() ? 0 : unexpected[0]);
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto s = m.open(m.slots().at(0));
  EXPECT_EQ(m.sign_ecdsa(s, m.key(s, 2)), CKR_OK);
}

// After fork() the child signs through its own connections, never the parent's.
TEST_F(Pkcs11ModuleApi, ParentAndForkedChildBothSign) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto s = m.open(m.slots().at(0));
  const CK_OBJECT_HANDLE ec = m.key(s, 2);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The inherited session works; so does initialising afresh.
    const bool inherited = m.sign_ecdsa(s, ec) == CKR_OK;
    const bool fresh = m->C_Initialize(nullptr) == CKR_OK && m.sign_ecdsa(m.open(m.slots().at(0)), m.key(m.open(m.slots().at(0)), 2)) == CKR_OK;
    ::_exit(inherited && fresh ? 0 : 1);
  }
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_OK);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_OK);
}

TEST_F(Pkcs11ModuleApi, ThreadsSignAtOnce) {
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const CK_SLOT_ID slot = m.slots().at(0);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      const auto s = m.open(slot);
      const auto key = m.key(s, 2);
      for (int i = 0; i < 5; ++i) ok += m.sign_ecdsa(s, key) == CKR_OK;
      m->C_CloseSession(s);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 20);
}

// firmad stopped under a running program: calls fail cleanly, the slots
// lose their token; firmad back: the same program signs again.
TEST(Pkcs11ModuleRestart, FirmadStoppedAndStartedUnderARunningProgram) {
  TokenRig rig;
  const std::string config = rig.write_config({{"socket =", "socket = \"" + rig.socket().string() + "\""}});
  auto daemon = std::make_unique<Daemon>(config, rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  ::setenv("FIRMAD_SOCKET", rig.socket().c_str(), 1);
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto slots = m.slots();
  ASSERT_EQ(slots.size(), 2u);
  const auto s = m.open(slots[0]);
  const auto ec = m.key(s, 2);
  ASSERT_EQ(m.sign_ecdsa(s, ec), CKR_OK);

  daemon->terminate();
  daemon.reset();
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_DEVICE_REMOVED);
  EXPECT_TRUE(m.slots(true).empty());
  EXPECT_EQ(m.slots(false).size(), 2u);  // the slots stay, without a token
  CK_TOKEN_INFO info;
  EXPECT_EQ(m->C_GetTokenInfo(slots[0], &info), CKR_TOKEN_NOT_PRESENT);

  daemon = std::make_unique<Daemon>(config, rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  EXPECT_EQ(m.slots(true), slots);  // the same slot ids
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_OK);
}

// An alias that names another key after a restart (a renewal with a new
// key, an edited firmad.toml) is another object: the program's old handle
// goes invalid instead of signing with a key it does not know.
TEST(Pkcs11ModuleRestart, AliasNamingAnotherKeyGetsNewHandles) {
  TokenRig rig;
  const std::string socket_line = "socket = \"" + rig.socket().string() + "\"";
  auto daemon = std::make_unique<Daemon>(rig.write_config({{"socket =", socket_line}}), rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  ::setenv("FIRMAD_SOCKET", rig.socket().c_str(), 1);
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);
  const auto s = m.open(m.slots().at(0));
  const auto before = m.key(s, 2);
  ASSERT_EQ(m.sign_ecdsa(s, before), CKR_OK);

  daemon->terminate();
  daemon.reset();
  // The aliases swap keys: firma-ec now names the P-384 key (CKA_ID 04),
  // firma-p384 the P-256 key the program holds a handle of.
  const std::string moved = rig.write_config({{"socket =", socket_line},
                                              {"uri = \"pkcs11:object=firma-ec;id=%02\"", "uri = \"pkcs11:id=%04\""},
                                              {"uri = \"pkcs11:object=firma-p384;id=%04\"", "uri = \"pkcs11:id=%02\""}});
  daemon = std::make_unique<Daemon>(moved, rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  ASSERT_FALSE(m.slots(true).empty());  // the module has read firmad's status again
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  EXPECT_EQ(m->C_SignInit(s, &ecdsa, before), CKR_KEY_HANDLE_INVALID) << "the old handle names a key firmad no longer serves";
  const auto after = m.key(s, 2);  // the same token object, now under another alias
  EXPECT_NE(after, before);
  EXPECT_EQ(m.sign_ecdsa(s, after), CKR_OK);
}

// A program that polls the token (NSS and Java ask C_GetSlotInfo and
// C_GetTokenInfo of a removable slot, not the slot list) sees it come back;
// one started while firmad was down finds it the same way.
TEST(Pkcs11ModuleRestart, TokenPolledBySlotInfoComesBackWithoutASlotListCall) {
  TokenRig rig;
  const std::string config = rig.write_config({{"socket =", "socket = \"" + rig.socket().string() + "\""}});
  ::setenv("FIRMAD_SOCKET", rig.socket().c_str(), 1);
  Module m;
  ASSERT_EQ(m->C_Initialize(nullptr), CKR_OK);  // firmad not running yet
  CK_SLOT_INFO slot_info;
  CK_TOKEN_INFO token_info;
  EXPECT_EQ(m->C_GetSlotInfo(1, &slot_info), CKR_SLOT_ID_INVALID);
  auto daemon = std::make_unique<Daemon>(config, rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  // Polled, as NSS does, at most once a second: the token shows within a few.
  CK_RV rv = CKR_GENERAL_ERROR;
  for (int i = 0; i < 50 && rv != CKR_OK; ++i) {
    rv = m->C_GetTokenInfo(1, &token_info);
    if (rv != CKR_OK) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(rv, CKR_OK) << "the token never showed";
  ASSERT_EQ(m->C_GetSlotInfo(1, &slot_info), CKR_OK);
  EXPECT_TRUE(slot_info.flags & CKF_TOKEN_PRESENT);
  const auto s = m.open(1);
  const auto ec = m.key(s, 2);
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_OK);
  // firmad goes away: the failed signature says so, and the slot shows no token at once.
  daemon->terminate();
  daemon.reset();
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_DEVICE_REMOVED);
  ASSERT_EQ(m->C_GetSlotInfo(1, &slot_info), CKR_OK);
  EXPECT_FALSE(slot_info.flags & CKF_TOKEN_PRESENT);
  // Back: polling the slot finds it again.
  daemon = std::make_unique<Daemon>(config, rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  rv = CKR_GENERAL_ERROR;
  for (int i = 0; i < 50 && rv != CKR_OK; ++i) {
    rv = m->C_GetTokenInfo(1, &token_info);
    if (rv != CKR_OK) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(rv, CKR_OK);
  EXPECT_EQ(m.sign_ecdsa(s, ec), CKR_OK);
}

}  // namespace
}  // namespace firmad::test
