#!/bin/sh
# Dense regimes against the reference: with index_topk above the context the lightning indexer keeps
# every key, so V3.2 attention is exactly dense; a DeepSeek-V3 checkpoint (no indexer) and a dequantized
# BF16 checkpoint run too.
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python with numpy (install python3-numpy and re-run configure)"
	exit 77
fi
set -e
W=$top_builddir/tests/model_dense.d
rm -rf "$W"
mkdir -p "$W"
CMP="$PYTHON_NUMPY $top_srcdir/tests/compare_logits.py"
TOKENS=0,17,342,901,5,77,640,12,1000,256,31,415,926,535,89,793,238,462,643,383,279,502,884,197,169,399
fail=0
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny"
echo "== V3.2 with index_topk 64 > 26 tokens"
"$top_builddir/dsm-run" -m "$W/tiny" -q --precision f32 --tokens $TOKENS -n 1 --kv-cache f32 --index-topk 64 \
	--dump-logits "$W/dense.npy" --dump-selection "$W/dense.selection" > /dev/null
test ! -s "$W/dense.selection" || { echo "the indexer selected although every key fits"; fail=1; }
$CMP dense "$W/tiny" $TOKENS 64 "$W/dense.npy" 1e-4 || fail=1
for kind in v3 bf16; do
	echo "== $kind checkpoint"
	"$top_builddir/dsm-mkmodel" --quiet --$kind tiny "$W/$kind"
	$PYTHON_NUMPY "$top_srcdir/tests/ref/run_ref.py" "$W/$kind" --tokens $TOKENS --out "$W/$kind.npz"
	"$top_builddir/dsm-run" -m "$W/$kind" -q --precision f32 --tokens $TOKENS -n 1 --kv-cache f32 \
		--dump-logits "$W/$kind.npy" --dump-routing "$W/$kind.routing" > /dev/null
	$CMP logits "$W/$kind.npz" "$W/$kind.npy" 1e-4 || fail=1
	$CMP routing "$W/$kind.npz" "$W/$kind.routing" || fail=1
done
exit $fail
