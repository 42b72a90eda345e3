// libfirma-pkcs11.so: the PKCS#11 entry points, slots, sessions and signing, forwarded to firmad.
//
// No threads of its own and no connection kept: each call that needs firmad
// (the slot list, a signature) connects on the caller's thread and closes
// again, so a child after fork() shares nothing with its parent but a copy
// of this state. One mutex guards the state; it is never held across I/O
// or while data is hashed.
#include <openssl/evp.h>
#include <pthread.h>
#include <sys/auxv.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <tuple>

#include "client/firma.hpp"
#include "client/pkcs11/ck.hpp"
#include "client/pkcs11/mechanisms.hpp"
#include "client/pkcs11/objects.hpp"

#define FIRMA_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using firma::Bytes;
using firma::Json;
using namespace firma::p11;

struct MdFree {
  void operator()(EVP_MD_CTX* p) const noexcept { EVP_MD_CTX_free(p); }
};

struct Slot {
  std::string token;  // firmad's name of the token
  bool eddsa = false;  // the slot of the token's EdDSA keys
  bool present = false;
  Json token_info = Json::object();
  std::vector<KeyInfo> keys;
  std::vector<CK_OBJECT_HANDLE> objects;
  bool logged_in = false;  // what C_Login said; firmad holds the real login
};

struct SignOperation {
  MechanismPlan plan;
  KeyInfo key;
  std::unique_ptr<EVP_MD_CTX, MdFree> md;  // hashed mechanisms
  Bytes buffer;                             // the others' input
  bool updated = false;                     // C_SignUpdate was called
};

struct Session {
  CK_SLOT_ID slot = 0;
  CK_FLAGS flags = 0;
  std::optional<std::vector<CK_OBJECT_HANDLE>> found;  // an active search's results
  std::size_t next_found = 0;
  std::optional<SignOperation> sign;
  bool hashing = false;  // a C_SignUpdate hashes this session's operation, outside the lock
};

struct State {
  bool initialized = false;
  pid_t pid = 0;
  std::map<std::pair<std::string, bool>, CK_SLOT_ID> slot_ids;  // stable across refreshes
  std::map<CK_SLOT_ID, Slot> slots;
  // Handles stable across refreshes, for the same object only: keyed by
  // alias, class, public key and (certificates) value, so an alias whose key
  // or certificate was renewed gets new handles and the old ones go invalid.
  // (Kept for the module's life: a few entries per renewal.)
  std::map<std::tuple<std::string, CK_OBJECT_CLASS, Bytes, Bytes>, CK_OBJECT_HANDLE> object_ids;
  std::map<CK_OBJECT_HANDLE, Object> objects;
  std::map<CK_SESSION_HANDLE, Session> sessions;
  CK_SLOT_ID next_slot = 1;
  CK_OBJECT_HANDLE next_object = 1;
  // Status fetches in the order they started, and the newest applied: a
  // slow fetch never overwrites a newer one.
  std::uint64_t fetches = 0, applied = 0;
  std::chrono::steady_clock::time_point last_fetch{};
};

std::mutex mu;
// Session handles are never given twice in a process, not even after
// C_Finalize and C_Initialize: a C_SignUpdate that hashed outside the lock
// finds its session again by handle, or knows it is gone. (Under mu.)
CK_SESSION_HANDLE next_session = 1;

State& state() {
  static State* s = new State;  // never destroyed: a late C_* call after exit() finds it
  return *s;
}

// A fork while another thread holds the mutex would leave it locked in the child.
[[maybe_unused]] const int atfork_registered = pthread_atfork([] { mu.lock(); }, [] { mu.unlock(); }, [] { mu.unlock(); });

constexpr std::size_t kMaxMessage = 1 << 20;  // Sign's limit for EdDSA messages

// firmad's socket: $FIRMAD_SOCKET, except in a setuid or setgid program
// (whose caller sets the environment), or the default.
std::string socket_path() {
  if (::getauxval(AT_SECURE) != 0) return "/run/firmad/firmad.sock";
  return firma::default_socket();
}

// How long a call waits for each reply of firmad: a status must not hold up
// a program's start (Firefox, a login); a signature may wait behind a queue
// on a slow card, but not for ever.
constexpr std::chrono::seconds kStatusWait{5}, kSignWait{120};

