#!/bin/sh
# dsm-run with the tiered expert store (docs/offload.md) on the tiny preset: all-DRAM, all-streamed
# (cache off), cached with each policy, mixed and GPU-tier plans from a plan file (GPU experts on the emu
# backend), plans from budgets with a small emu device: every plan gives logits bit-identical to the plain run
# (whose routed experts are all on the store's mapped tier).
# Then the report, --json, --record-routing, clear errors for bad plans and budgets, and the tiered store
# turned on by weights past the available memory or a (fake) cgroup limit. The logits check is
# repeated on the small preset (tests/small_preset.sh; DSM_TEST_SMALL=0 leaves it out).
W=$top_builddir/tests/offload_e2e.d
rm -rf "$W"
mkdir -p "$W"
RUN="$top_builddir/dsm-run --threads 2"
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

"$top_builddir/dsm-mkmodel" --quiet --tokenizer none tiny "$W/tiny" || exit 99
TOK=0,5,9,300,17,44,2,700

# A hand-written plan for the tiny shape: MoE layers 2-4, 16 experts each.
cat > "$W/mixed.json" <<'JSON'
{ "format": "dsm-plan", "version": 1,
  "model": { "model_type": "deepseek_v32", "num_hidden_layers": 5, "first_k_dense_replace": 2,
             "n_routed_experts": 16, "hidden_size": 256, "moe_intermediate_size": 96 },
  "non_expert": "dram:0",
  "experts": { "default": "nvme",
               "layers": { "2": { "dram:0": ["0-7"] }, "3": { "gpu:0": [1, 2], "dram:0": [5, "9-11"] } } },
  "cache": { "policy": "lfu", "bytes": 400000 } }
JSON
# The same with the non-expert weights on the GPU: the shared experts run there, beside the CPU's experts.
sed 's/"non_expert": "dram:0"/"non_expert": "gpu:0"/' "$W/mixed.json" > "$W/gpu-shared.json"

check_plans() { # model dir, label
	$RUN -m "$1" --tokens $TOK -n 6 --ignore-eos --dump-logits "$W/base.npy" -q > /dev/null || { bad "$2: plain run"; return; }
	for mode in "--offload --dram-budget 64G" "--stream-experts --cache-off" "--stream-experts --cache-policy lru" \
		"--stream-experts --cache-policy lfu --cache-size 2M" "--stream-experts --cache-policy pinned --cache-size 2M" \
		"--plan $W/mixed.json --gpu-backend emu" "--plan $W/mixed.json --gpu-backend emu --cache-off" \
		"--plan $W/gpu-shared.json --gpu-backend emu" \
		"--gpu-backend emu --cpu-attention --vram-budget 1M" "--gpu-backend emu --cpu-attention --vram-budget 1M --dram-budget 6M" \
		"--gpu-backend emu --cpu-attention --vram-budget 1M --gpu-upload-tokens 2" "--gpu-backend emu --cpu-attention --gpus 0,1 --vram-budget 600K" \
		"--gpu-backend emu --cpu-attention --vram-budget 24M --dram-budget 1000M" \
		"--gpu-backend emu --ctx 512 --batch 16 --vram-budget 9M --dram-budget 6M" "--gpu-backend emu --ctx 512 --batch 16 --gpus 0,1 --vram-budget 9M" \
		"--gpu-backend emu --ctx 512 --batch 16 --vram-budget 700M --dram-budget 1000M" \
		"--gpu-backend emu --ctx 512 --batch 16 --gpus 0,1 --vram-budget 700M --dram-budget 1000M"; do
		case "$mode" in *"--dram-budget 1000M"*) [ "$2" = small ] || continue ;;
		*.json*|*"--dram-budget 6M"*|*upload*|*gpus*) [ "$2" = tiny ] || continue ;; esac
		if $RUN -m "$1" --tokens $TOK -n 6 --ignore-eos --dump-logits "$W/plan.npy" -q $mode > /dev/null 2> "$W/err" &&
		   cmp -s "$W/base.npy" "$W/plan.npy"; then
			ok "$2: $mode: identical logits"
		else
			bad "$2: $mode: logits differ or the run failed"
			cat "$W/err"
		fi
	done
}
check_plans "$W/tiny" tiny

