/* A PKCS#11 module for tests: wraps SoftHSM and misbehaves on command.
 *
 * It forwards every call to the module named by $FIRMAD_FAULT_TARGET (default
 * SoftHSM2) and, on each call it intercepts, reads the control file named by
 * $FIRMAD_FAULT_CONTROL: whitespace-separated words
 *   count_low final_try locked   PIN flags C_GetTokenInfo reports (locked also
 *                                makes C_Login fail with CKR_PIN_LOCKED)
 *   removed                      the token is out of its slot: it is not listed,
 *                                C_GetTokenInfo says CKR_TOKEN_NOT_PRESENT, calls on
 *                                sessions CKR_DEVICE_REMOVED, and every session of
 *                                the token is closed (as a real removal does), so
 *                                after reinsertion the old handles are invalid
 *   slow_ms=N                    C_Sign takes N milliseconds longer (a smart card),
 *                                creating "<control>.in_sign" as it starts; a
 *                                removal during the wait fails it with
 *                                CKR_DEVICE_REMOVED, as a pulled card does
 *   device_error                 C_Sign fails with CKR_DEVICE_ERROR
 *   other_serial                 C_GetTokenInfo reports the serial "firmad-other":
 *                                another token with the same label
 *   device_removed               C_SignInit fails with CKR_DEVICE_REMOVED while the
 *                                token stays in its slot (a reader's glitch)
 *   session_invalid=N            the session a C_SignInit comes on dies: the module
 *                                closes it underneath (later calls on the handle
 *                                fail as they would on a real dead session) and
 *                                returns CKR_SESSION_HANDLE_INVALID; the token stays
 *                                present and logged in. Until N sessions have died
 *                                in all, counted in "$FIRMAD_FAULT_CONTROL.killed"
 *   refresh_error                C_GetTokenInfo fails with CKR_FUNCTION_FAILED (a token
 *                                that stops answering), each counted in
 *                                "<control>.refresh_errors"
 *   backend_gone                 the module lost its backend, as p11-kit-client.so
 *                                does when its server dies: C_GetSlotList lists no
 *                                slot and every other call fails CKR_DEVICE_ERROR.
 *                                With the word removed (the server back) calls
 *                                still fail CKR_DEVICE_ERROR until the program
 *                                calls C_Finalize and C_Initialize; each
 *                                C_Initialize is counted in "<control>.inits"
 *   lost_login=N                 another program logs the token out behind firmad's
 *                                back (a card reset, an HSM session timeout): on the
 *                                next C_GetSessionInfo or C_SignInit the module logs
 *                                out, until N logouts in all ("<control>.lost"); a
 *                                C_SignInit on a logged-out token then fails with
 *                                CKR_USER_NOT_LOGGED_IN, as a card's does
 *   piv                          a PIV card's module (ykcs11): every private key has
 *                                CKA_ALWAYS_AUTHENTICATE, so C_Sign fails with
 *                                CKR_USER_NOT_LOGGED_IN unless C_Login(CKU_CONTEXT_
 *                                SPECIFIC) with the user PIN came after C_SignInit
 *                                (each counted in "<control>.context_logins", a
 *                                wrong one in "<control>.context_refused"); objects
 *                                are created only by the security officer
 *                                (C_CreateObject, C_GenerateKeyPair:
 *                                CKR_USER_TYPE_INVALID in a user session); no
 *                                C_SetAttributeValue (CKR_FUNCTION_NOT_SUPPORTED);
 *                                the user PIN locks after 3 wrong tries in a row,
 *                                counted across processes in "<control>.wrong_pins",
 *                                and no final-try flag is ever reported
 *   pin_changed                  another program changed the user PIN after
 *                                firmad logged in: a context login fails with
 *                                CKR_PIN_INCORRECT
 *   pinpad=PIN                   a PIN-pad reader (CKF_PROTECTED_AUTHENTICATION_PATH):
 *                                C_Login without a PIN logs in as if the holder
 *                                typed PIN on the reader; each counted in
 *                                "<control>.pinpad_logins"
 *   lockout                      C_Login fails CKR_PIN_LOCKED whatever the PIN while the
 *                                token info shows no locked PIN (a TPM in
 *                                dictionary-attack lockout)
 *   slow_create_ms=N             C_CreateObject takes N milliseconds longer, each
 *                                counted in "<control>.in_create" as it starts
 *   stderr_flood                 every C_GetTokenInfo writes 100 diagnostic lines to
 *                                stderr, as tpm2-pkcs11 does while its TPM is gone
 * Calls in flight at once: the most ever seen inside C_GetSlotList, C_GetTokenInfo,
 * C_GetSessionInfo, C_Login, C_SignInit and C_Sign (slow_ms makes a signature
 * last) is written to "$FIRMAD_FAULT_CONTROL.overlap" each time it grows.
 * A C_CloseSession on a handle the module closed underneath (session_invalid,
 * a removal) and did not hand out again is a stale close: firmad must forget
 * such handles, never close them (a module may give the number to a new
 * session, another thread's). Each is refused and counted in
 * "$FIRMAD_FAULT_CONTROL.stale_closes".
 * Every C_Login call is counted in "$FIRMAD_FAULT_CONTROL.logins", and the
 * session handle of every signature made is appended to
 * "$FIRMAD_FAULT_CONTROL.signed", one per line. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST real_fns;
static CK_FUNCTION_LIST fault_fns;
static int loaded;

// Looks for `word` among the control file's words, bare ("word") or with a
// value ("word=VALUE"): returns 1 for the bare word, 2 for a value (copied
// into `value` when given), 0 when it is not there. The last one counts.
static int control_find(const char *word, char *value, size_t size) {
  const char *path = getenv("FIRMAD_FAULT_CONTROL");
  if (!path) return 0;
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char buf[256];
  int found = 0;
  const size_t len = strlen(word);
  while (fscanf(f, "%255s", buf) == 1) {
    if (strncmp(buf, word, len) != 0) continue;
    if (buf[len] == '\0') {
      found = 1;
    } else if (buf[len] == '=') {
      found = 2;
      if (value) snprintf(value, size, "%s", buf + len + 1);
    }
  }
  fclose(f);
  return found;
}

static int control_has(const char *word) { return control_find(word, NULL, 0) == 1; }

// The number after "word=" in the control file, or 0.
static long control_number(const char *word) {
  char value[64];
  return control_find(word, value, sizeof value) == 2 ? strtol(value, NULL, 10) : 0;
}

// The text after "word=" in the control file into out; returns whether found.
static int control_text(const char *word, char *out, size_t size) { return control_find(word, out, size) == 2; }

// "$FIRMAD_FAULT_CONTROL.<suffix>" into `out`; returns 0 without a control file.
static int side_file(const char *suffix, char *out, size_t size) {
  const char *path = getenv("FIRMAD_FAULT_CONTROL");
  if (!path) return 0;
  snprintf(out, size, "%s.%s", path, suffix);
  return 1;
}

// The number in a side file (0 if there is none).
static long counter(const char *suffix) {
  char name[4096];
  long n = 0;
  if (!side_file(suffix, name, sizeof name)) return 0;
  FILE *f = fopen(name, "r");
  if (f) {
    if (fscanf(f, "%ld", &n) != 1) n = 0;
    fclose(f);
  }
  return n;
}

// Signing threads count at once: one read-and-write of a side file at a time.
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static void count(const char *suffix) {
  char name[4096];
  if (!side_file(suffix, name, sizeof name)) return;
  pthread_mutex_lock(&count_lock);
  const long n = counter(suffix);
  FILE *f = fopen(name, "w");
  if (f) {
    fprintf(f, "%ld\n", n + 1);
    fclose(f);
  }
  pthread_mutex_unlock(&count_lock);
}

static void count_login(void) { count("logins"); }

// backend_gone: set once a call sees the backend gone; cleared only by a
// C_Initialize made after the backend is back.
static atomic_int backend_broken;

static int backend_down(void) {
  if (control_has("backend_gone")) {
    atomic_store(&backend_broken, 1);
    return 1;
  }
  return atomic_load(&backend_broken);
}

// Calls in flight (see "overlap" above): enter() on the way in, leave() on the way out.
static atomic_int in_flight, most_in_flight;

static void enter(void) {
  const int now = atomic_fetch_add(&in_flight, 1) + 1;
  int most = atomic_load(&most_in_flight);
  while (now > most)
    if (atomic_compare_exchange_weak(&most_in_flight, &most, now)) {
      char name[4096];
      if (!side_file("overlap", name, sizeof name)) break;
      pthread_mutex_lock(&count_lock);
      FILE *f = fopen(name, "w");
      if (f) {
        fprintf(f, "%d\n", atomic_load(&most_in_flight));
        fclose(f);
      }
      pthread_mutex_unlock(&count_lock);
      break;
    }
}

static CK_RV leave(CK_RV rv) {
  atomic_fetch_sub(&in_flight, 1);
  return rv;
}

static CK_RV fault_Initialize(CK_VOID_PTR args) {
  count("inits");
  if (!control_has("backend_gone")) atomic_store(&backend_broken, 0);
  return real_fns.C_Initialize(args);
}

// Which handles are open and which the module closed underneath.
#define MAX_HANDLES 256
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_SESSION_HANDLE open_handles[MAX_HANDLES], dead_handles[MAX_HANDLES];
static int open_count, dead_count;

// Removes h from set (of *n); returns whether it was there. Under handles_lock.
static int take(CK_SESSION_HANDLE *set, int *n, CK_SESSION_HANDLE h) {
  for (int i = 0; i < *n; ++i) {
    if (set[i] != h) continue;
    set[i] = set[--*n];
    return 1;
  }
  return 0;
}

static void put(CK_SESSION_HANDLE *set, int *n, CK_SESSION_HANDLE h) {
  if (*n < MAX_HANDLES) set[(*n)++] = h;
}

static void handle_opened(CK_SESSION_HANDLE h) {
  pthread_mutex_lock(&handles_lock);
  take(dead_handles, &dead_count, h);  // the number is in use again
  put(open_handles, &open_count, h);
  pthread_mutex_unlock(&handles_lock);
}

static void handle_killed(CK_SESSION_HANDLE h) {
  pthread_mutex_lock(&handles_lock);
  if (take(open_handles, &open_count, h)) put(dead_handles, &dead_count, h);
  pthread_mutex_unlock(&handles_lock);
}

static void all_handles_killed(void) {
  pthread_mutex_lock(&handles_lock);
  while (open_count > 0) put(dead_handles, &dead_count, open_handles[--open_count]);
  pthread_mutex_unlock(&handles_lock);
}

// piv: the user PIN of the last successful login (what a context login must
// repeat), and the sessions whose signing operation awaits a context login
// or has had it.
static pthread_mutex_t piv_lock = PTHREAD_MUTEX_INITIALIZER;
static char user_pin[64];
static CK_SESSION_HANDLE awaiting_context[MAX_HANDLES], context_given[MAX_HANDLES];
static int awaiting_count, given_count;

static int is_private_key(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object) {
  CK_OBJECT_CLASS cls = 0;
  CK_ATTRIBUTE a = {CKA_CLASS, &cls, sizeof cls};
  return real_fns.C_GetAttributeValue(session, object, &a, 1) == CKR_OK && cls == CKO_PRIVATE_KEY;
}

// Signing threads call concurrently: one kill decision at a time.
static pthread_mutex_t kill_lock = PTHREAD_MUTEX_INITIALIZER;

// With "session_invalid=N" and fewer than N killed so far, closes the session
// underneath the caller and returns 1.
static int kill_session(CK_SESSION_HANDLE session) {
  const long wanted = control_number("session_invalid");
  if (wanted <= 0) return 0;
  pthread_mutex_lock(&kill_lock);
  const int kill = counter("killed") < wanted;
  if (kill) {
    real_fns.C_CloseSession(session);
    handle_killed(session);
    count("killed");
  }
  pthread_mutex_unlock(&kill_lock);
  return kill;
}

static void record_signature(CK_SESSION_HANDLE session) {
  char name[4096];
  if (!side_file("signed", name, sizeof name)) return;
  FILE *f = fopen(name, "a");
  if (f) {
    fprintf(f, "%lu\n", (unsigned long)session);
    fclose(f);
  }
}

// The removal below closes every session from whichever thread notices it,
// while a signing thread may be inside C_SignInit or C_Sign on one of them.
// SoftHSM locks its session table but not a session's operation state against
// that (a real module is removed from inside, under its own locks), so the
// removal freed state a signing thread had just made (ThreadSanitizer: free in
// C_CloseAllSessions racing the allocation in C_SignInit). Signing calls hold
// this lock shared, the removal exclusively.
static pthread_rwlock_t operations_lock = PTHREAD_RWLOCK_INITIALIZER;

// While "removed": closes the token's sessions once and reports it gone.
// Signing threads and the control thread call this at once: the exchange
// lets exactly one of them see the removal begin.
static int removed(CK_SLOT_ID slot) {
  static atomic_int was_removed;
  const int now = control_has("removed");
  if (atomic_exchange(&was_removed, now) != now && now) {
    pthread_rwlock_wrlock(&operations_lock);
    real_fns.C_CloseAllSessions(slot);
    all_handles_killed();
    pthread_rwlock_unlock(&operations_lock);
  }
  return now;
}

static CK_SLOT_ID first_slot(void) {
  CK_SLOT_ID slots[8];
  CK_ULONG n = 8;
  if (real_fns.C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK || n == 0) return 0;
  return slots[0];
}

static CK_RV inner_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  if (control_has("backend_gone")) {
    atomic_store(&backend_broken, 1);
    *count = 0;
    return CKR_OK;
  }
  if (backend_down()) return CKR_DEVICE_ERROR;
  if (present && removed(first_slot())) {
    *count = 0;
    return CKR_OK;
  }
  return real_fns.C_GetSlotList(present, list, count);
}

static CK_RV fault_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR s) {
  if (backend_down()) return CKR_DEVICE_ERROR;
  if (removed(slot)) return CKR_TOKEN_NOT_PRESENT;
  const CK_RV rv = real_fns.C_OpenSession(slot, flags, app, notify, s);
  if (rv == CKR_OK) handle_opened(*s);
  return rv;
}

static CK_RV fault_CloseSession(CK_SESSION_HANDLE session) {
  pthread_mutex_lock(&handles_lock);
  const int stale = take(dead_handles, &dead_count, session);
  if (stale) put(dead_handles, &dead_count, session);
  else take(open_handles, &open_count, session);
  pthread_mutex_unlock(&handles_lock);
  if (stale) {
    count("stale_closes");
    return CKR_SESSION_HANDLE_INVALID;
  }
  return real_fns.C_CloseSession(session);
}

static CK_RV fault_CloseAllSessions(CK_SLOT_ID slot) {
  pthread_mutex_lock(&handles_lock);
  open_count = 0;  // one token: every session is on its slot
  pthread_mutex_unlock(&handles_lock);
  return real_fns.C_CloseAllSessions(slot);
}

// With "lost_login=N" and fewer than N so far: logs the token out underneath.
static void lose_login(CK_SESSION_HANDLE session) {
  const long wanted = control_number("lost_login");
  if (wanted <= 0) return;
  pthread_mutex_lock(&kill_lock);
  if (counter("lost") < wanted && real_fns.C_Logout(session) == CKR_OK) count("lost");
  pthread_mutex_unlock(&kill_lock);
}

static int logged_out(CK_SESSION_HANDLE session) {
  CK_SESSION_INFO info;
  return real_fns.C_GetSessionInfo(session, &info) == CKR_OK && info.state != CKS_RO_USER_FUNCTIONS &&
         info.state != CKS_RW_USER_FUNCTIONS;
}

static CK_RV inner_GetSessionInfo(CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info) {
  if (backend_down()) return CKR_DEVICE_ERROR;
  if (removed(first_slot())) return CKR_DEVICE_REMOVED;
  lose_login(session);
  return real_fns.C_GetSessionInfo(session, info);
}

static CK_RV inner_SignInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
  if (backend_down()) return CKR_DEVICE_ERROR;
  if (removed(first_slot()) || control_has("device_removed")) return CKR_DEVICE_REMOVED;
  if (kill_session(session)) return CKR_SESSION_HANDLE_INVALID;
  if (control_number("lost_login") > 0) {
    lose_login(session);
    if (logged_out(session)) return CKR_USER_NOT_LOGGED_IN;
  }
  pthread_rwlock_rdlock(&operations_lock);
  const CK_RV rv = real_fns.C_SignInit(session, mech, key);
  pthread_rwlock_unlock(&operations_lock);
  if (rv == CKR_OK && control_has("piv") && is_private_key(session, key)) {
    pthread_mutex_lock(&piv_lock);
    take(context_given, &given_count, session);
    put(awaiting_context, &awaiting_count, session);
    pthread_mutex_unlock(&piv_lock);
  }
  return rv;
}

static CK_RV inner_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len) {
  const long slow = control_number("slow_ms");
  if (slow > 0) {
    /* Tell the test a signature is inside the token: "<control>.in_sign". */
    const char *path = getenv("FIRMAD_FAULT_CONTROL");
    if (path) {
      char marker[4096];
      snprintf(marker, sizeof marker, "%s.in_sign", path);
      FILE *f = fopen(marker, "w");
      if (f) fclose(f);
    }
    struct timespec ts = {slow / 1000, (slow % 1000) * 1000000L};
    nanosleep(&ts, NULL);  /* the token's own slowness, not a test's wait */
  }
  /* piv: whether this operation had its context login (a length query keeps it). */
  pthread_mutex_lock(&piv_lock);
  const int awaiting = take(awaiting_context, &awaiting_count, session);
  const int given = take(context_given, &given_count, session);
  pthread_mutex_unlock(&piv_lock);
  /* The real operation is always finished, as a failing token ends it too. */
  pthread_rwlock_rdlock(&operations_lock);
  const CK_RV rv = real_fns.C_Sign(session, data, len, sig, sig_len);
  pthread_rwlock_unlock(&operations_lock);
  if (rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && !sig)) {
    pthread_mutex_lock(&piv_lock);
    if (awaiting) put(awaiting_context, &awaiting_count, session);
    if (given) put(context_given, &given_count, session);
    pthread_mutex_unlock(&piv_lock);
    return rv;
  }
  if (awaiting) {
    if (sig) memset(sig, 0, *sig_len);  /* a card without the context login makes no signature */
    return CKR_USER_NOT_LOGGED_IN;
  }
  if (removed(first_slot())) return CKR_DEVICE_REMOVED;
  if (control_has("device_error")) return CKR_DEVICE_ERROR;
  if (rv == CKR_OK && sig) record_signature(session);
  return rv;
}

