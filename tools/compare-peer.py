#!/usr/bin/env python3
"""dsm against llama.cpp on the same weights, one sitting, the engines alternating (docs/kernels.md, "Against
llama.cpp").

  tools/compare-peer.py --llama-bench PATH --dsm-run PATH \\
      --model NAME DSM_DIR GGUF [--model NAME DSM_DIR GGUF ...] [--threads 1,2] [--rounds 3] \\
      [--decode 64] [--prefill 256] [--llama-mmap 1,0] [--llama-reps 2] [--dsm-bench PATH [--dsm-inspect PATH]] \\
      [--json OUT]

For each model in turn (after one uncounted decode of each engine, which brings the model's files into the
page cache), each round runs, for every thread count, in this order: llama-bench, once for each of its
weight-loading modes in --llama-mmap (-mmp: 1 maps the GGUF file, 0 reads it into memory; neither is faster on
every model and host), prefill (-p P) and decode (-n N) in one call; then dsm-run decode (--tokens 0 -n N+1
--ignore-eos), the same with --full-head, and prefill (P prompt tokens, -n 1). Both engines decode N tokens
from an empty context, one at a time, and prefill P tokens in one go. dsm-run decodes greedily (its default):
it then multiplies only the rows of the head that can hold the largest logit, after a copy of the head at
one byte a weight; with --full-head it multiplies the whole head for every token, as llama-bench (which
samples nothing) and as dsm does when it samples. llama-bench repeats each test --llama-reps times and the first
repetition after loading is not counted (it runs cold: a third of the later ones' rate where pages are first
touched; dsm touches its weights when it opens them, before any timing); each cell compares dsm against the
faster mode: the peer at its best.
The medians over the rounds and their ratios (dsm / llama.cpp) are printed at the end; with --dsm-bench, the
DRAM read probe and oneDNN's BF16 matmul rate of `dsm-bench kernels` before and after the sitting, and with
--dsm-inspect too, each engine's prefill as GFLOP/s against that matmul rate (the limit of a prefill).

llama.cpp is built outside this repository (a CPU Release build); GGUF files come from
../shared/tools/to_gguf.py on a `dsm-mkmodel --v3` checkpoint and llama-quantize.
"""
import argparse, json, os, re, statistics, subprocess, sys


def llama(bench, gguf, threads, p, n, mmap, reps):
    """Prefill and decode tok/s of one llama-bench call: each test's mean over its repetitions but the first."""
    out = subprocess.run([bench, "-m", gguf, "-p", str(p), "-n", str(n), "-t", str(threads), "-r", str(reps),
                          "-mmp", str(mmap), "-o", "json"], capture_output=True, text=True, check=True).stdout
    tests = {(d["n_prompt"], d["n_gen"]): d["samples_ts"] for d in json.loads(out)}
    warm = [statistics.mean(tests[key][1:]) for key in ((p, 0), (0, n))]
    return warm[0], warm[1]


def dsm(run, model, threads, prompt, n, *extra):
    args = [run, "-m", model, "--tokens", ",".join(str(100 + i) for i in range(prompt)), "-n", str(n),
            "--ignore-eos", "-t", str(threads), "--ctx", str(max(prompt + n + 16, 512)),
            "--batch", str(max(prompt, 128))] + list(extra)
    err = subprocess.run(args, capture_output=True, text=True, check=True).stderr
    m = re.search(r"prefill \d+ tokens in [\d.]+ s \(([\d.]+) tok/s\), decode \d+ tokens in [\d.]+ s \(([\d.]+) tok/s",
                  err)
    if not m:
        sys.exit("compare-peer: no speed line from dsm-run:\n" + err)
    return float(m.group(1)), float(m.group(2))


def probe(bench):
    """The DRAM read rate and oneDNN's BF16 matmul rate at 256 tokens (all threads) of `dsm-bench kernels`."""
    out = json.loads(subprocess.run([bench, "kernels", "--json", "--passes", "3"], capture_output=True, text=True,
                                    check=True).stdout)
    return {"dram_read_gbps": out["dram_read_gbps"], "onednn_gflops_m256": out.get("onednn_gflops_m256")}