# The budget runs above put some experts on the emu device (1 MiB holds 10 of the 48 tiny experts), some in
# DRAM and, with 6 MiB of DRAM, the rest on nvme.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --gpu-backend emu --cpu-attention --vram-budget 1M --dram-budget 6M \
	> /dev/null 2> "$W/err" &&
   grep -q "offload: experts gpu [1-9][0-9]*, dram [1-9][0-9]*, nvme [1-9][0-9]*, mapped 0;" "$W/err" &&
   grep -q "per token: gpu busy [0-9.]*[1-9][0-9]* ms, cpu busy [0-9.]* ms, I/O wait [0-9.]* ms, overlap [0-9.]* ms" "$W/err"
then ok "emu device: some experts on gpu:0, its busy time on the timeline"
else bad "emu device: some experts on gpu:0, its busy time on the timeline"; cat "$W/err"; fi

# With the shared experts on the emu device every step (1 prefill, 5 decode, 3 MoE layers) runs one there,
# overlapping the CPU's experts.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --plan "$W/gpu-shared.json" --gpu-backend emu > /dev/null 2> "$W/err" &&
   grep -q "per token: gpu busy [0-9.]*[1-9][0-9]* ms, .*, overlap [0-9.]*[1-9][0-9]* ms; shared expert runs: gpu 18, cpu 0" "$W/err"
then ok "shared experts on the emu device"; else bad "shared experts on the emu device"; cat "$W/err"; fi

# A DRAM expert with 2 or more tokens of the prompt is copied to the emu device and computed there.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --gpu-backend emu --cpu-attention --vram-budget 1M --gpu-upload-tokens 2 \
	> /dev/null 2> "$W/err" && grep -q "DRAM experts to the gpu: from 2 tokens, [1-9][0-9]* runs" "$W/err"
then ok "DRAM experts uploaded for a prompt's tokens"; else bad "DRAM experts uploaded for a prompt's tokens"; cat "$W/err"; fi

# Two emulated GPUs: the MoE layers split between them, experts on both.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --gpu-backend emu --cpu-attention --gpus 0,1 --vram-budget 600K > /dev/null 2> "$W/err" &&
   grep -q "; experts on gpu:0 [1-9][0-9]*, gpu:1 [1-9][0-9]*$" "$W/err"
then ok "--gpus 0,1: experts on gpu:0 and gpu:1"; else bad "--gpus 0,1: experts on gpu:0 and gpu:1"; cat "$W/err"; fi

# The forward pass outside the experts on the emu device (its weights, KV cache and buffers take 7.3 MB of the
# 9 MB), experts in the rest and in DRAM.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --gpu-backend emu --ctx 512 --batch 16 --vram-budget 9M \
	--dram-budget 6M > /dev/null 2> "$W/err" &&
   grep -q "gpu:0 runs layers 0-4 but their experts (attention, dense layers, routers), the embeddings and the head: 0.00389 GB of weights" "$W/err" &&
   grep -q "offload: experts gpu [1-9][0-9]*, dram [1-9][0-9]*, nvme [0-9]*, mapped 0;" "$W/err"
then ok "the forward pass on the emu device, experts beside it"
else bad "the forward pass on the emu device, experts beside it"; cat "$W/err"; fi

# Two GPUs split the layers: the dense layers and the first two MoE layers on gpu:0 with the embeddings, the last
# one on gpu:1 with the head, each with its layers' KV cache and experts (identical logits: above). Each emulated
# device refuses the other's memory, so a buffer on the wrong device fails the run.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --gpu-backend emu --ctx 512 --batch 16 --gpus 0,1 \
	--vram-budget 9M > /dev/null 2> "$W/err" &&
   grep -q "gpu:0 runs layers 0-3 but their experts (attention, dense layers, routers), the embeddings: " "$W/err" &&
   grep -q "gpu:1 runs layer 4 but its experts (attention, dense layers, routers), the head: " "$W/err" &&
   grep -q "; experts on gpu:0 [1-9][0-9]*, gpu:1 [1-9][0-9]*$" "$W/err"
then ok "--gpus 0,1: layers split, each gpu its attention, KV cache and experts"
else bad "--gpus 0,1: layers split, each gpu its attention, KV cache and experts"; cat "$W/err"; fi

