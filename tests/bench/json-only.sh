#!/usr/bin/env bash
# firmad-bench --json and firmad-load --json print one JSON object on stdout
# and nothing else, with the figures the README quotes (short runs: the
# figures are not judged here, only their presence and form).
#   json-only.sh FIRMAD_BENCH FIRMAD_LOAD
set -euo pipefail
bench=$1 load=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$bench" --json --seconds 0.2 --rounds 1 >"$out" 2>/dev/null
python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert "getinfo_round_trip" in d, d.keys()
print("firmad-bench --json: one object,", len(d), "fields")
PY
"$load" --json --seconds 0.5 --silent 100 --slow 10 >"$out" 2>/dev/null
python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
conditions = d["conditions"]
for name in ("alone", "junk", "idle", "deny", "memory"):
    c = conditions[name]
    for field in ("signer", "firmad_cpu_s", "vmhwm_kib", "log_lines_per_s", "audit_lines_per_s"):
        assert field in c, (name, field)
    assert "io" in c["firmad_cpu_s"], c["firmad_cpu_s"]
    for key, f in c["signer"].items():
        assert f["signatures"] > 0 and f["verified"] == f["signatures"], (name, key, f)
        if name != "alone":
            assert "ratio" in f and "p99_ratio" in f, (name, key, f)
print("firmad-load --json: one object, conditions", ", ".join(conditions))
PY
