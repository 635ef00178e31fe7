#!/bin/sh
# dsm-inspect's contract: exit 0 on a valid checkpoint, exit 1 with one line on stderr naming the file
# on a corrupted one, never a crash; usage errors exit 1 too.
set -e
bin="$top_builddir/dsm-inspect"
dir="$top_builddir/tests/ckpt-inspect"
rm -rf "$dir"
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none tiny "$dir"
"$bin" "$dir" >/dev/null
"$bin" --json "$dir" | grep -q '"valid":[[:space:]]*true'

fail() { echo "FAIL: $*"; exit 1; }
expect_error() {  # expect_error NEEDLE ARGS...
	needle=$1; shift
	set +e
	"$bin" "$@" >/dev/null 2>"$dir.err"
	rc=$?
	set -e
	[ $rc -eq 1 ] || fail "exit $rc (want 1) for: $*"
	[ "$(wc -l <"$dir.err")" -eq 1 ] || fail "stderr is not one line for: $*"
	grep -q -- "$needle" "$dir.err" || fail "stderr '$(cat "$dir.err")' does not name '$needle'"
}
shard="$dir/model-00002-of-00012.safetensors"
printf 'garbage' | dd of="$shard" bs=1 seek=12 conv=notrunc 2>/dev/null
expect_error model-00002-of-00012.safetensors "$dir"
expect_error "not a checkpoint folder" "$dir/nowhere"
expect_error "not a size" --vram lots "$dir"
rm -rf "$dir" "$dir.err"
