#!/usr/bin/env bash
# Checks the Debian packages debian/rules made (./run.sh package): their
# control fields, maintainer scripts, conffiles and files, then unpacks them
# into a scratch root and runs the packaged binaries and libfirma from there.
# (DeploymentInABootedSystemd installs them into a booted systemd.)
#   deb-package.sh DEB_DIR
set -euo pipefail
debs=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "$*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || fail "dpkg-deb is missing"
package() {
  local f
  f=$(ls "$debs"/"$1"_*.deb 2>/dev/null | head -1)
  [ -n "$f" ] || fail "no $1 package in $debs (make them with ./run.sh package)"
  echo "$f"
}
deb=$(package firmad)
lib=$(package libfirma0)
dev=$(package libfirma-dev)
p11=$(package firma-pkcs11)
field() { dpkg-deb --field "$1" "$2"; }

# Relations: shared-library dependencies and systemd; the smart-card stack
# recommended, SoftHSM suggested; -dev pinned to its library.
depends=$(field "$deb" Depends)
for d in libc6 libssl3 libstdc++6 libp11-kit0 'systemd (>= 248)'; do
  grep -qE "(^|, )$(sed 's/[().+]/\\&/g' <<<"$d")( |,|$)" <<<"$depends" || fail "firmad does not depend on $d: $depends"
done
[ "$(field "$deb" Recommends)" = "opensc, pcscd" ] || fail "firmad recommends '$(field "$deb" Recommends)'"
[ "$(field "$deb" Suggests)" = "softhsm2" ] || fail "firmad suggests '$(field "$deb" Suggests)'"
grep -q "libfirma0 (= $(field "$lib" Version))" <<<"$(field "$dev" Depends)" || fail "libfirma-dev is not pinned to libfirma0"
# firma.hpp includes nlohmann/json.hpp, whose ABI tag is in libfirma's C++ symbols.
grep -q "nlohmann-json3-dev (>= 3.11.2), nlohmann-json3-dev (<< 3.11.3~)" <<<"$(field "$dev" Depends)" ||
  fail "libfirma-dev does not depend on the nlohmann-json3-dev its symbols were built with: $(field "$dev" Depends)"

# Maintainer scripts: users and directories at once, units enabled and
# started, firmad restarted on upgrade, stopped on removal, state purged.
dpkg-deb --control "$deb" "$work/control"
for s in postinst prerm postrm; do [ -x "$work/control/$s" ] || fail "firmad has no $s"; done
postinst=$(cat "$work/control/postinst")
for want in 'systemd-sysusers' '--create firmad.conf' "deb-systemd-helper enable 'firmad.socket'" \
            "deb-systemd-helper enable 'firmad-renew.timer'" "deb-systemd-invoke start 'firmad-renew.timer' 'firmad.socket'" \
            "deb-systemd-invoke try-restart 'firmad.service'"; do
  grep -qF -- "$want" <<<"$postinst" || fail "firmad's postinst lacks: $want"
done
# (Users first: the directories belong to them.)
line() { grep -nF -- "$1" <<<"$postinst" | head -1 | cut -d: -f1; }
[ "$(line systemd-sysusers)" -lt "$(line '--create firmad.conf')" ] || fail "firmad's postinst makes directories before users"
# firmad.service is socket-activated: enabled only where an administrator
# enabled it before (debhelper's "dont-enable" snippet), never on install.
grep -qF "deb-systemd-helper debian-installed 'firmad.service'" <<<"$postinst" &&
  ! grep -A1 'was-enabled defaults to true' <<<"$postinst" | grep -q "'firmad.service'" ||
  fail "firmad's postinst enables firmad.service on installation (it is socket-activated)"
