#!/bin/sh
# The forward pass against the independent float64 reference (docs TESTING.md step 2), on the tiny
# preset with a prompt longer than index_topk so that the lightning indexer really selects:
#   f32 path:  logits NMSE <= 1e-4 at every position, identical experts at every MoE layer, identical
#              indexer selections, 32 greedy tokens identical to the reference's;
#   bf16 path: logits NMSE <= 1e-2 at every position with the reference's discrete choices (experts,
#              indexer selection) forced, since BF16 rounding flips near-tied choices of a random model;
#   BF16 KV cache (the default) likewise; the indexer's optional FP8 rounding against the reference's.
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python with numpy (install python3-numpy and re-run configure)"
	exit 77
fi
set -e
W=$top_builddir/tests/model_ref.d
rm -rf "$W"
mkdir -p "$W"
CMP="$PYTHON_NUMPY $top_srcdir/tests/compare_logits.py"
RUN="$top_builddir/dsm-run -m $W/tiny -q --threads 2 --precision f32"
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny"
# 40 ids: index_topk of the tiny preset is 16
TOKENS=0,17,342,901,5,77,640,12,1000,256,31,415,926,535,89,793,238,462,643,383,279,502,884,197,169,399,375,105,820,974,944,592,307,816,406,286,208,998,628,34
GREEDY=32

$PYTHON_NUMPY "$top_srcdir/tests/ref/run_ref.py" "$W/tiny" --tokens $TOKENS --greedy $GREEDY --out "$W/ref.npz"

echo "== f32 path, F32 KV cache"
$RUN --tokens $TOKENS -n $GREEDY --kv-cache f32 --json --dump-logits "$W/f32.npy" \
	--dump-routing "$W/f32.routing" --dump-selection "$W/f32.selection" > "$W/f32.json"
fail=0
$CMP logits "$W/ref.npz" "$W/f32.npy" 1e-4 || fail=1
$CMP routing "$W/ref.npz" "$W/f32.routing" || fail=1
$CMP selection "$W/ref.npz" "$W/f32.selection" || fail=1
$CMP greedy "$W/ref.npz" "$W/f32.json" || fail=1

echo "== bf16 path (choices forced to the reference's)"
$CMP force "$W/ref.npz" "$W/ref.routing" "$W/ref.selection"
$RUN --tokens $TOKENS -n 1 --precision bf16 --kv-cache f32 --dump-logits "$W/bf16.npy" \
	--force-routing "$W/ref.routing" --force-selection "$W/ref.selection" > /dev/null
$CMP logits "$W/ref.npz" "$W/bf16.npy" 1e-2 || fail=1
$RUN --tokens $TOKENS -n 1 --precision bf16 --dump-routing "$W/bf16.routing" > /dev/null
$CMP agreement "$W/ref.npz" "$W/bf16.routing"

echo "== f32 path, BF16 KV cache (choices forced)"
$RUN --tokens $TOKENS -n 1 --dump-logits "$W/kvbf16.npy" \
	--force-routing "$W/ref.routing" --force-selection "$W/ref.selection" > /dev/null
$CMP logits "$W/ref.npz" "$W/kvbf16.npy" 1e-2 || fail=1

echo "== indexer FP8 rounding against the reference's --indexer-fp8"
$PYTHON_NUMPY "$top_srcdir/tests/ref/run_ref.py" "$W/tiny" --tokens $TOKENS --indexer-fp8 --out "$W/ref_fp8.npz"
$RUN --tokens $TOKENS -n 1 --kv-cache f32 --indexer-fp8 --dump-logits "$W/fp8.npy" \
	--dump-routing "$W/fp8.routing" --dump-selection "$W/fp8.selection" > /dev/null
$CMP logits "$W/ref_fp8.npz" "$W/fp8.npy" 1e-4 || fail=1
$CMP routing "$W/ref_fp8.npz" "$W/fp8.routing" || fail=1
$CMP selection "$W/ref_fp8.npz" "$W/fp8.selection" || fail=1
exit $fail
