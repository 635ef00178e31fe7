#!/bin/sh
# dsm-run as a user meets it, on the tiny preset: streamed text and speeds, --json, --chat, stop strings,
# reproducible sampling, and clear errors (context overflow, bad ids, no tokenizer) instead of crashes.
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python with numpy (install python3-numpy and re-run configure)"
	exit 77
fi
W=$top_builddir/tests/model_run.d
rm -rf "$W"
mkdir -p "$W"
RUN="$top_builddir/dsm-run --threads 2"
PY=$PYTHON_NUMPY
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
json() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny" || exit 99

# text prompt: streams text, prints speeds on stderr
if $RUN -m "$W/tiny" -p "The sum of two odd numbers is even." -n 24 --ignore-eos > "$W/out.txt" 2> "$W/err.txt" &&
   grep -q "prefill .* tok/s), decode .* tok/s)" "$W/err.txt"; then ok "prompt run"; else bad "prompt run"; cat "$W/err.txt"; fi

# --json: one document with the prompt, text, ids, stop reason and timings
if $RUN -m "$W/tiny" -p "Prove it." -n 12 --ignore-eos --json -q > "$W/run.json" &&
   [ "$(json "$W/run.json" "len(d['tokens']), d['stop_reason'], d['prompt'], 'decode_tokens_per_second' in d['timings']")" = "(12, 'length', 'Prove it.', True)" ]
then ok "--json"; else bad "--json"; cat "$W/run.json"; fi

# --chat wraps the prompt in the chat shell (thinking by default)
if $RUN -m "$W/tiny" -p "Hi" --chat -n 4 --json -q > "$W/chat.json" &&
   [ "$(json "$W/chat.json" "len(d['prompt_tokens']) > 2")" = True ]; then ok "--chat"; else bad "--chat"; fi

# stop strings: cut before the first occurrence, even across tokens
$RUN -m "$W/tiny" --tokens 0,5,9,300 -n 40 --ignore-eos --json -q > "$W/full.json"
STOP=$(json "$W/full.json" "d['text'][len(d['text'])//2:len(d['text'])//2+3]")
if [ -n "$STOP" ] && $RUN -m "$W/tiny" --tokens 0,5,9,300 -n 40 --ignore-eos --stop "$STOP" --json -q > "$W/stop.json" &&
   $PY - "$W/full.json" "$W/stop.json" "$STOP" <<'PYEOF'
import json, sys
full, cut, stop = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
want = full["text"][:full["text"].index(stop)]
sys.exit(0 if cut["text"] == want and cut["stop_reason"] == "stop_string" else 1)
PYEOF
then ok "--stop"; else bad "--stop '$STOP'"; fi
# streamed text equals the JSON text
if $RUN -m "$W/tiny" --tokens 0,5,9,300 -n 40 --ignore-eos --stop "$STOP" -q > "$W/stop.txt" &&
   $PY -c "import json,sys; t=open(sys.argv[1]).read(); j=json.load(open(sys.argv[2]))['text']; sys.exit(0 if t.rstrip('\n')==j.rstrip('\n') else 1)" "$W/stop.txt" "$W/stop.json"
then ok "streamed text"; else bad "streamed text differs from --json text"; fi

# sampling is reproducible from the seed
$RUN -m "$W/tiny" --tokens 0,5,9 -n 16 --temperature 1 --top-p 0.9 --top-k 40 --seed 11 --json -q > "$W/s1.json"
$RUN -m "$W/tiny" --tokens 0,5,9 -n 16 --temperature 1 --top-p 0.9 --top-k 40 --seed 11 --json -q > "$W/s2.json"
if [ "$(json "$W/s1.json" "d['tokens']")" = "$(json "$W/s2.json" "d['tokens']")" ]; then ok "seeded sampling"; else bad "seeded sampling"; fi

# --samples: N continuations from one shared prefill, seeds seed .. seed + N - 1; each equals the single
# run with its seed; greedy samples are all the same
$RUN -m "$W/tiny" --tokens 0,5,9 -n 16 --ignore-eos --temperature 1 --seed 7 --samples 4 --json -q > "$W/samples.json"
$RUN -m "$W/tiny" --tokens 0,5,9 -n 16 --ignore-eos --temperature 1 --seed 9 --json -q > "$W/seed9.json"
if [ "$(json "$W/samples.json" "len(d['samples']), [s['seed'] for s in d['samples']], len(set(str(s['tokens']) for s in d['samples']))")" = "(4, [7, 8, 9, 10], 4)" ] &&
   [ "$(json "$W/samples.json" "d['samples'][2]['tokens']")" = "$(json "$W/seed9.json" "d['tokens']")" ]
