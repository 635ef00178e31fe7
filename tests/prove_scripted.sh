#!/bin/sh
# The proof search against a scripted generator (tests/test_prove.c), then every document it wrote
# validated against docs/prove-result.schema.json.
W=$top_builddir/tests/prove_scripted.d
rm -rf "$W"
mkdir -p "$W"
"$top_builddir/tests/test_prove" "$W" || exit 1
PY=${PYTHON_NUMPY:-python3}
command -v "$PY" > /dev/null 2>&1 || { echo "SKIP: no Python to validate the documents"; exit 77; }
n=$(ls "$W"/*.json | wc -l)
[ "$n" -ge 10 ] || { echo "FAIL: only $n documents written"; exit 1; }
"$PY" "$top_srcdir/tests/json_schema_check.py" "$top_srcdir/docs/prove-result.schema.json" "$W"/*.json
