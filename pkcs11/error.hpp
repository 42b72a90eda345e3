// The one exception type for PKCS#11 failures: the call, the CK_RV and its name.
#pragma once
#include <stdexcept>
#include <string>

namespace firmad::pkcs11 {

// What a failure means for the caller, so no one outside pkcs11/ needs CK_RV.
enum class Fault {
  PinIncorrect,    // CKR_PIN_INCORRECT
  PinLocked,       // CKR_PIN_LOCKED
  PinInvalid,      // CKR_PIN_LEN_RANGE, CKR_PIN_INVALID, CKR_PIN_EXPIRED
  TokenAbsent,     // the token or device went away
  SessionLost,     // the session handle is no longer valid
  NotLoggedIn,     // CKR_USER_NOT_LOGGED_IN
  MechanismInvalid,
  KeyInvalid,
  DataInvalid,     // CKR_DATA_LEN_RANGE, CKR_DATA_INVALID
  // The module lost what is behind it (a remote module's server, pcscd, a
  // network HSM, a TPM's context): CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY,
  // CKR_CRYPTOKI_NOT_INITIALIZED, CKR_GENERAL_ERROR. Such modules come back
  // only through C_Finalize and C_Initialize (Module::request_reinit).
  BackendLost,
  Other,
};

class Error : public std::runtime_error {
 public:
  // call: the PKCS#11 function ("C_Sign"); code: the CK_RV it returned.
  Error(std::string call, unsigned long code);

  const std::string& call() const noexcept { return call_; }
  unsigned long code() const noexcept { return code_; }
  // The CK_RV constant's name, e.g. "CKR_PIN_INCORRECT".
  std::string code_name() const;
  Fault fault() const noexcept;

 private:
  std::string call_;
  unsigned long code_;
};

// Returns the name of a CK_RV value ("CKR_0x..." for unknown ones).
std::string rv_name(unsigned long rv);

// Throws Error(call, rv) unless rv is CKR_OK.
void check(unsigned long rv, const char* call);

}  // namespace firmad::pkcs11
