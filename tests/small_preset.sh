#!/bin/sh
# Sourced by the tests that use the small preset (about 1.9 GB): writes it once under the build folder,
# under a lock since tests run in parallel, and sets SMALL to its folder, or leaves SMALL empty (with the
# reason on stdout) when DSM_TEST_SMALL=0 or less than 6 GB is free.
SMALL=
small_dir=$top_builddir/tests/small-preset
if [ "${DSM_TEST_SMALL:-1}" = 0 ]; then
	echo "small preset left out: DSM_TEST_SMALL=0"
elif [ ! -f "$small_dir/config.json" ] &&
     [ "$(df -Pk "$top_builddir" | awk 'NR == 2 { print $4 }')" -lt 6000000 ]; then
	echo "small preset left out: less than 6 GB free under $top_builddir"
else
	(
		flock 9
		if [ ! -f "$small_dir/config.json" ]; then
			rm -rf "$small_dir.tmp"
			"$top_builddir/dsm-mkmodel" --quiet --tokenizer none small "$small_dir.tmp" &&
				mv "$small_dir.tmp" "$small_dir"
		fi
	) 9> "$small_dir.lock" || exit 99
	SMALL=$small_dir
fi