// Status from firmad, or nullopt if it cannot be reached or answers an error.
std::optional<Json> fetch_status() {
  try {
    firma::Client client(socket_path());
    client.set_reply_timeout(kStatusWait);
    return client.status();
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Rebuilds slots and objects from a Status (nullopt: every token absent).
void apply_status(State& s, const std::optional<Json>& status) {
  for (auto& [id, slot] : s.slots) {
    slot.present = false;
    slot.keys.clear();
    slot.objects.clear();
  }
  s.objects.clear();
  if (!status || !status->contains("keys") || !(*status)["keys"].is_array()) return;
  std::map<std::string, Json> tokens;
  if (status->contains("tokens") && (*status)["tokens"].is_array())
    for (const auto& t : (*status)["tokens"])
      if (t.is_object() && t.contains("name") && t["name"].is_string()) tokens[t["name"]] = t;
  // Two aliases may name one key on the token (each with its own allow
  // list): the token's objects are shown once, under the first alias.
  std::set<std::tuple<std::string, std::string, std::string>> shown;  // token, CKA_ID, SPKI
  for (const auto& k : (*status)["keys"]) try {
    KeyInfo info;
    if (!key_info(k, info)) continue;
    const std::string object_id = k.contains("objectId") && k["objectId"].is_string() ? k["objectId"].get<std::string>() : info.alias;
    if (!shown.emplace(info.token, object_id, std::string(info.spki.begin(), info.spki.end())).second) continue;
    std::vector<Object> objects;
    try {
      objects = objects_of(k, info);
    } catch (const std::exception&) {
      continue;  // a key whose DER this module cannot read gets no objects
    }
    const std::pair<std::string, bool> slot_key{info.token, info.kind == KeyKind::ed25519};
    auto [it, added] = s.slot_ids.try_emplace(slot_key, s.next_slot);
    if (added) ++s.next_slot;
    Slot& slot = s.slots[it->second];
    slot.token = info.token;
    slot.eddsa = slot_key.second;
    const auto t = tokens.find(info.token);
    slot.token_info = t == tokens.end() ? Json::object() : t->second;
    const auto present = slot.token_info.find("present");
    slot.present = present == slot.token_info.end() || !present->is_boolean() || present->get<bool>();
    for (auto& o : objects) {
      const auto value = o.object_class == CKO_CERTIFICATE ? o.attributes.find(CKA_VALUE) : o.attributes.end();
      auto [h, fresh] = s.object_ids.try_emplace({o.alias, o.object_class, info.spki, value == o.attributes.end() ? Bytes{} : value->second},
                                                 s.next_object);
      if (fresh) ++s.next_object;
      slot.objects.push_back(h->second);
      s.objects[h->second] = std::move(o);
    }
    slot.keys.push_back(std::move(info));
  } catch (const std::exception&) {
    continue;  // a key entry this module cannot read: no objects, never an exception through the C API
  }
  for (auto& [id, slot] : s.slots)
    if (!slot.present) {
      slot.keys.clear();
      slot.objects.clear();
    }
}

// Reads firmad's Status (without the lock: it is socket I/O) and applies it,
// unless a fetch that started later was applied meanwhile.
void refresh() {
  std::uint64_t ticket = 0;
  {
    std::lock_guard lock(mu);
    State& s = state();
    if (!s.initialized) return;
    ticket = ++s.fetches;
    s.last_fetch = std::chrono::steady_clock::now();
  }
  const auto status = fetch_status();
  std::lock_guard lock(mu);
  State& s = state();
  if (!s.initialized || ticket <= s.applied) return;
  s.applied = ticket;
  apply_status(s, status);
}

// Programs poll C_GetSlotInfo / C_GetTokenInfo for a removable token (NSS,
// Java) rather than the slot list: while the slot asked for has no token
// (or is unknown), firmad is asked again first, at most once a second.
void refresh_if_absent(CK_SLOT_ID id) {
  bool stale = false;
  {
    std::lock_guard lock(mu);
    State& s = state();
    if (!s.initialized) return;
    const auto it = s.slots.find(id);
    stale = (it == s.slots.end() || !it->second.present) &&
            std::chrono::steady_clock::now() - s.last_fetch >= std::chrono::seconds(1);
  }
  if (stale) refresh();
}

void pad(CK_UTF8CHAR* out, std::size_t n, const std::string& text) {
  std::memset(out, ' ', n);
  std::memcpy(out, text.data(), std::min(n, text.size()));
}

bool ready(const State& s) { return s.initialized; }

Session* session_of(State& s, CK_SESSION_HANDLE h) {
  const auto it = s.sessions.find(h);
  return it == s.sessions.end() ? nullptr : &it->second;
}

// The object if it belongs to the session's slot.
const Object* object_of(State& s, const Session& session, CK_OBJECT_HANDLE h) {
  const auto& slot = s.slots[session.slot];
  if (std::find(slot.objects.begin(), slot.objects.end(), h) == slot.objects.end()) return nullptr;
  const auto it = s.objects.find(h);
  return it == s.objects.end() ? nullptr : &it->second;
}

// Signs through firmad; `out` is the signature as PKCS#11 returns it.
CK_RV sign_with_firmad(const MechanismPlan& plan, const KeyInfo& key, const Bytes& input, Bytes& out) {
  try {
    firma::Client client(socket_path());
    client.set_reply_timeout(kSignWait);
    if (plan.message) {
      out = client.sign_message(key.alias, input);
    } else {
      firma::SignOptions options;
      Bytes digest = input;
      if (plan.digest_info) {
        const auto parsed = parse_digest_info(input, key.sha1);
        if (!parsed) return CKR_DATA_INVALID;  // not a SHA-2 (or allowed SHA-1) DigestInfo: never raw RSA
        options.hash = parsed->first;
        digest = parsed->second;
      } else if (!plan.hash.empty()) {
        options.hash = plan.hash;  // input is the local digest
      } else if (plan.pss) {
        options.hash = plan.pss_hash;
        if (hash_for_digest_length(input.size(), key.sha1) != plan.pss_hash) return CKR_DATA_LEN_RANGE;
      } else {
        options.hash = hash_for_digest_length(input.size(), key.sha1);  // raw ECDSA
        if (options.hash.empty()) return CKR_DATA_LEN_RANGE;
      }
      options.pss = plan.pss;
      options.salt_length = plan.salt;
      out = client.sign_digest(key.alias, digest, options);
    }
  } catch (const firma::Error& e) {
    return rv_for_error(e.short_name());
  } catch (const firma::ConnectionError&) {
    return CKR_DEVICE_REMOVED;
  } catch (const std::exception&) {
    return CKR_FUNCTION_FAILED;
  }
  if (key.kind == KeyKind::ec) {
    auto raw = ecdsa_der_to_raw(out, (static_cast<std::size_t>(key.bits) + 7) / 8);
    if (!raw) return CKR_DEVICE_ERROR;
    out = std::move(*raw);
  }
  return out.size() == signature_length(key) ? CKR_OK : CKR_DEVICE_ERROR;
}

// C_Sign and C_SignFinal: the length for a NULL buffer, else one signature
// over `data` (C_Sign) or what C_SignUpdate gathered (C_SignFinal). Called
// with the lock held in `lock`: the operation leaves the session before the
// lock is released, so neither hashing the data nor the call to firmad
// holds up another thread's calls.
CK_RV finish_sign(std::unique_lock<std::mutex>& lock, Session& session, std::optional<std::span<const CK_BYTE>> data,
                  CK_BYTE_PTR signature, CK_ULONG_PTR signature_len) {
  const CK_ULONG need = signature_length(session.sign->key);
  if (signature_len == nullptr) {
    session.sign.reset();
    return CKR_ARGUMENTS_BAD;
  }
  if (signature == nullptr) {
    *signature_len = need;  // no signature made for a length query
    return CKR_OK;
  }
  if (*signature_len < need) {
    *signature_len = need;
    return CKR_BUFFER_TOO_SMALL;
  }
  SignOperation op = std::move(*session.sign);
  session.sign.reset();  // the operation ends here, whatever firmad answers
  lock.unlock();
  Bytes input;
  if (op.md) {
    if (data && EVP_DigestUpdate(op.md.get(), data->data(), data->size()) != 1) return CKR_FUNCTION_FAILED;
    input.resize(EVP_MAX_MD_SIZE);
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(op.md.get(), input.data(), &n) != 1) return CKR_FUNCTION_FAILED;
    input.resize(n);
  } else {
    input = data ? Bytes(data->begin(), data->end()) : std::move(op.buffer);
  }
  Bytes out;
  const CK_RV rv = sign_with_firmad(op.plan, op.key, input, out);
  // firmad or the token is gone: the slots say so from now on.
  if (rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT) refresh();
  if (rv != CKR_OK) return rv;
  std::memcpy(signature, out.data(), out.size());
  *signature_len = static_cast<CK_ULONG>(out.size());
  return CKR_OK;
}

extern CK_FUNCTION_LIST function_list;

// ---- general ----

CK_RV Initialize(CK_VOID_PTR init_args) {
  if (init_args != nullptr) {
    const auto* a = static_cast<const CK_C_INITIALIZE_ARGS*>(init_args);
    if (a->pReserved != nullptr) return CKR_ARGUMENTS_BAD;
    const int given = (a->CreateMutex != nullptr) + (a->DestroyMutex != nullptr) + (a->LockMutex != nullptr) + (a->UnlockMutex != nullptr);
    if (given != 0 && given != 4) return CKR_ARGUMENTS_BAD;
    // Our own locking is the OS's; we cannot use only the caller's functions.
    if (given == 4 && !(a->flags & CKF_OS_LOCKING_OK)) return CKR_CANT_LOCK;
  }
  {
    std::lock_guard lock(mu);
    State& s = state();
    if (s.initialized && s.pid == ::getpid()) return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    s = State{};  // a child after fork starts afresh
    s.initialized = true;
    s.pid = ::getpid();
  }
  // firmad unreachable is not an error: the slots show no token until it is back.
  refresh();
  return CKR_OK;
}

CK_RV Finalize(CK_VOID_PTR reserved) {
  if (reserved != nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(mu);
  if (!ready(state())) return CKR_CRYPTOKI_NOT_INITIALIZED;
  state() = State{};
  return CKR_OK;
}

// C_GetInfo reports the version of the function list it was reached
// through: 2.40 from C_GetFunctionList's, 3.0 from the 3.0 interface's.
template <CK_BYTE Major, CK_BYTE Minor>
CK_RV GetInfo(CK_INFO_PTR info) {
  std::lock_guard lock(mu);
  if (!ready(state())) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (info == nullptr) return CKR_ARGUMENTS_BAD;
  std::memset(info, 0, sizeof *info);
  info->cryptokiVersion = {Major, Minor};
  pad(info->manufacturerID, sizeof info->manufacturerID, "firmad");
  pad(info->libraryDescription, sizeof info->libraryDescription, "firmad signing daemon");
  info->libraryVersion = {0, 1};
  return CKR_OK;
}

CK_RV GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  *list = &function_list;
  return CKR_OK;
}

// ---- slots and tokens ----

CK_RV GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR slots, CK_ULONG_PTR count) {
  {
    std::lock_guard lock(mu);
    if (!ready(state())) return CKR_CRYPTOKI_NOT_INITIALIZED;
  }
  if (count == nullptr) return CKR_ARGUMENTS_BAD;
  // The count query reads firmad afresh; the call that fills the list that follows answers from it.
  if (slots == nullptr) refresh();
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  std::vector<CK_SLOT_ID> ids;
  for (const auto& [id, slot] : s.slots)
    if (!token_present || slot.present) ids.push_back(id);
  if (slots == nullptr) {
    *count = ids.size();
    return CKR_OK;
  }
  if (*count < ids.size()) {
    *count = ids.size();
    return CKR_BUFFER_TOO_SMALL;
  }
  std::copy(ids.begin(), ids.end(), slots);
  *count = ids.size();
  return CKR_OK;
}

