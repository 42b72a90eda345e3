#!/usr/bin/env bash
# firmad's one entry point for newcomers and CI.
#   ./run.sh demo    install what is missing, build, and sign on a fresh SoftHSM demo token
#   ./run.sh test    install what is missing, build, and run every test; then again
#                    under ASan+UBSan and under TSan (FIRMAD_TEST_SANITIZERS="" skips those),
#                    then each fuzz target for 10 s (FIRMAD_TEST_FUZZ_SECONDS=0 skips that)
#   ./run.sh sanitize [address|thread]
#                    build with ASan+UBSan (build-asan) or TSan (build-tsan) and run every test
#   ./run.sh bench   install what is missing, build, and run firmad-bench (extra args are passed on)
#   ./run.sh load    install what is missing, build, and run firmad-load (extra args are passed on)
#   ./run.sh build   install what is missing and build
#   ./run.sh package install what is missing, build, and make the Debian packages
#                    (debhelper: debian/rules) in build/debs; lintian checks them
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
build_dir=${FIRMAD_BUILD_DIR:-$root/build}

packages=(g++ cmake ninja-build pkg-config openssl libssl-dev libp11-kit-dev p11-kit libboost-dev
          nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libgtest-dev softhsm2 opensc systemd python3
          strace binutils p11-kit-modules debhelper dpkg-dev lintian systemd-container mmdebstrap
          swtpm swtpm-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus
          gnutls-bin openssh-client openssh-server libengine-pkcs11-openssl libnss3-tools openjdk-17-jdk-headless zip unzip)

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

# The build is the Debian package's (debian/rules: Debian's compiler flags and
# hardening, units for /lib/systemd/system), so the suite tests what ships.
# The package tests (DebPackage*, Deployment*) are registered with the
# directory the packages go to.
# (--fresh: nothing a developer's earlier 'cmake -B build ...' cached, such as
# FIRMAD_SANITIZE, reaches the packages; unchanged flags rebuild nothing.)
deb_env() {
  export FIRMAD_DEB_BUILD_DIR="$build_dir" FIRMAD_DEB_DESTDIR="$build_dir/debs" FIRMAD_SUITE=1
  export FIRMAD_CMAKE_ARGS="--fresh -DFIRMAD_DEB_DIR=$build_dir/debs"
  export DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }nocheck parallel=$(nproc)"
}

build() {
  install_packages
  step "Building in $build_dir (debian/rules build)"
  deb_env
  # dh skips a build its stamp says is done; ninja knows better.
  rm -f debian/debhelper-build-stamp
  debian/rules build
}

