#!/bin/sh
# Runs every libFuzzer target for a few seconds (DSM_FUZZ_SECONDS, default 8) from its seed corpus.
# A crash fails the test; its input is kept beside the target for a regression test.
if [ "$FUZZ_BUILT" != yes ]; then
	echo "SKIP: libFuzzer targets need clang (install the Debian package clang and re-run configure)"
	exit 77
fi
seconds=${DSM_FUZZ_SECONDS:-8}
status=0
for target in "$top_builddir"/tests/fuzz/fuzz_*; do
	name=$(basename "$target")
	case "$name" in *.*|*-*) continue ;; esac
	[ -f "$target" ] && [ -x "$target" ] || continue
	corpus="$top_builddir/tests/fuzz/$name.corpus"
	mkdir -p "$corpus"
	seeds="$top_srcdir/tests/fuzz/seeds/$name"
	[ -d "$seeds" ] && cp -f "$seeds"/* "$corpus"/ 2>/dev/null
	echo "== $name for ${seconds}s"
	if ! "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$top_builddir/tests/fuzz/$name-" "$corpus" >"$target.log" 2>&1; then
		tail -n 40 "$target.log"
		status=1
	else
		grep -E '^Done|#[0-9]+.*DONE' "$target.log" | tail -n 1
	fi
done
exit $status
