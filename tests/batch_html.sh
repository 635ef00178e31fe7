#!/bin/sh
# dsm-batch report --html: a self-contained page (no network) that headless Chromium renders, with the
# totals and the histogram of best scores drawn.
exe=$top_builddir/dsm-batch
[ -x "$exe" ] || { echo "SKIP: dsm-batch not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chrome" ] || { echo "SKIP: headless Chromium missing (Debian package chromium)"; exit 77; }
work=$top_builddir/tests/batch_html.d
rm -rf "$work"
mkdir -p "$work"
# results with known best scores (the report reads the documents' "selected" members): 12 problems,
# scores 0.0, 0.1, ... 0.9 and two without a selected proof
python3 - "$work/results.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(12):
        sel = {"candidate": 0, "mean_score": i / 10, "valid_verifications": 2, "proof": "..."} if i < 10 else None
        doc = {"id": "r%02d <&>" % i, "problem": "P", "settings": {}, "candidates": [{}], "selected": sel,
               "phases": {"generation": {"generated_tokens": 100 + i}}, "rounds": [{}, {}], "seconds": 1.5,
               "stop_reason": "rounds", "error": None, "note": ""}
        f.write(json.dumps(doc) + "\n")
PY
"$exe" report "$work/results.jsonl" --html "$work/report.html" >"$work/report.txt" || { echo "FAIL: report exited $?"; exit 1; }
fail=0
bad() { echo "FAIL: $*"; fail=1; }
grep -q "^12 problems: 10 with a selected proof (mean of best 0.45), 2 without; 24 rounds, 1266 tokens" "$work/report.txt" \
	|| bad "text totals: $(tail -n 14 "$work/report.txt")"
grep -q "^  none         2 " "$work/report.txt" || bad "text histogram: $(tail -n 12 "$work/report.txt")"
if grep -Eq '(src|href)=|https?:|@import|url\(' "$work/report.html"; then bad "the page loads something"; fi
grep -q 'r00 &lt;&amp;&gt;' "$work/report.html" || bad "ids are not escaped in the page"
printf '<!DOCTYPE html><html><body></body></html>\n' >"$work/blank.html"
shoot() {  # shoot HTML PNG: a 1000x800 screenshot; the DOM after rendering goes to PNG.dom
	HOME=$work timeout 120 "$chrome" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
		--window-size=1000,800 --screenshot="$2" "file://$1" >/dev/null 2>&1
	HOME=$work timeout 120 "$chrome" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
		--dump-dom "file://$1" >"$2.dom" 2>/dev/null
}
abs=$(cd "$work" && pwd)
shoot "$abs/report.html" "$abs/report.png"
shoot "$abs/blank.html" "$abs/blank.png"
[ -s "$work/report.png" ] || { echo "FAIL: Chromium wrote no screenshot"; exit 1; }
python3 - "$work/report.png" "$work/blank.png" "$work/report.png.dom" <<'PY' || fail=1
import struct, sys, zlib
def png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path + ": not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    # the pixels: inflate the IDAT chunks and count the distinct byte values of the image rows
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    return w, h, len(set(raw)), raw.count(0) / len(raw)
w, h, distinct, _ = png(sys.argv[1])
bw, bh, bdistinct, _ = png(sys.argv[2])
print("report.png %dx%d, %d distinct byte values; blank page %d" % (w, h, distinct, bdistinct))
ok = (w, h) == (1000, 800) and distinct > 4 * bdistinct and distinct > 20
dom = open(sys.argv[3]).read()
ok_dom = 'id="totals"' in dom and "12 problems: 10 with a selected proof" in dom and "<rect" in dom
if not ok:
    print("FAIL: the screenshot is not a rendered page (size %dx%d, %d distinct values)" % (w, h, distinct))
if not ok_dom:
    print("FAIL: the rendered page lacks the totals or the histogram")
sys.exit(0 if ok and ok_dom else 1)
PY
[ $fail = 0 ] && [ -z "$DSM_KEEP" ] && rm -rf "$work"
exit $fail
