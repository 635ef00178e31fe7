#!/bin/sh
# dsm-run --prove end to end on tiny checkpoints (random weights: outputs rarely parse, which runs the
# rule checks and the "no valid score" paths): the problem from -p, -f and stdin; refinement rounds; a
# second checkpoint as the verifier; meta-verification; an external checker that passes, fails and times
# out; a kill during a round leaves no document; clear errors. Every document is validated against
# docs/prove-result.schema.json. Then a short search on the small preset (tests/small_preset.sh;
# DSM_TEST_SMALL=0 leaves it out).
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python (install python3-numpy and re-run configure)"
	exit 77
fi
W=$top_builddir/tests/prove_run.d
rm -rf "$W"
mkdir -p "$W"
PY=$PYTHON_NUMPY
RUN="$top_builddir/dsm-run --prove --threads 2"
PROBLEM="Prove that the sum of two odd integers is even."
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
json() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
valid() { $PY "$top_srcdir/tests/json_schema_check.py" "$top_srcdir/docs/prove-result.schema.json" "$@"; }

"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny" || exit 99
"$top_builddir/dsm-mkmodel" --quiet --seed 2 tiny "$W/tiny2" || exit 99

# the default search (shorter proofs): candidates fail the rules (no </think> from a random model), nothing
# is verified
if $RUN -m "$W/tiny" -p "$PROBLEM" --proof-tokens 96 --out "$W/default.json" > "$W/default.out" 2> "$W/default.err" &&
   grep -q "^no proof selected" "$W/default.out" && grep -q "round 0 finished: .* tok/s" "$W/default.err" &&
   grep -q "stop: nothing_to_refine" "$W/default.err" && valid "$W/default.json" &&
   [ "$(json "$W/default.json" "d['stop_reason'], len(d['candidates']), all(c['rule_check']['rule'] and not c['verified'] for c in d['candidates']), d['selected'], d['phases']['prefill']['shared_tokens'] > 0")" = "('nothing_to_refine', 4, True, None, True)" ]
then ok "default search: $(tail -n 1 "$W/default.err")"; else bad "default search"; cat "$W/default.err" "$W/default.out"; fi

# the problem from a file and from stdin: the same search
printf '%s\n' "$PROBLEM" > "$W/problem.txt"
$RUN -m "$W/tiny" -f "$W/problem.txt" --proof-tokens 96 --json -q > "$W/file.json"
$RUN -m "$W/tiny" --proof-tokens 96 --json -q < "$W/problem.txt" > "$W/stdin.json"
if [ "$(json "$W/file.json" "d['problem'], [c['proof'] for c in d['candidates']]")" = "$(json "$W/default.json" "d['problem'], [c['proof'] for c in d['candidates']]")" ] &&
   [ "$(json "$W/stdin.json" "d['problem']")" = "$PROBLEM" ] && valid "$W/file.json" "$W/stdin.json" > /dev/null
then ok "-f FILE and stdin"; else bad "-f FILE and stdin"; fi

# every candidate verified (rules off), two rounds: refinements, scores that do not parse; the verifications
# of a candidate share one prefill, and those of different candidates the template's head and the problem
SHORT="--no-rule-checks --proof-tokens 48 --verification-tokens 24"
if $RUN -m "$W/tiny" -p "$PROBLEM" $SHORT --candidates 3 --verifications 2 --best 2 --rounds 2 --out "$W/rounds.json" \
	> /dev/null 2> "$W/rounds.err" && valid "$W/rounds.json" &&
   [ "$(json "$W/rounds.json" "len(d['rounds']), len(d['candidates']), [c['origin']['kind'] for c in d['candidates']], all(len(c['verifications']) == 2 for c in d['candidates']), d['phases']['refinement']['requests'], d['phases']['verification']['computed_prompt_tokens'] * 2 < d['phases']['verification']['prompt_tokens']")" = "(2, 5, ['initial', 'initial', 'initial', 'refinement', 'refinement'], True, 2, True)" ] &&
   [ "$(json "$W/rounds.json" "all((v['score'] == 'no valid score') == v['score_note'].startswith('no valid score') for c in d['candidates'] for v in c['verifications'])")" = True ]
then ok "two rounds: $(tail -n 1 "$W/rounds.err")"; else bad "two rounds"; cat "$W/rounds.err"; fi

# a second checkpoint verifies: the same checkpoint opened again reproduces self-verification exactly (F32
# path); another checkpoint changes the verifications and nothing else
EXACT="$SHORT --rounds 1 --precision f32 --kv-cache f32 --json -q"
$RUN -m "$W/tiny" -p "$PROBLEM" $EXACT > "$W/self.json"
$RUN -m "$W/tiny" -p "$PROBLEM" $EXACT --verifier "$W/tiny" --verifier-threads 1 > "$W/same.json"
$RUN -m "$W/tiny" -p "$PROBLEM" $EXACT --verifier "$W/tiny2" --verifier-threads 1 > "$W/other.json"
V="[[v['analysis'], v['tokens'], v['thinking_chars']] for c in d['candidates'] for v in c['verifications']]"
C="[c['proof'] for c in d['candidates']]"
if valid "$W/same.json" "$W/other.json" > /dev/null &&
   [ "$(json "$W/same.json" "$V")" = "$(json "$W/self.json" "$V")" ] &&
   [ "$(json "$W/other.json" "$C")" = "$(json "$W/self.json" "$C")" ] &&
   [ "$(json "$W/other.json" "$V")" != "$(json "$W/self.json" "$V")" ] &&
   [ "$(json "$W/other.json" "d['settings']['verifier'].endswith('tiny2')")" = True ]
