#!/bin/sh
# Sourced by the dsm-serve tests: skips when dsm-serve was not built; serve_start LOG ARGS... starts it on a
# free loopback port and sets SERVE_PID and SERVE_URL (http://127.0.0.1:PORT), or exits 99 when it does not
# come up within 60 s; serve_stop stops it with SIGTERM and fails when it does not exit cleanly within 10 s.
if [ ! -x "$top_builddir/dsm-serve" ]; then
	echo "SKIP: dsm-serve was not built (install the Debian package libmicrohttpd-dev and re-run configure)"
	exit 77
fi
serve_start() {
	log=$1
	shift
	"$top_builddir/dsm-serve" --port 0 "$@" > "$log" 2> "$log.err" &
	SERVE_PID=$!
	i=0
	while ! grep -q "listening on" "$log" 2>/dev/null; do
		if ! kill -0 "$SERVE_PID" 2>/dev/null || [ $i -ge 600 ]; then
			echo "dsm-serve did not start:"
			cat "$log" "$log.err"
			kill "$SERVE_PID" 2>/dev/null
			exit 99
		fi
		sleep 0.1
		i=$((i + 1))
	done
	SERVE_URL=$(sed -n 's|^dsm-serve: listening on \(http://[^ ]*\).*|\1|p' "$log")
}
serve_stop() {
	kill -TERM "$SERVE_PID"
	i=0
	while kill -0 "$SERVE_PID" 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$SERVE_PID" 2>/dev/null; then
		kill -KILL "$SERVE_PID"
		echo "FAIL: dsm-serve did not stop within 10 s of SIGTERM"
		return 1
	fi
	wait "$SERVE_PID"
}