# The report on stderr and in --json; a routing trace that the next run uses as hotness.
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --stream-experts --record-routing "$W/r.trace" > /dev/null 2> "$W/err" &&
   grep -q "offload: experts gpu 0, dram 0, nvme 48, mapped 0; NVMe .* MB/token at .* GB/s; cache lru .* hit rate .*; prefetch hit rate .*; time: attention and the rest .* s, cpu experts .* s, gpu experts .* s, waiting on I/O .* s; per token: gpu busy .* ms, cpu busy .* ms, I/O wait .* ms, overlap .* ms" "$W/err" &&
   [ "$(wc -c < "$W/r.trace")" -eq $((64 + 13 * 32)) ]
then ok "report and routing trace"; else bad "report and routing trace"; cat "$W/err"; fi
if $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --stream-experts --cache-policy pinned --hotness-trace "$W/r.trace" \
	--json -q > "$W/run.json" 2> "$W/err" &&
   grep -q '"offload":' "$W/run.json" && grep -q '"nvme_bytes_per_token":' "$W/run.json" &&
   grep -q '"prefetch_hit_rate":' "$W/run.json" && grep -q '"io_wait_seconds":' "$W/run.json"
then ok "--json offload fields"; else bad "--json offload fields"; cat "$W/err" "$W/run.json"; fi

# Clear errors.
expect_error() { # label, pattern, dsm-run arguments...
	label=$1 pattern=$2
	shift 2
	if $RUN -m "$W/tiny" --tokens $TOK -n 2 -q "$@" > /dev/null 2> "$W/err"; then
		bad "$label: accepted"
	elif grep -q "$pattern" "$W/err"; then
		ok "$label"
	else
		bad "$label: message"
		cat "$W/err"
	fi
}
sed 's/"n_routed_experts": 16/"n_routed_experts": 256/' "$W/mixed.json" > "$W/other.json"
expect_error "plan for another model" "the plan is for another model: model.n_routed_experts is 256" --plan "$W/other.json"
sed 's/\["0-7"\]/[16]/' "$W/mixed.json" > "$W/missing.json"
expect_error "plan naming a missing expert" "expert 16 does not exist" --plan "$W/missing.json"
expect_error "budget below the non-expert weights" "cannot hold the non-expert weights" --dram-budget 1M
expect_error "missing plan file" "cannot open the plan" --plan "$W/none.json"
expect_error "gpu plan without a gpu backend" \
	"puts 2 experts on a GPU (layer 3 expert 1 on gpu:0 first) but no GPU backend" --plan "$W/mixed.json"
expect_error "unknown gpu backend" "unknown backend 'tpu'" --gpu-backend tpu
expect_error "--gpus without a backend" "gpus needs --gpu-backend" --gpus 0,1
expect_error "--gpus naming a device twice" "0,0.: device 0 twice" --gpu-backend emu --gpus 0,0
sed 's/"gpu:0": \[1, 2\]/"gpu:1": [1, 2]/' "$W/mixed.json" > "$W/gpu1.json"
expect_error "plan naming gpu:1 with one GPU" "layer 3 expert 1 on gpu:1 but 1 emu GPU is in use" --plan "$W/gpu1.json" \
	--gpu-backend emu
sed 's/"dram:0": \["0-7"\]/"dram:63": ["0-7"]/' "$W/mixed.json" > "$W/node.json"
expect_error "plan naming a NUMA node the machine lacks" \
	"layer 2 expert 0 on dram:63 but this machine has [0-9]* NUMA node" --plan "$W/node.json" --gpu-backend emu
expect_error "bad cache policy" "expected lru, lfu or pinned" --cache-policy mru
expect_error "a GPU too small for the forward pass" \
	"gpu:0 has 0.001 GB free; the forward pass outside the experts of layers 0-4 needs 0.02[0-9] GB there: weights 0.004 GB, KV cache 0.012 GB (--ctx 4096, --max-seqs 1), step buffers 0.00[0-9] GB (--batch 128)" \
	--gpu-backend emu --vram-budget 1M
expect_error "two GPUs too small for their layers" \
	"gpu:0 has 0.001 GB free; the forward pass outside the experts of layers 0-3 needs 0.01[0-9] GB there: weights 0.003 GB" \
	--gpu-backend emu --gpus 0,1 --vram-budget 1M