then ok "--samples 4"; else bad "--samples 4"; cat "$W/samples.json"; fi
# more samples than the scheduler's first allocation of requests (16): each still streams its own text
if $RUN -m "$W/tiny" --tokens 0,5,9 -n 6 --ignore-eos --temperature 1 --seed 7 --samples 20 --json -q > "$W/samples20.json" &&
   [ "$(json "$W/samples20.json" "len(d['samples']), set(len(s['tokens']) for s in d['samples']), [s['seed'] for s in d['samples']] == list(range(7, 27))")" = "(20, {6}, True)" ]
then ok "--samples 20"; else bad "--samples 20"; fi
if $RUN -m "$W/tiny" --tokens 0,5,9 -n 8 --ignore-eos --samples 3 > "$W/samples.txt" 2> "$W/samples.err" &&
   [ "$(grep -c '^--- sample [123] of 3' "$W/samples.txt")" = 3 ] && grep -q "all samples" "$W/samples.err"
then ok "--samples text"; else bad "--samples text"; cat "$W/samples.txt" "$W/samples.err"; fi
# -v says which memory limit applied
if $RUN -m "$W/tiny" --tokens 0 -n 1 -v -q 2> "$W/v.err" > /dev/null && grep -q "available by MemAvailable" "$W/v.err"
then ok "-v: $(cat "$W/v.err")"; else bad "-v"; cat "$W/v.err"; fi
if $RUN -m "$W/tiny" --tokens 0 -n 1 --kv-pool 64K -q 2> "$W/pool.err" > /dev/null; then bad "a KV pool too small accepted"
elif grep -q "one sequence's context" "$W/pool.err"; then ok "KV pool too small: $(cat "$W/pool.err")"
else bad "KV pool message"; cat "$W/pool.err"; fi

# the context: a prompt that does not fit is an error; generation stops when it is full
if $RUN -m "$W/tiny" --tokens 1,2,3,4,5,6,7,8,9,10 --ctx 8 -q > /dev/null 2> "$W/ctx.err"; then
	bad "prompt over --ctx accepted"
elif grep -q "context" "$W/ctx.err"; then ok "prompt over --ctx: $(cat "$W/ctx.err")"; else bad "context message"; cat "$W/ctx.err"; fi
if $RUN -m "$W/tiny" --tokens 1,2,3,4,5,6,7,8,9,10 --ctx 12 -n 10 --ignore-eos --json -q > "$W/full_ctx.json" &&
   [ "$(json "$W/full_ctx.json" "len(d['tokens']), d['stop_reason']")" = "(3, 'context')" ]; then ok "generation stops at --ctx"
else bad "generation at --ctx"; cat "$W/full_ctx.json"; fi

# bad input
if $RUN -m "$W/tiny" --tokens 5000 -q > /dev/null 2> "$W/id.err"; then bad "id outside the vocabulary accepted"
elif grep -q "vocabulary" "$W/id.err"; then ok "bad id: $(cat "$W/id.err")"; else bad "bad id message"; fi
mkdir -p "$W/notok"
TINY_ABS=$(cd "$W/tiny" && pwd)
for f in "$TINY_ABS"/*; do case $f in *tokenizer*) ;; *) ln -s "$f" "$W/notok/" ;; esac; done
if $RUN -m "$W/notok" -p "hello" -q > /dev/null 2> "$W/notok.err"; then bad "prompt without tokenizer accepted"
elif grep -q "tokenizer" "$W/notok.err"; then ok "no tokenizer: $(cat "$W/notok.err")"; else bad "no tokenizer message"; fi
if $RUN -m "$W/notok" --tokens 0,5,9 -n 3 -q > "$W/notok.out"; then ok "--tokens without tokenizer: $(cat "$W/notok.out")"
else bad "--tokens without tokenizer"; fi
if $RUN -m "$W/missing" --tokens 0 -q 2> "$W/missing.err"; then bad "missing checkpoint accepted"
else ok "missing checkpoint: $(cat "$W/missing.err")"; fi
exit $fail
