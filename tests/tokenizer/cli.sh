#!/bin/sh
# dsm-tokenize as a user runs it, on the mini tokenizer: the output modes, decoding, and clear failures.
set -u
builddir=${top_builddir:-.}
tokenize=$builddir/dsm-tokenize
work=$builddir/tests/tokenizer/cli
rm -rf "$work"
mkdir -p "$work"
"$builddir/tests/test_tokenizer" --write-mini "$work" || { echo "FAIL: cannot write the mini tokenizer"; exit 99; }
failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# Default: the ids of the whole input on one line, BOS first.
out=$(printf 'the proof' | "$tokenize" -m "$work") || fail "default mode exited $?"
case "$out" in "0 "*) ;; *) fail "default output does not start with BOS: $out" ;; esac
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "default output is not one line"
nobos=$(printf 'the proof' | "$tokenize" -m "$work" --no-special)
[ "0 $nobos" = "$out" ] || fail "--no-special: '$nobos' vs '$out'"
# --tokenizer FILE finds tokenizer_config.json beside it.
same=$(printf 'the proof' | "$tokenize" --tokenizer "$work/tokenizer.json")
[ "$same" = "$out" ] || fail "--tokenizer: '$same' vs '$out'"

# --lines: one line of ids per input line, the newline not encoded.
printf 'a b\n\nthe end\n' >"$work/in.txt"
"$tokenize" -m "$work" --lines --no-special <"$work/in.txt" >"$work/lines.txt" || fail "--lines exited $?"
[ "$(wc -l <"$work/lines.txt")" -eq 3 ] || fail "--lines: $(wc -l <"$work/lines.txt") lines for 3"
[ "$(sed -n 2p "$work/lines.txt")" = "" ] || fail "--lines: an empty line gives ids"
first=$(printf 'a b' | "$tokenize" -m "$work" --no-special)
[ "$(sed -n 1p "$work/lines.txt")" = "$first" ] || fail "--lines: first line differs from encoding it alone"

# --decode gives the text back, line by line too.
"$tokenize" -m "$work" --lines --decode <"$work/lines.txt" >"$work/back.txt" || fail "--decode exited $?"
cmp -s "$work/back.txt" "$work/in.txt" || fail "--lines --decode does not give the input back"
printf 'x = 1\n\twhy\n' >"$work/in2.txt"
"$tokenize" -m "$work" <"$work/in2.txt" | "$tokenize" -m "$work" --decode --skip-special >"$work/back2.txt"
cmp -s "$work/back2.txt" "$work/in2.txt" || fail "--decode --skip-special does not give the input back"
bos=$(echo 0 | "$tokenize" -m "$work" --decode)
[ "$bos" = "<｜begin▁of▁sentence｜>" ] || fail "BOS decodes to '$bos'"

# --json: ids and token strings.
json=$(printf '<think>' | "$tokenize" -m "$work" --json --no-special)
case "$json" in '{"ids":['*'],"tokens":["<think>"]}') ;; *) fail "--json: $json" ;; esac

# Bad input: a clear message and exit 1.
msg=$(printf 'ok\377' | "$tokenize" -m "$work" 2>&1 >/dev/null)
[ $? -eq 0 ] || true
printf 'ok\377' | "$tokenize" -m "$work" >/dev/null 2>&1 && fail "invalid UTF-8 accepted"
case "$msg" in *"invalid UTF-8 at byte 2"*) ;; *) fail "invalid UTF-8 message: $msg" ;; esac
msg=$(printf 'a\nok\377\n' | "$tokenize" -m "$work" --lines 2>&1 >/dev/null)
case "$msg" in *"line 2"*"byte 2"*) ;; *) fail "--lines invalid UTF-8 message: $msg" ;; esac
printf 'ok\377' | "$tokenize" -m "$work" --replace-invalid >/dev/null || fail "--replace-invalid failed"
msg=$(echo "1 2x" | "$tokenize" -m "$work" --decode 2>&1 >/dev/null) && fail "bad id accepted"
case "$msg" in *"not a token id"*) ;; *) fail "bad id message: $msg" ;; esac
msg=$(echo "99999" | "$tokenize" -m "$work" --decode 2>&1 >/dev/null) && fail "id out of range accepted"
case "$msg" in *"99999"*) ;; *) fail "out of range message: $msg" ;; esac
msg=$("$tokenize" -m "$work/missing" </dev/null 2>&1) && fail "missing checkpoint accepted"
case "$msg" in *"$work/missing/tokenizer.json"*) ;; *) fail "missing file message: $msg" ;; esac
"$tokenize" </dev/null >/dev/null 2>&1 && fail "no arguments accepted"

rm -rf "$work"
[ $failures -eq 0 ] || exit 1
echo "dsm-tokenize: all command-line checks passed"
