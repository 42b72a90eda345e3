#!/usr/bin/env bash
# End-to-end deployment test: boots Debian 12 with systemd in a container
# (systemd-nspawn --boot, no network), installs firmad's packages there and
# checks that it works as shipped: users, directories and units made by the
# package, a SoftHSM token set up the documented way, socket activation,
# signing and access control, login/logout, the journal and the audit trail,
# the renewal timer, the unit's hardening, stop, upgrade, remove and purge.
#
#   tests/systemd/deploy.sh DEB_DIR
#
# DEB_DIR holds firmad_*.deb, libfirma0_*.deb and libfirma-dev_*.deb (dbgsym
# packages are ignored). Needs root, systemd-container and mmdebstrap (the
# tree comes from tests/systemd/rootfs.sh, cached). Exits 0 only if every
# check passes; on a failure it prints what failed and firmad's journal.
# The container is always powered off.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deb_dir=$(cd "${1:?usage: deploy.sh DEB_DIR}" && pwd)
pin=123456
so_pin=12345678
machine=firmad-deploy-$$
# The SoftHSM set-up the package documents (/usr/share/firmad/softhsm-service.conf):
# SoftHSM's configuration for firmad and the drop-in that hands it to the service.
softhsm_conf=/etc/firmad/softhsm2.conf
softhsm_dropin=/usr/share/firmad/softhsm-service.conf
softhsm_dropin_to=/etc/systemd/system/firmad.service.d/softhsm.conf
tokendir=
alice_signed=0   # signatures alice got through sign_as and the PKCS#11 module
main_pid=$BASHPID
work=
cgroup_dirs=()
nspawn_pid=
leader=
started=$SECONDS
# Every command in the container ends by this time (seconds since start; set
# once the tree is ready): the checks take ~10 s, the budget is 150 s. With
# the journal and the poweroff (50 s at most) a hung run ends within 4 minutes.
deadline=

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }

# ns CMD...: runs CMD as root inside the container, with a clean environment
# and a time limit (NS_TIMEOUT seconds, default 60, and never past the
# deadline unless NS_ANYTIME=1: for the journal and the poweroff).
ns() {
  local t=${NS_TIMEOUT:-60} left
  if [ -n "$deadline" ] && [ -z "${NS_ANYTIME:-}" ]; then
    left=$((deadline - SECONDS))
    [ "$left" -gt 0 ] || fail "out of time: the test's budget of 150 s is spent (at: $*)"
    [ "$t" -le "$left" ] || t=$left
  fi
  timeout --kill-after=5 "$t" nsenter --target "$leader" --mount --uts --ipc --net --pid -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

# as USER CMD...: runs CMD inside the container as USER with USER's groups,
# from USER's home directory.
as() {
  local user=$1; shift
  # (The primary group by number: a user 'adm' has group 'users', not Debian's group adm.)
  ns sh -c 'u=$1; shift; exec setpriv --reuid="$u" --regid="$(id -g "$u")" --init-groups --reset-env env -C "/home/$u" "$@"' \
    sh "$user" "$@"
}

# journal: what the issue asks a failure to show.
journal() {
  [ -n "$leader" ] || return 0
  say "--- journalctl -u firmad -u firmad.socket -u firmad-renew (inside the container)"
  NS_ANYTIME=1 NS_TIMEOUT=20 ns journalctl -u firmad -u firmad.socket -u firmad-renew -u firmad-renew.timer --no-pager 2>&1 || true
  say "---"
}

# fail MESSAGE: reports the failed check with the journal and ends the test.
fail() {
  say "FAIL: $*" >&2
  if [ "$BASHPID" = "$main_pid" ]; then journal >&2; fi
  exit 1
}
# on_err: a command that failed where nothing expected it (set -e). Only in
# the test's own shell: a failure inside $(...) is its caller's to judge.
on_err() {
  [ "$BASHPID" = "$main_pid" ] || return 0
  local where="line ${BASH_LINENO[0]}" i
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do where+=" in ${FUNCNAME[i]}, called from line ${BASH_LINENO[i]}"; done
  fail "$where: unexpected failure of: $1"
}
trap 'on_err "$BASH_COMMAND"' ERR

# poweroff: ends the container (orderly, then by force) and removes the scratch
# files. FIRMAD_DEPLOY_JOURNAL=FILE keeps the container's whole journal there.
poweroff() {
  trap - ERR
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [ -n "$leader" ] && [ -n "${FIRMAD_DEPLOY_JOURNAL:-}" ]; then
      NS_ANYTIME=1 NS_TIMEOUT=20 ns journalctl --no-pager -o short-monotonic >"$FIRMAD_DEPLOY_JOURNAL" 2>&1
    fi
    if [ -n "$leader" ]; then
      NS_ANYTIME=1 NS_TIMEOUT=10 ns systemctl poweroff >/dev/null 2>&1 || kill -s SIGRTMIN+4 "$leader" 2>/dev/null
    fi
    for _ in $(seq 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      say "the container did not power off in 15 s: killing it" >&2
      [ -z "$leader" ] || kill -9 "$leader" 2>/dev/null
      kill -9 "$nspawn_pid" 2>/dev/null
    fi
    wait "$nspawn_pid" 2>/dev/null
  fi
  # (What nspawn leaves on the host when it is killed: /run here is no tmpfs.)
  rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null
  remove_cgroups
  [ -z "$work" ] || rm -rf "$work"
}
trap poweroff EXIT
trap 'exit 130' INT TERM

# rebuild_debs OUT: the given packages again with a higher version
# (VERSION+rebuild1), exact dependencies among them raised alike.
rebuild_debs() {
  local out=$1 deb dir old new
  mkdir -p "$out" "$work/rebuild"
  for deb in "${install_debs[@]}"; do
    dir=$work/rebuild/$(basename "$deb" .deb)
    dpkg-deb -R "$deb" "$dir"
    old=$(dpkg-deb -f "$deb" Version)
    new=$old+rebuild1
    sed -i -e "s/^Version: .*/Version: $new/" -e "s/(= $old)/(= $new)/g" "$dir/DEBIAN/control"
    # The new version changes the shipped configuration too: the edited one
    # must be kept, the new one put beside it (dpkg's conffile handling).
    if [ -f "$dir/etc/firmad/firmad.toml" ]; then
      echo "# (changed in $new)" >> "$dir/etc/firmad/firmad.toml"
      (cd "$dir" && sed -i "s|^[0-9a-f]*  etc/firmad/firmad.toml\$|$(md5sum etc/firmad/firmad.toml | sed 's/ .*//')  etc/firmad/firmad.toml|" DEBIAN/md5sums)
    fi
    dpkg-deb -b "$dir" "$out/$(dpkg-deb -f "$deb" Package)_${new}_$(dpkg-deb -f "$deb" Architecture).deb" >/dev/null
  done
}

# make_cgroups: where PID 1 is not systemd, a cgroup of this run's own in
# each hierarchy systemd uses (name=systemd, unified), below the caller's.
# With --keep-unit the container's systemd makes its /system.slice/... inside
# the caller's cgroup: without one of their own, containers booting at the
# same time share (and remove) each other's unit cgroups, and units fail at
# boot with status 219/CGROUP ("Failed to attach to cgroup ...: No such file
# or directory"). (Under a systemd PID 1, nspawn --keep-unit uses the unit's.)
make_cgroups() {
  [ ! -d /run/systemd/system ] || return 0
  local controllers path base
  while IFS=: read -r _ controllers path; do
    case $controllers in
      name=systemd) base=/sys/fs/cgroup/systemd ;;
      "") base=/sys/fs/cgroup; [ -f "$base/cgroup.controllers" ] || base=/sys/fs/cgroup/unified ;;
      *) continue ;;
    esac
    [ -d "$base$path" ] || continue
    mkdir "$base${path%/}/$machine"
    cgroup_dirs+=("$base${path%/}/$machine")
  done </proc/self/cgroup
}