static CK_RV fault_GetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n) {
  if (backend_down()) return CKR_DEVICE_ERROR;
  const CK_RV rv = real_fns.C_GetAttributeValue(session, object, tmpl, n);
  if (!control_has("piv") || !is_private_key(session, object)) return rv;
  for (CK_ULONG i = 0; i < n; ++i) {
    if (tmpl[i].type != CKA_ALWAYS_AUTHENTICATE) continue;
    if (tmpl[i].pValue && tmpl[i].ulValueLen >= sizeof(CK_BBOOL)) *(CK_BBOOL *)tmpl[i].pValue = CK_TRUE;
    tmpl[i].ulValueLen = sizeof(CK_BBOOL);
  }
  return rv;
}

static CK_RV fault_CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n, CK_OBJECT_HANDLE_PTR object) {
  if (control_has("piv")) return CKR_USER_TYPE_INVALID;
  const long slow = control_number("slow_create_ms");
  if (slow > 0) {
    count("in_create");  /* a write is inside the token now */
    struct timespec ts = {slow / 1000, (slow % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  return real_fns.C_CreateObject(session, tmpl, n, object);
}

static CK_RV fault_GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub, CK_ULONG npub,
                                   CK_ATTRIBUTE_PTR priv, CK_ULONG npriv, CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv) {
  if (control_has("piv")) return CKR_USER_TYPE_INVALID;
  return real_fns.C_GenerateKeyPair(session, mech, pub, npub, priv, npriv, hpub, hpriv);
}

static CK_RV fault_SetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n) {
  if (control_has("piv")) return CKR_FUNCTION_NOT_SUPPORTED;
  return real_fns.C_SetAttributeValue(session, object, tmpl, n);
}

static CK_RV inner_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  if (backend_down()) return CKR_DEVICE_ERROR;
  if (control_has("stderr_flood"))
    for (int i = 0; i < 100; ++i) fprintf(stderr, "ERROR: fault module: diagnostic line %d of a flood\n", i);
  if (removed(slot)) return CKR_TOKEN_NOT_PRESENT;
  if (control_has("refresh_error")) {
    count("refresh_errors");
    return CKR_FUNCTION_FAILED;
  }
  CK_RV rv = real_fns.C_GetTokenInfo(slot, info);
  if (rv != CKR_OK) return rv;
  if (control_has("count_low")) info->flags |= CKF_USER_PIN_COUNT_LOW;
  if (control_has("final_try")) info->flags |= CKF_USER_PIN_FINAL_TRY;
  if (control_has("locked") || (control_has("piv") && counter("wrong_pins") >= 3)) info->flags |= CKF_USER_PIN_LOCKED;
  if (control_has("piv")) info->flags &= ~(CK_FLAGS)CKF_USER_PIN_FINAL_TRY;
  char pad[64];
  if (control_text("pinpad", pad, sizeof pad)) info->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
  if (control_has("other_serial")) {
    memset(info->serialNumber, ' ', sizeof info->serialNumber);
    memcpy(info->serialNumber, "firmad-other", 12);
  }
  return CKR_OK;
}