CK_RV GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info) {
  refresh_if_absent(id);
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (info == nullptr) return CKR_ARGUMENTS_BAD;
  const auto it = s.slots.find(id);
  if (it == s.slots.end()) return CKR_SLOT_ID_INVALID;
  std::memset(info, 0, sizeof *info);
  pad(info->slotDescription, sizeof info->slotDescription, "firmad token " + it->second.token + (it->second.eddsa ? " (EdDSA keys)" : ""));
  pad(info->manufacturerID, sizeof info->manufacturerID, "firmad");
  info->flags = CKF_REMOVABLE_DEVICE | (it->second.present ? CKF_TOKEN_PRESENT : 0);
  info->hardwareVersion = {0, 1};
  info->firmwareVersion = {0, 1};
  return CKR_OK;
}

CK_RV GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info) {
  refresh_if_absent(id);
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (info == nullptr) return CKR_ARGUMENTS_BAD;
  const auto it = s.slots.find(id);
  if (it == s.slots.end()) return CKR_SLOT_ID_INVALID;
  const Slot& slot = it->second;
  if (!slot.present) return CKR_TOKEN_NOT_PRESENT;
  const Json& t = slot.token_info;
  auto text = [&](const char* name, const std::string& fallback) {
    return t.contains(name) && t[name].is_string() ? t[name].get<std::string>() : fallback;
  };
  std::memset(info, 0, sizeof *info);
  // The EdDSA slot's token is named apart, so that label and serial select one slot.
  std::string label = text("label", slot.token);
  std::string serial = text("serial", "");
  if (slot.eddsa) {
    label = label.substr(0, 26) + " EdDSA";
    serial = serial.substr(0, 15) + "E";
  }
  pad(info->label, sizeof info->label, label);
  pad(info->manufacturerID, sizeof info->manufacturerID, text("manufacturer", "firmad"));
  pad(info->model, sizeof info->model, text("model", "firmad"));
  pad(info->serialNumber, sizeof info->serialNumber, serial);
  // No CKF_LOGIN_REQUIRED: firmad holds the PIN. Write-protected: nothing is created through the module.
  info->flags = CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_WRITE_PROTECTED;
  info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  CK_ULONG open = 0;
  for (const auto& [h, session] : s.sessions) open += session.slot == id;
  info->ulSessionCount = open;
  CK_ULONG rw = 0;
  for (const auto& [h, session] : s.sessions) rw += session.slot == id && (session.flags & CKF_RW_SESSION);
  info->ulRwSessionCount = rw;
  info->ulMaxPinLen = 0;
  info->ulMinPinLen = 0;
  info->ulTotalPublicMemory = info->ulFreePublicMemory = info->ulTotalPrivateMemory = info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->hardwareVersion = {0, 1};
  info->firmwareVersion = {0, 1};
  return CKR_OK;
}

