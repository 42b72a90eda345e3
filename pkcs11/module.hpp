// A loaded PKCS#11 module: the process's one owner of its C_Initialize/C_Finalize.
#pragma once
#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
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
  // The library's manufacturer (C_GetInfo), for the few things modules do
  // differently that no flag tells (see keygen.cpp).
  const std::string& library_manufacturer() const noexcept { return manufacturer_; }

  // Re-initialisation (C_Finalize + C_Initialize), the only way back for a
  // module that lost its backend (p11-kit-client.so after its server died
  // answers CKR_DEVICE_ERROR until then). It must happen with no call into
  // the module in flight, and it ends every session of every token the
  // module serves, so the module's users (token workers: join() when they
  // start, leave() when they stop) take part:
  //   - a user that saw the backend lost calls request_reinit();
  //   - every user, on its own thread, notices reinit_pending(), forgets
  //     its sessions, stops calling into the module and calls park();
  //   - the last to park re-initialises, and everyone goes on (generation()
  //     counts re-initialisations; calls from before it are void).
  void join();
  // `parked_at`: the generation the user parked at, if it is parked.
  void leave(std::optional<std::uint64_t> parked_at = std::nullopt);
  // Asks for a re-initialisation; `why` is logged by the caller. Returns
  // the generation it will end.
  std::uint64_t request_reinit();
  bool reinit_pending() const;
  std::uint64_t generation() const;
  // The caller holds no session of this module and makes no call into it
  // until generation() differs from the one returned (Parked). The last
  // user to park re-initialises the module (Reinitialised, with the
  // C_Initialize result); with no re-initialisation pending any more (it
  // just happened) the caller goes on (NotPending).
  struct Parking {
    enum class Outcome { NotPending, Parked, Reinitialised } outcome;
    std::uint64_t generation;  // Parked: wait until generation() differs
    unsigned long initialize_result;  // Reinitialised: C_Initialize's CK_RV
  };
  Parking park();

  // A call into the module: `module.fn()->C_Sign(...)`, or a named
  // `const auto fn = module.fn();` for an operation of several calls
  // (C_SignInit .. C_Sign, C_FindObjectsInit .. Final). For a module that
  // must be called one call at a time (one_call_at_a_time()) it holds the
  // module's call lock while it lives; for the others it is the bare
  // function list.
  class Call {
   public:
    CK_FUNCTION_LIST* operator->() const noexcept { return fn_; }

   private:
    friend class Module;
    Call(CK_FUNCTION_LIST* fn, std::recursive_mutex* lock)
        : fn_(fn), lock_(lock ? std::unique_lock(*lock) : std::unique_lock<std::recursive_mutex>()) {}
    CK_FUNCTION_LIST* fn_;
    std::unique_lock<std::recursive_mutex> lock_;
  };
  Call fn() const { return Call(fn_, one_call_at_a_time_ ? &call_mutex_ : nullptr); }

  // Whether firmad calls this module one call at a time, whatever threads
  // and sessions it has: p11-kit-client.so (known by its file: what it
  // reports in C_GetInfo is its server's module, or a placeholder before the
  // server is up). Its RPC transport shares one socket between a process's
  // threads and mishandles a failure with several calls in flight: the
  // thread that sees the server gone closes the socket while another reads
  // it, and that one can end up in select() on no descriptor for ever
  // (p11-kit 0.24.1, rpc-transport.c). Its server (p11-kit-remote) serves
  // one call at a time anyway, so nothing is lost. (p11-kit-proxy.so is not
  // held to it: it loads its modules into this process, unless one is
  // configured 'remote:', whose tokens should be reached through
  // p11-kit-client.so instead.)
  bool one_call_at_a_time() const noexcept { return one_call_at_a_time_; }
  // Why, for the log.
  static const char* one_call_at_a_time_reason() noexcept;

  // Returns how many slots the module has, with a token or without.
  std::size_t slot_count() const;
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
  unsigned long reinitialize_locked();
  std::string path_;
  std::string manufacturer_;
  CK_FUNCTION_LIST* fn_;
  bool owns_init_;
  bool one_call_at_a_time_ = false;
  mutable std::recursive_mutex call_mutex_;

  mutable std::mutex reinit_mutex_;
  int users_ = 0;
  int parked_ = 0;
  bool pending_ = false;
  std::uint64_t generation_ = 0;
};

}  // namespace firmad::pkcs11