# remove_cgroups: this run's cgroups, once the container is gone (nspawn's
# payload/ and supervisor/ and what the container's systemd left in them).
remove_cgroups() {
  local d
  for d in "${cgroup_dirs[@]}"; do
    for _ in 1 2 3 4 5; do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$d" ] || break
      sleep 0.2
    done
    [ ! -d "$d" ] || say "warning: could not remove the cgroup $d" >&2
  done
}

# boot: starts the container on the cached tree and waits until systemd is up.
boot() {
  make_cgroups
  (
    for d in "${cgroup_dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
    exec systemd-nspawn --boot --directory="$tree" --volatile=overlay --register=no --keep-unit --private-network \
      --machine="$machine" --bind-ro="$deb_dir:/debs" --bind-ro="$work/upgrade:/upgrade" --console=pipe
  ) </dev/null >"$work/nspawn.log" 2>&1 &
  nspawn_pid=$!
  local pid
  for _ in $(seq 100); do
    for pid in $(pgrep -P "$nspawn_pid" || true); do
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ] && leader=$pid
    done
    [ -n "$leader" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/nspawn.log" >&2; fail "systemd-nspawn exited"; }
    sleep 0.1
  done
  [ -n "$leader" ] || fail "no systemd in the container after 10 s"
  local state=
  for _ in $(seq 60); do
    state=$(NS_TIMEOUT=30 ns systemctl is-system-running --wait 2>/dev/null) && break
    case $state in degraded) break ;; esac
    sleep 0.5
  done
  case $state in
    running) ok "booted: systemd in the container is running (PID $leader on the host)" ;;
    degraded) say "   note: the container booted degraded; failed units:"; ns systemctl --failed --no-pager ;;
    *) fail "the container did not boot (state '$state')" ;;
  esac
}

# timer_line: firmad-renew.timer's line in 'systemctl list-timers' (captured
# first: grep -q closing the pipe early would fail it under pipefail).
timer_line() {
  local timers
  timers=$(ns systemctl list-timers --all --no-pager)
  grep -m1 'firmad-renew.timer' <<<"$timers" | tr -s ' '
}

# unit_prop UNIT PROPERTY: one property's value.
unit_prop() { ns systemctl show -P "$2" "$1"; }

# main_pid: firmad.service's main PID (0 when it is not running).
firmad_pid() { unit_prop firmad.service MainPID; }

