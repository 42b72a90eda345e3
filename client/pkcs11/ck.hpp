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

// PKCS#11 3.0 §5.4: the 3.0 function list is the 2.40 list followed by
// these, in this order (laid out as one flat struct of pointers).
struct CK_FUNCTION_LIST_3_0 {
  CK_FUNCTION_LIST v2;  // version 3.0 here
  CK_RV (*C_GetInterfaceList)(CK_INTERFACE*, CK_ULONG*);
  CK_RV (*C_GetInterface)(CK_UTF8CHAR*, CK_VERSION*, CK_INTERFACE**, CK_FLAGS);
  CK_RV (*C_LoginUser)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR*, CK_ULONG, CK_UTF8CHAR*, CK_ULONG);
  CK_RV (*C_SessionCancel)(CK_SESSION_HANDLE, CK_FLAGS);
  CK_RV (*C_MessageEncryptInit)(CK_SESSION_HANDLE, CK_MECHANISM*, CK_OBJECT_HANDLE);
  CK_RV (*C_EncryptMessage)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG*);
  CK_RV (*C_EncryptMessageBegin)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG);
  CK_RV (*C_EncryptMessageNext)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG*, CK_FLAGS);
  CK_RV (*C_MessageEncryptFinal)(CK_SESSION_HANDLE);
  CK_RV (*C_MessageDecryptInit)(CK_SESSION_HANDLE, CK_MECHANISM*, CK_OBJECT_HANDLE);
  CK_RV (*C_DecryptMessage)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG*);
  CK_RV (*C_DecryptMessageBegin)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG);
  CK_RV (*C_DecryptMessageNext)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG*, CK_FLAGS);
  CK_RV (*C_MessageDecryptFinal)(CK_SESSION_HANDLE);
  CK_RV (*C_MessageSignInit)(CK_SESSION_HANDLE, CK_MECHANISM*, CK_OBJECT_HANDLE);
  CK_RV (*C_SignMessage)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG*);
  CK_RV (*C_SignMessageBegin)(CK_SESSION_HANDLE, void*, CK_ULONG);
  CK_RV (*C_SignMessageNext)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG*);
  CK_RV (*C_MessageSignFinal)(CK_SESSION_HANDLE);
  CK_RV (*C_MessageVerifyInit)(CK_SESSION_HANDLE, CK_MECHANISM*, CK_OBJECT_HANDLE);
  CK_RV (*C_VerifyMessage)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG);
  CK_RV (*C_VerifyMessageBegin)(CK_SESSION_HANDLE, void*, CK_ULONG);
  CK_RV (*C_VerifyMessageNext)(CK_SESSION_HANDLE, void*, CK_ULONG, CK_BYTE*, CK_ULONG, CK_BYTE*, CK_ULONG);
  CK_RV (*C_MessageVerifyFinal)(CK_SESSION_HANDLE);
};
static_assert(sizeof(CK_FUNCTION_LIST_3_0) == sizeof(CK_FUNCTION_LIST) + 24 * sizeof(void*),
              "the 3.0 list is the 2.40 list and 24 more pointers, no padding");
inline constexpr CK_RV kOperationCancelFailed = 0x00000202UL;  // CKR_OPERATION_CANCEL_FAILED
inline constexpr CK_FLAGS kFindObjects = 0x00000040UL;         // CKF_FIND_OBJECTS (C_SessionCancel)

// PKCS#11 3.0 §2.3.14: CKM_EDDSA's optional parameter.
struct CK_EDDSA_PARAMS {
  CK_BBOOL phFlag;
  CK_ULONG ulContextDataLen;
  CK_BYTE_PTR pContextData;
};

}  // namespace firma::p11
