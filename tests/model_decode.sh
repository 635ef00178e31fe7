#!/bin/sh
# Decode equals prefill (docs TESTING.md step 3): the logits of each token generated one at a time with
# the KV caches (absorbed MLA over the latent cache) equal those of one full forward (full MLA form) over
# the prompt and the generated tokens. Also: splitting the prompt into steps (--batch) changes nothing,
# and the absorbed form run on the whole prompt agrees with the full form.
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python with numpy (install python3-numpy and re-run configure)"
	exit 77
fi
set -e
W=$top_builddir/tests/model_decode.d
rm -rf "$W"
mkdir -p "$W"
CMP="$PYTHON_NUMPY $top_srcdir/tests/compare_logits.py"
RUN="$top_builddir/dsm-run -m $W/tiny -q --threads 2 --precision f32"
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny"
PROMPT=0,17,342,901,5,77,640,12,1000,256,31,415,926,535,89,793,238,462,643,383
N=24
fail=0
# With the BF16 cache, paths whose F32 results differ in the last bits (a fused GEMV for one token,
# oneDNN for several) can round a latent to neighbouring BF16 values, one BF16 step (2^-8) apart:
# agreement is then about 1e-5 rather than 1e-12.
for kv in f32 bf16; do
	LIMIT=1e-8
	[ $kv = bf16 ] && LIMIT=1e-4
	echo "== KV cache $kv"
	$RUN --tokens $PROMPT -n $N --ignore-eos --kv-cache $kv --json --dump-logits "$W/decode.npy" --dump-all > "$W/decode.json"
	ALL=$PROMPT,$($PYTHON_NUMPY -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['tokens'][:-1])))" "$W/decode.json")
	$RUN --tokens $ALL -n 1 --kv-cache $kv --dump-logits "$W/prefill.npy" > /dev/null
	$CMP pair "$W/decode.npy" "$W/prefill.npy" $LIMIT || fail=1
	$RUN --tokens $ALL -n 1 --kv-cache $kv --batch 5 --dump-logits "$W/batch5.npy" > /dev/null
	$CMP pair "$W/batch5.npy" "$W/prefill.npy" $LIMIT || fail=1
	$RUN --tokens $ALL -n 1 --kv-cache $kv --mla absorbed --dump-logits "$W/absorbed.npy" > /dev/null
	$CMP pair "$W/absorbed.npy" "$W/prefill.npy" $LIMIT || fail=1
done
exit $fail