// The mechanisms of a slot's keys, and the key sizes each covers.
std::map<CK_MECHANISM_TYPE, std::pair<CK_ULONG, CK_ULONG>> slot_mechanisms(const Slot& slot) {
  std::map<CK_MECHANISM_TYPE, std::pair<CK_ULONG, CK_ULONG>> out;
  for (const auto& k : slot.keys)
    for (CK_MECHANISM_TYPE m : mechanisms_for(k.kind, k.pss, k.sha1)) {
      const auto bits = static_cast<CK_ULONG>(k.bits);
      auto [it, added] = out.try_emplace(m, bits, bits);
      it->second.first = std::min(it->second.first, bits);
      it->second.second = std::max(it->second.second, bits);
    }
  return out;
}

CK_RV GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (count == nullptr) return CKR_ARGUMENTS_BAD;
  const auto it = s.slots.find(id);
  if (it == s.slots.end()) return CKR_SLOT_ID_INVALID;
  if (!it->second.present) return CKR_TOKEN_NOT_PRESENT;
  const auto mechs = slot_mechanisms(it->second);
  if (list == nullptr) {
    *count = mechs.size();
    return CKR_OK;
  }
  if (*count < mechs.size()) {
    *count = mechs.size();
    return CKR_BUFFER_TOO_SMALL;
  }
  CK_ULONG i = 0;
  for (const auto& [m, sizes] : mechs) list[i++] = m;
  *count = i;
  return CKR_OK;
}

