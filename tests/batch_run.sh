#!/bin/sh
# dsm-batch on the tiny preset: bad input lines, encodings, an existing output, the context, per-problem
# limits, shards (and Slurm's variables) with merge, SIGTERM (once and twice), a full disk, status, report.
exe=$top_builddir/dsm-batch
[ -x "$exe" ] || { echo "SKIP: dsm-batch not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
work=$top_builddir/tests/batch_run.d
rm -rf "$work"
mkdir -p "$work"
"$top_builddir/dsm-mkmodel" --quiet tiny "$work/tiny" || exit 99
check="python3 $top_srcdir/tests/batch/check.py"
fail=0
bad() { echo "FAIL: $*"; fail=1; }
search="--templates $top_srcdir/tests/batch/templates.json --candidates 2 --verifications 1 --best 1 --rounds 2
	--proof-tokens 24 --verification-tokens 12 --no-rule-checks --threads 1 -q"
run() { "$exe" -m "$work/tiny" $search "$@"; }
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
wait_lines() {  # wait_lines FILE N: until FILE has more than N lines (at most 120 s)
	t=0
	while [ "$(lines "$1")" -le "$2" ] && [ $t -lt 1200 ]; do sleep 0.1; t=$((t + 1)); done
}

# --- bad input lines go to the errors file with their line numbers; the others run
cat >"$work/mixed.jsonl" <<'JSONL'
{"id": "p1", "problem": "Prove that 1 + 1 = 2."}
{"id": "p2", "problem": "Prove that there are infinitely many primes.", "settings": {"candidates": 1, "no-think": true, "proof_tokens": 20}}
this is not json
{"id": "p1", "problem": "a duplicate id"}
{"problem": "no id"}
{"id": 7, "problem": "an id that is a number"}

{"id": "p3", "problem": "Show that 2 is even.", "settings": {"candidatez": 3}}
{"id": "p4"}
{"id": "p5", "problem": "Show that 3 is odd.", "settings": {"rounds": 0}}
{"id": "p6", "problem": "Show that 4 is even.", "settings": {"thinking": false, "search": "small"}}
JSONL
run --in "$work/mixed.jsonl" --out "$work/mixed.out" || bad "a run with bad lines exited $?"
$check "$work/mixed.out" "$work/mixed.jsonl" --complete --errors "$work/mixed.out.errors.jsonl" || bad "mixed results"
python3 - "$work/mixed.out" "$work/mixed.out.errors.jsonl" <<'PY' || bad "errors file"
import json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
assert sorted(ids) == ["p1", "p2", "p6"], ids
errs = [json.loads(l) for l in open(sys.argv[2])]
got = {e["line"]: e["error"] for e in errs}
want = {3: "not valid JSON", 4: "duplicate id \"p1\" (first on line 1)", 5: "no \"id\"", 6: "\"id\" is not",
        8: "candidatez", 9: "no \"problem\"", 10: "rounds"}
assert sorted(got) == sorted(want), (got, want)
for line, text in want.items():
    assert text in got[line], (line, got[line])
assert [e["id"] for e in errs if e["line"] == 4] == ["p1"]
# the per-problem settings were applied: p2 ran one candidate without thinking
doc = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["id"] == "p2"][0]
assert doc["settings"]["candidates"] == 1 and doc["settings"]["thinking"] is False, doc["settings"]
assert doc["settings"]["proof_tokens"] == 20, doc["settings"]
assert len([c for c in doc["candidates"] if c["round"] == 0]) == 1
doc = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["id"] == "p6"][0]
assert doc["settings"]["thinking"] is False, doc["settings"]
PY
# a result line is the proof search's document with the id: it validates against the schema
if python3 -c 'import jsonschema' 2>/dev/null || true; then
	head -n 1 "$work/mixed.out" | python3 -c 'import json,sys; d=json.load(sys.stdin); d.pop("id"); print(json.dumps(d))' \
		>"$work/doc.json"
	python3 "$top_srcdir/tests/json_schema_check.py" "$top_srcdir/docs/prove-result.schema.json" "$work/doc.json" \
		>/dev/null || bad "a result line does not validate against docs/prove-result.schema.json"
fi

# --- an existing output is refused without --resume, and left alone
cp "$work/mixed.out" "$work/mixed.copy"
if run --in "$work/mixed.jsonl" --out "$work/mixed.out" 2>"$work/exists.err"; then bad "an existing output was accepted"; fi
grep -q "exists" "$work/exists.err" || bad "no message for an existing output: $(cat "$work/exists.err")"
cmp -s "$work/mixed.out" "$work/mixed.copy" || bad "an existing output was changed"
# --resume on a finished job runs nothing and says so
run --in "$work/mixed.jsonl" --out "$work/mixed.out" --resume || bad "--resume of a finished job exited $?"
cmp -s "$work/mixed.out" "$work/mixed.copy" || bad "--resume of a finished job changed the results"

