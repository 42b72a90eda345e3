// The PKCS#11 types libfirma-pkcs11 implements: p11-kit's 2.40 header plus the 3.0 pieces it lacks.
#pragma once
#include <p11-kit/pkcs11.h>

namespace firma::p11 {

// PKCS#11 3.0 §5.2: p11-kit 0.24's header predates CK_INTERFACE.
struct CK_INTERFACE {
  CK_CHAR* pInterfaceName;
  CK_VOID_PTR pFunctionList;
  CK_FLAGS flags;
};
inline constexpr CK_FLAGS kInterfaceForkSafe = 0x00000001UL;  // CKF_INTERFACE_FORK_SAFE

// PKCS#11 3.0 §2.3.14: CKM_EDDSA's optional parameter.
struct CK_EDDSA_PARAMS {
  CK_BBOOL phFlag;
  CK_ULONG ulContextDataLen;
  CK_BYTE_PTR pContextData;
};

}  // namespace firma::p11