CK_RV GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (info == nullptr) return CKR_ARGUMENTS_BAD;
  const auto it = s.slots.find(id);
  if (it == s.slots.end()) return CKR_SLOT_ID_INVALID;
  if (!it->second.present) return CKR_TOKEN_NOT_PRESENT;
  const auto mechs = slot_mechanisms(it->second);
  const auto m = mechs.find(type);
  if (m == mechs.end()) return CKR_MECHANISM_INVALID;
  info->ulMinKeySize = m->second.first;
  info->ulMaxKeySize = m->second.second;
  info->flags = CKF_SIGN;
  if (type == CKM_ECDSA || type == CKM_ECDSA_SHA256 || type == CKM_ECDSA_SHA384 || type == CKM_ECDSA_SHA512)
    info->flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
  return CKR_OK;
}

// ---- sessions and login ----

CK_RV OpenSession(CK_SLOT_ID id, CK_FLAGS flags, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE_PTR handle) {
  refresh_if_absent(id);
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (handle == nullptr) return CKR_ARGUMENTS_BAD;
  const auto it = s.slots.find(id);
  if (it == s.slots.end()) return CKR_SLOT_ID_INVALID;
  if (!it->second.present) return CKR_TOKEN_NOT_PRESENT;
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  // R/W sessions are accepted although the token says write-protected:
  // OpenSSH opens every session R/W (ssh-pkcs11.c) and would see no key.
  // Nothing can be written through them: every writing call is not supported.
  const CK_SESSION_HANDLE h = next_session++;
  s.sessions[h] = Session{id, flags, std::nullopt, 0, std::nullopt, false};
  *handle = h;
  return CKR_OK;
}

CK_RV CloseSession(CK_SESSION_HANDLE h) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  const auto it = s.sessions.find(h);
  if (it == s.sessions.end()) return CKR_SESSION_HANDLE_INVALID;
  const CK_SLOT_ID slot = it->second.slot;
  s.sessions.erase(it);
  // The last session closed logs the application out (PKCS#11 §5.6).
  if (std::none_of(s.sessions.begin(), s.sessions.end(), [&](const auto& e) { return e.second.slot == slot; }))
    s.slots[slot].logged_in = false;
  return CKR_OK;
}

CK_RV CloseAllSessions(CK_SLOT_ID id) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  const auto slot = s.slots.find(id);
  if (slot == s.slots.end()) return CKR_SLOT_ID_INVALID;
  std::erase_if(s.sessions, [&](const auto& e) { return e.second.slot == id; });
  slot->second.logged_in = false;
  return CKR_OK;
}

CK_RV GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (info == nullptr) return CKR_ARGUMENTS_BAD;
  info->slotID = session->slot;
  const bool user = s.slots[session->slot].logged_in;
  if (session->flags & CKF_RW_SESSION) {
    info->state = user ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION;
  } else {
    info->state = user ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION;
  }
  info->flags = session->flags;
  info->ulDeviceError = 0;
  return CKR_OK;
}

// Nothing is sent: firmad holds the PIN and is logged in (or not) for everyone.
CK_RV Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR, CK_ULONG) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (user == CKU_CONTEXT_SPECIFIC) return CKR_OPERATION_NOT_INITIALIZED;  // no key needs it
  if (user != CKU_USER) return CKR_USER_TYPE_INVALID;
  Slot& slot = s.slots[session->slot];
  if (slot.logged_in) return CKR_USER_ALREADY_LOGGED_IN;
  slot.logged_in = true;
  return CKR_OK;
}

CK_RV Logout(CK_SESSION_HANDLE h) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  Slot& slot = s.slots[session->slot];
  if (!slot.logged_in) return CKR_USER_NOT_LOGGED_IN;
  slot.logged_in = false;
  return CKR_OK;
}

// ---- objects ----

CK_RV GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR templ, CK_ULONG count) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (templ == nullptr && count > 0) return CKR_ARGUMENTS_BAD;
  const Object* o = object_of(s, *session, object);
  if (o == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  return o->copy_attributes(templ, count);
}

CK_RV FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR templ, CK_ULONG count) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (templ == nullptr && count > 0) return CKR_ARGUMENTS_BAD;
  if (session->found) return CKR_OPERATION_ACTIVE;
  std::vector<CK_OBJECT_HANDLE> found;
  // Classes and attributes this module does not have match nothing: zero results, no error.
  for (CK_OBJECT_HANDLE o : s.slots[session->slot].objects)
    if (s.objects.at(o).matches(templ, count)) found.push_back(o);
  session->found = std::move(found);
  session->next_found = 0;
  return CKR_OK;
}