# An upgrade leaves the socket listening: clients wait in its backlog while firmad restarts.
grep -q 'restart.*firmad.socket' <<<"$postinst" && fail "firmad's postinst restarts firmad.socket on upgrade"
# ... and a renewal under way finishes.
grep -q 'restart.*firmad-renew.service' <<<"$postinst" && fail "firmad's postinst restarts firmad-renew.service on upgrade"
grep -q "deb-systemd-invoke stop 'firmad-renew.timer' 'firmad.socket'" "$work/control/prerm" || fail "firmad's prerm does not stop firmad's socket"
grep -q 'rm -rf /var/lib/firmad /var/log/firmad' "$work/control/postrm" || fail "firmad's postrm does not purge its state"
for c in /etc/firmad/firmad.toml /etc/firmad/softhsm2.conf /etc/logrotate.d/firmad; do
  grep -qx "$c" "$work/control/conffiles" || fail "$c is not a conffile"
done

# What goes where: the daemon, the library, its development files.
contents() { dpkg-deb --fsys-tarfile "$1" | tar -t | sed 's|^\./|/|'; }
grep -qE '/libfirma\.so\.0' <<<"$(contents "$lib")" || fail "libfirma0 has no libfirma.so.0"
grep -qE '/libfirma\.so$|/include/|\.pc$' <<<"$(contents "$lib")" && fail "libfirma0 holds development files"
grep -qE 'libfirma' <<<"$(contents "$deb")" && fail "firmad holds libfirma"
for p in "$deb" "$lib" "$dev" "$p11"; do dpkg-deb -x "$p" "$work/root"; done
# The PKCS#11 module: in the system's module directory, registered with
# p11-kit, exporting the PKCS#11 entry points and nothing else.
module=$(find "$work/root/usr/lib" -path '*/pkcs11/libfirma-pkcs11.so' | head -1)
[ -n "$module" ] || fail "firma-pkcs11 has no libfirma-pkcs11.so in a pkcs11/ directory: $(contents "$p11")"
exports=$(nm -D --defined-only "$module" | awk '{print $3}' | sort | tr '\n' ' ')
[ "$exports" = "C_GetFunctionList C_GetInterface C_GetInterfaceList " ] || fail "libfirma-pkcs11.so exports: $exports"
grep -qx 'module: libfirma-pkcs11.so' "$work/root/usr/share/p11-kit/modules/firma.module" || fail "no p11-kit firma.module"
grep -qE 'libfirma-pkcs11|pkcs11' <<<"$(contents "$deb")" && fail "firmad holds the PKCS#11 module"
for f in usr/sbin/firmad usr/bin/firmactl lib/systemd/system/firmad.service lib/systemd/system/firmad.socket \
         lib/systemd/system/firmad-renew.service lib/systemd/system/firmad-renew.timer \
         usr/lib/sysusers.d/firmad.conf usr/lib/tmpfiles.d/firmad.conf usr/share/man/man8/firmad.8 \
         usr/share/man/man1/firmactl.1 usr/share/man/man5/firmad.toml.5 \
         usr/share/bash-completion/completions/firmactl etc/firmad/firmad.toml etc/firmad/softhsm2.conf \
         etc/logrotate.d/firmad usr/include/firma/firma.h usr/include/firma/firma.hpp \
         usr/share/firmad/pin-credential.conf usr/share/firmad/softhsm-service.conf usr/share/firmad/tpm2-service.conf \
         usr/share/man/man8/libfirma-pkcs11.8; do
  [ -e "$work/root/$f" ] || [ -e "$work/root/$f.gz" ] || fail "missing in the packages: $f"
done
grep -q "ExecStart=/usr/sbin/firmad " "$work/root/lib/systemd/system/firmad.service" ||
  fail "firmad.service does not start /usr/sbin/firmad"
grep -q "ExecStart=/usr/bin/firmactl renew --due" "$work/root/lib/systemd/system/firmad-renew.service" ||
  fail "firmad-renew.service does not run /usr/bin/firmactl renew --due"
