#!/bin/sh
# dsm-batch survives SIGKILLs at random moments and power cuts (tests/batch/kill.py).
exe=$top_builddir/dsm-batch
[ -x "$exe" ] || { echo "SKIP: dsm-batch not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
work=$top_builddir/tests/batch_kill.d
rm -rf "$work"
mkdir -p "$work"
"$top_builddir/dsm-mkmodel" --quiet tiny "$work/tiny" || exit 99
python3 - "$work/problems.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(40):
        f.write(json.dumps({"id": "k%02d" % i, "problem": "Prove that %d + %d = %d." % (i, i, 2 * i)}) + "\n")
    f.write("{\"id\": \"broken\"\n")
PY
# 20 kills and 5 power cuts in a random order; the seed changes each run, and is printed to repeat one
seed=${DSM_TEST_SEED:-$(date +%s)}
echo "seed $seed"
python3 "$top_srcdir/tests/batch/kill.py" "$exe" "$work/tiny" "$work/problems.jsonl" "$work" \
	"$top_srcdir/tests/batch/templates.json" 20 5 "$seed" || exit 1
rm -rf "$work"