# --- encodings: UTF-16 and Latin-1 input are clear errors naming the problem
printf '\377\376{\0"\0i\0d\0"\0' >"$work/utf16.jsonl"
printf '{"id": "a", "problem": "ok"}\n{"id": "b", "problem": "caf\351"}\n' >"$work/latin1.jsonl"
run --in "$work/utf16.jsonl" --out "$work/utf16.out" 2>"$work/utf16.err" && bad "UTF-16 input accepted"
grep -q "UTF-16" "$work/utf16.err" || bad "UTF-16 message: $(cat "$work/utf16.err")"
run --in "$work/latin1.jsonl" --out "$work/latin1.out" 2>"$work/latin1.err" && bad "Latin-1 input accepted"
grep -q "line 2, byte 28: not UTF-8" "$work/latin1.err" || bad "Latin-1 message: $(cat "$work/latin1.err")"

# --- a problem too long for the context is an error line; the others run
python3 -c 'import json; print(json.dumps({"id":"long","problem":"x " * 3000})); print(json.dumps({"id":"short","problem":"Prove 1 = 1."}))' \
	>"$work/ctx.jsonl"
run --in "$work/ctx.jsonl" --out "$work/ctx.out" --ctx 1200 || bad "context run exited $?"
grep -q '"id":"long".*more than the context' "$work/ctx.out.errors.jsonl" || bad "no context error line"
grep -q '"id":"short"' "$work/ctx.out" || bad "the short problem did not run"

# --- per-problem limits end a search with its best so far and the reason
python3 -c 'import json; [print(json.dumps({"id":"l%d"%i,"problem":"Prove %d > 0."%(i+1)})) for i in range(3)]' >"$work/lim.jsonl"
run --in "$work/lim.jsonl" --out "$work/tok.out" --max-problem-tokens 5 || bad "token limit run exited $?"
[ "$(grep -c '"stop_reason":"token_limit"' "$work/tok.out")" = 3 ] || bad "token limit: $(grep -o '"stop_reason":"[a-z_]*"' "$work/tok.out")"
run --in "$work/lim.jsonl" --out "$work/sec.out" --max-problem-seconds 0.001 || bad "time limit run exited $?"
[ "$(grep -c '"stop_reason":"time_limit"' "$work/sec.out")" = 3 ] || bad "time limit: $(grep -o '"stop_reason":"[a-z_]*"' "$work/sec.out")"

# --- shards cover every problem exactly once; Slurm's array variables choose the shard; merge checks
python3 -c 'import json; [print(json.dumps({"id":"s%02d"%i,"problem":"Prove that %d is a number."%i})) for i in range(10)]' \
	>"$work/set.jsonl"
run --in "$work/set.jsonl" --out "$work/shard0.jsonl" --shard 0/3 || bad "shard 0 exited $?"
SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_COUNT=3 run --in "$work/set.jsonl" --out "$work/shard1.jsonl" \
	|| bad "shard 1 (Slurm) exited $?"
SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_COUNT=3 run --in "$work/set.jsonl" --out "$work/shard2.jsonl" || bad "shard 2 exited $?"
for i in 0 1 2; do
	$check "$work/shard$i.jsonl" "$work/set.jsonl" --complete --shard $i/3 >/dev/null || bad "shard $i is not its problems"
done
"$exe" merge "$work/merged.jsonl" "$work/shard0.jsonl" "$work/shard1.jsonl" "$work/shard2.jsonl" >"$work/merge.out" \
	2>&1 || bad "merge of complete shards exited $?: $(cat "$work/merge.out")"
$check "$work/merged.jsonl" "$work/set.jsonl" --complete >/dev/null || bad "merged file incomplete"
[ "$(python3 -c 'import json,sys; print(",".join(json.loads(l)["id"] for l in open(sys.argv[1])))' "$work/merged.jsonl")" = \
	"s00,s01,s02,s03,s04,s05,s06,s07,s08,s09" ] || bad "merged file not in input order"
# a shard missing: its ids are reported missing; a shard given twice: duplicates
"$exe" merge "$work/m2.jsonl" "$work/shard0.jsonl" "$work/shard2.jsonl" >"$work/merge2.out" 2>&1 && bad "merge with a missing shard exited 0"
grep -q 'missing: id "s01"' "$work/merge2.out" || bad "merge did not name a missing id: $(cat "$work/merge2.out")"
grep -q '3 missing' "$work/merge2.out" || bad "merge did not count the missing: $(cat "$work/merge2.out")"
"$exe" merge "$work/m3.jsonl" "$work/shard0.jsonl" "$work/shard1.jsonl" "$work/shard2.jsonl" "$work/shard1.jsonl" \
	>"$work/merge3.out" 2>&1 && bad "merge with a duplicated shard exited 0"
