#!/usr/bin/env bash
# The shipped daemon carries no test-only switch: `strings firmad | grep -c
# FIRMAD_TEST` prints 0, while the tests' firmad-testing has them (the same
# count there proves the check would see one).
#   release-has-no-test-hooks.sh FIRMAD FIRMAD_TESTING
set -euo pipefail
release=$1 testing=$2
command -v strings >/dev/null || { echo "strings (binutils) is missing" >&2; exit 1; }
count() { strings "$1" | grep -c FIRMAD_TEST || true; }
in_release=$(count "$release")
in_testing=$(count "$testing")
echo "FIRMAD_TEST strings: $in_release in $(basename "$release"), $in_testing in $(basename "$testing")"
[ "$in_testing" -ge 1 ] || { echo "firmad-testing has no test hook: the check below proves nothing" >&2; exit 1; }
[ "$in_release" -eq 0 ] || { echo "the release firmad contains test hooks" >&2; exit 1; }