# Weights larger than the available memory (faked: 1 GiB margin + 6 MB) turn the tiered store on by
# themselves, with the same logits; --no-offload keeps every weight mapped.
$RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --dump-logits "$W/base.npy" -q > /dev/null || bad "tiny: plain run"
if DSM_MEMORY_AVAILABLE=1079741824 $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --dump-logits "$W/plan.npy" \
	> /dev/null 2> "$W/err" && grep -q "do not fit in the memory available" "$W/err" &&
   grep -q "offload: experts gpu 0, dram [1-9][0-9]*, nvme [1-9][0-9]*, mapped 0;" "$W/err" && cmp -s "$W/base.npy" "$W/plan.npy"; then
	ok "weights past the available memory: tiered store on by itself, identical logits"
else
	bad "weights past the available memory did not turn the tiered store on (or changed the logits)"
	cat "$W/err"
fi
if DSM_MEMORY_AVAILABLE=1079741824 $RUN -m "$W/tiny" --tokens $TOK -n 2 --no-offload > /dev/null 2> "$W/err" &&
   ! grep -q "offload:" "$W/err"; then
	ok "--no-offload maps everything"
else
	bad "--no-offload still used the tiered store"
	cat "$W/err"
fi
expect_error "--no-offload with a tiered-store option" "contradicts" --no-offload --stream-experts

# The same from a cgroup v2 memory limit, set on a parent of dsm's cgroup as Slurm does, with MemAvailable
# ample: a fake tree (offload/memory_limit.h) leaves 1 GiB of margin + 6 MB of room under the limit.
mkdir -p "$W/cg/slurm/job_7/step_0"
echo 2147483648 > "$W/cg/slurm/job_7/memory.max"
echo 1067741824 > "$W/cg/slurm/job_7/memory.current"
echo max > "$W/cg/slurm/job_7/step_0/memory.max"
echo 0 > "$W/cg/slurm/job_7/step_0/memory.current"
echo "0::/slurm/job_7/step_0" > "$W/proc_cgroup"
printf 'MemTotal:       268435456 kB\nMemAvailable:   134217728 kB\n' > "$W/meminfo"
CG="DSM_CGROUP_ROOT=$W/cg DSM_PROC_CGROUP=$W/proc_cgroup DSM_MEMINFO=$W/meminfo"
if env $CG $RUN -m "$W/tiny" --tokens $TOK -n 6 --ignore-eos --dump-logits "$W/plan.npy" > /dev/null 2> "$W/err" &&
   grep -q "do not fit in the memory available" "$W/err" &&
   grep -q "offload: experts gpu 0, dram [1-9][0-9]*, nvme [1-9]" "$W/err" && cmp -s "$W/base.npy" "$W/plan.npy"; then
	ok "weights past a cgroup v2 limit: tiered store on by itself, identical logits"
else
	bad "weights past a cgroup v2 limit did not turn the tiered store on (or changed the logits)"
	cat "$W/err"
fi
echo max > "$W/cg/slurm/job_7/memory.max"
if env $CG $RUN -m "$W/tiny" --tokens $TOK -n 2 > /dev/null 2> "$W/err" && ! grep -q "offload:" "$W/err"; then
	ok "no cgroup limit: every weight mapped"
else
	bad "the tiered store turned on without a cgroup limit"
	cat "$W/err"
fi

# Many sequences in one step: four sampled continuations decoded together give the same tokens whatever
# the tiers (each expert runs once per step on all its tokens, in every tier).
samples() { $RUN -m "$W/tiny" --tokens $TOK -n 10 --ignore-eos --temperature 1 --samples 4 -q "$@"; }
samples > "$W/samples.base"
for mode in "--stream-experts" "--stream-experts --cache-off" "--gpu-backend emu --cpu-attention --vram-budget 2M --dram-budget 6M" \
	"--gpu-backend emu --ctx 512 --vram-budget 16M --dram-budget 6M"; do
	if samples $mode > "$W/samples.plan" && grep -q "^--- sample 4 of 4" "$W/samples.plan" &&
	   cmp -s "$W/samples.base" "$W/samples.plan"
	then ok "--samples 4, $mode: the same tokens"; else bad "--samples 4, $mode: tokens differ"; fi
done

# The small preset too (under AddressSanitizer only the tiny one: ten runs of the small one take minutes).
if ldd "$top_builddir/dsm-run" 2>/dev/null | grep -q asan; then
	echo "small preset left out under AddressSanitizer"
else
	. "$top_srcdir/tests/small_preset.sh"
	[ -n "$SMALL" ] && check_plans "$SMALL" small
fi
rm -rf "$W"
exit $fail
