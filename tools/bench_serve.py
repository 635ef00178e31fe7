"""dsm-serve's decode speed under concurrent streaming clients (docs/serve.md; run by tools/bench-serve.sh).

For each client count B: B clients stream /v1/completions at once, each with a different prompt of 8-15
token ids and its own seed, sampled like dsm-bench batch (temperature 1, top-k 50, no end-of-sequence
token), --tokens tokens each. Aggregate decode tokens/s is counted between the moment the last client got
its first token (every prompt prefilled) and the moment the first client got its last one (all B still
decoding), from the arrival times of the tokens at the clients (each chunk carries the request's token
count: stream_options.continuous_usage_stats): HTTP, JSON and the server's threads are inside the figure.

usage: bench_serve.py URL [--sizes 1,8,32] [--tokens N] [--json]
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse


def client(url, i, tokens, out):
    u = urllib.parse.urlparse(url)
    rng = random.Random(1000 + i)
    prompt = [rng.randrange(2, 1000) for _ in range(rng.randrange(8, 16))]
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 1, "top_k": 50, "seed": 7 + i, "ignore_eos": True,
            "stream": True, "stream_options": {"continuous_usage_stats": True}}
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"bench_serve: HTTP {r.status}: {r.read()[:300]!r}")
    arrivals = []  # (arrival time, tokens generated so far), from the usage every chunk carries
    for line in r:
        if line.startswith(b"data: {"):
            usage = json.loads(line[6:]).get("usage")
            if usage and usage["completion_tokens"] > (arrivals[-1][1] if arrivals else 0):
                arrivals.append((time.monotonic(), usage["completion_tokens"]))
    c.close()
    out[i] = arrivals


def step_seconds(url):
    """The server's time in engine steps so far (/metrics)."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("dsm_step_seconds_total ")))


def measure(url, B, tokens):
    s0 = step_seconds(url)
    out = [None] * B
    threads = [threading.Thread(target=client, args=(url, i, tokens, out)) for i in range(B)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = max(a[0][0] for a in out)
    end = min(a[-1][0] for a in out)
    # tokens that arrived in (start, end]: each client's count at end less its count at start
    at = lambda a, t: max([k for (s, k) in a if s <= t] or [0])
    n = sum(at(a, end) - at(a, start) for a in out)
    total = sum(a[-1][1] for a in out)
    wall = time.monotonic() - t0
    # the share of the wall time the engine thread spent in steps: what HTTP, JSON and waking it up leave
    busy = (step_seconds(url) - s0) / wall
    return {"engine_busy": busy, "B": B, "tokens_per_second": n / (end - start) if end > start else 0.0, "window_seconds": end - start,
            "window_tokens": n, "tokens": total, "wall_seconds": wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    runs = [measure(a.url, int(b), a.tokens) for b in a.sizes.split(",")]
    if a.json:
        print(json.dumps({"runs": runs}))
    else:
        for r in runs:
            print(f"B {r['B']:3d}: {r['tokens_per_second']:8.2f} tok/s over {r['window_seconds']:.2f} s "
                  f"({r['window_tokens']} tokens of {r['tokens']}), engine in steps {r['engine_busy']:.3f} of the time")


main()
