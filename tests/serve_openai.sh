#!/bin/sh
# dsm-serve driven by the official `openai` npm package (tests/serve_openai.mjs) on the tiny preset: chat
# with thinking on and off, completions, streaming, n > 1, stop strings, usage, concurrent streams and
# OpenAI error objects. The package is installed with npm under the build folder once (skipped with the
# reason when node, npm or the registry are not there).
. "$top_srcdir/tests/serve_start.sh"
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
	echo "SKIP: node and npm are needed (install the Debian packages nodejs and npm)"
	exit 77
fi
W=$top_builddir/tests/serve_openai.d
NPM=$top_builddir/tests/npm-openai
rm -rf "$W"
mkdir -p "$W" "$NPM"
if [ ! -f "$NPM/node_modules/openai/package.json" ]; then
	(
		flock 9
		[ -f "$NPM/package.json" ] || echo '{"private": true}' > "$NPM/package.json"
		cd "$NPM" && timeout 300 npm install --no-audit --no-fund --silent openai@4 > npm.log 2>&1
	) 9> "$NPM.lock"
	if [ ! -f "$NPM/node_modules/openai/package.json" ]; then
		echo "SKIP: npm could not install the openai package:"
		tail -n 5 "$NPM/npm.log"
		exit 77
	fi
fi
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny" || exit 99
KEY=test-key-$$
serve_start "$W/serve.log" -m "$W/tiny" --threads 2 --ctx 512 --max-seqs 8 --api-key "$KEY" -q
status=0
DSM_NPM_DIR=$NPM DSM_URL=$SERVE_URL/v1 DSM_KEY=$KEY DSM_MODEL=tiny timeout 300 node "$top_srcdir/tests/serve_openai.mjs" || status=1
serve_stop || status=1
[ $status = 0 ] || cat "$W/serve.log.err"
exit $status
