#!/bin/sh
# Runs a Python test with the interpreter configure found able to import numpy; skips (77) without one.
if [ -z "$PYTHON_NUMPY" ]; then
	echo "SKIP: no Python with numpy (install the Debian package python3-numpy and re-run configure)"
	exit 77
fi
exec "$PYTHON_NUMPY" "$@"
