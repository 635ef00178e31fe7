#!/bin/sh
# dsm-tune refuses bad input with a clear message naming the file and the field: a trace of another model, a
# truncated trace, hardware files with impossible numbers, budgets too small (sizes in MB for a small model).
set -u
tune="$top_builddir/dsm-tune"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none tiny "$tmp/tiny" || exit 99

# expect_error WHAT PATTERN... -- COMMAND: the command must fail, its message must hold every pattern.
expect_error() {
	what=$1; shift
	pats=
	while [ "$1" != -- ]; do pats="$pats
$1"; shift; done
	shift
	if "$@" > "$tmp/out" 2> "$tmp/err"; then
		echo "FAIL $what: succeeded"; fail=1; return
	fi
	echo "$what: $(cat "$tmp/err")"
	printf '%s\n' "$pats" | while IFS= read -r p; do
		[ -z "$p" ] && continue
		grep -qF -- "$p" "$tmp/err" || { echo "FAIL $what: message lacks '$p'"; echo x > "$tmp/failed"; }
	done
	grep -q "Segmentation\|Abort\|runtime error" "$tmp/err" && { echo "FAIL $what: crashed"; fail=1; }
}

cat > "$tmp/hw.json" <<'HW'
{ "format": "dsm-hw", "version": 1, "name": "test",
  "numa_nodes": [ { "cores": 2, "dram_bytes": 8000000000, "dram_read_gbs": 30, "expert_gbs": { "1": 20, "8": 10, "64": 2 } } ],
  "gpus": [ { "memory_bytes": 4000000000, "read_gbs": 500, "h2d_gbs": 20 } ],
  "nvme": { "read_gbs": { "1": 1, "16": 2 } } }
HW
"$tune" trace -m "$tmp/tiny" --tokens 200 --out "$tmp/ok.trace" || exit 99
"$tune" plan -m "$tmp/tiny" --hw "$tmp/hw.json" --out "$tmp/plan.json" > /dev/null || { echo "FAIL: plan"; exit 1; }

"$tune" trace --layers 5 --first-moe 2 --experts 32 --top-k 4 --tokens 10 --out "$tmp/other.trace" || exit 99
expect_error "trace of another model" "other.trace" "another model" "n_experts is 32" -- \
	"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/other.trace" --hw "$tmp/hw.json"
expect_error "trace of another model (plan)" "other.trace" "n_experts is 32" -- \
	"$tune" plan -m "$tmp/tiny" --hw "$tmp/hw.json" --trace "$tmp/other.trace" --out "$tmp/p2.json"

size=$(wc -c < "$tmp/ok.trace")
head -c $((size - 5)) "$tmp/ok.trace" > "$tmp/cut.trace"
expect_error "truncated trace" "cut.trace" -- \
	"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/cut.trace" --hw "$tmp/hw.json"

sed 's/"dram_read_gbs": 30/"dram_read_gbs": -30/' "$tmp/hw.json" > "$tmp/neg.json"
expect_error "negative bandwidth" "neg.json" "numa_nodes[0].dram_read_gbs" "-30" "impossible" -- \
	"$tune" simulate --plan "$tmp/plan.json" --trace "$tmp/ok.trace" --hw "$tmp/neg.json"
sed 's/"memory_bytes": 4000000000,/"memory_bytes": 4000000000, "reserved_bytes": 5000000000,/' "$tmp/hw.json" > "$tmp/gpu.json"
expect_error "more GPU memory used than exists" "gpu.json" "gpus[0].reserved_bytes" "5.00 GB" "4.00 GB" -- \
	"$tune" plan -m "$tmp/tiny" --hw "$tmp/gpu.json" --out "$tmp/p3.json"
sed 's/"h2d_gbs": 20/"h2d_gbs": 0/' "$tmp/hw.json" > "$tmp/zero.json"
expect_error "zero copy rate" "zero.json" "gpus[0].h2d_gbs" -- \
	"$tune" plan -m "$tmp/tiny" --hw "$tmp/zero.json" --out "$tmp/p3.json"
sed 's/"cores": 2,/"cores": 2, "cpus": 2,/' "$tmp/hw.json" > "$tmp/key.json"
expect_error "misspelt key" "key.json" "unknown key numa_nodes[0].cpus" -- \
	"$tune" plan -m "$tmp/tiny" --hw "$tmp/key.json" --out "$tmp/p3.json"
expect_error "VRAM budget past the GPU" "hw.json" "gpus[0].memory_bytes" "4.00 GB" -- \
	"$tune" plan -m "$tmp/tiny" --hw "$tmp/hw.json" --vram-budget 8G --out "$tmp/p3.json"

sed 's/"gpus": \[.*\],/"gpus": [],/' "$tmp/hw.json" > "$tmp/cpu.json"
expect_error "budget too small for the non-expert weights" "budgets cannot hold the non-expert weights" " MB" -- \
	"$tune" plan -m "$tmp/tiny" --hw "$tmp/cpu.json" --dram-budget 100k --out "$tmp/p4.json"
grep -q "0.00 GiB\|0.00 GB" "$tmp/err" && { echo "FAIL: a size printed as zero"; fail=1; }

[ -f "$tmp/failed" ] && fail=1
[ $fail = 0 ] && echo "all messages as expected"
exit $fail
