#!/usr/bin/env bash
# Creates a SoftHSM2 token with signing keys and certificates from a test CA,
# all inside DIR (never the system token store), plus a firmad.toml for it.
#
#   tests/support/make-token.sh DIR
#
# DIR/softhsm2.conf   the token store (export SOFTHSM2_CONF=DIR/softhsm2.conf)
# DIR/ca/ca.pem       the test CA that issued the certificates
# DIR/pin             the user PIN, mode 0600
# DIR/firmad.toml     a configuration serving the keys below on DIR/run/firmad.sock
# Keys (alias, id): empresa RSA-2048 01, firma-ec P-256 02, firma-ed Ed25519 03
# (no certificate), firma-p384 P-384 04. Software copies of the keys are
# deleted once they are on the token.
set -euo pipefail

dir=${1:?usage: make-token.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
label=${FIRMAD_TOKEN_LABEL:-firmad-demo}
pin=${FIRMAD_TOKEN_PIN:-123456}
so_pin=12345678
module=${FIRMAD_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

rm -rf "$dir/tokens" "$dir/ca" "$dir/work"
mkdir -p "$dir/tokens" "$dir/ca" "$dir/work" "$dir/run"
chmod 700 "$dir/work"
cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"

softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >/dev/null
umask 077
printf '%s\n' "$pin" > "$dir/pin"

# The test CA.
. "$(dirname "${BASH_SOURCE[0]}")/token-common.sh"
make_test_ca "$dir"

# put ALIAS ID OPENSSL-GENPKEY-ARGS...: key made in software, certified, moved
# onto the token with its certificate under one CKA_ID and label.
put() {
  local alias=$1 id=$2; shift 2
  local key="$dir/work/$alias.key"
  openssl genpkey "$@" -out "$key" 2>/dev/null
  openssl req -new -key "$key" -out "$dir/work/$alias.csr" \
    -subj "/C=MX/O=EMPRESA DEMO SA DE CV/serialNumber=EDE010101AAA/CN=EMPRESA DEMO SA DE CV $alias" 2>/dev/null
  openssl x509 -req -in "$dir/work/$alias.csr" -CA "$dir/ca/ca.pem" -CAkey "$dir/ca/ca.key" -CAcreateserial \
    -days 365 -extfile "$dir/work/ext.cnf" -out "$dir/$alias.crt.pem" 2>/dev/null
  openssl x509 -in "$dir/$alias.crt.pem" -outform DER -out "$dir/work/$alias.crt.der"
  softhsm2-util --import "$key" --token "$label" --label "$alias" --id "$id" --pin "$pin" >/dev/null
  pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" \
    --write-object "$dir/work/$alias.crt.der" --type cert --id "$id" --label "$alias" >/dev/null 2>&1
  shred -u "$key" 2>/dev/null || rm -f "$key"
}

put empresa 01 -algorithm RSA -pkeyopt rsa_keygen_bits:2048
put firma-ec 02 -algorithm EC -pkeyopt ec_paramgen_curve:P-256
put firma-p384 04 -algorithm EC -pkeyopt ec_paramgen_curve:P-384
# Ed25519 generated on the token itself: sensitive and never extractable.
pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" \
  --keypairgen --key-type EC:edwards25519 --id 03 --label firma-ed >/dev/null 2>&1
rm -rf "$dir/work"

me=$(id -u)
{
  echo "# firmad configuration for the token made by tests/support/make-token.sh."
  firmad_toml_head "$dir"
} > "$dir/firmad.toml"
cat >> "$dir/firmad.toml" <<TOML

[tokens.demo]
module = "$module"
uri = "pkcs11:token=$label"
sessions = ${FIRMAD_TOKEN_SESSIONS:-2}
pin_source = "file"
pin_file = "$dir/pin"

[keys.empresa]
token = "demo"
uri = "pkcs11:object=empresa;id=%01"
allow_users = [$me]

[keys.firma-ec]
token = "demo"
uri = "pkcs11:object=firma-ec;id=%02"
allow_users = [$me]

[keys.firma-ed]
token = "demo"
uri = "pkcs11:object=firma-ed;id=%03"
allow_users = [$me]

[keys.firma-p384]
token = "demo"
uri = "pkcs11:object=firma-p384;id=%04"
allow_users = [$me]
TOML
echo "$dir"
