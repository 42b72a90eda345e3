#!/usr/bin/env bash
# Makes (once) and caches a minimal Debian 12 tree that boots under
# systemd-nspawn, with everything firmad's packages depend on, so that
# tests/systemd/deploy.sh can install them offline (--private-network).
#
#   tests/systemd/rootfs.sh [DEB_DIR]
#
# The packages: systemd and the tools the deployment test uses, plus the
# Depends/Pre-Depends of every .deb in DEB_DIR (dbgsym packages and the
# packages in DEB_DIR themselves left out). The tree is built by mmdebstrap
# with the host's apt sources and its Acquire settings (proxy, validity
# checks), cached under /var/cache/firmad-tests/ in a directory named after
# a hash of the package list (a changed list makes a new tree), built in a
# temporary directory and renamed into place, under a lock so parallel runs
# build it once. Prints the tree's path on stdout; progress goes to stderr.
# FIRMAD_ROOTFS_CACHE overrides the cache directory.
set -euo pipefail

suite=bookworm
cache=${FIRMAD_ROOTFS_CACHE:-/var/cache/firmad-tests}
deb_dir=${1:-}
# What the container needs besides the packages' dependencies: a booting
# systemd with D-Bus, the SoftHSM token and its tools, openssl for keys and
# verification, p11-kit's module registry, pkcs11-tool (opensc) as a
# program that signs through the PKCS#11 module, ps/pgrep. (setpriv,
# runuser, useradd, flock are in minbase: util-linux, passwd.)
base_packages=(systemd systemd-sysv dbus softhsm2 openssl p11-kit procps opensc)
# Raised when the way the tree is made changes (a new hook, new options).
recipe=1

log() { echo "rootfs.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# deb_depends DIR: the first alternative of each Depends/Pre-Depends entry of
# the .debs in DIR, without versions or architecture qualifiers, minus the
# packages DIR itself holds.
deb_depends() {
  local dir=$1 deb own=() deps=()
  shopt -s nullglob
  for deb in "$dir"/*.deb; do
    case $deb in *-dbgsym_*) continue ;; esac
    own+=("$(dpkg-deb -f "$deb" Package)")
    deps+=("$(dpkg-deb -f "$deb" Pre-Depends)" "$(dpkg-deb -f "$deb" Depends)")
  done
  shopt -u nullglob
  [ ${#own[@]} -gt 0 ] || die "no .deb in $dir"
  printf '%s\n' "${deps[@]}" | tr ',' '\n' | sed -e 's/|.*//' -e 's/([^)]*)//g' -e 's/:[a-z0-9]*//' -e 's/[[:space:]]//g' |
    grep -v '^$' | grep -vxF -f <(printf '%s\n' "${own[@]}") || true
}

# host_sources: the host's active apt source files (the mirrors mmdebstrap uses).
host_sources() {
  local f
  if [ -s /etc/apt/sources.list ] && grep -q '^[[:space:]]*deb' /etc/apt/sources.list; then echo /etc/apt/sources.list; fi
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && echo "$f"
  done
  return 0
}

# host_aptopts: the host's Acquire settings that decide whether the archive is
# reachable and accepted (proxies, Check-Valid-Until, Check-Date).
host_aptopts() {
  apt-config dump | grep -E '^Acquire::(https?|ftp)::Proxy|^Acquire::Check-(Valid-Until|Date) ' || true
}

# remove_tree DIR: deletes a partial tree, never through a mount left in it.
remove_tree() {
  local dir=$1
  [ -e "$dir" ] || return 0
  if findmnt -rn -o TARGET | grep -q "^$dir\(/\|$\)"; then
    findmnt -rn -o TARGET | grep "^$dir\(/\|$\)" | sort -r | xargs -r -n1 umount -l || true
  fi
  if findmnt -rn -o TARGET | grep -q "^$dir\(/\|$\)"; then
    die "mounts are left under $dir: not deleting it"
  fi
  rm -rf --one-file-system "$dir"
}

command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root, a tree owned by root)"

packages=("${base_packages[@]}")
if [ -n "$deb_dir" ]; then
  [ -d "$deb_dir" ] || die "$deb_dir is not a directory"
  dep_list=$(deb_depends "$deb_dir")
  # The versions asked for, for the cache key: a package needing a newer
  # library than the cached tree holds makes a new tree.
  dep_versions=$(for deb in "$deb_dir"/*.deb; do dpkg-deb -f "$deb" Depends Pre-Depends; done | sort -u)
  [ -z "$dep_list" ] || mapfile -t -O ${#packages[@]} packages <<<"$dep_list"
fi
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
mapfile -t sources < <(host_sources)
[ ${#sources[@]} -gt 0 ] || die "the host has no apt sources to build from"
mapfile -t aptopts < <(host_aptopts)

# The cache key: everything that decides the tree's content.
key=$( { echo "recipe=$recipe suite=$suite arch=$(dpkg --print-architecture)"; printf '%s\n' "${packages[@]}";
          echo "${dep_versions:-}"; cat "${sources[@]}"; } | sha256sum | cut -c1-16)
tree="$cache/rootfs-$suite-$key"
mkdir -p "$cache"
chmod 0755 "$cache"

# A tree that exists is complete (it is only ever renamed into place).
if [ -d "$tree" ]; then echo "$tree"; exit 0; fi

exec 9>"$cache/.lock"
log "taking the lock $cache/.lock (another run may be building)"
flock -w 240 9 || die "could not take $cache/.lock in 240 s"
if [ -d "$tree" ]; then echo "$tree"; exit 0; fi   # another run built it meanwhile
# Partial trees of runs that were killed (none is being built: we hold the lock).
for old in "$cache"/.build-*; do [ -e "$old" ] && remove_tree "$old"; done

tmp="$cache/.build-$key-$$"
trap 'remove_tree "$tmp"' EXIT
log "building $tree: ${packages[*]}"
start=$SECONDS
opts=()
for o in "${aptopts[@]}"; do opts+=("--aptopt=$o"); done
# --mode=root: we are root and the tree must be owned by real uids for nspawn.
# The hook records what the tree was made from (for a reader of the cache).
# (In the background: a signal to this script stops mmdebstrap first, which
# undoes its mounts, and only then is the partial tree removed.)
timeout --kill-after=30 420 mmdebstrap --mode=root --format=directory --variant=minbase \
  --include="$(IFS=,; echo "${packages[*]}")" "${opts[@]}" \
  --customize-hook='printf "%s\n" "'"${packages[*]}"'" > "$1/etc/firmad-tests-rootfs"' \
  "$suite" "$tmp" "${sources[@]}" >&2 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child" || true; exit 130' INT TERM
wait "$child" || die "mmdebstrap failed or timed out (420 s)"
trap - INT TERM
mv -T "$tmp" "$tree"
trap - EXIT
log "built $tree in $((SECONDS - start)) s"
echo "$tree"
