#!/usr/bin/env bash
# Creates a tpm2-pkcs11 token on a software TPM already listening on
# 127.0.0.1:PORT (swtpm, started and owned by the caller), with keys generated
# in the TPM and certificates from a test CA, all inside DIR, plus a
# firmad.toml for it.
#
#   tests/support/make-tpm2-token.sh DIR PORT
#
# DIR/store/          the tpm2-pkcs11 store (TPM2_PKCS11_STORE)
# DIR/ca/ca.pem       the test CA that issued the certificates (ca.key beside it)
# DIR/pin             the user PIN, mode 0600
# DIR/ALIAS.pub.pem   each key's public key, as the token's store holds it
# DIR/ALIAS.crt.pem   each key's certificate, also stored on the token
# DIR/firmad.toml     a configuration serving the keys on DIR/run/firmad.sock
# Keys (alias, CKA_ID): empresa RSA-2048 "01" (hex 3031), firma-ec P-256 "02"
# (hex 3032); token label firmad-tpm, PIN 123456.
#
# tpm2_ptool needs more TPM objects at once than swtpm's three transient
# slots hold, so it goes through tpm2-abrmd (a resource manager) on a private
# D-Bus session bus; both are stopped before this script ends, and the TPM is
# then free for one client: firmad straight to swtpm (TPM2_PKCS11_TCTI=
# swtpm:host=127.0.0.1,port=PORT), or a resource manager the caller starts.
set -euo pipefail

dir=${1:?usage: make-tpm2-token.sh DIR PORT}
port=${2:?usage: make-tpm2-token.sh DIR PORT}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
label=firmad-tpm
pin=123456
so_pin=12345678
module=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so

for tool in tpm2_ptool tpm2-abrmd dbus-daemon openssl; do
  command -v "$tool" >/dev/null || { echo "make-tpm2-token.sh: $tool is missing (see run.sh's package list)" >&2; exit 2; }
done
[ -e "$module" ] || { echo "make-tpm2-token.sh: $module is missing (install libtpm2-pkcs11-1)" >&2; exit 2; }
[ -e /usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0 ] ||
  { echo "make-tpm2-token.sh: the tabrmd TCTI is missing (install libtss2-tcti-tabrmd0)" >&2; exit 2; }

rm -rf "$dir/store" "$dir/ca" "$dir/work" "$dir/bus"
mkdir -p "$dir/store" "$dir/ca" "$dir/work" "$dir/run" "$dir/bus"
chmod 700 "$dir/work"

bus_pid="" abrmd_pid=""
stop_helpers() {
  # abrmd first: it is a client of the bus.
  for pid in $abrmd_pid $bus_pid; do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -f "$dir/bus/pids"
}
trap stop_helpers EXIT
trap 'exit 130' INT TERM

export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/bus/socket"
dbus-daemon --session --address="$DBUS_SESSION_BUS_ADDRESS" --nofork --nopidfile >"$dir/bus/dbus.log" 2>&1 &
bus_pid=$!
for _ in $(seq 200); do [ -S "$dir/bus/socket" ] && break; sleep 0.05; done
[ -S "$dir/bus/socket" ] || { echo "dbus-daemon did not start:" >&2; cat "$dir/bus/dbus.log" >&2; exit 1; }
tpm2-abrmd --session --allow-root --flush-all --tcti="swtpm:host=127.0.0.1,port=$port" >"$dir/bus/abrmd.log" 2>&1 &
abrmd_pid=$!
# For the caller's clean-up should this script itself be killed.
echo "$bus_pid $abrmd_pid" > "$dir/bus/pids"

export TPM2TOOLS_TCTI="tabrmd:bus_type=session" TPM2_PKCS11_TCTI="tabrmd:bus_type=session"
export TPM2_PKCS11_STORE="$dir/store" TSS2_LOG=all+NONE
up=""
for _ in $(seq 200); do
  if tpm2_getrandom 4 >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$abrmd_pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$up" ] || { echo "tpm2-abrmd did not come up on port $port:" >&2; cat "$dir/bus/abrmd.log" >&2; exit 1; }

ptool() { tpm2_ptool "$@" --path "$dir/store" >"$dir/work/ptool.log" 2>&1 || { echo "tpm2_ptool $1 failed:" >&2; cat "$dir/work/ptool.log" >&2; exit 1; }; }
ptool init
ptool addtoken --pid=1 --label="$label" --sopin="$so_pin" --userpin="$pin"
umask 077
printf '%s\n' "$pin" > "$dir/pin"

# The test CA.
. "$(dirname "${BASH_SOURCE[0]}")/token-common.sh"
make_test_ca "$dir"

