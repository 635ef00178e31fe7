#!/bin/sh
# dsm-tune end to end on a tiny model and on the full model's config.json alone: trace, plan, simulate under
# each policy (Belady hits at least as often as any other), the plan read back by the plan parser of the
# engine's tools, and the full 685 B shape planned from config.json alone and simulated.
set -u
tune="$top_builddir/dsm-tune"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none --routing-skew 1.5 tiny "$tmp/tiny" || exit 99
cat > "$tmp/hw.json" <<'HW'
{ "format": "dsm-hw", "version": 1, "name": "test",
  "numa_nodes": [ { "cores": 2, "dram_bytes": 8000000000, "dram_read_gbs": 30, "expert_gbs": { "1": 20, "8": 10, "64": 2 } } ],
  "nvme": { "read_gbs": { "1": 1, "16": 2 } } }
HW
"$tune" trace -m "$tmp/tiny" --zipf 1.2 --tokens 3000 --out "$tmp/t.trace" || { echo "FAIL trace"; exit 1; }
# A DRAM budget below the model: some experts must be streamed.
"$tune" plan -m "$tmp/tiny" --hw "$tmp/hw.json" --trace "$tmp/t.trace" --dram-budget 5M --out "$tmp/plan.json" ||
	{ echo "FAIL plan"; exit 1; }
grep -q '"nvme"' "$tmp/plan.json" || { echo "FAIL: nothing streamed under a 5 MB budget"; fail=1; }
grep -q '"dram:0"' "$tmp/plan.json" || { echo "FAIL: nothing in DRAM"; fail=1; }
# simulate -m loads the plan with the engine's own parser (dsm_plan_load).
for pol in lru lfu pinned belady; do
	"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/t.trace" --hw "$tmp/hw.json" --policy $pol --json \
		> "$tmp/$pol.json" || { echo "FAIL simulate $pol"; fail=1; continue; }
	hit=$(sed -n 's/.*"hit_rate":[[:space:]]*\([0-9.e-]*\),*$/\1/p' "$tmp/$pol.json" | head -1)
	tps=$(sed -n 's/.*"tokens_per_second":[[:space:]]*\([0-9.e+-]*\),*$/\1/p' "$tmp/$pol.json" | head -1)
	echo "$pol: hit rate $hit, $tps tok/s"
	eval "hit_$pol=$hit"
done
for pol in lru lfu pinned; do
	eval "h=\$hit_$pol"
	awk -v a="$h" -v b="$hit_belady" 'BEGIN { exit !(a <= b + 1e-12) }' ||
		{ echo "FAIL: $pol hits $h, more than Belady's $hit_belady"; fail=1; }
done
# The same with the model (-m) and without (sizes from the plan): identical predictions.
"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/t.trace" --hw "$tmp/hw.json" -m "$tmp/tiny" --json \
	> "$tmp/with_m.json" || fail=1
"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/t.trace" --hw "$tmp/hw.json" --json > "$tmp/without_m.json" || fail=1
cmp -s "$tmp/with_m.json" "$tmp/without_m.json" || { echo "FAIL: -m changes the prediction"; fail=1; }
# Batch 8 reads each chosen expert once per step: fewer expert uses per token than batch 1.
"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/t.trace" --hw "$tmp/hw.json" --batch 8 --json > "$tmp/b8.json" || fail=1
s1=$(sed -n 's/.*"steps":[[:space:]]*\([0-9]*\),*$/\1/p' "$tmp/lru.json")
s8=$(sed -n 's/.*"steps":[[:space:]]*\([0-9]*\),*$/\1/p' "$tmp/b8.json")
[ "$s1" = 3000 ] && [ "$s8" = 375 ] || { echo "FAIL: steps $s1 and $s8, want 3000 and 375"; fail=1; }

# The full model from its config.json alone.
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none full "$tmp/full" > /dev/null 2>&1 || exit 99
cp "$tmp/full/config.json" "$tmp/config.json" && rm -rf "$tmp/full"
cat > "$tmp/big.json" <<'HW'
{ "format": "dsm-hw", "version": 1, "name": "big",
  "numa_nodes": [ { "cores": 32, "dram_bytes": 512000000000, "dram_read_gbs": 260, "expert_gbs": { "1": 220, "8": 80, "64": 14 } } ],
  "gpus": [ { "memory_bytes": 24000000000, "read_gbs": 1000, "h2d_gbs": 25 } ],
  "nvme": { "read_gbs": { "1": 2.5, "32": 7 } } }
HW
start=$(date +%s)
"$tune" trace -m "$tmp/config.json" --zipf 0.8 --tokens 1500 --out "$tmp/full.trace" || { echo "FAIL full trace"; exit 1; }
"$tune" plan -m "$tmp/config.json" --hw "$tmp/big.json" --trace "$tmp/full.trace" --out "$tmp/full-plan.json" ||
	{ echo "FAIL full plan"; exit 1; }
"$tune" simulate --plan "$tmp/full-plan.json" --trace "$tmp/full.trace" --hw "$tmp/big.json" | tail -2 || fail=1
echo "full scale: $(( $(date +%s) - start )) s for trace, plan and simulate"
grep -q '"gpu:0"' "$tmp/full-plan.json" || { echo "FAIL: no GPU tier in the full plan"; fail=1; }
exit $fail