def prefill_gflop_per_token(inspect, model):
    """Matmul work of a prefill token: 2 flops per weight it multiplies (every layer's attention, indexer,
    dense FFN, router and shared expert, top-k of the routed experts; not the embeddings, the head or MTP)."""
    d = json.loads(subprocess.run([inspect, "--json", model], capture_output=True, text=True, check=True).stdout)
    p, sh = d["parameters"], d["shape"]
    used = p["attention"] + p["indexer"] + p["dense"] + p["router"] + p["shared_experts"] + \
        p["routed_experts"] * sh["num_experts_per_tok"] / sh["n_routed_experts"]
    return 2 * used / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--dsm-run", required=True)
    ap.add_argument("--model", nargs=3, action="append", required=True, metavar=("NAME", "DSM_DIR", "GGUF"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--llama-mmap", default="1,0", help="llama-bench -mmp values to run, the best one counts")
    ap.add_argument("--llama-reps", type=int, default=2, help="llama-bench -r (at least 2: the first is not counted)")
    ap.add_argument("--dsm-bench", help="dsm-bench: the DRAM read probe (dsm-bench kernels) before and after")
    ap.add_argument("--dsm-inspect", help="dsm-inspect: with --dsm-bench, prefill GFLOP/s against oneDNN's rate")
    ap.add_argument("--json")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    mmaps = [int(m) for m in a.llama_mmap.split(",")]
    if a.llama_reps < 2:
        sys.exit("compare-peer: --llama-reps must be at least 2")
    probes = [probe(a.dsm_bench)] if a.dsm_bench else []
    runs = []
    for name, ddir, gguf in a.model:  # one model at a time: its files stay in the page cache
        # Not counted: a first decode of each, which reads the model's files into the page cache (the kernel
        # reclaiming the previous model's pages then takes a core for seconds).
        llama(a.llama_bench, gguf, threads[0], 16, 8, mmaps[0], 2)
        dsm(a.dsm_run, ddir, threads[0], 1, 9)
        for r in range(a.rounds):
            for t in threads:
                row = {"round": r + 1, "model": name, "threads": t}
                for m in mmaps:
                    row["llama_prefill_mmap%d" % m], row["llama_decode_mmap%d" % m] = llama(
                        a.llama_bench, gguf, t, a.prefill, a.decode, m, a.llama_reps)
                _, row["dsm_decode"] = dsm(a.dsm_run, ddir, t, 1, a.decode + 1)
                _, row["dsm_decode_full_head"] = dsm(a.dsm_run, ddir, t, 1, a.decode + 1, "--full-head")
                row["dsm_prefill"], _ = dsm(a.dsm_run, ddir, t, a.prefill, 1)
                runs.append(row)
                print("round %d %-8s %d thread(s): decode dsm %.2f (--full-head %.2f) llama.cpp %s tok/s, prefill dsm "
                      "%.1f llama.cpp %s tok/s" % (r + 1, name, t, row["dsm_decode"], row["dsm_decode_full_head"],
                                    " ".join("%.2f (mmap %d)" % (row["llama_decode_mmap%d" % m], m) for m in mmaps),
                                    row["dsm_prefill"],
                                    " ".join("%.1f (mmap %d)" % (row["llama_prefill_mmap%d" % m], m) for m in mmaps)),
                      flush=True)
    if a.dsm_bench:
        probes.append(probe(a.dsm_bench))
        print("DRAM read probe (dsm-bench kernels, all threads): %.1f GB/s before, %.1f after" %
              tuple(p["dram_read_gbps"] for p in probes))
        if probes[0]["onednn_gflops_m256"]:
            print("oneDNN BF16 matmul, 256 tokens (dsm-bench kernels, all threads): %.1f GFLOP/s before, %.1f after"
                  % tuple(p["onednn_gflops_m256"] for p in probes))
    print("\n| model | threads | decode dsm | decode dsm --full-head | decode llama.cpp (mmap) | dsm / llama.cpp | "
          "--full-head / llama.cpp | prefill dsm | prefill llama.cpp (mmap) | dsm / llama.cpp |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    ddirs = {name: ddir for name, ddir, _ in a.model}
    for name, _, _ in a.model:
        for t in threads:
            rows = [x for x in runs if x["model"] == name and x["threads"] == t]
            keys = ["dsm_decode", "dsm_decode_full_head", "dsm_prefill"] + ["llama_%s_mmap%d" % (k, m) for k in ("decode", "prefill")
                                                     for m in mmaps]
            med = {k: statistics.median(x[k] for x in rows) for k in keys}
            for k in ("decode", "prefill"):  # the peer at its best: the faster loading mode's median
                best = max(mmaps, key=lambda m: med["llama_%s_mmap%d" % (k, m)])
                med["llama_" + k], med["llama_%s_mmap" % k] = med["llama_%s_mmap%d" % (k, best)], best
            med.update(model=name, threads=t, rounds=len(rows),
                       decode_ratio=med["dsm_decode"] / med["llama_decode"],
                       full_head_ratio=med["dsm_decode_full_head"] / med["llama_decode"],
                       prefill_ratio=med["dsm_prefill"] / med["llama_prefill"])
            if a.dsm_inspect:
                med["prefill_gflop_per_token"] = prefill_gflop_per_token(a.dsm_inspect, ddirs[name])
            summary.append(med)
            print("| %s | %d | %.2f | %.2f | %.2f (%d) | **%.2f** | %.2f | %.1f | %.1f (%d) | **%.2f** |" % (
                name, t, med["dsm_decode"], med["dsm_decode_full_head"], med["llama_decode"],
                med["llama_decode_mmap"], med["decode_ratio"], med["full_head_ratio"],
                med["dsm_prefill"], med["llama_prefill"], med["llama_prefill_mmap"], med["prefill_ratio"]))
    gemm = [p["onednn_gflops_m256"] for p in probes if p.get("onednn_gflops_m256")]
    if a.dsm_inspect and gemm:
        # Prefill is matmul-bound: its rate in GFLOP/s against the best BF16 matmul rate of the same sitting.
        peak = statistics.median(gemm)
        print("\nprefill matmul rate, GFLOP/s (GFLOP per token x tok/s), against oneDNN's BF16 matmul at 256 tokens, "
              "%.1f GFLOP/s (median of the probes, all threads):" % peak)
        for med in summary:
            if med["threads"] != max(threads):
                continue
            g = med["prefill_gflop_per_token"]
            print("  %-8s %.2f GFLOP per token: dsm %.1f (%.2f of oneDNN), llama.cpp %.1f (%.2f)" % (
                med["model"], g, g * med["dsm_prefill"], g * med["dsm_prefill"] / peak, g * med["llama_prefill"],
                g * med["llama_prefill"] / peak))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": runs, "medians": summary, "probes": probes}, f, indent=1)


if __name__ == "__main__":
    main()
