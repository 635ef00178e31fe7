"""Load test of dsm-serve on loopback (run by tests/serve_load.sh; not named serve_load.py, whose test log
would be serve_load.sh's): a bounded number of clients for a bounded
time send a mix of requests (plain and streamed chat, streamed completions with n = 2, bad JSON, clients
that leave in the middle of a stream); every answer must be valid and complete, a full queue answers 503
with Retry-After and the client retries, so that no request is lost; the server's resident memory after a
second identical round must be what it was after the first.

usage: serve_load_client.py URL PID CLIENTS SECONDS
"""
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

URL, PID, CLIENTS, SECONDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HOST = urllib.parse.urlparse(URL)
lock = threading.Lock()
errors = []
counts = {}


def count(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def fail(msg):
    with lock:
        errors.append(msg)


def rss_kb():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def connect():
    return http.client.HTTPConnection(HOST.hostname, HOST.port, timeout=60)


def post(path, body, stream=False):
    """Returns (status, headers, body text or the response object when stream), retrying on 503."""
    while True:
        c = connect()
        c.request("POST", path, body=body if isinstance(body, (bytes, str)) else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status == 503:
            if r.getheader("Retry-After") is None:
                fail("503 without Retry-After")
            json.loads(r.read())
            c.close()
            count("retried_503")
            time.sleep(0.05)
            continue
        if stream and r.status == 200:
            return r.status, r, c
        text = r.read()
        c.close()
        return r.status, r, text


def sse_events(r):
    """The data: lines of a stream, until [DONE]; raises if the stream ends without it."""
    buf = b""
    while True:
        line = r.readline()
        if not line:
            raise ValueError("the stream ended without data: [DONE]")
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data: "):
            data = line[6:]
            if data == b"[DONE]":
                return
            yield json.loads(data)


def chat(rng, stream):
    n_tok = rng.randint(4, 24)
    body = {"messages": [{"role": "user", "content": f"Question {rng.random()}"}], "max_tokens": n_tok,
            "temperature": 0.7, "ignore_eos": True}
    if not stream:
        status, _, text = post("/v1/chat/completions", body)
        d = json.loads(text)
        ok = (status == 200 and d["choices"][0]["finish_reason"] == "length" and
              d["usage"]["completion_tokens"] == n_tok and "reasoning_content" in d["choices"][0]["message"])
        if not ok:
            fail(f"chat: {status} {text[:300]!r}")
        count("chat")
        return
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    status, r, c = post("/v1/chat/completions", body, stream=True)
    if status != 200:
        fail(f"chat stream: {status} {c[:300]!r}")
        return
    finish, usage, text = None, None, ""
    for ev in sse_events(r):
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev["choices"]:
            text += ch["delta"].get("reasoning_content") or ""
            text += ch["delta"].get("content") or ""
            finish = ch["finish_reason"] or finish
    c.close()
    if finish != "length" or not usage or usage["completion_tokens"] != n_tok:
        fail(f"chat stream incomplete: finish {finish} usage {usage}")
    count("chat_stream")


def completion_n2(rng):
    n_tok = rng.randint(4, 16)
    body = {"prompt": "The sum of", "max_tokens": n_tok, "n": 2, "stream": True, "seed": rng.randint(0, 1000),
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    status, r, c = post("/v1/completions", body, stream=True)
    if status != 200:
        fail(f"completion: {status}")
        return
    finish, usage = {}, None
    for ev in sse_events(r):
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev["choices"]:
            if ch["finish_reason"]:
                finish[ch["index"]] = ch["finish_reason"]
    c.close()
    if finish != {0: "length", 1: "length"} or usage["completion_tokens"] != 2 * n_tok:
        fail(f"completion n=2 incomplete: {finish} {usage}")
    count("completion_n2")


def bad_json(rng):
    status, _, text = post("/v1/chat/completions", b'{"messages": [' + bytes(rng.randint(0, 255) for _ in range(8)))
    d = json.loads(text)
    if status != 400 or "message" not in d["error"]:
        fail(f"bad JSON: {status} {text[:200]!r}")
    count("bad_json")


def leave_early(rng):
    body = {"messages": [{"role": "user", "content": "Go on"}], "max_tokens": 400, "stream": True, "ignore_eos": True}
    status, r, c = post("/v1/chat/completions", body, stream=True)
    if status != 200:
        fail(f"leave early: {status}")
        return
    r.readline()  # the first event, then hang up
    c.close()
    count("left_early")


def client(seed, until):
    rng = random.Random(seed)
    while time.time() < until:
        k = rng.random()
        try:
            if k < 0.3:
                chat(rng, False)
            elif k < 0.6:
                chat(rng, True)
            elif k < 0.8:
                completion_n2(rng)
            elif k < 0.9:
                bad_json(rng)
            else:
                leave_early(rng)
        except Exception as e:  # a lost request: a closed connection, a timeout, bad JSON from the server
            fail(f"{type(e).__name__}: {e}")


def metrics():
    c = connect()
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    return m


def round_(tag, seed):
    until = time.time() + SECONDS
    threads = [threading.Thread(target=client, args=(seed * 1000 + i, until)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the server settles: nothing queued or running once the clients that left are noticed
    for _ in range(100):
        m = metrics()
        if m["dsm_queue_length"] == 0 and m["dsm_running_requests"] == 0:
            break
        time.sleep(0.1)
    else:
        fail(f"{tag}: the server did not settle: {m}")
    return m


round_("warm-up", 1)
rss1 = rss_kb()
before = dict(counts)
m = round_("round 2", 2)
rss2 = rss_kb()
done = {k: counts.get(k, 0) - before.get(k, 0) for k in counts}
print(f"round 2: {done}, RSS {rss1 // 1024} MB -> {rss2 // 1024} MB")
generated = sum(counts.get(k, 0) for k in ("chat", "chat_stream", "completion_n2", "left_early"))
ended = sum(m[f'dsm_requests_total{{result="{r}"}}'] for r in ("finished", "cancelled", "failed"))
if ended != generated:
    fail(f"requests sent {generated}, ended in the server {ended}: {m}")
if m['dsm_requests_total{result="failed"}'] != 0:
    fail(f"failed requests: {m}")
if m['dsm_requests_total{result="cancelled"}'] < 1 and counts.get("left_early", 0) > 2:
    fail("no client that left was cancelled")
if min(done.get(k, 0) for k in ("chat", "chat_stream", "completion_n2", "bad_json")) < 1:
    fail(f"a kind of request never ran: {done}")
if rss2 - rss1 > 8 * 1024:
    fail(f"resident memory grew by {(rss2 - rss1) // 1024} MB in the second round")
for e in errors[:20]:
    print("FAIL:", e)
cancelled = m['dsm_requests_total{result="cancelled"}']
print(f"totals: {counts}; cancelled in the server: {cancelled:.0f}")
sys.exit(1 if errors else 0)