then ok "--verifier DIR"; else bad "--verifier DIR"; fi
if $RUN -m "$W/tiny" -p "$PROBLEM" $SHORT --verifier "$W/missing" -q > /dev/null 2> "$W/ver.err"; then bad "missing verifier accepted"
elif grep -q -- "--verifier" "$W/ver.err"; then ok "missing verifier: $(cat "$W/ver.err")"; else bad "verifier message"; cat "$W/ver.err"; fi

# meta-verification runs on scored verifications only (none parse here) and the document stays valid
if $RUN -m "$W/tiny" -p "$PROBLEM" $SHORT --rounds 1 --meta-verify --out "$W/meta.json" -q > /dev/null &&
   valid "$W/meta.json" > /dev/null && [ "$(json "$W/meta.json" "d['settings']['meta_verify']")" = True ]
then ok "--meta-verify"; else bad "--meta-verify"; fi

# the external checker: candidate 0 passes, 1 fails with a message, 2 runs past the time limit
cat > "$W/check.sh" <<'EOF'
#!/bin/sh
proof=$(cat)
[ -n "$proof" ] && [ -n "$DSM_PROBLEM" ] || exit 9
case $DSM_CANDIDATE in
0) echo "checked: ok" ;;
1) echo "step 3 does not follow" >&2; exit 1 ;;
*) exec sleep 30 ;;
esac
EOF
chmod +x "$W/check.sh"
CHECKED="d['candidates'][0]['external_check']['passed'], d['candidates'][0]['external_check']['output'], d['candidates'][1]['external_check']['exit_status'], 'does not follow' in d['candidates'][1]['external_check']['output'], d['candidates'][2]['external_check']['timed_out'], [c['verified'] for c in d['candidates']]"
start=$(date +%s)
if $RUN -m "$W/tiny" -p "$PROBLEM" $SHORT --candidates 3 --rounds 1 --check-cmd "$W/check.sh" --check-timeout 1 \
	--out "$W/check.json" -q > /dev/null && valid "$W/check.json" > /dev/null &&
   [ "$(json "$W/check.json" "$CHECKED")" = "(True, 'checked: ok\n', 1, True, True, [True, False, False])" ] &&
   [ $(($(date +%s) - start)) -lt 25 ]
then ok "--check-cmd gates"; else bad "--check-cmd gates"; json "$W/check.json" "$CHECKED"; fi
if $RUN -m "$W/tiny" -p "$PROBLEM" $SHORT --candidates 3 --rounds 1 --check-cmd "$W/check.sh" --check-timeout 1 \
	--check-weight record --out "$W/record.json" -q > /dev/null && valid "$W/record.json" > /dev/null &&
   [ "$(json "$W/record.json" "[c['verified'] for c in d['candidates']], d['candidates'][2]['external_check']['gates']")" = "([True, True, True], False)" ]
then ok "--check-weight record"; else bad "--check-weight record"; fi

# a kill during a round leaves no document (and no partial one)
$RUN -m "$W/tiny" -p "$PROBLEM" --no-rule-checks --proof-tokens 1500 --candidates 8 --out "$W/killed.json" -q > /dev/null 2>&1 &
pid=$!
sleep 2
kill -9 $pid 2> /dev/null
wait $pid 2> /dev/null
if [ ! -e "$W/killed.json" ] && [ -z "$(ls "$W" | grep 'killed.json.tmp')" ]; then ok "kill during a round: no document"
else bad "kill during a round"; ls "$W"; fi

# bad input
for args in "--evaluations 9" "--check-weight maybe" "--search huge" "--threshold 2"; do
	if $RUN -m "$W/tiny" -p "$PROBLEM" $args -q > /dev/null 2> "$W/bad.err"; then bad "$args accepted"
	else ok "$args: $(cat "$W/bad.err")"; fi
done
mkdir -p "$W/notok"
TINY_ABS=$(cd "$W/tiny" && pwd)
for f in "$TINY_ABS"/*; do case $f in *tokenizer*) ;; *) ln -s "$f" "$W/notok/" ;; esac; done
if $RUN -m "$W/notok" -p "$PROBLEM" -q > /dev/null 2> "$W/notok.err"; then bad "no tokenizer accepted"
elif grep -q "tokenizer" "$W/notok.err"; then ok "no tokenizer: $(cat "$W/notok.err")"; else bad "no tokenizer message"; fi

# the small preset: a short search, every candidate with text verified (its small tokenizer has text for
# few of the model's ids, so an output is often empty)
. "$top_srcdir/tests/small_preset.sh"
if [ -n "$SMALL" ]; then
	if $RUN -m "$SMALL" -p "$PROBLEM" --no-rule-checks --candidates 2 --verifications 2 --rounds 1 --proof-tokens 16 \
		--verification-tokens 8 --out "$W/small.json" > /dev/null 2> "$W/small.err" && valid "$W/small.json" > /dev/null &&
	   [ "$(json "$W/small.json" "len(d['candidates']), all(len(c['verifications']) == (2 if c['proof'] else 0) for c in d['candidates']), d['phases']['prefill']['shared_tokens'] > 0")" = "(2, True, True)" ]
	then ok "small preset: $(tail -n 1 "$W/small.err")"; else bad "small preset"; cat "$W/small.err"; fi
fi
exit $fail
