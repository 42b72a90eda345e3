#!/usr/bin/env bash
# Builds the libFuzzer targets with clang + ASan/UBSan and runs each for a bounded time.
#
#   tests/fuzz/run.sh                  # 60 s per target
#   FUZZ_SECONDS=600 tests/fuzz/run.sh # longer
#
# Environment:
#   FUZZ_SECONDS       seconds per target (default 60)
#   FUZZ_TARGETS       targets to run (default: all eight)
#   FUZZ_BUILD_DIR     build directory (default <source>/build-fuzz); the corpus
#                      grows in <build>/corpus/<target> from run to run
#   FIRMAD_SOURCE_DIR  the CMake source tree (default: this repository)
#   JOBS               parallel build jobs (default 2)
#   FUZZ_ARGS          extra libFuzzer flags, e.g. "-max_len=65536"
#
# Exits 0 when no target found anything, 1 when one crashed, leaked, timed out
# or broke an invariant (the input is saved in <build>/artifacts/), 2 when the
# build could not be set up.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${FIRMAD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
build="${FUZZ_BUILD_DIR:-$src/build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-fuzz_protocol fuzz_config fuzz_credential fuzz_identity fuzz_http_url fuzz_subject fuzz_ca_answer fuzz_pkcs11_module}"
jobs="${JOBS:-2}"

die() { echo "fuzz: $*" >&2; exit 2; }

