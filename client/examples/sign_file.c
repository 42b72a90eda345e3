/* Example: sign a file through firmad from C with libfirma.
 * Usage: sign_file KEY INPUT SIGNATURE_OUT [CMS_OUT]
 * Writes the raw SHA-256 signature and, if asked, an attached CMS (DER). */
#include <stdio.h>
#include <stdlib.h>

#include "client/firma.h"

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  unsigned char *buf = malloc(cap);
  size_t r;
  while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
    n += r;
    if (n == cap) {
      unsigned char *bigger = realloc(buf, cap *= 2);
      if (!bigger) { free(buf); buf = NULL; }
      else buf = bigger;
    }
  }
  fclose(f);
  *len = n;
  return buf;
}

static int spill(const char *path, const unsigned char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(data, 1, len, f) == len;
  return fclose(f) == 0 && ok ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s KEY INPUT SIGNATURE_OUT [CMS_OUT]\n", argv[0]);
    return 2;
  }
  size_t len = 0;
  unsigned char *data = slurp(argv[2], &len);
  if (!data) { perror(argv[2]); return 1; }

  firma_client *client = NULL;
  if (firma_connect(NULL, &client) != 0) {
    fprintf(stderr, "connect: %s\n", firma_last_error(client));
    firma_close(client);
    free(data);
    return 1;
  }
  int status = 0;
  uint8_t *sig = NULL, *cms = NULL;
  size_t sig_len = 0, cms_len = 0;
  if (firma_sign_data(client, argv[1], "sha256", data, len, &sig, &sig_len) != 0 || spill(argv[3], sig, sig_len) != 0) {
    fprintf(stderr, "sign: %s\n", firma_last_error(client));
    status = 1;
  } else if (argc > 4 && (firma_sign_cms(client, argv[1], data, len, 0, &cms, &cms_len) != 0 ||
                          spill(argv[4], cms, cms_len) != 0)) {
    fprintf(stderr, "sign cms: %s\n", firma_last_error(client));
    status = 1;
  }
  if (status == 0) printf("signed %zu bytes: signature %zu bytes%s\n", len, sig_len, cms ? ", CMS written" : "");
  firma_free(sig);
  firma_free(cms);
  firma_close(client);
  free(data);
  return status;
}
