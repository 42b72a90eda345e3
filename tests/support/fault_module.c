/* A PKCS#11 module for tests: wraps SoftHSM and misbehaves on command.
 *
 * It forwards every call to the module named by $FIRMAD_FAULT_TARGET (default
 * SoftHSM2) and, on each call it intercepts, reads the control file named by
 * $FIRMAD_FAULT_CONTROL: whitespace-separated words
 *   count_low final_try locked   PIN flags C_GetTokenInfo reports (locked also
 *                                makes C_Login fail with CKR_PIN_LOCKED)
 * Every C_Login call is counted in "$FIRMAD_FAULT_CONTROL.logins". */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST real_fns;
static CK_FUNCTION_LIST fault_fns;
static int loaded;

static int control_has(const char *word) {
  const char *path = getenv("FIRMAD_FAULT_CONTROL");
  if (!path) return 0;
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char buf[256];
  int found = 0;
  while (fscanf(f, "%255s", buf) == 1) {
    if (strcmp(buf, word) == 0) found = 1;
  }
  fclose(f);
  return found;
}

static void count_login(void) {
  const char *path = getenv("FIRMAD_FAULT_CONTROL");
  if (!path) return;
  char counter[4096];
  snprintf(counter, sizeof counter, "%s.logins", path);
  long n = 0;
  FILE *f = fopen(counter, "r");
  if (f) {
    if (fscanf(f, "%ld", &n) != 1) n = 0;
    fclose(f);
  }
  f = fopen(counter, "w");
  if (f) {
    fprintf(f, "%ld\n", n + 1);
    fclose(f);
  }
}

static CK_RV fault_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  CK_RV rv = real_fns.C_GetTokenInfo(slot, info);
  if (rv != CKR_OK) return rv;
  if (control_has("count_low")) info->flags |= CKF_USER_PIN_COUNT_LOW;
  if (control_has("final_try")) info->flags |= CKF_USER_PIN_FINAL_TRY;
  if (control_has("locked")) info->flags |= CKF_USER_PIN_LOCKED;
  return CKR_OK;
}

static CK_RV fault_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  count_login();
  if (control_has("locked")) return CKR_PIN_LOCKED;
  return real_fns.C_Login(session, user, pin, len);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  if (!list) return CKR_ARGUMENTS_BAD;
  if (!loaded) {
    const char *target = getenv("FIRMAD_FAULT_TARGET");
    void *lib = dlopen(target ? target : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR real = NULL;
    if (!get || get(&real) != CKR_OK || !real) return CKR_GENERAL_ERROR;
    real_fns = *real;
    fault_fns = *real;
    fault_fns.C_GetFunctionList = C_GetFunctionList;
    fault_fns.C_GetTokenInfo = fault_GetTokenInfo;
    fault_fns.C_Login = fault_Login;
    loaded = 1;
  }
  *list = &fault_fns;
  return CKR_OK;
}
