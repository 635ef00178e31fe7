#!/bin/sh
# dsm-bench e2e --resident on the tiny preset (a smoke test, not a measurement): one JSON object whose
# per-token parts are non-negative and add up to no more than the token's time, a positive traffic ratio
# against the DRAM probe, also paired step by step (the median within its range, over every step but the
# first), and the decode kernel's variant named; the text form has the breakdown line.
set -e
bin="$top_builddir/dsm-bench"
dir="$top_builddir/tests/bench-e2e-tiny"
out="$top_builddir/tests/bench-e2e.out"
fail() { echo "FAIL: $*"; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found"; exit 77; }
[ -f "$dir/config.json" ] || "$top_builddir/dsm-mkmodel" --quiet tiny "$dir"

"$bin" e2e --resident --model "$dir" --tokens 8 -t 2 --json >"$out"
python3 - "$out" <<'PY'
import json, math, sys
d = json.load(open(sys.argv[1]))
parts = ["attention", "router", "experts", "dense", "head", "other"]
for k in ["tokens_per_second", "bytes_per_token", "effective_gbs", "dram_probe_gbs", "traffic_ratio"]:
    if not (isinstance(d.get(k), (int, float)) and math.isfinite(d[k]) and d[k] > 0):
        sys.exit("FAIL: %s is not a positive number: %r" % (k, d.get(k)))
ms = [d[p + "_ms_per_token"] for p in parts]
if min(ms + [d["waiting_ms_per_token"]]) < 0:
    sys.exit("FAIL: a negative part")
if abs(sum(ms) - 1e3 / d["tokens_per_second"]) > 0.01 * 1e3 / d["tokens_per_second"] + 0.01:
    sys.exit("FAIL: the parts (%.3f ms) are not the token's time (%.3f ms)" % (sum(ms), 1e3 / d["tokens_per_second"]))
if d["waiting_ms_per_token"] > sum(ms):
    sys.exit("FAIL: more waiting than time")
if d["steps"] != 9 or d["threads"] != 2:
    sys.exit("FAIL: %d steps on %d threads, not 9 on 2" % (d["steps"], d["threads"]))
lo, med, hi = d["traffic_ratio_paired_min"], d["traffic_ratio_paired"], d["traffic_ratio_paired_max"]
if d["paired_steps"] != 8 or not 0 < lo <= med <= hi:
    sys.exit("FAIL: paired ratio %r in %r-%r over %r steps, not 8" % (med, lo, hi, d["paired_steps"]))
if d["decode_kernel"] not in ("cblock1024-ahead8", "rows4-ahead4", "rows4-ahead4-far16k", "rows1-pf4k", "rows1-pf8k"):
    sys.exit("FAIL: decode kernel %r" % d["decode_kernel"])
PY

"$bin" e2e --resident --model "$dir" --tokens 4 >"$out"
grep -q "per token: attention" "$out" || fail "no breakdown line"
grep -q "of the DRAM probe" "$out" || fail "no traffic ratio"
grep -q "paired .* median" "$out" || fail "no paired traffic ratio"
rm -f "$out"
