#!/bin/sh
# dsm-tune report on a tiny model: the page renders in headless Chromium (a screenshot that is not blank), its
# text elements are there after rendering (the summary, the strategies' values, the validation table), and
# every figure has its SVG and PNG. Skips when Chromium (Debian package chromium) is not installed.
set -u
command -v chromium > /dev/null 2>&1 || { echo "skip: chromium (Debian package chromium) is not installed"; exit 77; }
tune="$top_builddir/dsm-tune"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
"$top_builddir/dsm-mkmodel" --quiet --tokenizer none --routing-skew 1.5 tiny "$tmp/tiny" || exit 99
cat > "$tmp/hw.json" <<'HW'
{ "format": "dsm-hw", "version": 1, "name": "report test machine",
  "numa_nodes": [ { "cores": 2, "dram_bytes": 8000000000, "dram_read_gbs": 30, "expert_gbs": { "1": 20, "8": 10, "64": 2 } } ],
  "gpus": [ { "memory_bytes": 8000000, "read_gbs": 500, "h2d_gbs": 20 } ],
  "nvme": { "read_gbs": { "1": 1, "16": 2 } } }
HW
cat > "$tmp/val.json" <<'VAL'
{ "pairs": [ { "case": "case one", "predicted_tokens_per_second": 10, "measured_tokens_per_second": 11 },
             { "case": "case two", "predicted_tokens_per_second": 20, "measured_tokens_per_second": 18.5 } ] }
VAL
"$tune" trace -m "$tmp/tiny" --zipf 1.2 --tokens 1000 --out "$tmp/t.trace" || exit 99
mkdir -p "$tmp/r"
"$tune" report --out "$tmp/r" -m "$tmp/tiny" --hw "$tmp/hw.json" --trace "$tmp/t.trace" --validation "$tmp/val.json" ||
	{ echo "FAIL: report"; exit 1; }
for f in popularity coverage dram_budget vram_budget strategies validation; do
	[ -s "$tmp/r/$f.svg" ] || { echo "FAIL: no $f.svg"; fail=1; }
	[ -s "$tmp/r/$f.png" ] || { echo "FAIL: no $f.png"; fail=1; }
done
grep -q "http" "$tmp/r/index.html" && grep -v "xmlns=\"http://www.w3.org/2000/svg\"" "$tmp/r/index.html" | grep -q "https\?://" &&
	{ echo "FAIL: the page refers to the network"; fail=1; }
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=800,3000 \
	--screenshot="$tmp/page.png" "file://$tmp/r/index.html" > /dev/null 2>&1
size=$(wc -c < "$tmp/page.png" 2>/dev/null || echo 0)
# A blank 800x3000 page compresses to a few kB; the figures make it far larger.
[ "$size" -gt 30000 ] || { echo "FAIL: screenshot of $size bytes"; fail=1; }
head -c 8 "$tmp/page.png" | od -An -c | grep -q "P   N   G" || { echo "FAIL: the screenshot is not a PNG"; fail=1; }
chromium --headless --no-sandbox --disable-gpu --dump-dom "file://$tmp/r/index.html" > "$tmp/dom.html" 2> /dev/null
grep -q 'id="summary">Model .*report test machine' "$tmp/dom.html" || { echo "FAIL: summary not rendered"; fail=1; }
grep -q 'id="strategy1"[^>]*>[0-9][0-9.]*<' "$tmp/dom.html" || { echo "FAIL: no value for dsm-tune's plan"; fail=1; }
grep -q '<td>+*-9.1%</td>\|<td>-9.1%</td>' "$tmp/dom.html" || { echo "FAIL: validation error -9.1% not in the table"; fail=1; }
echo "screenshot: $size bytes"
exit $fail
