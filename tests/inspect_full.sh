#!/bin/sh
# dsm-inspect on the full 685 B shape (sparse files: real headers, data holes): the parameter count is
# within 1% of 685 B and the routed expert bytes are those of the real model.
set -e
dir="$top_builddir/tests/ckpt-full"
if [ ! -f "$dir/config.json" ]; then
	"$top_builddir/dsm-mkmodel" --quiet --tokenizer none full "$dir"
fi
json=$("$top_builddir/dsm-inspect" --json --vram 24G --dram 64G "$dir")
num() { echo "$json" | sed -n "s/^[[:space:]]*\"$1\":[[:space:]]*\([0-9.e+]*\),*$/\1/p" | head -n 1; }
total=$(num total)
expert=$(num bytes_per_expert)
per_token=$(num bytes_per_token_decode)
echo "parameters $total, bytes per expert $expert, expert bytes per decode token $per_token"
# One expert: 3 x 2048 x 7168 FP8 bytes + 3 x 16 x 56 F32 scales.
want_expert=$((3 * 2048 * 7168 + 3 * 16 * 56 * 4))
awk -v t="$total" -v e="$expert" -v we="$want_expert" -v pt="$per_token" 'BEGIN {
	bad = 0
	if (t < 685e9 * 0.99 || t > 685e9 * 1.01) { print "total parameters " t " not within 1% of 685e9"; bad = 1 }
	if (e != we) { print "bytes per expert " e ", want " we; bad = 1 }
	if (pt != we * 8 * 58) { print "expert bytes per token " pt ", want " we * 8 * 58; bad = 1 }
	exit bad }'
# Text output works too.
"$top_builddir/dsm-inspect" "$dir" >/dev/null
