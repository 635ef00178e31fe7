#!/bin/sh
# dsm-bench gpu on the emu backend (what tools/gpu-check runs with cuda), small sizes: a smoke test of its
# orchestration, not a measurement. The device's bandwidths are positive; the tiny preset with every expert and
# the shared experts on the emu device gives the cpu path's logits exactly and the same greedy tokens; the speed
# runs report decode and prefill rates and their ratios.
set -e
bin="$top_builddir/dsm-bench"
work="$top_builddir/tests/bench-gpu"
out="$top_builddir/tests/bench-gpu.out"
command -v python3 >/dev/null || { echo "python3 not found"; exit 77; }
mkdir -p "$work"
"$bin" gpu --backend emu --dir "$work" --presets tiny --size-gb 0.05 --tokens 4 --prompt 16 --json >"$out"
cat "$out" | sed -n '/^{/q;p'
python3 - "$out" <<'PY'
import json, math, sys
text = open(sys.argv[1]).read()
d = json.loads(text[text.index("\n{") + 1:])
def pos(x, what):
    if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
        sys.exit("FAIL: %s is not a positive number: %r" % (what, x))
pos(d["device"]["d2d_gbs"], "d2d_gbs")
pos(d["device"]["h2d_gbs"], "h2d_gbs")
if [l["preset"] for l in d["logits"]] != ["tiny"]:
    sys.exit("FAIL: logits of %r" % [l["preset"] for l in d["logits"]])
for l in d["logits"]:
    if not l["pass"] or l["nmse_max"] != 0 or l["greedy_same"] != l["greedy_tokens"] or l["greedy_tokens"] != 8:
        sys.exit("FAIL: emu logits of %s differ from the cpu path: %r" % (l["preset"], l))
if [s["experts_on"] for s in d["speed"]] != ["gpu", "dram", "nvme"]:
    sys.exit("FAIL: speed runs %r" % d["speed"])
for s in d["speed"]:
    pos(s["decode_tokens_per_second"], s["experts_on"] + " decode")
    pos(s["prefill_tokens_per_second"], s["experts_on"] + " prefill")
pos(d["speed"][0]["gpu_read_ratio_busy"], "gpu_read_ratio_busy")
pos(d["speed"][0]["gpu_busy_ms_per_token"], "gpu busy")
pos(d["speed"][1]["dram_bound_ratio"], "dram_bound_ratio")
pos(d["speed"][1]["cpu_busy_ms_per_token"], "cpu busy with DRAM experts")
pos(d["speed"][2]["io_wait_ms_per_token"] + d["speed"][2]["cpu_busy_ms_per_token"], "nvme run's work")
print("ok: dsm-bench gpu on the emu backend")
PY
rm -rf "$work"
