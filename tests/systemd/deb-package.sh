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
         usr/include/firma/firma.h; do
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
echo "package $(basename "$deb"): files present, binaries run"
