#!/bin/sh
# Prints "N passed, N failed, N skipped" from the automake .trs files under the given build folders.
pass=0 fail=0 skip=0
for dir in "$@"; do
	for f in $(find "$dir" -name '*.trs' 2>/dev/null); do
		r=$(sed -n 's/^:test-result: //p' "$f" | head -n 1)
		case "$r" in
		PASS|XFAIL) pass=$((pass + 1)) ;;
		SKIP) skip=$((skip + 1)) ;;
		*) fail=$((fail + 1)) ;;
		esac
	done
done
echo "$pass passed, $fail failed, $skip skipped"