grep -q 'duplicate: id "s01"' "$work/merge3.out" || bad "merge did not name a duplicate: $(cat "$work/merge3.out")"
$check "$work/m3.jsonl" "$work/set.jsonl" --complete >/dev/null || bad "merge with duplicates did not keep each id once"
# resuming with another shard is refused
run --in "$work/set.jsonl" --out "$work/shard0.jsonl" --shard 1/3 --resume 2>"$work/shard.err" && bad "another shard accepted on --resume"
grep -q "shard 0/3" "$work/shard.err" || bad "no message for another shard: $(cat "$work/shard.err")"

# --- SIGTERM: no new problems, the output consistent; then a second signal stops at once
python3 -c 'import json; [print(json.dumps({"id":"t%02d"%i,"problem":"Prove that %d is an integer."%i})) for i in range(200)]' \
	>"$work/many.jsonl"
"$exe" -m "$work/tiny" $search --in "$work/many.jsonl" --out "$work/term.jsonl" --drain 0 &
pid=$!
wait_lines "$work/term.jsonl" 0
kill -TERM $pid
wait $pid
rc=$?
[ $rc = 143 ] || bad "SIGTERM: exit status $rc, expected 143"
$check "$work/term.jsonl" "$work/many.jsonl" >/dev/null || bad "SIGTERM left a bad output"
grep -q '"state":	"interrupted"' "$work/term.jsonl.state.json" || bad "state after SIGTERM: $(grep state\" "$work/term.jsonl.state.json")"
n=$(wc -l <"$work/term.jsonl")
[ "$n" -gt 0 ] && [ "$n" -lt 200 ] || bad "SIGTERM after the first result: $n results"
"$exe" -m "$work/tiny" $search --in "$work/many.jsonl" --out "$work/term.jsonl" --resume --drain 1000 &
pid=$!
wait_lines "$work/term.jsonl" "$n"
kill -TERM $pid
sleep 0.2
kill -TERM $pid
t0=$(date +%s)
wait $pid
rc=$?
[ $rc = 143 ] || bad "two SIGTERMs: exit status $rc, expected 143"
[ $(( $(date +%s) - t0 )) -lt 20 ] || bad "a second SIGTERM did not stop at once"
$check "$work/term.jsonl" "$work/many.jsonl" >/dev/null || bad "two SIGTERMs left a bad output"
[ "$(wc -l <"$work/term.jsonl")" -ge "$n" ] || bad "results lost after two SIGTERMs"

# --- a full disk (here: a file size limit, EFBIG) stops the job, and loses no finished result
rm -f "$work/full.jsonl"*
(ulimit -f 64; run --in "$work/many.jsonl" --out "$work/full.jsonl" 2>"$work/full.err")
rc=$?
[ $rc = 1 ] || bad "a full disk: exit status $rc, expected 1"
grep -q "File too large" "$work/full.err" || bad "no message for a full disk: $(tail -n 3 "$work/full.err")"
$check "$work/full.jsonl" "$work/many.jsonl" >/dev/null || bad "a full disk left a partial or bad line"
n=$(wc -l <"$work/full.jsonl")
[ "$n" -gt 0 ] || bad "a full disk: no result before the limit"
# the job continues without the limit (short searches, to end soon): every finished result is still there
run --in "$work/many.jsonl" --out "$work/full.jsonl" --resume --max-problem-tokens 1 --concurrent 8 \
	|| bad "--resume after a full disk exited $?"
$check "$work/full.jsonl" "$work/many.jsonl" --complete >/dev/null || bad "after a full disk the job did not complete"

# --- status and report
"$exe" status "$work/mixed.out" >"$work/status.out" || bad "status exited $?"
grep -q "3 problems done" "$work/status.out" || bad "status: $(cat "$work/status.out")"
grep -q "state     finished" "$work/status.out" || bad "status state: $(cat "$work/status.out")"
grep -q "errors    7 lines" "$work/status.out" || bad "status errors: $(cat "$work/status.out")"
"$exe" report "$work/merged.jsonl" --html "$work/report.html" >"$work/report.out" || bad "report exited $?"
grep -q "^10 problems" "$work/report.out" || bad "report totals: $(tail -n 14 "$work/report.out")"
grep -q "<svg id=\"histogram\"" "$work/report.html" || bad "report HTML has no histogram"
if grep -q "http" "$work/report.html"; then bad "the report HTML refers to the network"; fi

[ $fail = 0 ] && rm -rf "$work"
exit $fail