version=$("$work/root/usr/sbin/firmad" --version)
grep -q "^firmad " <<<"$version" || { echo "packaged firmad does not run: $version" >&2; exit 1; }
version=$("$work/root/usr/bin/firmactl" --version)
grep -q "^firmactl " <<<"$version" || { echo "packaged firmactl does not run: $version" >&2; exit 1; }
# The packaged example configuration is valid once its groups exist (here: root).
sed 's/firmad-admin/root/; s/firmad-signers/root/' "$work/root/etc/firmad/firmad.toml" > "$work/example.toml"
"$work/root/usr/sbin/firmad" --check-config --config "$work/example.toml"
# Stripped (the symbols are in the -dbgsym packages): no debug sections in what ships.
for f in "$work/root"/usr/sbin/firmad "$work/root"/usr/bin/firmactl "$work/root"/usr/lib/*/libfirma.so.0 "$module"; do
  if readelf -S "$f" | grep -q '\.debug_'; then fail "${f#"$work/root"} ships with debug sections"; fi
done
# libfirma: a shared library with a SONAME, its headers and a pkg-config file,
# exporting only its API; a C program and a C++ one build against the
# packaged files with pkg-config alone and load it.
libdir=$(dirname "$(find "$work/root" -name 'libfirma.so.0' | head -1)")
[ -n "$libdir" ] && [ -e "$libdir/libfirma.so" ] || { echo "libfirma.so.0 (and libfirma.so) missing" >&2; exit 1; }
soname=$(readelf -d "$libdir/libfirma.so.0" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libfirma.so.0 ] || { echo "libfirma's SONAME is '$soname'" >&2; exit 1; }
foreign=$(nm -D --defined-only "$libdir/libfirma.so.0" | c++filt | awk '{ $1 = ""; $2 = ""; print }' |
          grep -v '^ *firma_' | grep -v 'firma::' | grep -v '^ *FIRMA_0$' || true)
[ -z "$foreign" ] || { echo "libfirma exports more than its API:" >&2; head -5 <<<"$foreign" >&2; exit 1; }
# (The system's own .pc files too: firma requires nlohmann_json.)
export PKG_CONFIG_SYSROOT_DIR="$work/root" PKG_CONFIG_LIBDIR="$libdir/pkgconfig:/usr/share/pkgconfig"
pkg-config --print-requires firma | grep -q '^nlohmann_json >= 3.11.2$' || fail "firma.pc does not require nlohmann_json"
flags=$(pkg-config --cflags --libs firma) || { echo "pkg-config finds no firma" >&2; exit 1; }
cat > "$work/c.c" <<'C'
#include <firma/firma.h>
#include <stdio.h>
int main(void) {
  firma_client *c = NULL;
  int rc = firma_connect("/nonexistent/firmad.sock", &c);
  printf("%d %s\n", rc, firma_last_error(c));
  firma_close(c);
  return 0;
}
C
cat > "$work/cpp.cpp" <<'CPP'
#include <firma/firma.hpp>
#include <iostream>
int main() {
  try {
    firma::Client c("/nonexistent/firmad.sock");
  } catch (const firma::ConnectionError& e) {
    std::cout << "caught: " << e.what() << "\n";
    return 0;
  }
  return 1;
}
CPP
# shellcheck disable=SC2086  # flags are words
cc -o "$work/c" "$work/c.c" $flags
# shellcheck disable=SC2086
c++ -std=c++20 -o "$work/cpp" "$work/cpp.cpp" $flags
out=$(LD_LIBRARY_PATH="$libdir" "$work/c")
grep -q '^-1 cannot connect to firmad at /nonexistent/firmad.sock' <<<"$out" || { echo "C program: $out" >&2; exit 1; }
out=$(LD_LIBRARY_PATH="$libdir" "$work/cpp")
grep -q '^caught: cannot connect to firmad at /nonexistent/firmad.sock' <<<"$out" || { echo "C++ program: $out" >&2; exit 1; }
deps=$(LD_LIBRARY_PATH="$libdir" ldd "$work/cpp")
grep -q "libfirma.so.0 => $libdir/libfirma.so.0" <<<"$deps" || { echo "the C++ program does not load the packaged libfirma" >&2; exit 1; }
echo "packages $(basename "$deb") $(basename "$lib") $(basename "$dev"): relations, maintainer scripts, conffiles and files right; binaries run, stripped; libfirma builds and loads from C and C++"