# public_key ALIAS: the public key of ALIAS as the store holds it (the
# CKA_MODULUS/CKA_PUBLIC_EXPONENT or CKA_EC_PARAMS/CKA_EC_POINT tpm2-pkcs11
# serves), as PEM on stdout. Read from the store with tpm2_ptool's own
# Python (python3-cryptography, python3-yaml: its dependencies), not through
# the module with pkcs11-tool 0.23, whose read of an EC public key fails now
# and then ("cannot create EVP_PKEY" with a valid CKA_EC_POINT).
public_key() {
  /usr/bin/python3 - "$dir/store" "$label" "$1" <<'PY'
import subprocess, sys, yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

store, token, alias = sys.argv[1:]
def ptool(*args):
    return yaml.safe_load(subprocess.run(["tpm2_ptool", *args, "--path", store], check=True,
                                         capture_output=True, text=True).stdout)
objects = [o for o in ptool("listobjects", "--label", token)
           if o["CKA_CLASS"] == "CKO_PUBLIC_KEY" and o["CKA_LABEL"] == alias]
if len(objects) != 1:
    sys.exit(f"{len(objects)} public keys labelled {alias} on {token}")
attrs = ptool("objmod", "--id", str(objects[0]["id"]))
CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT = 0x120, 0x122, 0x180, 0x181
P256_OID_DER = bytes.fromhex("06082a8648ce3d030107")
if objects[0]["CKA_KEY_TYPE"] == "CKK_RSA":
    key = rsa.RSAPublicNumbers(int(str(attrs[CKA_PUBLIC_EXPONENT]), 16), int(str(attrs[CKA_MODULUS]), 16)).public_key()
elif objects[0]["CKA_KEY_TYPE"] == "CKK_EC":
    if bytes.fromhex(attrs[CKA_EC_PARAMS]) != P256_OID_DER:
        sys.exit(f"{alias}: only P-256 is made here, the store says {attrs[CKA_EC_PARAMS]}")
    point = bytes.fromhex(attrs[CKA_EC_POINT])
    if point[0] != 0x04 or point[1] != len(point) - 2:  # DER OCTET STRING around the point
        sys.exit(f"{alias}: CKA_EC_POINT is not a DER OCTET STRING: {attrs[CKA_EC_POINT]}")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point[2:])
else:
    sys.exit(f"{alias}: unexpected key type {objects[0]['CKA_KEY_TYPE']}")
sys.stdout.write(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
PY
}

# key ALIAS ID ALGORITHM: a key pair generated in the TPM, its public key
# read back from the store, and a certificate for that public key (the
# request is signed by a throwaway software key: the CA takes the token's
# public key from -force_pubkey) stored on the token under the key's CKA_ID.
key() {
  local alias=$1 id=$2 algorithm=$3
  local id_hex
  id_hex=$(printf '%s' "$id" | od -An -tx1 | tr -d ' \n')
  ptool addkey --label="$label" --key-label="$alias" --id="$id" --userpin="$pin" --algorithm="$algorithm"
  public_key "$alias" > "$dir/$alias.pub.pem" || { echo "reading the public key of $alias from the store failed" >&2; exit 1; }
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/work/throwaway.key" 2>/dev/null
  openssl req -new -key "$dir/work/throwaway.key" -out "$dir/work/$alias.csr" \
    -subj "/C=MX/O=EMPRESA DEMO SA DE CV/serialNumber=EDE010101AAA/CN=EMPRESA DEMO SA DE CV $alias" 2>/dev/null
  openssl x509 -req -in "$dir/work/$alias.csr" -force_pubkey "$dir/$alias.pub.pem" -CA "$dir/ca/ca.pem" \
    -CAkey "$dir/ca/ca.key" -CAcreateserial -days 365 -extfile "$dir/work/ext.cnf" -out "$dir/$alias.crt.pem" 2>/dev/null
  ptool addcert --label="$label" --key-id="$id_hex" "$dir/$alias.crt.pem"
}

key empresa 01 rsa2048
key firma-ec 02 ecc256
rm -rf "$dir/work"

me=$(id -u)
{
  echo "# firmad configuration for the tpm2-pkcs11 token made by tests/support/make-tpm2-token.sh."
  firmad_toml_head "$dir"
} > "$dir/firmad.toml"
cat >> "$dir/firmad.toml" <<TOML

[tokens.tpm]
module = "$module"
uri = "pkcs11:token=$label"
sessions = 2
pin_source = "file"
pin_file = "$dir/pin"

[keys.empresa]
token = "tpm"
uri = "pkcs11:object=empresa;id=%30%31"
allow_users = [$me]

[keys.firma-ec]
token = "tpm"
uri = "pkcs11:object=firma-ec;id=%30%32"
allow_users = [$me]
TOML
echo "$dir"
