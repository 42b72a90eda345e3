#!/usr/bin/env bash
# Builds the .deb with cpack, unpacks it into a scratch root, checks its files
# and runs the packaged binaries from there.
#   deb-package.sh BUILD_DIR
set -euo pipefail
build=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is missing" >&2; exit 1; }
(cd "$build" && cpack -G DEB -B "$work/out" >/dev/null)
deb=$(ls "$work"/out/*.deb)
# (Captured first: with pipefail, grep -q closing the pipe early would fail it.)
info=$(dpkg-deb --info "$deb")
grep -q "Package: firmad" <<<"$info" || { echo "not a firmad package" >&2; exit 1; }
dpkg-deb -x "$deb" "$work/root"
for f in usr/sbin/firmad usr/bin/firmactl lib/systemd/system/firmad.service lib/systemd/system/firmad.socket \
         lib/systemd/system/firmad-renew.service lib/systemd/system/firmad-renew.timer \
         lib/sysusers.d/firmad.conf lib/tmpfiles.d/firmad.conf usr/share/man/man8/firmad.8 \
         usr/share/man/man1/firmactl.1 usr/share/man/man5/firmad.toml.5 \
         usr/share/bash-completion/completions/firmactl usr/share/doc/firmad/firmad.toml.example \
         usr/include/firma/firma.h usr/include/firma/firma.hpp usr/share/firmad/pin-credential.conf; do
  [ -e "$work/root/$f" ] || [ -e "$work/root/usr/$f" ] || { echo "missing in the package: $f" >&2; exit 1; }
done
grep -q "ExecStart=/usr/sbin/firmad " "$work/root"/*/systemd/system/firmad.service "$work/root"/usr/lib/systemd/system/firmad.service 2>/dev/null ||
  { echo "firmad.service does not start /usr/sbin/firmad" >&2; exit 1; }
grep -q "ExecStart=/usr/bin/firmactl renew --due" "$work/root"/*/systemd/system/firmad-renew.service \
  "$work/root"/usr/lib/systemd/system/firmad-renew.service 2>/dev/null ||
  { echo "firmad-renew.service does not run /usr/bin/firmactl renew --due" >&2; exit 1; }
version=$("$work/root/usr/sbin/firmad" --version)
grep -q "^firmad " <<<"$version" || { echo "packaged firmad does not run: $version" >&2; exit 1; }
version=$("$work/root/usr/bin/firmactl" --version)
grep -q "^firmactl " <<<"$version" || { echo "packaged firmactl does not run: $version" >&2; exit 1; }
# The packaged example configuration is valid once its groups exist (here: root).
sed 's/firmad-admin/root/; s/firmad-signers/root/' "$work/root/usr/share/doc/firmad/firmad.toml.example" > "$work/example.toml"
"$work/root/usr/sbin/firmad" --check-config --config "$work/example.toml"
# Stripped: no debug sections in what ships.
for f in usr/sbin/firmad usr/bin/firmactl; do
  if readelf -S "$work/root/$f" | grep -q '\.debug_'; then echo "$f ships with debug sections" >&2; exit 1; fi
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
export PKG_CONFIG_SYSROOT_DIR="$work/root" PKG_CONFIG_LIBDIR="$libdir/pkgconfig"
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
echo "package $(basename "$deb"): files present, binaries run, stripped; libfirma builds and loads from C and C++"
