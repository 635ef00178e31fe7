#!/bin/sh
# Resident memory of dsm-run (docs/memory.md): weights are mapped from the shards and read into huge pages
# when they fit (or left in the page cache's file-backed pages),
# the KV cache is sized by --ctx, activation buffers are allocated before the first token, and the
# decode loop allocates nothing: anonymous resident memory does not grow from the first generated token
# to the last. Run on the tiny preset and on the small preset (tests/small_preset.sh: written once under
# the build folder; DSM_TEST_SMALL=0 leaves it out).
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python with numpy (install python3-numpy and re-run configure)"
	exit 77
fi
if ldd "$top_builddir/dsm-run" 2>/dev/null | grep -q asan; then
	echo "SKIP: resident memory is not meaningful under AddressSanitizer"
	exit 77
fi
W=$top_builddir/tests/model_memory.d
mkdir -p "$W"
fail=0
check() { # name json ctx
	$PYTHON_NUMPY - "$@" <<'PYEOF'
import json, sys
name, path, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = json.load(open(path)); m = d["memory"]; t = d["timings"]
MB = 1 << 20
growth = m["rss_anon_end_bytes"] - m["rss_anon_after_first_token_bytes"]
# heap: KV cache + step buffers + backend scratch + libraries (oneDNN, OpenMP): under 64 MB on top, and the
# weights read into huge pages of their own (anonymous memory), and greedy decoding's copy of the head
heap_limit = m["kv_cache_bytes"] + m["buffers_bytes"] + 64 * MB + m["weights_huge_bytes"] + m["head_screen_bytes"]
print("%s: --ctx %d, %d tokens decoded at %.2f tok/s; mapped weights %.1f MB (in huge pages %.1f MB, file pages resident %.1f MB), "
      "KV cache %.1f MB, buffers %.1f MB, heap resident %.1f MB (limit %.1f MB), growth during decode %.2f MB, "
      "peak RSS %.1f MB"
      % (name, ctx, t["decode_tokens"], t["decode_tokens_per_second"], m["weights_mapped_bytes"] / MB,
         m["weights_huge_bytes"] / MB, m["rss_file_end_bytes"] / MB, m["kv_cache_bytes"] / MB, m["buffers_bytes"] / MB,
         m["rss_anon_end_bytes"] / MB, heap_limit / MB, growth / MB, m["rss_peak_bytes"] / MB))
ok = growth <= 1 * MB and m["rss_anon_end_bytes"] <= heap_limit
ok = ok and m["rss_peak_bytes"] <= m["weights_mapped_bytes"] + heap_limit
sys.exit(0 if ok else 1)
PYEOF
}
rm -rf "$W/tiny"
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny" || exit 99
"$top_builddir/dsm-run" -m "$W/tiny" --threads 2 --tokens 0,5,9,12 -n 200 --ignore-eos --ctx 512 --json -q \
	> "$W/tiny.json" || exit 1
check tiny "$W/tiny.json" 512 || fail=1

# Weights that fit are read into huge pages of their own, or with --no-huge-pages left in the page cache's
# pages: the same bytes, the same logits.
for mode in "" --no-huge-pages; do
	"$top_builddir/dsm-run" -m "$W/tiny" --threads 2 --tokens 0,5,9,12 -n 8 --ignore-eos --json -q $mode \
		--dump-logits "$W/logits$mode.npy" > "$W/huge$mode.json" || exit 1
done
if cmp -s "$W/logits.npy" "$W/logits--no-huge-pages.npy" &&
   $PYTHON_NUMPY -c "import json, sys; a = json.load(open(sys.argv[1]))['memory']; b = json.load(open(sys.argv[2]))['memory']
sys.exit(0 if a['weights_huge_bytes'] == a['weights_mapped_bytes'] > 0 and b['weights_huge_bytes'] == 0 else 1)" \
	"$W/huge.json" "$W/huge--no-huge-pages.json"
then echo "ok: weights in huge pages, or in the page cache's with --no-huge-pages: identical logits"
else echo "FAIL: weights in huge pages against the page cache's"; fail=1; fi

. "$top_srcdir/tests/small_preset.sh"
if [ -n "$SMALL" ]; then
	"$top_builddir/dsm-run" -m "$SMALL" --threads 2 --tokens 0,5,9,12,300,4000,70000,128000 -n 12 \
		--ignore-eos --ctx 1024 --json -q > "$W/small.json" || exit 1
	check small "$W/small.json" 1024 || fail=1
fi
exit $fail
