#!/bin/sh
# Greedy decoding's head (kernels/cpu/head_top.c): with its one-byte screen the tokens are those of the whole
# head (--full-head), in both precisions, on the tiny preset and on the small one (real vocabulary, 129280
# rows); the screen is in use (its bytes reported, every step screened, few rows multiplied), and it is not
# with --full-head.
set -e
. "$top_srcdir/tests/small_preset.sh"
W=$top_builddir/tests/model_top.d
rm -rf "$W"
mkdir -p "$W"
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none tiny "$W/tiny"
fail=0
for model in "$W/tiny" $SMALL; do
	for p in bf16 f32; do
		RUN="$top_builddir/dsm-run -m $model --tokens 0,17,342,901,5,77 -n 24 --ignore-eos --threads 2 --precision $p"
		$RUN --json -v > "$W/top.json" 2> "$W/top.err"
		$RUN --json --full-head > "$W/full.json" 2> "$W/full.err"
		tokens() { sed -n 's/^\t"tokens":\t\(.*\),$/\1/p' "$1"; }
		screen() { sed -n 's/.*"head_screen_bytes":\t\([0-9]*\).*/\1/p' "$1"; }
		a=$(tokens "$W/top.json") b=$(tokens "$W/full.json")
		if [ -z "$a" ] || [ "$a" != "$b" ]; then
			echo "FAIL: $model $p: screened $a, whole head $b"
			fail=1
		fi
		line=$(grep "the head screened in" "$W/top.err" || true)
		rows=$(echo "$line" | sed -n 's/.* steps, \([0-9.]*\) of its \([0-9]*\) rows.*/\1 \2/p')
		if [ "$(screen "$W/top.json")" -le 0 ] || [ "$(screen "$W/full.json")" != 0 ] ||
		   ! echo "$line" | grep -q "screened in 24 of 24 steps" ||
		   ! echo "$rows" | awk '{ exit !($1 >= 1 && $1 <= $2 / 20) }'; then
			echo "FAIL: $model $p: the screen not in use as it should be: $line"
			cat "$W/top.err"
			fail=1
		fi
		echo "ok: $model $p: $line"
	done
done
exit $fail
