#!/usr/bin/env bash
# The layout check can fail: a tree with an include against the arrows, a
# CK_* name outside pkcs11/, a file in no room or a state compared by its
# wire name is refused, line by line,
# while the same tree without them passes.
set -euo pipefail
check=$(dirname "$0")/check_layout.py
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/daemon/{token,server,mx,stray} "$tree"/pkcs11 "$tree"/protocol "$tree"/client/pkcs11
printf '#include "daemon/config.hpp"\n#include "pkcs11/session.hpp"\n// CK_RV in a comment is fine\n' > "$tree/daemon/token/worker.cpp"
printf '#include "daemon/token/worker.hpp"\n' > "$tree/daemon/server/server.cpp"
printf '#include "daemon/token/worker.hpp"\n' > "$tree/daemon/server/server.hpp"
printf 'const char* s = "CKR_OK in a string is fine";\n' > "$tree/daemon/mx/ok.cpp"
printf '#include <pkcs11.h>\nCK_RV f();\n' > "$tree/pkcs11/module.cpp"
printf 'constexpr Names k{{{LoginState::LoggedIn, "logged-in"}, {LoginState::Error, "error"}, {LoginState::PinLocked, "pin-locked"}, {RenewalStep::Retired, "retired"}}};\n' > "$tree/protocol/states.cpp"
printf 'void f() { log("error", 1); } // state == "logged-in" in a comment is fine\n' > "$tree/daemon/token/login.cpp"
printf '#include <p11-kit/pkcs11.h>\n#include "client/firma.hpp"\nCK_RV C_Initialize(void*);\n' > "$tree/client/pkcs11/module.cpp"
python3 "$check" "$tree" >/dev/null || { echo "a clean tree was refused" >&2; exit 1; }

printf '#include "daemon/server/server.hpp"\n' >> "$tree/daemon/token/worker.cpp"
printf 'unsigned long rv = CKR_OK;\n' >> "$tree/daemon/mx/ok.cpp"
printf '#include "daemon/token/worker.hpp"\n' > "$tree/daemon/mx/identity.cpp"
printf '#include <p11-kit/pkcs11.h>\n' > "$tree/client/module.cpp"
printf 'int x;\n' > "$tree/daemon/stray/lost.cpp"
printf '#include "client/pkcs11/module.hpp"\n' > "$tree/client/firmactl.cpp"
printf 'bool in(const S& s) {\n  return s.state == "logged-in";\n}\n' >> "$tree/daemon/token/login.cpp"
printf '#include <daemon/server/server.hpp>\n#include "../server/server.hpp"\n#include <string>\n' > "$tree/daemon/token/sneaky.cpp"
printf 'bool f(const S& s) { return s.step.compare("retired") == 0 || s.state == std::string("pin-locked"); }\n' >> "$tree/daemon/token/sneaky.cpp"
printf 'long t = 8'"'"'000; // CK_RV after a digit separator, in a comment: fine\n' >> "$tree/daemon/token/sneaky.cpp"
set +e
out=$(python3 "$check" "$tree")
status=$?
set -e
[ "$status" -eq 1 ] || { echo "a broken tree passed (exit $status): $out" >&2; exit 1; }
for expected in "daemon/token/worker.cpp:4: token includes daemon/server/server.hpp" \
                "daemon/mx/ok.cpp:2: CKR_OK outside pkcs11/" \
                "daemon/mx/identity.cpp:1: mx includes daemon/token/worker.hpp" \
                "client/module.cpp:1: includes the PKCS#11 header" \
                "daemon/stray/lost.cpp: not in a room" \
                'daemon/token/login.cpp:3: the state "logged-in" by its wire name' \
                "daemon/token/sneaky.cpp:1: token includes daemon/server/server.hpp" \
                "daemon/token/sneaky.cpp:2: token includes daemon/server/server.hpp" \
                'daemon/token/sneaky.cpp:4: the state "retired" by its wire name' \
                'daemon/token/sneaky.cpp:4: the state "pin-locked" by its wire name' \
                "client/firmactl.cpp:1: client includes client/pkcs11/module.hpp" \
                "layout: 11 violation(s)"; do
  grep -qF "$expected" <<<"$out" || { echo "missing: $expected"$'\n'"in: $out" >&2; exit 1; }
done
echo "layout check: refuses each kind of violation, passes the clean tree"
