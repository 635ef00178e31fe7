#!/bin/sh
# tools/gpu-check end to end where there is no GPU: --prepare gathers the programs, the CUDA test programs and
# their libraries into a folder; the run from that folder (dsm-bench gpu on the emu backend, small sizes) prints
# the table: the CUDA op tests skip without a device, the host arithmetic test and dsm-bench gpu pass.
run="$top_builddir/tests/gpu-check-run"
ls "$top_builddir"/tests/test_cuda_ops >/dev/null 2>&1 || { echo "SKIP: built without the CUDA toolkit"; exit 77; }
rm -rf "$run"
"$top_srcdir/tools/gpu-check" --prepare "$top_builddir" "$run" || { echo "FAIL: --prepare"; exit 1; }
[ -x "$run/gpu-check" ] && [ -x "$run/dsm-bench" ] && [ -x "$run/tests/test_cuda_ops" ] && [ -f "$run/lib/libdnnl.so.2" ] ||
	{ echo "FAIL: the prepared folder misses programs or libraries"; ls -R "$run"; exit 1; }
GPU_CHECK_BENCH_ARGS="--backend emu --presets tiny --no-speed" "$run/gpu-check" "$run" >"$run.out" 2>&1
rc=$?
cat "$run.out"
[ $rc -eq 0 ] || { echo "FAIL: gpu-check exited $rc"; exit 1; }
grep -q "^test_cuda_math  *PASS" "$run.out" && grep -q "^test_cuda_ops  *SKIP" "$run.out" &&
	grep -q "^dsm-bench-gpu  *PASS" "$run.out" && grep -q "^logits tiny  PASS" "$run.out" ||
	{ echo "FAIL: the table is not what a run without a GPU gives"; exit 1; }
rm -rf "$run" "$run.out"
echo "ok: tools/gpu-check --prepare and its run (emu)"
