// A loaded PKCS#11 module: the process's one owner of its C_Initialize/C_Finalize.
#pragma once
#include <p11-kit/pkcs11.h>

#include <memory>
#include <string>
#include <vector>

#include "pkcs11/types.hpp"

namespace firmad::pkcs11 {

class Module {
 public:
  // Returns the module named by spec: a path ("/usr/lib/.../libsofthsm2.so")
  // or a p11-kit registered name ("softhsm2"). Each module is loaded and
  // initialised once per process and shared; it is finalised when the last
  // holder lets go. Throws std::runtime_error if it cannot be found or loaded,
  // Error if C_Initialize fails.
  static std::shared_ptr<Module> shared(const std::string& spec);

  Module(const Module&) = delete;  // owns C_Initialize; share it, do not copy it
  Module& operator=(const Module&) = delete;
  ~Module();

  const std::string& path() const noexcept { return path_; }
  CK_FUNCTION_LIST* fn() const noexcept { return fn_; }

  // Returns the slots that hold a token right now.
  std::vector<SlotId> slots_with_token() const;
  // Returns the token's identity and PIN flags. Throws Error.
  TokenInfo token_info(SlotId slot) const;
  // Returns the raw CK_TOKEN_INFO (for URI matching inside pkcs11/).
  CK_TOKEN_INFO raw_token_info(SlotId slot) const;
  // Closes every session this process has on the slot (C_CloseAllSessions),
  // for sessions whose handles were forgotten; failures are ignored (a
  // removed token's sessions are gone already).
  void close_all_sessions(SlotId slot) const noexcept;
  // Returns the signature schemes the slot's mechanisms allow for a key type.
  std::vector<Scheme> schemes(SlotId slot, KeyType type) const;

 private:
  Module(std::string path, CK_FUNCTION_LIST* fn, bool owns_init);
  std::string path_;
  CK_FUNCTION_LIST* fn_;
  bool owns_init_;
};

}  // namespace firmad::pkcs11