CK_RV FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (!session->found) return CKR_OPERATION_NOT_INITIALIZED;
  if (count == nullptr || (out == nullptr && max > 0)) return CKR_ARGUMENTS_BAD;
  CK_ULONG n = 0;
  while (n < max && session->next_found < session->found->size()) out[n++] = (*session->found)[session->next_found++];
  *count = n;
  return CKR_OK;
}

CK_RV FindObjectsFinal(CK_SESSION_HANDLE h) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (!session->found) return CKR_OPERATION_NOT_INITIALIZED;
  session->found.reset();
  return CKR_OK;
}

// ---- signing ----

CK_RV SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (mechanism == nullptr) return CKR_ARGUMENTS_BAD;
  if (session->sign || session->hashing) return CKR_OPERATION_ACTIVE;
  const Object* o = object_of(s, *session, key);
  if (o == nullptr) return CKR_KEY_HANDLE_INVALID;
  if (o->object_class != CKO_PRIVATE_KEY) return CKR_KEY_FUNCTION_NOT_PERMITTED;
  const auto& keys = s.slots[session->slot].keys;
  const auto info = std::find_if(keys.begin(), keys.end(), [&](const KeyInfo& k) { return k.alias == o->alias; });
  if (info == keys.end()) return CKR_KEY_HANDLE_INVALID;
  SignOperation op;
  if (const CK_RV rv = plan_for(*mechanism, *info, op.plan); rv != CKR_OK) return rv;
  op.key = *info;
  if (!op.plan.hash.empty()) {
    op.md.reset(EVP_MD_CTX_new());
    if (!op.md || EVP_DigestInit_ex(op.md.get(), EVP_get_digestbyname(op.plan.hash.c_str()), nullptr) != 1) return CKR_HOST_MEMORY;
  }
  session->sign = std::move(op);
  return CKR_OK;
}

CK_RV Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR signature, CK_ULONG_PTR signature_len) {
  std::unique_lock lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (session->hashing) return CKR_OPERATION_ACTIVE;
  if (!session->sign) return CKR_OPERATION_NOT_INITIALIZED;
  if ((data == nullptr && data_len > 0) || session->sign->updated) {
    session->sign.reset();
    return CKR_ARGUMENTS_BAD;
  }
  if (session->sign->plan.message && data_len > kMaxMessage) {
    session->sign.reset();
    return CKR_DATA_LEN_RANGE;
  }
  return finish_sign(lock, *session, std::span<const CK_BYTE>(data, data_len), signature, signature_len);
}

CK_RV SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG part_len) {
  std::unique_lock lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (session->hashing) return CKR_OPERATION_ACTIVE;
  if (!session->sign) return CKR_OPERATION_NOT_INITIALIZED;
  SignOperation& op = *session->sign;
  if (part == nullptr && part_len > 0) {
    session->sign.reset();
    return CKR_ARGUMENTS_BAD;
  }
  op.updated = true;
  if (op.md) {
    // Hashed outside the lock (a jar or a PDF of many MiB must not hold up
    // other threads); the session is marked, so nothing else starts or
    // ends its operation meanwhile.
    SignOperation taken = std::move(op);
    session->sign.reset();
    session->hashing = true;
    lock.unlock();
    const bool hashed = EVP_DigestUpdate(taken.md.get(), part, part_len) == 1;
    lock.lock();
    // Closed, or C_Finalize, meanwhile: handles are never reused, so the
    // session is this one or gone.
    session = session_of(state(), h);
    if (session == nullptr) return CKR_SESSION_CLOSED;
    session->hashing = false;
    if (!hashed) return CKR_FUNCTION_FAILED;
    session->sign = std::move(taken);
    return CKR_OK;
  }
  if (part_len > kMaxMessage - op.buffer.size()) {  // (never wraps: the buffer holds at most kMaxMessage)
    session->sign.reset();
    return CKR_DATA_LEN_RANGE;
  }
  op.buffer.insert(op.buffer.end(), part, part + part_len);
  return CKR_OK;
}

CK_RV SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR signature, CK_ULONG_PTR signature_len) {
  std::unique_lock lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (session->hashing) return CKR_OPERATION_ACTIVE;
  if (!session->sign) return CKR_OPERATION_NOT_INITIALIZED;
  return finish_sign(lock, *session, std::nullopt, signature, signature_len);
}

// ---- the rest ----

