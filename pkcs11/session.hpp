// A PKCS#11 session: one handle, one owner, closed on destruction.
#pragma once
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "pkcs11/module.hpp"
#include "pkcs11/types.hpp"

namespace firmad::pkcs11 {

// A session is used by one thread at a time (PKCS#11 sessions are not
// re-entrant); the daemon gives each worker its own.
class Session {
 public:
  // Whether the session may create and destroy token objects (import, key
  // removal) or only read them and sign.
  enum class Access { ReadOnly, ReadWrite };

  // Opens a read-only serial session on the slot. Throws Error.
  Session(std::shared_ptr<Module> module, SlotId slot);
  // Opens a serial session with the given access. Throws Error (for
  // ReadWrite, CKR_TOKEN_WRITE_PROTECTED when the token is write-protected).
  Session(std::shared_ptr<Module> module, SlotId slot, Access access);
  Session(const Session&) = delete;  // one handle, one owner
  Session& operator=(const Session&) = delete;
  Session(Session&& other) noexcept;
  Session& operator=(Session&&) = delete;
  ~Session();

  SlotId slot() const noexcept { return slot_; }
  const Module& module() const noexcept { return *module_; }

  // Logs the user in with exactly one C_Login call; "already logged in" is
  // success. Throws Error (PinIncorrect, PinLocked, ...). Never retries.
  void login(std::string_view pin);
  // Logs the user in on a token with a protected authentication path: one
  // C_Login with no PIN, which returns once the holder typed the PIN on the
  // reader's PIN pad (or gave up). Throws Error as login() does.
  void login_on_reader();
  // Logs out; "not logged in" is success. Throws Error on other failures.
  void logout();
  // Whether the application is logged in as the user (C_GetSessionInfo).
  bool logged_in() const;
  // One call that must reach the device: C_GenerateRandom of one byte (a
  // token without a generator, CKR_RANDOM_NO_RNG or CKR_FUNCTION_NOT_SUPPORTED,
  // tells nothing and passes). Throws Error.
  void reach_device() const;

  // Returns handles of objects of a class matching label and/or id (an absent
  // criterion matches anything), at most `limit`. Throws Error.
  std::vector<ObjectHandle> find(CK_OBJECT_CLASS cls, const std::optional<std::string>& label,
                                 const std::optional<Bytes>& id, std::size_t limit = 16) const;
  // Returns an attribute's value, or nullopt if the object does not have it
  // or it is sensitive. Throws Error for other failures.
  std::optional<Bytes> attribute(ObjectHandle object, CK_ATTRIBUTE_TYPE type) const;
  // Returns a CK_ULONG attribute, or nullopt.
  std::optional<unsigned long> ulong_attribute(ObjectHandle object, CK_ATTRIBUTE_TYPE type) const;
  // Destroys an object. Token objects need a ReadWrite session, private ones
  // a logged-in user as well. Throws Error.
  void destroy(ObjectHandle object) const;

  CK_SESSION_HANDLE handle() const noexcept { return handle_; }

  // The module declared this session gone (CKR_SESSION_HANDLE_INVALID,
  // CKR_SESSION_CLOSED, a removed token): drops the handle without closing
  // it. Modules reuse handle numbers, so a late C_CloseSession could close
  // a session another thread has just been given.
  void forget() noexcept { handle_ = CK_INVALID_HANDLE; }

 private:
  std::shared_ptr<Module> module_;
  SlotId slot_;
  CK_SESSION_HANDLE handle_;
};

}  // namespace firmad::pkcs11