# sign_as USER NAME: USER signs a new document NAME with 'empresa'; the
# signature must verify against the key's public half.
sign_as() {
  local user=$1 name=$2 out
  ns sh -c "printf 'Alta ante el IMSS %s\n' '$name' > /home/$user/$name && chown $user: /home/$user/$name"
  out=$(as "$user" firmactl sign empresa "$name" -o "$name.sig" 2>&1) || fail "$user could not sign: $out"
  out=$(ns openssl dgst -sha256 -verify /root/empresa.pub.pem -signature "/home/$user/$name.sig" "/home/$user/$name" 2>&1) ||
    fail "$user's signature of $name does not verify: $out"
  [ "$user" != alice ] || alice_signed=$((alice_signed + 1))
  ok "$user signed $name with empresa and the signature verifies (openssl dgst -sha256 -verify)"
}

# signing_loop LOG: alice signs doc1 over and over in the background (loop_pid),
# one line rc=STATUS in LOG each time, until /home/alice/stop exists, firmactl
# is gone (127) or 3000 times; returns once she has signed once.
signing_loop() {
  local log=$1
  ns rm -f /home/alice/stop
  as alice sh -c 'n=0; while [ $n -lt 3000 ] && [ ! -e stop ]; do
    firmactl --timeout 20 sign empresa doc1 -o loop.sig >/dev/null 2>&1; rc=$?
    echo "rc=$rc"; [ $rc = 127 ] && break; n=$((n + 1)); done' >"$log" 2>&1 &
  loop_pid=$!
  for _ in $(seq 100); do grep -q '^rc=0' "$log" && return 0; sleep 0.1; done
  fail "alice's signing loop did not sign: $(head -5 "$log")"
}

# starts: how many times firmad has started in this boot (its journal).
starts() {
  local j
  j=$(ns journalctl -u firmad.service -o cat --no-pager)
  grep -c '^event=started ' <<<"$j" || true
}

# no_stale_firmad: no process runs firmad's binary, nor a deleted one.
no_stale_firmad() {
  local procs
  procs=$(ns sh -c 'for p in /proc/[0-9]*; do e=$(readlink $p/exe 2>/dev/null) || continue;
    case $e in */firmad|*/firmad\ \(deleted\)|*/firmad.dpkg-new*) echo "${p#/proc/} $e";; esac; done')
  [ -z "$procs" ] || fail "$1: firmad processes are left: $procs"
}

command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn is missing: apt-get install systemd-container" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "deploy.sh must run as root" >&2; exit 1; }

