#!/bin/sh
# dsm-bench kernels --quick runs every part of the benchmark on small sizes (a smoke test, not a
# measurement): one JSON object with the documented keys, every rate and ratio a positive number, the decode
# kernel's memory walk named with the reason it was chosen; the table
# form has each part; bad options exit 2.
set -e
bin="$top_builddir/dsm-bench"
out="$top_builddir/tests/bench-kernels.out"
fail() { echo "FAIL: $*"; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found"; exit 77; }

"$bin" kernels --quick --passes 13 --json >"$out" # 65 probe rates: more than one figure's passes
python3 - "$out" <<'PY'
import json, math, sys
d = json.load(open(sys.argv[1]))
keys = ["dram_read_gbps", "fp8_gemv_gbps_t1", "gemv_ratio_t1", "moe_layer_ratio", "moe_layer_ms",
        "moe_layer_bound_ms"] + ["%s_t%d" % (k, t) for k in ("fp8_gemv_gbps", "gemv_ratio", "gemv_compute_roof_gbps")
                                 for t in (1, 2, 4, 8)]
if d["isa"] == "avx512bf16":
    keys += ["gemm_ratio_m256", "gemm_gflops_m256", "onednn_gflops_m256"]
bad = [k for k in keys if not (isinstance(d.get(k), (int, float)) and math.isfinite(d[k]) and d[k] > 0)]
if bad:
    sys.exit("FAIL: missing or not a positive number: " + ", ".join(bad))
if d.get("decode_variant") not in ("cblock1024-ahead8", "rows4-ahead4", "rows4-ahead4-far16k", "rows1-pf4k", "rows1-pf8k") or not d.get("decode_variant_why"):
    sys.exit("FAIL: no decode kernel variant and reason: %r" % d.get("decode_variant"))
if d.get("head_walk") not in ("rows4-ahead4-far64k", "rows4-ahead4", "rows1-pf4k") or not d.get("head_walk_why"):
    sys.exit("FAIL: no head walk and reason: %r" % d.get("head_walk"))
if d["passes"] != 13 or not d["gemv_ratio_t1_min"] <= d["gemv_ratio_t1"] <= d["gemv_ratio_t1_max"]:
    sys.exit("FAIL: not 13 passes, or the median ratio is outside its passes' range")
PY

"$bin" kernels --quick >"$out"
for part in "(a) DRAM read" "(b) FP8 decode GEMV, 8 token" "(c) 2048x7168 matmul" "(d) MoE layer"; do
	grep -qF "$part" "$out" || fail "the table has no '$part'"
done

set +e
"$bin" kernels --passes 0 >/dev/null 2>&1; rc1=$?
"$bin" kernels --pool-mb 100 >/dev/null 2>&1; rc2=$?
set -e
[ $rc1 -eq 2 ] || fail "--passes 0 exited $rc1 (want 2)"
[ $rc2 -eq 2 ] || fail "--pool-mb below 1024 without --quick exited $rc2 (want 2)"
rm -f "$out"