# The Debian packages, in $build_dir/debs, checked by lintian (errors fail).
package() {
  build
  step "Making the Debian packages in $build_dir/debs (debian/rules binary)"
  # (debian/.debhelper keeps earlier builds' debug files: dh_clean's job,
  # which would also remove the build directory.)
  rm -rf "$build_dir/debs" debian/.debhelper
  mkdir -p "$build_dir/debs"
  debian/rules binary
  ls -l "$build_dir/debs"
  # The source package, from the committed tree (git archive), for lintian's
  # checks of debian/ itself.
  local src
  src=$(mktemp -d)
  git -C "$root" archive --prefix=firmad/ HEAD | tar -x -C "$src"
  (cd "$src/firmad" && dpkg-source --build . >/dev/null)
  step "lintian on the packages and the source package (an error or a warning fails)"
  lintian --fail-on error,warning --info "$build_dir"/debs/*.deb "$src"/*.dsc || { rm -rf "$src"; return 1; }
  rm -rf "$src"
}

# Processes the demo started; the EXIT trap ends them (global: the trap runs
# after demo's locals are gone, and set -u would stop at a missing one).
demo_pids=()
stop_demo_processes() {
  local p
  for p in "${demo_pids[@]}"; do kill "$p" 2>/dev/null || true; done
}

demo() {
  build
  local dir="$root/.demo"
  # Every run starts from nothing: a fresh token, a fresh state directory
  # (a renewal of an earlier run recorded keys this token does not have).
  rm -rf "$dir"
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
  demo_pids+=("$ca_pid")
  trap stop_demo_processes EXIT
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
  demo_pids+=("$pid")
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
  step "The audit trail ($dir/audit.log): one record per signature and per administrative call"
  cut -c1-200 "$dir/audit.log"
  step "Demo complete: files are in $dir"
}

run_tests() {
  package
  step "Running the tests"
  local failed=()
  # The kill-at-every-write sweeps spend most of their time waiting (on
  # strace holding each write, on firmad restarting): they run after the
  # rest, twice as many at once as there are cores.
  local sweeps='^Renewal/KillAtEveryWrite\.'
  ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 300 -E "$sweeps" || failed+=(plain)
  ctest --test-dir "$build_dir" --output-on-failure -j "$(( 2 * $(nproc) ))" --timeout 300 -R "$sweeps" || failed+=(plain-sweeps)
  # (A subshell each: sanitize exports its options. Under '||' set -e does not
  # apply, so sanitize returns on each failure itself.)
  for kind in ${FIRMAD_TEST_SANITIZERS-address thread}; do
    (sanitize "$kind") || failed+=("$kind")
  done
  # The libFuzzer targets, each for a bounded time (clang is installed if missing).
  if [ "${FIRMAD_TEST_FUZZ_SECONDS-10}" != 0 ]; then
    step "Fuzzing each parser for ${FIRMAD_TEST_FUZZ_SECONDS-10} s (tests/fuzz/run.sh)"
    FUZZ_SECONDS=${FIRMAD_TEST_FUZZ_SECONDS-10} tests/fuzz/run.sh || failed+=(fuzz)
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    step "Tests failed in: ${failed[*]}"
    return 1
  fi
}

# The whole suite in a sanitizer build: firmad, firmactl, libfirma, the test
# binaries and the fault module instrumented; Debian's libraries not. A report
# fails its test: in a test binary through its exit code, in firmad or
# firmactl through tests/support/rig.cpp, which looks for reports in their
# logs and output (besides the exit code a test sees).
sanitize() {
  local kind=${1:-address} dir
  case "$kind" in
    address) dir=${FIRMAD_ASAN_BUILD_DIR:-$root/build-asan} ;;
    thread) dir=${FIRMAD_TSAN_BUILD_DIR:-$root/build-tsan} ;;
    *) echo "usage: $0 sanitize [address|thread]" >&2; exit 2 ;;
  esac
  local supp=$root/tests/sanitizers
  # halt_on_error: the first report ends the process, with an exit code no
  # firmad or firmactl path uses (86 for ASan/LSan/UBSan, 66 for TSan). The
  # integration tests' process unwinds malloc stacks fully (see rig.cpp).
  export ASAN_OPTIONS="halt_on_error=1:exitcode=86:detect_leaks=1:check_initialization_order=1"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="halt_on_error=1:exitcode=86:print_stacktrace=1"
  export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:suppressions=$supp/tsan.supp"
  # GCC 12's TSan cannot map its shadow memory with more than 28 bits of mmap
  # randomisation (newer kernels default to 32): run without ASLR there.
  local launcher=()
  if [ "$kind" = thread ] && [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ]; then
    launcher=(setarch "$(uname -m)" -R)
  fi
  # (Options and launcher apply to the build too: gtest_discover_tests runs the test binaries.)
  install_packages || return
  step "Building with FIRMAD_SANITIZE=$kind in $dir"
  cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFIRMAD_SANITIZE="$kind" >/dev/null || return
  "${launcher[@]}" cmake --build "$dir" -j "$(nproc)" || return
  # Tests whose subject the sanitizers take away, not run in these builds:
  local skip=(
    # Secret's mlock(): the sanitizers' mlock interceptor does nothing (it only prints "ignores mlock").
    'SecretMemory\.IsLockedWhileHeldAndUnlockedAfter'
    # The package ships the plain build; a program loading an instrumented
    # libfirma.so needs the sanitizer's runtime loaded first (ASan refuses).
    'DebPackageInstallsItsFilesAndRuns'
    # The same for the instrumented libfirma-pkcs11.so in real programs
    # (pkcs11-tool, ssh, java, NSS, OpenSSL): their subject is how those
    # programs use it, which the plain build checks. The module's own code
    # runs under the sanitizers in Pkcs11ModuleApi.* and Pkcs11ModuleRestart.*
    # (loaded into the instrumented test binary) and in its fuzz target.
    'Pkcs11Module\..*' 'Pkcs11ModulePolicy\..*' 'Pkcs11ModuleAvailability\..*' 'Pkcs11ModuleSha1\..*' 'Pkcs11ModuleAdmin\..*'
    # Resident-memory bounds: shadow memory, redzones and the free quarantine add tens of MiB.
    'UnderLoad\.ThousandConnectionsAndAbusivePeersLeaveSigningIntactAndMemoryBounded'
    'FairShareSuite\.BufferedBytesStayUnderTheCeilingWithEveryConnectionStreamingJunk'
    # Kill-at-every-write sweeps: hundreds of firmad restarts under strace. Their
    # subject is what a kill leaves on disk, which the plain build checks;
    # instrumented, each shard would outlast its time limit. (The random-kill
    # test and every other renewal test still run here.)
    'Renewal/KillAtEveryWrite\..*'
  )
  local exclude
  exclude=$(IFS='|'; echo "${skip[*]}")
  step "Running the tests under the $kind sanitizer"
  "${launcher[@]}" ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" --timeout 300 -E "^($exclude)\$"
}

case "${1:-}" in
  demo) demo ;;
  test) run_tests ;;
  sanitize) shift; sanitize "$@" ;;
  bench) shift; build >&2; "$build_dir/tests/bench/firmad-bench" "$@" ;;
  load) shift; build >&2; "$build_dir/tests/bench/firmad-load" "$@" ;;
  build) build ;;
  package) package ;;
  *) echo "usage: $0 demo|test|sanitize|bench|load|build|package" >&2; exit 2 ;;
esac