static void count_wrong_pins(CK_RV rv) {
  char name[4096];
  if (!side_file("wrong_pins", name, sizeof name)) return;
  if (rv == CKR_PIN_INCORRECT) {
    count("wrong_pins");
  } else if (rv == CKR_OK) {
    FILE *f = fopen(name, "w");  // a right PIN resets the card's counter
    if (f) fclose(f);
  }
}

static CK_RV context_login(CK_SESSION_HANDLE session, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  count("context_logins");
  pthread_mutex_lock(&piv_lock);
  CK_RV rv = CKR_OPERATION_NOT_INITIALIZED;
  if (take(awaiting_context, &awaiting_count, session)) {
    const int right = !control_has("pin_changed") && pin && len == strlen(user_pin) && memcmp(pin, user_pin, len) == 0;
    if (right) put(context_given, &given_count, session), rv = CKR_OK;
    else put(awaiting_context, &awaiting_count, session), rv = CKR_PIN_INCORRECT;
  }
  pthread_mutex_unlock(&piv_lock);
  if (rv == CKR_PIN_INCORRECT) count("context_refused");
  return rv;
}

static CK_RV inner_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  if (backend_down()) return CKR_DEVICE_ERROR;
  if (user == CKU_CONTEXT_SPECIFIC && control_has("piv")) return context_login(session, pin, len);
  count_login();
  if (control_has("locked") || control_has("lockout")) return CKR_PIN_LOCKED;
  if (control_has("piv") && counter("wrong_pins") >= 3) return CKR_PIN_LOCKED;
  char pad[64];
  if (!pin && control_text("pinpad", pad, sizeof pad)) {
    count("pinpad_logins");  // the holder types it on the reader
    return real_fns.C_Login(session, user, (CK_UTF8CHAR_PTR)pad, strlen(pad));
  }
  const CK_RV rv = real_fns.C_Login(session, user, pin, len);
  if (control_has("piv")) count_wrong_pins(rv);
  if (rv == CKR_OK && pin && len < sizeof user_pin) {
    pthread_mutex_lock(&piv_lock);
    memcpy(user_pin, pin, len);
    user_pin[len] = 0;
    pthread_mutex_unlock(&piv_lock);
  }
  return rv;
}