shopt -s nullglob
firmad_debs=("$deb_dir"/firmad_*.deb)
lib_debs=("$deb_dir"/libfirma0_*.deb)
module_debs=("$deb_dir"/firma-pkcs11_*.deb)
shopt -u nullglob
[ ${#firmad_debs[@]} = 1 ] || fail "expected one firmad_*.deb in $deb_dir, found ${#firmad_debs[@]}"
[ ${#module_debs[@]} = 1 ] || fail "expected one firma-pkcs11_*.deb in $deb_dir, found ${#module_debs[@]}"
install_debs=("${firmad_debs[0]}" "${lib_debs[@]}" "${module_debs[0]}")
work=$(mktemp -d /tmp/firmad-deploy.XXXXXX)

step "Preparing: the cached Debian 12 tree and the rebuilt (upgrade) packages"
tree=$("$here/rootfs.sh" "$deb_dir")
ok "tree $tree"
deadline=$((SECONDS + 150))
rebuild_debs "$work/upgrade"
ok "rebuilt: $(cd "$work/upgrade" && echo *.deb)"

step "Booting the container"
boot

step "Installing the packages offline"
in_debs=()
for d in "${install_debs[@]}"; do in_debs+=("/debs/$(basename "$d")"); done
out=$(NS_TIMEOUT=120 ns apt-get install -y --no-install-recommends "${in_debs[@]}" </dev/null 2>&1) ||
  { say "$out"; fail "apt-get install of ${in_debs[*]} failed"; }
ok "installed: $(basename -a "${in_debs[@]}" | tr '\n' ' ')"

step "What the package set up on install"
# The users and groups (sysusers.d).
ns getent passwd firmad >/dev/null || fail "no user firmad after install"
for g in firmad firmad-signers firmad-admin; do ns getent group "$g" >/dev/null || fail "no group $g after install"; done
ok "user firmad: $(ns getent passwd firmad); groups firmad, firmad-signers, firmad-admin exist"
# The directories (tmpfiles.d): the configuration and the SoftHSM token store.
[ "$(ns stat -c '%U:%G %a' /etc/firmad)" = "root:firmad 750" ] || fail "/etc/firmad is $(ns stat -c '%U:%G %a' /etc/firmad), not root:firmad 750"
[ "$(ns stat -c '%U %a' /var/lib/firmad)" = "firmad 700" ] || fail "/var/lib/firmad is '$(ns stat -c '%U %a' /var/lib/firmad 2>&1)', not firmad 0700"
[ "$(ns stat -c '%U %a' /var/log/firmad)" = "firmad 750" ] || fail "/var/log/firmad is '$(ns stat -c '%U %a' /var/log/firmad 2>&1)', not firmad 0750"
[ "$(ns stat -c '%U %a' /etc/firmad/certs)" = "firmad 755" ] || fail "/etc/firmad/certs is '$(ns stat -c '%U %a' /etc/firmad/certs 2>&1)', not firmad 0755"
# SoftHSM's configuration for firmad, and its token store: firmad's, 0700.
ns test -f "$softhsm_conf" || fail "the package ships no $softhsm_conf"
tokendir=$(ns sed -n 's/^[[:space:]]*directories.tokendir[[:space:]]*=[[:space:]]*//p' "$softhsm_conf")
[ -n "$tokendir" ] || fail "$softhsm_conf names no directories.tokendir: $(ns cat "$softhsm_conf")"
[ "$(ns stat -c '%U %a' "$tokendir")" = "firmad 700" ] ||
  fail "the token store $tokendir is '$(ns stat -c '%U %a' "$tokendir" 2>&1)', not owned by firmad with mode 0700"
ok "/etc/firmad root:firmad 0750, /etc/firmad/certs firmad 0755, /var/lib/firmad firmad 0700, /var/log/firmad firmad 0750; token store $tokendir firmad 0700 ($softhsm_conf)"
# The socket and the timer: enabled and started by the package.
for u in firmad.socket firmad-renew.timer; do
  [ "$(ns systemctl is-enabled "$u" 2>&1)" = enabled ] || fail "$u is '$(ns systemctl is-enabled "$u" 2>&1)' after install, not enabled"
  [ "$(ns systemctl is-active "$u" 2>&1)" = active ] || fail "$u is '$(ns systemctl is-active "$u" 2>&1)' after install, not active"
done
ok "firmad.socket and firmad-renew.timer enabled and active"
timer=$(timer_line) || fail "systemctl list-timers does not list firmad-renew.timer: $(ns systemctl list-timers --all --no-pager)"
ok "systemctl list-timers lists firmad-renew.timer: $timer"
# Nothing failed on install (firmad itself waits for its socket and a configuration).
failed=$(ns systemctl list-units --failed --plain --no-legend --no-pager)
[ -z "$failed" ] || fail "units failed after install: $failed"
ok "no failed units after install"
# The configuration as shipped is valid (firmad is not started by the package: its socket starts it).
out=$(ns firmad --check-config --config /etc/firmad/firmad.toml 2>&1) || fail "the shipped /etc/firmad/firmad.toml is invalid: $out"
ok "shipped configuration: $out; firmad.service is $(ns systemctl is-active firmad.service 2>&1)"

step "A SoftHSM token for the firmad user, the way the package documents"
ns test -f "$softhsm_dropin" || fail "the package ships no $softhsm_dropin drop-in"
softhsm=(runuser -u firmad -- env SOFTHSM2_CONF="$softhsm_conf" softhsm2-util)
out=$(ns "${softhsm[@]}" --init-token --free --label firmad --pin "$pin" --so-pin "$so_pin" 2>&1) ||
  fail "softhsm2-util --init-token as firmad failed: $out"
# An RSA-2048 key made here (PKCS#8 PEM), its public half kept for verification.
ns sh -c 'umask 077; openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out /root/empresa.p8.pem 2>/dev/null &&
  openssl pkey -in /root/empresa.p8.pem -pubout -out /root/empresa.pub.pem &&
  install -d -o firmad -g firmad -m 0700 /run/firmad-import &&
  install -o firmad -g firmad -m 0600 /root/empresa.p8.pem /run/firmad-import/key.p8.pem && rm -f /root/empresa.p8.pem'
out=$(ns "${softhsm[@]}" --import /run/firmad-import/key.p8.pem --token firmad --label empresa --id 01 --pin "$pin" 2>&1) ||
  fail "softhsm2-util --import as firmad failed: $out"
ns rm -rf /run/firmad-import
ok "token 'firmad' made by user firmad in $tokendir; RSA-2048 key 'empresa' (id 01) imported"
ns install -D -m 0644 "$softhsm_dropin" "$softhsm_dropin_to"
ok "drop-in $softhsm_dropin_to: $(ns grep -h -v '^#' "$softhsm_dropin_to" | tr '\n' ' ')"

step "The PIN credential and the configuration"
ns test -f /usr/share/firmad/pin-credential.conf || fail "the package ships no /usr/share/firmad/pin-credential.conf"
ns sh -c "umask 077; printf '%s\n' '$pin' > /etc/firmad/pin"
ns install -D -m 0644 /usr/share/firmad/pin-credential.conf /etc/systemd/system/firmad.service.d/pin-credential.conf
ns test -f /etc/firmad/firmad.toml || fail "the package ships no /etc/firmad/firmad.toml"
conf_before=$(ns stat -c '%U:%G %a' /etc/firmad/firmad.toml)
# The conffile's content replaced in place (its owner and mode kept).
ns sh -c 'cat > /etc/firmad/firmad.toml' <<'TOML'
# firmad in the deployment test: a SoftHSM token, its PIN from a systemd credential.
[daemon]
log_level = "info"

[access]
admin_groups = ["firmad-admin"]

[tokens.firmad]
module = "/usr/lib/softhsm/libsofthsm2.so"
uri = "pkcs11:token=firmad"
sessions = 1
pin_source = "credential"
pin_credential = "firmad-pin"

[keys.empresa]
token = "firmad"
uri = "pkcs11:object=empresa;id=%01"
allow_groups = ["firmad-signers"]
TOML
ok "/etc/firmad/firmad.toml written ($conf_before), /etc/firmad/pin root 0600, pin-credential.conf drop-in installed"
# The configuration is valid, and readable by the user firmad runs as.
out=$(ns firmad --check-config --config /etc/firmad/firmad.toml 2>&1) || fail "firmad --check-config (root): $out"
out=$(ns runuser -u firmad -- env SOFTHSM2_CONF="$softhsm_conf" firmad --check-config --config /etc/firmad/firmad.toml 2>&1) ||
  fail "firmad --check-config as firmad: $out"
ok "firmad --check-config as root and as firmad: $out"
ns systemctl daemon-reload
drop_ins=$(unit_prop firmad.service DropInPaths)
case $drop_ins in *"$softhsm_dropin_to"*pin-credential.conf*|*pin-credential.conf*"$softhsm_dropin_to"*) ;; *) fail "firmad.service drop-ins after daemon-reload: '$drop_ins'" ;; esac
ok "daemon-reload; firmad.service drop-ins: $drop_ins"

step "A missing PIN credential: the unit stops retrying at its start limit, and says why"
# systemd cannot load the credential (status 243/CREDENTIALS): firmad never
# runs. Restart=on-failure tries again until StartLimitBurst (5 in 60 s);
# then the unit and its socket are failed, and the waiting client is let go.
ns mv /etc/firmad/pin /etc/firmad/pin.away
ns useradd -m -G firmad-signers alice
if out=$(as alice firmactl --timeout 60 status 2>&1); then fail "firmad answered without its PIN credential: $out"; fi
grep -q 'systemctl status firmad' <<<"$out" || fail "firmactl does not say where to look: $out"
ok "alice: $out"
# (systemd 252 says "Failed to set up credentials: Protocol error" for a
# missing credential file; firmad(8) explains it.)
socket_result=$(unit_prop firmad.socket Result)
[ "$socket_result" = service-start-limit-hit ] || fail "firmad.socket while its service cannot start: Result=$socket_result"
[ "$(unit_prop firmad.service ActiveState)" = failed ] || fail "firmad.service is $(unit_prop firmad.service ActiveState), not failed"
# (systemd's own count: the journal may not have every line yet.)
restarts=$(unit_prop firmad.service NRestarts)
# 5 failed starts: the 5th scheduled restart counts, then meets the limit.
[ "$restarts" = 5 ] || fail "firmad.service restart counter is $restarts (StartLimitBurst=5: 5 expected, the last refused)"
tries=$restarts
journal_says() { ns journalctl -u firmad.service --no-pager -o cat | grep -q 'Failed to set up credentials'; }
for _ in $(seq 50); do journal_says && break; sleep 0.2; done
journal_says || fail "the journal does not say the credential could not be set up"
ok "firmad.service failed to start 5 times (restart counter $tries), then was left failed; firmad.socket: Result=$socket_result"
# Repaired: the PIN back, the failure state cleared, the socket listening again.
ns mv /etc/firmad/pin.away /etc/firmad/pin
ns systemctl reset-failed firmad.service firmad.socket
ns systemctl start firmad.socket

step "Signing through socket activation"
[ "$(ns systemctl is-enabled firmad.socket)" = enabled ] || fail "firmad.socket is not enabled"
[ "$(unit_prop firmad.service ActiveState)" != active ] || say "   note: firmad.service was already running before the first client"
alice_uid=$(ns id -u alice)
# alice (firmad-signers) asks for the status: systemd starts firmad for her.
out=$(as alice firmactl status 2>&1) || fail "firmactl status as alice: $out"
grep -q '^token firmad: logged-in' <<<"$out" || fail "firmad is not logged in to the token: $out"
ok "alice: firmactl status -> $(head -2 <<<"$out" | tr '\n' ' ')"
sign_as alice doc1
[ "$(unit_prop firmad.service ActiveState)" = active ] || fail "firmad.service is not active after signing"

step "Access control"
# mallory, in no group, is refused and told why.
ns useradd -m mallory
if out=$(as mallory firmactl status 2>&1); then fail "mallory (no group) got the status: $out"; else rc=$?; fi
[ "$rc" = 4 ] || fail "mallory was refused with exit $rc (4, access denied, expected): $out"
grep -q 'Permission denied' <<<"$out" && grep -q 'firmad-signers' <<<"$out" && grep -q '0660' <<<"$out" ||
  fail "mallory's refusal does not name the socket's mode and group: $out"
ok "mallory refused (exit $rc): $out"
if out=$(as mallory firmactl sign empresa /etc/hostname -o /tmp/x 2>&1); then fail "mallory could sign"; else rc=$?; fi
[ "$rc" = 4 ] && grep -q 'Permission denied' <<<"$out" || fail "mallory's signature was refused otherwise (exit $rc): $out"
ok "mallory cannot sign (exit 4)"
# adm (firmad-admin, and firmad-signers to reach the socket) logs firmad out and in.
# (-N: Debian has a group adm already; adm's primary group is 'users'.)
ns useradd -m -N -G firmad-admin,firmad-signers adm
out=$(as adm firmactl logout firmad 2>&1) || fail "firmactl logout firmad as adm: $out"
status=$(as adm firmactl status 2>&1) || fail "firmactl status as adm: $status"
grep -q '^token firmad: logged-out' <<<"$status" || fail "status after logout: $status"
ok "adm: firmactl logout firmad -> $out; status: $(grep '^token' <<<"$status")"
if out=$(as alice firmactl sign empresa doc1 -o doc1.sig2 2>&1); then fail "alice signed while the token was logged out"; else rc=$?; fi
[ "$rc" = 1 ] && grep -q 'is not logged in' <<<"$out" || fail "alice's signature while logged out: exit $rc: $out"
ok "alice refused while logged out (exit 1): $out"
if out=$(as alice firmactl logout firmad 2>&1); then fail "alice (not an admin) logged firmad out"; else rc=$?; fi
[ "$rc" = 4 ] && grep -q 'you may not do this (Logout)' <<<"$out" || fail "alice's logout: exit $rc: $out"
ok "alice (not an admin) may not log out (exit 4): $out"
out=$(printf '%s\n' "$pin" | as adm firmactl login firmad --pin-stdin 2>&1) || fail "firmactl login firmad --pin-stdin as adm: $out"
status=$(as adm firmactl status 2>&1) || fail "firmactl status as adm: $status"
grep -q '^token firmad: logged-in' <<<"$status" || fail "status after login: $status"
ok "adm: firmactl login firmad --pin-stdin -> $out; status: $(grep '^token' <<<"$status")"
sign_as alice doc2

step "Signing through the PKCS#11 module (firma-pkcs11), as a program that only speaks PKCS#11"
out=$(ns p11-kit list-modules 2>&1) || fail "p11-kit list-modules: $out"
grep -q '^firma: libfirma-pkcs11.so$' <<<"$out" || fail "p11-kit does not list the firma module: $out"
module=$(ns sh -c 'ls /usr/lib/*/pkcs11/libfirma-pkcs11.so') || fail "no libfirma-pkcs11.so installed"
ok "p11-kit lists module firma ($module)"
ns sh -c "printf 'Nomina por PKCS#11\n' > /home/alice/p11.txt && chown alice: /home/alice/p11.txt"
out=$(as alice pkcs11-tool --module "$module" --sign -m SHA256-RSA-PKCS --id 01 -i p11.txt -o p11.sig 2>&1) ||
  fail "alice could not sign through the module: $out"
out=$(ns openssl dgst -sha256 -verify /root/empresa.pub.pem -signature /home/alice/p11.sig /home/alice/p11.txt 2>&1) ||
  fail "the module's signature does not verify: $out"
alice_signed=$((alice_signed + 1))  # one more audit line of hers
audit=$(ns cat /var/log/firmad/audit.log)
grep -qE "event=sign method=Sign key=empresa .*uid=$alice_uid .*(exe=/usr/bin/pkcs11-tool|comm=pkcs11-tool)" <<<"$audit" ||
  fail "the audit trail has no signature by pkcs11-tool as alice: $(tail -3 <<<"$audit")"
ok "alice signed with pkcs11-tool through the module; the signature verifies, and the audit names pkcs11-tool"
# mallory (no group) loads the module too: it shows no token, and signs nothing.
out=$(as mallory pkcs11-tool --module "$module" -L 2>&1) || true
grep -q 'token label' <<<"$out" && fail "mallory sees a token through the module: $out"
ok "mallory sees no token through the module"

step "The unit: Type=notify READY and STATUS"
status=$(ns systemctl status firmad.service --no-pager 2>&1) || true
grep -q 'Active: active (running)' <<<"$status" || fail "systemctl status firmad: $status"
[ "$(unit_prop firmad.service Type)" = notify ] || fail "firmad.service is not Type=notify"
status_text=$(unit_prop firmad.service StatusText)
[ -n "$status_text" ] || fail "firmad sent no STATUS="
grep -q "Status: \"$status_text\"" <<<"$status" || fail "systemctl status shows no 'Status:' line: $status"
ok "active (running) after READY=1 (Type=notify); Status: \"$status_text\""

step "The journal and the audit trail"
journal_text=$(ns journalctl -u firmad.service -o cat --no-pager)
audit=$(ns cat /var/log/firmad/audit.log) || fail "no /var/log/firmad/audit.log"
say "   the journal of firmad.service has $(wc -l <<<"$journal_text") lines; last ones:"
tail -n 5 <<<"$journal_text" | sed 's/^/     /'
sign_lines=$(grep 'event=sign' <<<"$audit" | grep "uid=$alice_uid " || true)
[ -n "$sign_lines" ] || fail "the audit trail has no signature by alice (uid $alice_uid): $audit"
ok "audit.log: $(wc -l <<<"$sign_lines") signature(s) by uid $alice_uid, e.g. $(head -1 <<<"$sign_lines" | cut -c1-220)"
journal_signs=$(grep -E 'event=sign|method=Sign' <<<"$journal_text" | grep "uid=$alice_uid" || true)
if [ -n "$journal_signs" ]; then ok "the journal has alice's signatures too: $(head -1 <<<"$journal_signs")"
else say "   note: the journal has no line for a signature (they are in the audit file only); alice's uid there: $(grep -c "uid=$alice_uid" <<<"$journal_text" || true) line(s)"; fi
# The PIN is in neither (the whole journal, any unit).
leaks=$( { ns journalctl -o cat --no-pager; ns cat /var/log/firmad/audit.log; } | grep -n "$pin" || true)
[ -z "$leaks" ] || fail "the PIN appears in the journal or the audit trail: $leaks"
ok "the PIN is in neither the journal nor the audit trail"
say "   note: /var/log/firmad/audit.log is $(ns stat -c '%U:%G %a' /var/log/firmad/audit.log) in $(ns stat -c '%U:%G %a' /var/log/firmad)"

step "The renewal timer"
timer=$(timer_line) || fail "systemctl list-timers does not list firmad-renew.timer: $(ns systemctl list-timers --all --no-pager)"
ok "systemctl list-timers: $timer"
out=$(ns systemctl start firmad-renew.service 2>&1) || fail "systemctl start firmad-renew.service: $out"
renew=$(ns systemctl show -p Result -p ExecMainStatus -p ActiveState -p ConditionResult firmad-renew.service | tr '\n' ' ')
# Success, or skipped by its ExecCondition= ('firmactl renew --check': nothing due).
case $renew in
  *Result=success*) ok "firmad-renew.service ran and succeeded: $renew" ;;
  *Result=exec-condition*)
    why=$(ns journalctl -u firmad-renew.service -o cat --no-pager | grep -v -e '^Starting' -e 'Skipped' -e '^Condition check' | tail -1)
    ok "firmad-renew.service skipped by its ExecCondition (nothing due: '$why'): $renew" ;;
  *) fail "firmad-renew.service: $renew" ;;