// The module has no random number generator of its own (no CKF_RNG).
CK_RV GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR, CK_ULONG) {
  std::lock_guard lock(mu);
  if (!ready(state())) return CKR_CRYPTOKI_NOT_INITIALIZED;
  return session_of(state(), h) == nullptr ? CKR_SESSION_HANDLE_INVALID : CKR_RANDOM_NO_RNG;
}
CK_RV SeedRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR, CK_ULONG) {
  std::lock_guard lock(mu);
  if (!ready(state())) return CKR_CRYPTOKI_NOT_INITIALIZED;
  return session_of(state(), h) == nullptr ? CKR_SESSION_HANDLE_INVALID : CKR_RANDOM_NO_RNG;
}
// PKCS#11 3.0: ends the session's signature operation without a signature
// (what a 2.40 program can only do by finishing it, which makes and audits
// one) and, with CKF_FIND_OBJECTS, its search. No other kind of operation
// runs here, so there is nothing else to end.
CK_RV SessionCancel(CK_SESSION_HANDLE h, CK_FLAGS flags) {
  std::lock_guard lock(mu);
  State& s = state();
  if (!ready(s)) return CKR_CRYPTOKI_NOT_INITIALIZED;
  Session* session = session_of(s, h);
  if (session == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (flags & kFindObjects) {
    session->found.reset();
    session->next_found = 0;
  }
  if (flags & CKF_SIGN) {
    if (session->hashing) return kOperationCancelFailed;  // another thread is inside C_SignUpdate
    session->sign.reset();
  }
  return CKR_OK;
}

// PKCS#11 3.0's login with a user name: the tokens here have none.
CK_RV LoginUser(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR name,
                CK_ULONG name_len) {
  if (name != nullptr && name_len > 0) return CKR_ARGUMENTS_BAD;
  return Login(h, user, pin, pin_len);
}

CK_RV GetFunctionStatus(CK_SESSION_HANDLE) { return CKR_FUNCTION_NOT_PARALLEL; }
CK_RV CancelFunction(CK_SESSION_HANDLE) { return CKR_FUNCTION_NOT_PARALLEL; }

// Everything that would write to the token, decrypt, verify or derive.
template <typename... Args>
CK_RV not_supported(Args...) {
  return CKR_FUNCTION_NOT_SUPPORTED;
}

// Every entry point answers a CK_RV: nothing thrown inside (memory, a
// library) crosses into the calling program.
template <auto F>
struct Guarded;
template <typename... Args, CK_RV (*F)(Args...)>
struct Guarded<F> {
  static CK_RV call(Args... args) noexcept {
    try {
      return F(args...);
    } catch (const std::bad_alloc&) {
      return CKR_HOST_MEMORY;
    } catch (...) {
      return CKR_FUNCTION_FAILED;
    }
  }
};

CK_FUNCTION_LIST make_function_list() {
  CK_FUNCTION_LIST l{};
  l.version = {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR};
  l.C_Initialize = Guarded<Initialize>::call;
  l.C_Finalize = Guarded<Finalize>::call;
  l.C_GetInfo = Guarded<GetInfo<CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR>>::call;
  l.C_GetFunctionList = Guarded<GetFunctionList>::call;
  l.C_GetSlotList = Guarded<GetSlotList>::call;
  l.C_GetSlotInfo = Guarded<GetSlotInfo>::call;
  l.C_GetTokenInfo = Guarded<GetTokenInfo>::call;
  l.C_GetMechanismList = Guarded<GetMechanismList>::call;
  l.C_GetMechanismInfo = Guarded<GetMechanismInfo>::call;
  l.C_InitToken = not_supported;
  l.C_InitPIN = not_supported;
  l.C_SetPIN = not_supported;
  l.C_OpenSession = Guarded<OpenSession>::call;
  l.C_CloseSession = Guarded<CloseSession>::call;
  l.C_CloseAllSessions = Guarded<CloseAllSessions>::call;
  l.C_GetSessionInfo = Guarded<GetSessionInfo>::call;
  l.C_GetOperationState = not_supported;
  l.C_SetOperationState = not_supported;
  l.C_Login = Guarded<Login>::call;
  l.C_Logout = Guarded<Logout>::call;
  l.C_CreateObject = not_supported;
  l.C_CopyObject = not_supported;
  l.C_DestroyObject = not_supported;
  l.C_GetObjectSize = not_supported;
  l.C_GetAttributeValue = Guarded<GetAttributeValue>::call;
  l.C_SetAttributeValue = not_supported;
  l.C_FindObjectsInit = Guarded<FindObjectsInit>::call;
  l.C_FindObjects = Guarded<FindObjects>::call;
  l.C_FindObjectsFinal = Guarded<FindObjectsFinal>::call;
  l.C_EncryptInit = not_supported;
  l.C_Encrypt = not_supported;
  l.C_EncryptUpdate = not_supported;
  l.C_EncryptFinal = not_supported;
  l.C_DecryptInit = not_supported;
  l.C_Decrypt = not_supported;
  l.C_DecryptUpdate = not_supported;
  l.C_DecryptFinal = not_supported;
  l.C_DigestInit = not_supported;
  l.C_Digest = not_supported;
  l.C_DigestUpdate = not_supported;
  l.C_DigestKey = not_supported;
  l.C_DigestFinal = not_supported;
  l.C_SignInit = Guarded<SignInit>::call;
  l.C_Sign = Guarded<Sign>::call;
  l.C_SignUpdate = Guarded<SignUpdate>::call;
  l.C_SignFinal = Guarded<SignFinal>::call;
  l.C_SignRecoverInit = not_supported;
  l.C_SignRecover = not_supported;
  l.C_VerifyInit = not_supported;
  l.C_Verify = not_supported;
  l.C_VerifyUpdate = not_supported;
  l.C_VerifyFinal = not_supported;
  l.C_VerifyRecoverInit = not_supported;
  l.C_VerifyRecover = not_supported;
  l.C_DigestEncryptUpdate = not_supported;
  l.C_DecryptDigestUpdate = not_supported;
  l.C_SignEncryptUpdate = not_supported;
  l.C_DecryptVerifyUpdate = not_supported;
  l.C_GenerateKey = not_supported;
  l.C_GenerateKeyPair = not_supported;
  l.C_WrapKey = not_supported;
  l.C_UnwrapKey = not_supported;
  l.C_DeriveKey = not_supported;
  l.C_SeedRandom = Guarded<SeedRandom>::call;
  l.C_GenerateRandom = Guarded<GenerateRandom>::call;
  l.C_GetFunctionStatus = Guarded<GetFunctionStatus>::call;
  l.C_CancelFunction = Guarded<CancelFunction>::call;
  l.C_WaitForSlotEvent = not_supported;
  return l;
}

CK_FUNCTION_LIST function_list = make_function_list();

}  // namespace

