#!/bin/sh
# dsm-serve under load on loopback (tests/serve_load_client.py): 12 clients for two rounds of 4 s against 4
# sequences and a queue of 4 (so that some requests meet a full queue, get 503 and retry); every answer
# valid and complete, none lost, resident memory flat between the rounds, the server settled afterwards.
# Then a shutdown with a stream in flight: the stream ends with an error event and [DONE], the server
# exits 0 within 10 s.
. "$top_srcdir/tests/serve_start.sh"
# AddressSanitizer keeps freed memory in quarantine (256 MB): off, so that resident memory means the same
# in the sanitizer build (leaks are its own check at exit); no effect on a normal build
ASAN_OPTIONS="quarantine_size_mb=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export ASAN_OPTIONS
PY=$(command -v python3)
if [ -z "$PY" ]; then
	echo "SKIP: python3 is needed for the load client"
	exit 77
fi
W=$top_builddir/tests/serve_load.d
rm -rf "$W"
mkdir -p "$W"
"$top_builddir/dsm-mkmodel" --quiet tiny "$W/tiny" || exit 99
serve_start "$W/serve.log" -m "$W/tiny" --threads 2 --ctx 512 --max-seqs 4 --max-queue 4 -q
status=0
timeout 120 "$PY" "$top_srcdir/tests/serve_load_client.py" "$SERVE_URL" "$SERVE_PID" 12 4 || status=1

serve_stop || status=1

# shutdown with a stream in flight (a longer context, so that it is still decoding)
serve_start "$W/serve2.log" -m "$W/tiny" --threads 2 --max-seqs 2 -q
"$PY" - "$SERVE_URL" > "$W/shutdown.out" 2>&1 <<'PYEOF' &
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
c.request("POST", "/v1/chat/completions", body=json.dumps({"messages": [{"role": "user", "content": "Go"}],
          "max_tokens": 4000, "ignore_eos": True, "stream": True}))
r = c.getresponse()
print("status", r.status, flush=True)
for line in r:
    if line.startswith(b"data: "):
        print(line.decode().strip()[:200], flush=True)
PYEOF
client=$!
i=0
while [ "$(grep -c '^data: {' "$W/shutdown.out")" -lt 3 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
serve_stop || status=1
wait $client
if grep -q '^data: {"error":{"message":"the server is shutting down"' "$W/shutdown.out" &&
   [ "$(tail -n 1 "$W/shutdown.out")" = "data: [DONE]" ]; then
	echo "ok: SIGTERM ends a stream in flight with an error and [DONE]"
else
	echo "FAIL: the stream in flight at SIGTERM"
	tail -n 3 "$W/shutdown.out"
	status=1
fi
[ $status = 0 ] || tail -n 20 "$W/serve.log.err"
exit $status
