#!/bin/sh
# dsm-bench batch on the tiny preset as both (a) and (b), 2 steps of B = 1 and 2 (a smoke test, not a
# measurement): one JSON object with every documented figure finite and positive (those that may be zero
# are finite and not negative), one run per B, the table form names both parts; bad options exit 2.
set -e
bin="$top_builddir/dsm-bench"
W="$top_builddir/tests/bench_batch.d"
fail() { echo "FAIL: $*"; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found"; exit 77; }
rm -rf "$W"
mkdir -p "$W"
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none tiny "$W/tiny" || exit 99

"$bin" batch --small "$W/tiny" --medium "$W/tiny" --steps 2 --sizes 1,2 --threads 2 --json >"$W/out.json"
python3 - "$W/out.json" <<'PY'
import json, math, sys
d = json.load(open(sys.argv[1]))
def num(v, positive=True):
    return isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 if positive else v >= 0)
bad = []
if d.get("sizes") != [1, 2] or d.get("steps") != 2:
    bad.append("sizes/steps")
for part, tiered in (("small", False), ("medium", True)):
    p = d.get(part, {})
    if p.get("tiered") is not tiered:
        bad.append(part + ".tiered")
    keys = ["expert_bytes", "non_expert_step_bytes", "threads", "batch_efficiency_1", "batch_efficiency_2",
            "speedup_2"] + (["experts_nvme", "dram_budget"] if tiered else ["experts_dram"])
    bad += [part + "." + k for k in keys if not num(p.get(k))]
    if not num(p.get("rest_compute_seconds_per_token"), False):
        bad.append(part + ".rest_compute_seconds_per_token")
    runs = p.get("runs", [])
    if [r.get("B") for r in runs] != [1, 2]:
        bad.append(part + ".runs")
    for r in runs:
        pos = ["steps", "seconds", "tokens_per_second", "speedup", "distinct_experts_per_step", "dram_gbs",
               "dram_gbs_min", "dram_gbs_max", "step_seconds", "bound_step_seconds", "bound_tokens_per_second",
               "batch_efficiency", "bound_rest_mem_seconds"] + (
                   ["nvme_expert_bytes_per_step", "nvme_gbs", "nvme_gbs_min", "nvme_gbs_max"] if tiered else
                   ["dram_expert_bytes_per_step"])
        nonneg = ["dram_expert_bytes_per_step", "nvme_expert_bytes_per_step", "streamed_bytes_per_step",
                  "nvme_gbs", "bound_dram_seconds", "bound_nvme_seconds", "bound_rest_compute_seconds"]
        bad += ["%s.runs[B=%s].%s" % (part, r.get("B"), k) for k in pos if not num(r.get(k))]
        bad += ["%s.runs[B=%s].%s" % (part, r.get("B"), k) for k in nonneg if not num(r.get(k), False)]
        if not isinstance(r.get("rest_seconds"), (int, float)) or not math.isfinite(r["rest_seconds"]):
            bad.append("%s.runs[B=%s].rest_seconds" % (part, r.get("B")))
if bad:
    sys.exit("FAIL: missing, not finite or out of range: " + ", ".join(bad))
PY

"$bin" batch --small "$W/tiny" --medium "$W/tiny" --steps 2 --sizes 1,2 --threads 2 >"$W/out.txt" 2>"$W/err"
for part in "(a) small preset" "(b) medium preset" "batch_efficiency"; do
	grep -qF "$part" "$W/out.txt" || fail "the table has no '$part'"
done
grep -q "small B = 2: .* tok/s" "$W/err" || fail "no progress line per B on stderr"

set +e
"$bin" batch --sizes 4,16 >/dev/null 2>&1; rc1=$?
"$bin" batch --steps 0 >/dev/null 2>&1; rc2=$?
"$bin" batch --only large >/dev/null 2>&1; rc3=$?
"$bin" batch --threads x >/dev/null 2>&1; rc4=$?
set -e
[ $rc1 -eq 2 ] || fail "--sizes without 1 first exited $rc1 (want 2)"
[ $rc2 -eq 2 ] || fail "--steps 0 exited $rc2 (want 2)"
[ $rc3 -eq 2 ] || fail "--only large exited $rc3 (want 2)"
[ $rc4 -eq 2 ] || fail "--threads x exited $rc4 (want 2)"
rm -rf "$W"