FIRMA_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE* list, CK_ULONG_PTR count);
FIRMA_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE** out, CK_FLAGS flags);

namespace {

CK_FUNCTION_LIST_3_0 make_function_list_3_0() {
  CK_FUNCTION_LIST_3_0 l{};
  l.v2 = make_function_list();
  l.v2.version = {3, 0};
  l.v2.C_GetInfo = Guarded<GetInfo<3, 0>>::call;
  l.C_GetInterfaceList = C_GetInterfaceList;
  l.C_GetInterface = C_GetInterface;
  l.C_LoginUser = Guarded<LoginUser>::call;
  l.C_SessionCancel = Guarded<SessionCancel>::call;
  // Message-based encryption, decryption, signing and verification: none.
  l.C_MessageEncryptInit = not_supported;
  l.C_EncryptMessage = not_supported;
  l.C_EncryptMessageBegin = not_supported;
  l.C_EncryptMessageNext = not_supported;
  l.C_MessageEncryptFinal = not_supported;
  l.C_MessageDecryptInit = not_supported;
  l.C_DecryptMessage = not_supported;
  l.C_DecryptMessageBegin = not_supported;
  l.C_DecryptMessageNext = not_supported;
  l.C_MessageDecryptFinal = not_supported;
  l.C_MessageSignInit = not_supported;
  l.C_SignMessage = not_supported;
  l.C_SignMessageBegin = not_supported;
  l.C_SignMessageNext = not_supported;
  l.C_MessageSignFinal = not_supported;
  l.C_MessageVerifyInit = not_supported;
  l.C_VerifyMessage = not_supported;
  l.C_VerifyMessageBegin = not_supported;
  l.C_VerifyMessageNext = not_supported;
  l.C_MessageVerifyFinal = not_supported;
  return l;
}

CK_FUNCTION_LIST_3_0 function_list_3_0 = make_function_list_3_0();

// "PKCS 11" twice: the 3.0 function list first (the default: what
// C_GetInterface without a version gives), then the 2.40 one that
// C_GetFunctionList gives. Both fork-safe: no connection outlives a call,
// so a child may go on using the module.
CK_CHAR interface_name[] = "PKCS 11";
CK_INTERFACE interfaces[] = {{interface_name, &function_list_3_0, kInterfaceForkSafe},
                             {interface_name, &function_list, kInterfaceForkSafe}};

}  // namespace

FIRMA_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) { return Guarded<GetFunctionList>::call(list); }

FIRMA_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE* list, CK_ULONG_PTR count) {
  if (count == nullptr) return CKR_ARGUMENTS_BAD;
  const CK_ULONG n = sizeof interfaces / sizeof interfaces[0];
  if (list == nullptr) {
    *count = n;
    return CKR_OK;
  }
  if (*count < n) {
    *count = n;
    return CKR_BUFFER_TOO_SMALL;
  }
  std::copy(std::begin(interfaces), std::end(interfaces), list);
  *count = n;
  return CKR_OK;
}

FIRMA_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE** out, CK_FLAGS flags) {
  if (out == nullptr) return CKR_ARGUMENTS_BAD;
  for (auto& i : interfaces) {
    if (name != nullptr && std::strcmp(reinterpret_cast<const char*>(name), reinterpret_cast<const char*>(i.pInterfaceName)) != 0) continue;
    const auto* list = static_cast<const CK_FUNCTION_LIST*>(i.pFunctionList);
    if (version != nullptr && (version->major != list->version.major || version->minor != list->version.minor)) continue;
    if ((flags & i.flags) != flags) continue;
    *out = &i;
    return CKR_OK;
  }
  return CKR_ARGUMENTS_BAD;
}
