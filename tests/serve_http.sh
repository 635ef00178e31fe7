#!/bin/sh
# dsm-serve's HTTP surface on the tiny preset: POST /v1/prove gives the same search as dsm-run --prove
# --json (same candidates and verifications, a document valid against docs/prove-result.schema.json),
# streamed as progress events and the result; the chat shell gives the prompt tokens dsm-run --chat
# gives; /health, /metrics, the API key, wrong methods and paths, a body over --max-body.
. "$top_srcdir/tests/serve_start.sh"
PY=$(command -v python3)
if [ -z "$PY" ]; then
	echo "SKIP: python3 is needed for the HTTP client"
	exit 77
fi
W=$top_builddir/tests/serve_http.d
rm -rf "$W"
mkdir -p "$W"
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny" || exit 99
PROBLEM="Prove that the sum of two odd integers is even."
EXACT="--precision f32 --kv-cache f32 --threads 2"
"$top_builddir/dsm-run" --prove -m "$W/tiny" -p "$PROBLEM" --no-rule-checks --proof-tokens 48 --verification-tokens 24 \
	--candidates 2 --verifications 2 --rounds 1 $EXACT --json -q > "$W/run.json" || exit 99
"$top_builddir/dsm-run" -m "$W/tiny" -p "Hi" --chat --system "Be brief." -n 1 --json -q $EXACT > "$W/chat.json" || exit 99
serve_start "$W/serve.log" -m "$W/tiny" $EXACT --max-body 4096 --api-key k1 -q
status=0
"$PY" - "$SERVE_URL" "$W" "$PROBLEM" <<'PYEOF' || status=1
import http.client, json, sys, urllib.parse
url, W, problem = sys.argv[1], sys.argv[2], sys.argv[3]
u = urllib.parse.urlparse(url)
failed = 0
def check(cond, what, detail=""):
    global failed
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond else f": {str(detail)[:500]}"))
    failed |= not cond
def req(method, path, body=None, key="k1", raw=False):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    h = {"Authorization": f"Bearer {key}"} if key else {}
    c.request(method, path, body=body if isinstance(body, (bytes, type(None))) else json.dumps(body), headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r, data if raw else (json.loads(data) if data[:1] in (b"{", b"[") else data.decode())

settings = {"rule_checks": False, "proof_tokens": 48, "verification_tokens": 24, "candidates": 2, "verifications": 2, "rounds": 1}
run = json.load(open(f"{W}/run.json"))
C = lambda d: [c["proof"] for c in d["candidates"]]
V = lambda d: [[v["analysis"], v["tokens"], v["score"]] for c in d["candidates"] for v in c["verifications"]]
st, _, doc = req("POST", "/v1/prove", {"problem": problem, "settings": settings})
json.dump(doc, open(f"{W}/serve.json", "w"))
check(st == 200 and C(doc) == C(run) and V(doc) == V(run) and doc["settings"] == run["settings"] and doc["stop_reason"] == run["stop_reason"],
      "/v1/prove: the same search as dsm-run --prove --json", doc)

st, _, text = req("POST", "/v1/prove", {"problem": problem, "settings": settings, "stream": True}, raw=True)
events, event = [], None
for line in text.decode().split("\n"):
    if line.startswith("event: "):
        event = line[7:]
    elif line.startswith("data: "):
        events.append((event, line[6:]))
        event = None
progress = [json.loads(d) for e, d in events if e == "progress"]
result = [json.loads(d) for e, d in events if e == "result"]
check(st == 200 and len(progress) >= 1 and progress[-1]["round_done"] and len(result) == 1 and C(result[0]) == C(run)
      and events[-1] == (None, "[DONE]"), f"/v1/prove streamed: {len(progress)} progress events, the result, [DONE]", events[-3:])
st, _, e = req("POST", "/v1/prove", {"problem": problem, "settings": {"candidates": 0}})
check(st == 400 and e["error"]["param"] == "candidates", "/v1/prove: a bad setting", e)
st, _, e = req("POST", "/v1/prove", {"problem": problem, "settings": {"check_cmd": "touch /tmp/x"}})
check(st == 400 and e["error"]["param"] == "check_cmd", "/v1/prove: no external checker over HTTP", e)

# the chat shell: the same prompt tokens as dsm-run --chat
chat = json.load(open(f"{W}/chat.json"))
st, _, r = req("POST", "/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0})
check(st == 200 and r["usage"]["prompt_tokens"] == len(chat["prompt_tokens"]), "chat shell = dsm-run --chat's prompt",
      (r, len(chat["prompt_tokens"])))

st, _, h = req("GET", "/health", key=None)
check(st == 200 and h["status"] == "ok", "/health without the key")
st, r, e = req("GET", "/metrics", key=None)
check(st == 401 and e["error"]["type"] == "authentication_error", "/metrics without the key: 401", e)
st, r, m = req("GET", "/metrics")
names = ["dsm_requests_total", "dsm_completion_tokens_total", "dsm_tokens_per_second", "dsm_queue_length", "dsm_batch_sequences",
         "dsm_batch_rows", "dsm_kv_pool_use_ratio", "dsm_expert_cache_hit_rate", "dsm_io_wait_seconds_total"]
check(st == 200 and all(f"# TYPE {n} " in m for n in names) and 'dsm_requests_total{result="finished"} 3' in m,
      "/metrics: Prometheus text with every metric", m)
st, _, e = req("GET", "/v1/chat/completions")
check(st == 405, "GET on a POST endpoint: 405", e)
st, _, e = req("GET", "/v2/nothing")
check(st == 404 and "error" in e, "an unknown path: 404", e)
st, _, e = req("POST", "/v1/completions", {"prompt": "x" * 5000})
check(st == 413 and "max-body" in e["error"]["message"], "a body over --max-body: 413", e)
st, _, e = req("GET", "/v1/models/tiny")
check(st == 200 and e["id"] == "tiny", "/v1/models/tiny", e)
sys.exit(failed)
PYEOF
if [ -n "$PYTHON_NUMPY" ]; then
	if $PYTHON_NUMPY "$top_srcdir/tests/json_schema_check.py" "$top_srcdir/docs/prove-result.schema.json" "$W/serve.json" > /dev/null
	then echo "ok: the /v1/prove document is valid against the schema"; else echo "FAIL: the /v1/prove document against the schema"; status=1; fi
fi
serve_stop || status=1
[ $status = 0 ] || tail -n 20 "$W/serve.log.err"
exit $status
