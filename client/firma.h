/* libfirma's C interface: sign through firmad from programs in any language. */
#ifndef FIRMA_H
#define FIRMA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct firma_client firma_client;

/* Every function returning int returns 0 on success and -1 on failure; the
 * reason is then in firma_last_error() (for a daemon error, its Varlink name
 * followed by its parameters, e.g. "io.firmad.Signer.KeyNotFound {...}"). */

/* Connects to firmad; socket_path NULL means $FIRMAD_SOCKET or
 * /run/firmad/firmad.sock. *out is set even on failure (so the error can be
 * read) and must be released with firma_close(). */
int firma_connect(const char *socket_path, firma_client **out);
void firma_close(firma_client *client);
const char *firma_last_error(const firma_client *client);

/* Hashes data locally with hash ("sha256", "sha384", "sha512", or "sha1" for
 * keys that allow it; NULL means
 * "sha256") and has the key sign the digest. *sig is malloc'd: firma_free(). */
int firma_sign_data(firma_client *client, const char *key, const char *hash, const uint8_t *data, size_t len,
                    uint8_t **sig, size_t *sig_len);
/* Signs a digest the caller computed. */
int firma_sign_digest(firma_client *client, const char *key, const char *hash, const uint8_t *digest, size_t len,
                      uint8_t **sig, size_t *sig_len);
/* CMS SignedData in DER: content attached (at most 1 MiB) when detached is 0,
 * otherwise detached over a SHA-256 digest computed here. */
int firma_sign_cms(firma_client *client, const char *key, const uint8_t *content, size_t len, int detached,
                   uint8_t **cms, size_t *cms_len);
/* The Status reply as a JSON text (malloc'd: firma_free()). */
int firma_status_json(firma_client *client, char **json);

void firma_free(void *p);

#ifdef __cplusplus
}
#endif

#endif /* FIRMA_H */
