// Module loading through p11-kit, shared per process.
#include "pkcs11/module.hpp"

#include <p11-kit/p11-kit.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>

#include "pkcs11/error.hpp"

namespace firmad::pkcs11 {
namespace {

std::string trim_padded(const unsigned char* p, std::size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

// Returns the file of a module registered with p11-kit under `name`.
std::string registered_path(const std::string& name) {
  CK_FUNCTION_LIST** modules = p11_kit_modules_load(nullptr, P11_KIT_MODULE_UNMANAGED);
  if (!modules) throw std::runtime_error("p11-kit could not list its registered modules: " + std::string(p11_kit_message() ? p11_kit_message() : "unknown error"));
  std::string path;
  if (CK_FUNCTION_LIST* m = p11_kit_module_for_name(modules, name.c_str())) {
    if (char* file = p11_kit_module_get_filename(m)) {
      path = file;
      free(file);
    }
  }
  p11_kit_modules_release(modules);
  if (path.empty()) throw std::runtime_error("no PKCS#11 module is registered with p11-kit under the name '" + name + "' (see 'p11-kit list-modules')");
  return path;
}

std::mutex registry_mutex;
std::map<std::string, std::weak_ptr<Module>>& registry() {
  static std::map<std::string, std::weak_ptr<Module>> r;
  return r;
}

}  // namespace

std::shared_ptr<Module> Module::shared(const std::string& spec) {
  std::string path = spec.find('/') != std::string::npos ? spec : registered_path(spec);
  // One module per file, however it is named (a symlink, a p11-kit name).
  std::error_code ec;
  if (auto canonical = std::filesystem::canonical(path, ec); !ec) path = canonical.string();
  std::lock_guard lock(registry_mutex);
  if (auto existing = registry()[path].lock()) return existing;

  CK_FUNCTION_LIST* fn = p11_kit_module_load(path.c_str(), P11_KIT_MODULE_UNMANAGED);
  if (!fn) throw std::runtime_error("cannot load PKCS#11 module " + path + ": " + (p11_kit_message() ? p11_kit_message() : "unknown error"));
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = fn->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    p11_kit_module_release(fn);
    throw Error("C_Initialize", rv);
  }
  std::shared_ptr<Module> module(new Module(path, fn, rv == CKR_OK));
  registry()[path] = module;
  return module;
}

Module::Module(std::string path, CK_FUNCTION_LIST* fn, bool owns_init)
    : path_(std::move(path)), fn_(fn), owns_init_(owns_init) {
  CK_INFO info{};
  if (fn_->C_GetInfo(&info) == CKR_OK) manufacturer_ = trim_padded(info.manufacturerID, sizeof info.manufacturerID);
  one_call_at_a_time_ = std::filesystem::path(path_).filename() == "p11-kit-client.so";
}

const char* Module::one_call_at_a_time_reason() noexcept {
  return "p11-kit's RPC transport shares one socket between threads and can hang a call made while another fails";
}

Module::~Module() {
  if (owns_init_) fn()->C_Finalize(nullptr);
  p11_kit_module_release(fn_);
}

void Module::close_all_sessions(SlotId slot) const noexcept { fn()->C_CloseAllSessions(slot); }

void Module::join() {
  std::lock_guard lock(reinit_mutex_);
  ++users_;
}

void Module::leave(std::optional<std::uint64_t> parked_at) {
  std::lock_guard lock(reinit_mutex_);
  --users_;
  // Parked in the round still pending: it no longer counts as parked either.
  if (parked_at && *parked_at == generation_ && pending_ && parked_ > 0) --parked_;
  // The others may be waiting for this user to park: it never will.
  if (pending_ && users_ > 0 && parked_ == users_) reinitialize_locked();
}

std::uint64_t Module::request_reinit() {
  std::lock_guard lock(reinit_mutex_);
  pending_ = true;
  return generation_;
}

bool Module::reinit_pending() const {
  std::lock_guard lock(reinit_mutex_);
  return pending_;
}

std::uint64_t Module::generation() const {
  std::lock_guard lock(reinit_mutex_);
  return generation_;
}

Module::Parking Module::park() {
  std::lock_guard lock(reinit_mutex_);
  if (!pending_) return {Parking::Outcome::NotPending, generation_, 0};
  if (++parked_ < users_) return {Parking::Outcome::Parked, generation_, 0};
  const unsigned long rv = reinitialize_locked();
  return {Parking::Outcome::Reinitialised, generation_, rv};
}

// Under reinit_mutex_, every user parked: no call is in flight.
unsigned long Module::reinitialize_locked() {
  if (owns_init_) fn()->C_Finalize(nullptr);
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = fn()->C_Initialize(&args);
  // Initialised again, by firmad: finalised by firmad at the end. (Failed: the
  // next user that meets CKR_CRYPTOKI_NOT_INITIALIZED asks again.)
  owns_init_ = rv == CKR_OK;
  parked_ = 0;
  pending_ = false;
  ++generation_;
  return rv;
}

std::size_t Module::slot_count() const {
  CK_ULONG count = 0;
  check(fn()->C_GetSlotList(CK_FALSE, nullptr, &count), "C_GetSlotList");
  return count;
}

std::vector<SlotId> Module::slots_with_token() const {
  CK_ULONG count = 0;
  check(fn()->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  if (count) check(fn()->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList");
  slots.resize(count);
  return {slots.begin(), slots.end()};
}

CK_TOKEN_INFO Module::raw_token_info(SlotId slot) const {
  CK_TOKEN_INFO info{};
  check(fn()->C_GetTokenInfo(slot, &info), "C_GetTokenInfo");
  return info;
}

TokenInfo Module::token_info(SlotId slot) const {
  const CK_TOKEN_INFO raw = raw_token_info(slot);
  TokenInfo t;
  t.label = trim_padded(raw.label, sizeof raw.label);
  t.serial = trim_padded(raw.serialNumber, sizeof raw.serialNumber);
  t.manufacturer = trim_padded(raw.manufacturerID, sizeof raw.manufacturerID);
  t.model = trim_padded(raw.model, sizeof raw.model);
  t.login_required = raw.flags & CKF_LOGIN_REQUIRED;
  t.protected_path = raw.flags & CKF_PROTECTED_AUTHENTICATION_PATH;
  t.pin.count_low = raw.flags & CKF_USER_PIN_COUNT_LOW;
  t.pin.final_try = raw.flags & CKF_USER_PIN_FINAL_TRY;
  t.pin.locked = raw.flags & CKF_USER_PIN_LOCKED;
  t.pin.to_be_changed = raw.flags & CKF_USER_PIN_TO_BE_CHANGED;
  return t;
}

std::vector<Scheme> Module::schemes(SlotId slot, KeyType type) const {
  CK_ULONG count = 0;
  check(fn()->C_GetMechanismList(slot, nullptr, &count), "C_GetMechanismList");
  // One element of slack: p11-kit-client.so (0.24, rpc-client.c's
  // mechanism_list_purge) drops mechanisms it cannot forward with a memmove
  // that reads one element past the end of the caller's list.
  std::vector<CK_MECHANISM_TYPE> mechs(count + 1);
  if (count) check(fn()->C_GetMechanismList(slot, mechs.data(), &count), "C_GetMechanismList");
  mechs.resize(count);
  auto has = [&](CK_MECHANISM_TYPE m) { return std::find(mechs.begin(), mechs.end(), m) != mechs.end(); };
  std::vector<Scheme> out;
  switch (type) {
    case KeyType::Rsa:
      if (has(CKM_RSA_PKCS)) out.push_back(Scheme::RsaPkcs1);
      if (has(CKM_RSA_PKCS_PSS)) out.push_back(Scheme::RsaPss);
      break;
    case KeyType::Ec:
      if (has(CKM_ECDSA)) out.push_back(Scheme::Ecdsa);
      break;
    case KeyType::Ed25519:
      if (has(CKM_EDDSA)) out.push_back(Scheme::EdDsa);
      break;
  }
  return out;
}

}  // namespace firmad::pkcs11
