#!/usr/bin/env bash
# Checks the unit files: 'systemd-analyze verify' prints nothing, and
# 'systemd-analyze security --offline=true' rates firmad.service at 2.5 or lower.
#   verify-units.sh SOURCE_DIR FIRMAD_BINARY
set -euo pipefail
src=$1 binary=$2
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing: apt-get install systemd" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# ExecStart must name an existing binary: point it at the one just built.
sed "s|/usr/sbin/firmad|$binary|" "$src/systemd/firmad.service" > "$work/firmad.service"
cp "$src/systemd/firmad.socket" "$src/systemd/firmad-renew.timer" "$work/"
# The renewal service runs firmactl: point it at a binary that exists here.
sed "s|/usr/bin/firmactl|$(dirname "$binary")/../client/firmactl|" "$src/systemd/firmad-renew.service" > "$work/firmad-renew.service"
# (--man=no: man-db need not be installed here; the pages Documentation=
# names are checked against doc/ below.)
out=$(cd "$work" && systemd-analyze verify --man=no firmad.socket firmad.service firmad-renew.timer firmad-renew.service 2>&1) || true
# The shipped drop-ins, each on its own over the unit (systemd reads
# firmad.service.d/ beside the unit file).
for dropin in pin-credential softhsm-service tpm2-service; do
  mkdir -p "$work/firmad.service.d"
  cp "$src/systemd/$dropin.conf" "$work/firmad.service.d/$dropin.conf"
  out+=$(cd "$work" && systemd-analyze verify --man=no firmad.service 2>&1) || true
  rm -r "$work/firmad.service.d"
done
for page in $(sed -n 's/^Documentation=//p' "$src"/systemd/*.service "$src"/systemd/*.socket | tr ' ' '\n' | sed -n 's/^man:\(.*\)(\([0-9]\))$/\1.\2/p' | sort -u); do
  [ -f "$src/doc/$page" ] || out+="Documentation= names man page $page, which doc/ does not have"$'\n'
done
if [ -n "$out" ]; then
  echo "systemd-analyze verify is not clean:" >&2
  echo "$out" >&2
  exit 1
fi
score=$(systemd-analyze security --offline=true "$work/firmad.service" 2>&1 | sed -n 's/.*Overall exposure level for firmad.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "no exposure level from systemd-analyze security" >&2; exit 1; }
echo "systemd-analyze verify: clean; security exposure of firmad.service: $score"
awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || { echo "exposure $score is above 2.5" >&2; exit 1; }