esac

step "The unit's exposure (systemd-analyze security)"
exposure=$(ns systemd-analyze security firmad.service --no-pager 2>&1 | sed -n 's/.*Overall exposure level for firmad.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure level from systemd-analyze security firmad.service"
awk -v s="$exposure" 'BEGIN { exit !(s <= 2.5) }' || fail "firmad.service exposure $exposure is above 2.5"
ok "overall exposure level $exposure (<= 2.5)"

step "Stopping firmad"
out=$(ns systemctl stop firmad.service 2>&1) || fail "systemctl stop firmad: $out"
stop=$(ns systemctl show -p Result -p ExecMainStatus -p ExecMainCode firmad.service | tr '\n' ' ')
grep -q 'Result=success' <<<"$stop" && grep -q 'ExecMainStatus=0' <<<"$stop" || fail "firmad.service after stop: $stop"
ok "stopped: $stop"

step "Upgrade to a rebuilt package with a higher version"
sign_as alice doc3
pid_before=$(firmad_pid)
[ "$pid_before" != 0 ] || fail "firmad is not running before the upgrade"
state_before=$(ns find /var/lib/firmad "$tokendir" -printf '%p %u %m %y\n' | sort)
conf_sum=$(ns sha256sum /etc/firmad/firmad.toml)
starts_before=$(starts)
up_debs=()
for d in "$work"/upgrade/*.deb; do up_debs+=("/upgrade/$(basename "$d")"); done
# alice signs in a loop during the upgrade (until told to stop), to see what clients meet.
signing_loop "$work/upgrade-loop.log"
# Both the administrator and the package changed firmad.toml: unattended,
# dpkg is told to keep the administrator's (--force-confold), as automation does.
out=$(NS_TIMEOUT=120 ns apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "${up_debs[@]}" </dev/null 2>&1) ||
  { say "$out"; fail "the upgrade (apt-get install ${up_debs[*]}) failed"; }
ns touch /home/alice/stop
wait "$loop_pid" || fail "alice's signing loop did not end after the upgrade: $(sort "$work/upgrade-loop.log" | uniq -c)"
loop_signed=$(grep -c '^rc=0$' "$work/upgrade-loop.log" || true)
outcomes=$(sort "$work/upgrade-loop.log" | uniq -c | tr -s ' \n' ' ')
# The socket keeps listening through an upgrade: a client connecting while
# firmad restarts waits in its backlog and is served by the new firmad. Only
# a request caught in the instant of the stop (its connection accepted, its
# call not read yet) is told firmad closed the connection (exit 3): at most 3.
grep -qv '^rc=\(0\|3\)$' "$work/upgrade-loop.log" && fail "alice's signatures during the upgrade ended otherwise than signed or unreachable: $outcomes"
lost=$(grep -c '^rc=3$' "$work/upgrade-loop.log" || true)
[ "$lost" -le 3 ] || fail "$lost of alice's signatures failed during the upgrade (3 at most): $outcomes"
grep -q 'Setting up firmad (.*+rebuild1)' <<<"$out" || fail "the upgrade did not set up firmad +rebuild1: $out"
ok "upgraded to $(ns dpkg-query -W -f '${Version}' firmad)"
pid_after=$(firmad_pid)
[ "$pid_after" != 0 ] && [ "$pid_after" != "$pid_before" ] || fail "firmad was not restarted by the upgrade (MainPID $pid_before -> $pid_after)"
restarts=$(($(starts) - starts_before))
[ "$restarts" = 1 ] || fail "firmad started $restarts times during the upgrade (once expected)"
ok "firmad restarted once by the upgrade: MainPID $pid_before -> $pid_after; alice's signatures meanwhile: $loop_signed signed, $lost unreachable"
# No process runs the replaced (deleted) binary.
deleted=$(ns sh -c 'for p in /proc/[0-9]*; do e=$(readlink $p/exe 2>/dev/null) || continue; case $e in *"(deleted)"*) echo "${p#/proc/} $e";; esac; done' | grep firmad || true)
[ -z "$deleted" ] || fail "a process runs a deleted firmad binary after the upgrade: $deleted"
[ "$(ns systemctl is-active firmad.socket)" = active ] || fail "firmad.socket is not active after the upgrade"
state_after=$(ns find /var/lib/firmad "$tokendir" -printf '%p %u %m %y\n' | sort)
[ "$state_before" = "$state_after" ] || fail "/var/lib/firmad changed in the upgrade: $(diff <(echo "$state_before") <(echo "$state_after"))"
[ "$(ns sha256sum /etc/firmad/firmad.toml)" = "$conf_sum" ] || fail "the upgrade changed /etc/firmad/firmad.toml"
ns grep -q '^# (changed in .*+rebuild1)$' /etc/firmad/firmad.toml.dpkg-dist ||
  fail "the upgrade's new firmad.toml is not beside the edited one (firmad.toml.dpkg-dist)"
ok "state kept ($(wc -l <<<"$state_after") entries in /var/lib/firmad and $tokendir), edited firmad.toml kept, no prompt"
sign_as alice doc4
[ "$(firmad_pid)" != "$pid_before" ] || fail "the old firmad (PID $pid_before) still serves after the upgrade"
ok "a new firmad process (PID $(firmad_pid)) serves after the upgrade"

step "Remove (not purge), while alice signs"
# alice signs in a loop (until firmactl is gone with the package) while firmad is removed.
signing_loop "$work/loop.log"
remove_start=$SECONDS
out=$(NS_TIMEOUT=120 ns apt-get remove -y firmad </dev/null 2>&1) || { say "$out"; fail "apt-get remove firmad failed"; }
ok "apt-get remove firmad took $((SECONDS - remove_start)) s while alice signed"
wait "$loop_pid" || fail "alice's signing loop did not end after the remove (or failed): $(sort "$work/loop.log" | uniq -c)"
outcomes=$(sort "$work/loop.log" | uniq -c | tr -s ' \n' ' ')
# 0: signed; 3: firmad unreachable (stopping, socket closed); 127: firmactl removed.
grep -qv '^rc=\(0\|3\|127\)$' "$work/loop.log" && fail "alice's signatures during the remove ended otherwise than signed, unreachable or removed: $outcomes"
ok "alice's signatures during the remove: $outcomes(0 signed, 3 firmad unreachable, 127 firmactl removed)"
# Every signature alice got is in the audit trail, those answered while firmad stopped too.
signed=$(($(grep -c '^rc=0$' "$work/loop.log") + loop_signed + alice_signed))
audit=$(ns cat /var/log/firmad/audit.log)
audited=$(grep 'event=sign ' <<<"$audit" | grep "uid=$alice_uid " | grep -c 'result=ok$' || true)
[ "$audited" = "$signed" ] || fail "alice got $signed signatures but the audit trail records $audited"
ok "all $signed signatures alice got are in the audit trail"
no_stale_firmad "after remove"
[ "$(ns systemctl is-active firmad.service)" != active ] || fail "firmad.service is still active after remove"
[ "$(ns systemctl is-active firmad.socket)" != active ] || fail "firmad.socket is still listening after remove"
ns test ! -e /run/firmad/firmad.sock || fail "/run/firmad/firmad.sock is left after remove"
[ "$(ns systemctl is-active firmad-renew.timer)" != active ] || fail "firmad-renew.timer is still active after remove"
ok "firmad stopped, its socket closed and its timer stopped by remove"
ns test -d /var/lib/firmad || fail "remove deleted /var/lib/firmad"
ns test -d "$tokendir" || fail "remove deleted the token store $tokendir"
[ "$(ns sha256sum /etc/firmad/firmad.toml 2>&1)" = "$conf_sum" ] || fail "remove did not keep /etc/firmad/firmad.toml"
ok "/var/lib/firmad and the edited /etc/firmad/firmad.toml kept"
reinstall=$(cd "$work/upgrade" && echo firmad_*.deb)
out=$(NS_TIMEOUT=120 ns apt-get install -y --no-install-recommends "/upgrade/$reinstall" </dev/null 2>&1) ||
  { say "$out"; fail "reinstalling firmad ($reinstall, the version removed) failed"; }
ok "reinstalled $(ns dpkg-query -W -f '${Version}' firmad)"
[ "$(ns sha256sum /etc/firmad/firmad.toml)" = "$conf_sum" ] || fail "the reinstall changed /etc/firmad/firmad.toml"
sign_as alice doc5

step "Purge"
out=$(NS_TIMEOUT=120 ns apt-get purge -y firmad </dev/null 2>&1) || { say "$out"; fail "apt-get purge firmad failed"; }
no_stale_firmad "after purge"
ns test ! -e /var/lib/firmad || fail "purge left /var/lib/firmad: $(ns ls -la /var/lib/firmad)"
ns test ! -e /var/log/firmad || fail "purge left /var/log/firmad: $(ns ls -la /var/log/firmad)"
ok "purge removed /var/lib/firmad and /var/log/firmad"
# The units' enablement is gone with the package.
links=$(ns sh -c 'ls /etc/systemd/system/*/firmad* 2>/dev/null; ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep firmad' || true)
[ -z "$links" ] || fail "purge left the units enabled: $links"
ok "purge disabled firmad.socket and firmad-renew.timer"
case $tokendir in
  /var/lib/firmad/*) ;;
  *) ns test -n "$(ns ls -A "$tokendir")" || fail "purge removed the token store $tokendir (private keys)"
     ok "purge kept the token store $tokendir (private keys), as the package documents" ;;
esac
say "   note: /etc/firmad after purge: $(ns sh -c 'ls -A /etc/firmad 2>&1 | tr "\n" " "')"

step "All checks passed in $((SECONDS - started)) s"