[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "FUZZ_SECONDS must be a positive integer, not '$seconds'"

# --- clang with the libFuzzer and sanitizer runtimes -------------------------
can_build_fuzzer() {
  command -v clang++ >/dev/null 2>&1 || return 1
  local probe
  probe="$(mktemp -d)"
  printf '#include <cstdint>\n#include <cstddef>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' \
    >"$probe/probe.cpp"
  clang++ -fsanitize=fuzzer,address,undefined "$probe/probe.cpp" -o "$probe/probe" >/dev/null 2>&1
  local rc=$?
  rm -rf "$probe"
  return $rc
}

if ! can_build_fuzzer; then
  echo "fuzz: installing clang and its runtimes (clang, libclang-rt-14-dev)" >&2
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  $sudo apt-get install -y clang libclang-rt-14-dev || die "could not install clang; run: apt-get install clang libclang-rt-14-dev"
  can_build_fuzzer || die "clang++ cannot link -fsanitize=fuzzer; install libclang-rt-14-dev"
fi

# --- configure and build -----------------------------------------------------
# The sanitizers and coverage instrumentation go into the whole build: the
# targets use the static library firmad_protocol and daemon/config.cpp, which
# must be instrumented too (tests/fuzz/CMakeLists.txt adds -fsanitize=fuzzer at
# link). Only the fuzz targets and what they need are built.
sanitize="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
generator=()
if [[ ! -f "$build/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

echo "fuzz: configuring $build (clang, ASan+UBSan)" >&2
CC=clang CXX=clang++ cmake -S "$src" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_C_FLAGS="$sanitize" -DCMAKE_CXX_FLAGS="$sanitize" \
  -DFIRMAD_BUILD_TESTS=ON -DFIRMAD_BUILD_BENCH=OFF >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; die "cmake configure failed"; }
rm -f "$build.configure.log"

for t in $targets; do
  cmake --build "$build" --target help | grep -E "(^|[ :])$t([ :]|$)" >/dev/null ||
    die "the build has no target '$t': does tests/CMakeLists.txt add_subdirectory(fuzz)?"
done

echo "fuzz: building $targets" >&2
# shellcheck disable=SC2086  # $targets is a list
cmake --build "$build" -j "$jobs" --target $targets || die "build failed"

# --- seeds and dictionaries --------------------------------------------------
seed() {  # seed <target> <name> <content>
  local dir="$build/corpus/$1"
  mkdir -p "$dir"
  [[ -e "$dir/seed-$2" ]] || printf '%s' "$3" >"$dir/seed-$2"
}

for t in $targets fuzz_identity fuzz_credential fuzz_ca_answer; do mkdir -p "$build/corpus/$t"; done
# Real credentials as seeds: a certificate (DER) and a PKCS#12 with the
# password the target uses ("fuzz").
if [[ ! -e "$build/corpus/fuzz_identity/seed-cert.der" ]]; then
  tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/k.pem" -out "$tmp/c.pem" \
    -days 30 -subj "/C=MX/x500UniqueIdentifier=AAA010101AAA \/ HEGT7610034S2/serialNumber= \/ HEGT761003MDFRNN09/CN=SEED" 2>/dev/null
  openssl x509 -in "$tmp/c.pem" -outform DER -out "$build/corpus/fuzz_identity/seed-cert.der"
  openssl pkcs12 -export -inkey "$tmp/k.pem" -in "$tmp/c.pem" -passout pass:fuzz -out "$build/corpus/fuzz_credential/seed.pfx"
  rm -rf "$tmp"
fi

# A CA's answers as they come: PEM (a chain), DER, base64 PKCS#7 with line breaks.
if [[ ! -e "$build/corpus/fuzz_ca_answer/seed-chain.pem" ]]; then
  tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
    -days 30 -subj "/CN=Seed CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/k.pem" -out "$tmp/r.pem" \
    -subj "/C=MX/O=Seed/CN=SEED" 2>/dev/null
  openssl x509 -req -in "$tmp/r.pem" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial -days 30 \
    -out "$tmp/c.pem" 2>/dev/null
  cat "$tmp/c.pem" "$tmp/ca.pem" >"$build/corpus/fuzz_ca_answer/seed-chain.pem"
  openssl x509 -in "$tmp/c.pem" -outform DER -out "$build/corpus/fuzz_ca_answer/seed-cert.der"
  openssl crl2pkcs7 -nocrl -certfile "$tmp/c.pem" -certfile "$tmp/ca.pem" -outform DER | base64 \
    >"$build/corpus/fuzz_ca_answer/seed-certs-only.b64"
  rm -rf "$tmp"
fi
seed fuzz_ca_answer idse-issued $'ESTADO=EMITIDO\r\nSERIAL_NOM=00001000000504465028\r\n'
seed fuzz_ca_answer idse-pending $'ESTADO=PENDIENTE\nSERIAL_NOM=42\nREINTENTAR=120\n'
seed fuzz_ca_answer retry-after ' 120 '

# libfirma-pkcs11: a Status key entry as firmad sends it (selector byte 0),
# mechanism parameters (1: CKM_SHA256_RSA_PKCS_PSS with SHA-256/MGF1-SHA256,
# salt 32), a SHA-256 DigestInfo (2) and a DER ECDSA signature (3).
if [[ ! -e "$build/corpus/fuzz_pkcs11_module/seed-key-entry" ]]; then
  tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/k.pem" -out "$tmp/c.pem" \
    -days 30 -subj "/CN=SEED" 2>/dev/null
  spki=$(openssl pkey -in "$tmp/k.pem" -pubout -outform DER | base64 -w0)
  cert=$(openssl x509 -in "$tmp/c.pem" -outform DER | base64 -w0)
  printf '\0{"alias":"seed","token":"t","found":true,"type":"ec","bits":256,"curve":"P-256","schemes":["ecdsa"],"publicKey":"%s","objectId":"0a0B","objectLabel":"seed","certificateDer":"%s"}' \
    "$spki" "$cert" >"$build/corpus/fuzz_pkcs11_module/seed-key-entry"
  printf '\3\x20' >"$build/corpus/fuzz_pkcs11_module/seed-ecdsa"
  printf 'x' | openssl dgst -sha256 -sign "$tmp/k.pem" >>"$build/corpus/fuzz_pkcs11_module/seed-ecdsa"
  rm -rf "$tmp"
fi
printf '\1\0\70\1\103\0\0\x50\2\0\0\0\0\0\0\2\0\0\0\0\0\0\0\x20\0\0\0\0\0\0\0' >"$build/corpus/fuzz_pkcs11_module/seed-pss"
printf '\2\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20%s' \
  "0123456789abcdef0123456789abcdef" >"$build/corpus/fuzz_pkcs11_module/seed-digest-info"

seed fuzz_http_url absolute 'https://CA.example.test:8443/idse/consulta.idse?NPIE=A%20B#f'
seed fuzz_http_url ipv6 'http://[2001:db8::1]:8080/.well-known/est'
seed fuzz_http_url relative $'https://h/a/b/c?q\n../../x/./y?z#f'
seed fuzz_http_url scheme-relative '//other.example.test:9/x'

seed fuzz_subject sat '/C=MX/x500UniqueIdentifier=AAA010101AAA \/ HEGT7610034S2/serialNumber= \/ HEGT761003MDFRNN09/CN=SEED'
seed fuzz_subject oid $'/2.5.4.3=x/O=A+B/commonName=Jos\xc3\xa9'

seed fuzz_protocol call '{"method":"io.firmad.Signer.Sign","parameters":{"key":"release","hash":"sha256","digest":"3q2+7w=="}}'
seed fuzz_protocol more '{"method":"io.firmad.Signer.ListKeys","parameters":{},"more":true}'
seed fuzz_protocol oneway '{"method":"org.varlink.service.GetInfo","oneway":true}'
seed fuzz_protocol reply '{"parameters":{"signature":"AAECAw==","n":-1,"f":1.5e10,"a":[null,true,{"x":"\u00e9"}]},"continues":true}'
seed fuzz_protocol error '{"error":"io.firmad.Signer.PinIncorrect","parameters":{"retries":2}}'
seed fuzz_protocol base64 'Zm9vYmE='

seed fuzz_config full '# firmad.toml
[daemon]
socket = "/run/firmad/firmad.sock"
socket_mode = "0660"
socket_group = "root"
state_directory = "/var/lib/firmad"
max_connections = 128
max_connections_per_peer = 16
idle_timeout_ms = 30000
log_level = "info"

[access]
admin_users = ["root", 0]
admin_groups = ["root"]

[tokens.hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
uri = "pkcs11:token=signing"
sessions = 2
queue_limit = 64
pin_source = "file"
pin_file = "/etc/firmad/hsm.pin"
refresh_interval_ms = 5000

[tokens.card]
module = "p11-kit-proxy"
uri = "pkcs11:serial=0001"
pin_source = "credential"
pin_credential = "card-pin"

[keys.release]
token = "hsm"
uri = "pkcs11:object=release;type=private"
allow_users = ["root", 1000]
allow_groups = [0]
'
seed fuzz_config renewal '[tokens.t]
module = "m"
uri = "pkcs11:"

[keys.k]
token = "t"
uri = "pkcs11:object=k"

[keys.k.renewal]
provider = "idse"
key = "new"
key_type = "ec-p256"
subject = "/C=MX/O=Empresa/x500UniqueIdentifier=AAA010101AAA \\/ HEGT7610034S2/CN=Nombre"
trust_anchors = ["/etc/firmad/ca.pem"]
before_days = 30
jitter = "12h"
warn_days = [30, 7, 1]
certificate_file = "/etc/firmad/k.pem"
file_mode = "0644"
url = "https://[::1]:8443/"
lookup_path = "/idse/consultaSerie.idse?NPIE={npie}"
timeout = "60s"
'
seed fuzz_config minimal '[tokens.t]
module = "m"
uri = "pkcs11:"
'

mkdir -p "$build/dict"
cat >"$build/dict/fuzz_protocol.dict" <<'EOF'
"{"
"}"
"["
"]"
":"
","
"\""
"\\"
"\"method\""
"\"parameters\""
"\"more\""
"\"oneway\""
"\"upgrade\""
"\"error\""
"\"continues\""
"true"
"false"
"null"
"\"io.firmad.Signer.Sign\""
"\"key\""
"\"digest\""
"\"hash\""
"\"sha256\""
"\"detached\""
"\"limit\""
"=="
"\\u0000"
"\\ud800"
"\\udc00"
"1e308"
"-0"
"18446744073709551615"
EOF
cat >"$build/dict/fuzz_config.dict" <<'EOF'
"[daemon]"
"[access]"
"[tokens."
"[keys."
"[["
"]]"
"="
"\x0a"
"\"\"\""
"'''"
"socket"
"socket_mode"
"socket_group"
"state_directory"
"max_connections"
"max_connections_per_peer"
"idle_timeout_ms"
"log_level"
"admin_users"
"admin_groups"
"module"
"uri"
"sessions"
"queue_limit"
"pin_source"
"pin_file"
"pin_credential"
"refresh_interval_ms"
"token"
"allow_users"
"allow_groups"
"\"pkcs11:\""
"\"file\""
"\"credential\""
"\"admin\""
"\"root\""
"\"0660\""
"\"/p\""
"9223372036854775807"
"-1"
"1979-05-27T07:32:00Z"
"inf"
"nan"
"{ }"
".renewal]"
"provider"
"\"idse\""
"\"est\""
"\"helper\""
"subject"
"\"/C=MX/CN="
"\\\\/"
"trust_anchors"
"lifetime_fraction"
"warn_days"
"jitter"
"\"12h\""
"url"
"\"https://[::1]:8443\""
"command"
EOF

cat >"$build/dict/fuzz_http_url.dict" <<'EOF'
"http://"
"https://"
"//"
"["
"]"
":"
"@"
"?"
"#"
"%"
"/../"
"/./"
".."
"::1"
"::ffff:"
"%25"
"127.0.0.1"
"65535"
"65536"
"xn--"
"\x0a"
EOF
cat >"$build/dict/fuzz_subject.dict" <<'EOF'
"/C="
"/CN="
"/O="
"/OU="
"/serialNumber="
"/x500UniqueIdentifier="
"/2.5.4.3="
"\\/"
"\\"
"="
"+"
"MX"
EOF
cat >"$build/dict/fuzz_ca_answer.dict" <<'EOF'
"-----BEGIN CERTIFICATE-----"
"-----END CERTIFICATE-----"
"-----BEGIN PKCS7-----"
"ESTADO="
"SERIAL_NOM="
"REINTENTAR="
"EMITIDO"
"PENDIENTE"
"RECHAZADO"
"="
"\x0a"
"\x0d\x0a"
"MII"
"=="
"86400"
EOF

# --- run -----------------------------------------------------------------------
scratch="$(mktemp -d)"  # fuzz_config's file lives here
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$build/artifacts"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

failed=()
for t in $targets; do
  bin="$(find "$build" -type f -name "$t" -perm -u+x | head -n 1)"
  [[ -n "$bin" ]] || die "built $t but cannot find its binary under $build"
  echo "fuzz: running $t for ${seconds}s" >&2
  dict=()
  [[ -f "$build/dict/$t.dict" ]] && dict=("-dict=$build/dict/$t.dict")
  # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
  if TMPDIR="$scratch" "$bin" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
      "${dict[@]}" -artifact_prefix="$build/artifacts/$t-" ${FUZZ_ARGS:-} "$build/corpus/$t"; then
    echo "fuzz: $t: nothing found in ${seconds}s" >&2
  else
    echo "fuzz: $t FAILED; reproduce with: $bin <input from $build/artifacts/$t-*>" >&2
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all targets clean (${seconds}s each)" >&2
