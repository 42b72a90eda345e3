/* firmad-rss-baseline: the resident memory any process pays to hold a logged-in
 * session on the token: the module loaded and initialised, a session open,
 * logged in. firmad-bench runs it next to firmad and reports both.
 * Usage: firmad-rss-baseline MODULE PIN  (SOFTHSM2_CONF set by the caller) */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  void *lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) return 1;
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR f = NULL;
  if (!get || get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) return 1;
  CK_SLOT_ID slots[16];
  CK_ULONG n = 16;
  CK_SESSION_HANDLE session;
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK || n == 0 ||
      f->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK ||
      f->C_Login(session, CKU_USER, (CK_UTF8CHAR_PTR)argv[2], strlen(argv[2])) != CKR_OK)
    return 1;
  FILE *status = fopen("/proc/self/status", "r");
  char line[256];
  while (status && fgets(line, sizeof line, status)) {
    long kib;
    if (sscanf(line, "VmRSS: %ld", &kib) == 1) printf("%ld\n", kib);
  }
  f->C_Logout(session);
  f->C_Finalize(NULL);
  return 0;
}
