#!/usr/bin/env bash
# firmad's one entry point for newcomers and CI.
#   ./run.sh demo    install what is missing, build, and sign on a fresh SoftHSM demo token
#   ./run.sh test    install what is missing, build, and run every test
#   ./run.sh bench   install what is missing, build, and run firmad-bench (extra args are passed on)
#   ./run.sh load    install what is missing, build, and run firmad-load (extra args are passed on)
#   ./run.sh build   install what is missing and build
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
build_dir=${FIRMAD_BUILD_DIR:-$root/build}

packages=(g++ cmake ninja-build pkg-config openssl libssl-dev libp11-kit-dev p11-kit libboost-dev
          nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libgtest-dev softhsm2 opensc systemd python3)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "Installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build() {
  install_packages
  step "Building in $build_dir"
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build_dir" -j "$(nproc)"
}

demo() {
  build
  local dir="$root/.demo"
  step "Creating a SoftHSM token in $dir with keys and certificates from a demo CA"
  tests/support/make-token.sh "$dir" >/dev/null
  export SOFTHSM2_CONF="$dir/softhsm2.conf" FIRMAD_SOCKET="$dir/run/firmad.sock"
  local ctl="$build_dir/client/firmactl"
  softhsm2-util --show-slots | grep -E 'Label|Serial' | sed 's/^ */  /' | head -2

  step "Starting a demo IDSE-style CA on loopback (HTTPS, tests/support/renewal_ca.py) for the renewal below"
  mkdir -p "$dir/idse"
  rm -f "$dir/idse/port"
  python3 tests/support/renewal_ca.py --dir "$dir/idse" --ca-cert "$dir/ca/ca.pem" --ca-key "$dir/ca/ca.key" \
    --port-file "$dir/idse/port" --tls --lifetime 300 2>"$dir/idse/service.log" &
  local ca_pid=$!
  for _ in $(seq 100); do [ -s "$dir/idse/port" ] && break; sleep 0.1; done
  local idse="https://127.0.0.1:$(cat "$dir/idse/port")"
  echo "  $idse"
  # The demo configuration plus the employer's NPIE and a renewal table for 'empresa'.
  sed 's|^uri = "pkcs11:object=empresa;id=%01"$|&\nnpie = "A1234567890"|' "$dir/firmad.toml" > "$dir/firmad-demo.toml"
  cat >> "$dir/firmad-demo.toml" <<TOML

[keys.empresa.renewal]
provider = "idse"
url = "$idse"
trust_anchors = ["$dir/ca/ca.pem"]
certificate_file = "$dir/empresa-renovado.pem"
automatic = false
TOML

  step "Starting firmad (configuration $dir/firmad-demo.toml, log $dir/firmad.log)"
  "$build_dir/daemon/firmad" --config "$dir/firmad-demo.toml" 2>"$dir/firmad.log" &
  local pid=$!
  trap 'kill $pid $ca_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do "$ctl" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$ctl" status

  step "Signing a document with key 'empresa' (RSA-2048): only its SHA-256 digest leaves this process"
  printf 'Alta de trabajador ante el IMSS, %s\n' "$(date -u +%F)" > "$dir/documento.txt"
  "$ctl" sign empresa "$dir/documento.txt" -o "$dir/documento.sig"
  step "Verifying the raw signature with openssl against the public key read from the token"
  pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --read-object --type pubkey --id 01 -o "$dir/empresa.pub.der" >/dev/null 2>&1
  openssl dgst -sha256 -verify <(openssl pkey -pubin -inform DER -in "$dir/empresa.pub.der") \
    -signature "$dir/documento.sig" "$dir/documento.txt"

  step "Signing the same document as CMS (PKCS#7 SignedData, certificate embedded)"
  "$ctl" sign empresa "$dir/documento.txt" --cms -o "$dir/documento.p7s"
  step "Verifying the CMS with openssl cms -verify against the demo CA"
  openssl cms -verify -binary -inform DER -in "$dir/documento.p7s" -CAfile "$dir/ca/ca.pem" -out /dev/null

  step "Signing with the P-256 key as detached CMS"
  "$ctl" sign firma-ec "$dir/documento.txt" --cms --detached -o "$dir/documento-ec.p7s"
  openssl cms -verify -binary -inform DER -in "$dir/documento-ec.p7s" -content "$dir/documento.txt" \
    -CAfile "$dir/ca/ca.pem" -out /dev/null

  step "Renewing 'empresa': a new key generated on the token, CSR and acceptance signed there, certificate fetched, verified, installed"
  "$ctl" renew empresa
  "$ctl" status | sed -n '/^key empresa/,/^key /p' | sed '$d'
  step "Signing with the renewed key and verifying against the new certificate"
  "$ctl" sign empresa "$dir/documento.txt" --cms -o "$dir/documento-renovado.p7s"
  openssl cms -verify -binary -inform DER -in "$dir/documento-renovado.p7s" -CAfile "$dir/ca/ca.pem" -out /dev/null
  openssl x509 -in "$dir/empresa-renovado.pem" -noout -serial -enddate | sed 's/^/  /'

  step "Stopping firmad (SIGTERM: finishes requests, logs out, exits 0)"
  kill -TERM $pid
  wait $pid
  kill $ca_pid 2>/dev/null || true
  trap - EXIT
  tail -n 4 "$dir/firmad.log"
  step "Demo complete: files are in $dir"
}

run_tests() {
  build
  step "Running the tests"
  ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 300
}

case "${1:-}" in
  demo) demo ;;
  test) run_tests ;;
  bench) shift; build; "$build_dir/tests/bench/firmad-bench" "$@" ;;
  load) shift; build; "$build_dir/tests/bench/firmad-load" "$@" ;;
  build) build ;;
  *) echo "usage: $0 demo|test|bench|load|build" >&2; exit 2 ;;
esac
