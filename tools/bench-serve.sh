#!/bin/sh
# Speed of dsm-serve against the batch engine, in the same run (docs/serve.md):
#   tools/bench-serve.sh SMALL_DIR [SIZES] [ROUNDS] [engine flags...]
# For each round: `dsm-bench batch --only small --sizes SIZES --steps 16`, then dsm-serve on the same
# checkpoint with as many sequences as the largest size and tools/bench_serve.py with that many streaming
# clients; prints each size's tokens/s of both and their ratio (serve / batch), one line per round.
# Run from the build folder (it uses ./dsm-bench and ./dsm-serve).
set -e
dir=${1:?usage: bench-serve.sh SMALL_DIR [SIZES] [ROUNDS] [engine flags]}
sizes=${2:-1,8,32}
rounds=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
here=$(dirname "$0")
max=$(echo "$sizes" | tr ',' '\n' | sort -n | tail -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=1
while [ $r -le "$rounds" ]; do
	./dsm-bench batch --only small --small "$dir" --sizes "$sizes" --steps 16 --json "$@" > "$tmp/batch.json"
	./dsm-serve -m "$dir" --port 0 --max-seqs "$max" --ctx 256 -q "$@" > "$tmp/serve.log" &
	pid=$!
	while ! grep -q "listening on" "$tmp/serve.log"; do
		kill -0 $pid || exit 1
		sleep 0.2
	done
	url=$(sed -n 's|^dsm-serve: listening on \(http://[^ ]*\).*|\1|p' "$tmp/serve.log")
	python3 "$here/bench_serve.py" "$url" --sizes "$sizes" --tokens 32 --json > "$tmp/serve.json"
	kill -TERM $pid
	wait $pid || true
	python3 - "$tmp/batch.json" "$tmp/serve.json" $r <<'PYEOF'
import json, sys
def runs(d):
    if isinstance(d, dict):
        if "runs" in d:
            return d["runs"]
        for v in d.values():
            r = runs(v)
            if r:
                return r
    return None
batch = {r["B"]: r["tokens_per_second"] for r in runs(json.load(open(sys.argv[1])))}
srv = {r["B"]: r for r in json.load(open(sys.argv[2]))["runs"]}
print(f"round {sys.argv[3]}: " + "; ".join(f"B {b}: batch {batch[b]:.2f} tok/s, serve {srv[b]['tokens_per_second']:.2f} "
      f"tok/s, ratio {srv[b]['tokens_per_second'] / batch[b]:.3f}, engine busy {srv[b]['engine_busy']:.3f}" for b in sorted(srv)))
PYEOF
	r=$((r + 1))
done