// The intercepted calls whose overlap is measured: each inner_X in enter()/leave().
static CK_RV fault_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  enter();
  return leave(inner_GetSlotList(present, list, count));
}
static CK_RV fault_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  enter();
  return leave(inner_GetTokenInfo(slot, info));
}
static CK_RV fault_GetSessionInfo(CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info) {
  enter();
  return leave(inner_GetSessionInfo(session, info));
}
static CK_RV fault_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  enter();
  return leave(inner_Login(session, user, pin, len));
}
static CK_RV fault_SignInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
  enter();
  return leave(inner_SignInit(session, mech, key));
}
static CK_RV fault_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len) {
  enter();
  return leave(inner_Sign(session, data, len, sig, sig_len));
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
    fault_fns.C_GetSlotList = fault_GetSlotList;
    fault_fns.C_OpenSession = fault_OpenSession;
    fault_fns.C_Initialize = fault_Initialize;
    fault_fns.C_CloseSession = fault_CloseSession;
    fault_fns.C_CloseAllSessions = fault_CloseAllSessions;
    fault_fns.C_GetSessionInfo = fault_GetSessionInfo;
    fault_fns.C_SignInit = fault_SignInit;
    fault_fns.C_Sign = fault_Sign;
    fault_fns.C_GetAttributeValue = fault_GetAttributeValue;
    fault_fns.C_CreateObject = fault_CreateObject;
    fault_fns.C_GenerateKeyPair = fault_GenerateKeyPair;
    fault_fns.C_SetAttributeValue = fault_SetAttributeValue;
    loaded = 1;
  }
  *list = &fault_fns;
  return CKR_OK;
}
