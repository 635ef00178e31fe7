#!/usr/bin/python3
"""Run the float64 reference on a checkpoint and save the results for the engine's tests.

Usage:
    /usr/bin/python3 tests/ref/run_ref.py CHECKPOINT_DIR --tokens 0,5,9 [--greedy N] [--indexer-fp8]
                                          [--mla-form full|absorbed] --out FILE.npz

Keys of the .npz file:
    tokens           int64 [T]                 the prompt token ids
    logits           float64 [T, vocab]        logits of a full causal forward over the prompt
    routing_layers   int64 [M]                 indices of the MoE layers (possibly empty)
    routing_<L>      int64 [T, top_k]          experts chosen at MoE layer L per position, each row ascending
    indexer_layers   int64 [K]                 indices of the layers with a lightning indexer (possibly empty)
    indexer_<L>      int64 [T, min(index_topk, T)]  positions selected at layer L per query position,
                                               ascending, padded with -1 (row t has min(index_topk, t+1)
                                               valid entries)
    greedy           int64 [N]                 N greedy tokens after the prompt (empty without --greedy)
    indexer_fp8      int64 scalar              1 if the indexer's FP8 rounding was on, else 0
    indexer_ue8m0    int64 scalar              1 if that rounding used power-of-two (ue8m0) scales
Exit status 0 on success, 1 with a message on bad input.
"""

import argparse
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # keep tests/ref free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deepseek_ref import ConfigError, Model  # noqa: E402
from safetensors_reader import SafetensorsError  # noqa: E402


def fail(msg):
    sys.stderr.write("run_ref.py: error: %s\n" % msg)
    sys.exit(1)


def parse_tokens(text):
    try:
        toks = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        fail("--tokens must be a comma-separated list of integers, got %r" % text)
    if not toks:
        fail("--tokens is empty")
    return toks


def main(argv=None):
    ap = argparse.ArgumentParser(description="float64 reference forward pass of DeepSeek-V3.2")
    ap.add_argument("checkpoint", help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--tokens", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--greedy", type=int, default=0, metavar="N", help="generate N greedy tokens")
    ap.add_argument("--indexer-fp8", action="store_true",
                    help="round indexer q/k to FP8 like the public reference (default: exact float64)")
    ap.add_argument("--mla-form", choices=("full", "absorbed"), default="full")
    ap.add_argument("--out", required=True, help="output .npz file")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        sys.exit(0 if e.code == 0 else 1)

    tokens = parse_tokens(args.tokens)
    if args.greedy < 0:
        fail("--greedy must be >= 0")
    if not os.path.isdir(args.checkpoint):
        fail("%s is not a directory" % args.checkpoint)
    try:
        model = Model(args.checkpoint, indexer_fp8=args.indexer_fp8, mla_form=args.mla_form)
        vocab = model.cfg.vocab_size
        bad = [t for t in tokens if t < 0 or t >= vocab]
        if bad:
            fail("token id %d out of range [0, %d)" % (bad[0], vocab))
        logits, routing, selection = model.forward(tokens)
        greedy = model.greedy(tokens, args.greedy) if args.greedy else []
    except (ConfigError, SafetensorsError, ValueError) as e:
        fail(str(e))

    out = {
        "tokens": np.asarray(tokens, dtype=np.int64),
        "logits": logits,
        "routing_layers": np.asarray(sorted(routing), dtype=np.int64),
        "indexer_layers": np.asarray(sorted(selection), dtype=np.int64),
        "greedy": np.asarray(greedy, dtype=np.int64),
        "indexer_fp8": np.int64(1 if args.indexer_fp8 else 0),
        "indexer_ue8m0": np.int64(1 if (args.indexer_fp8 and model.indexer_ue8m0) else 0),
    }
    for L, r in routing.items():
        out["routing_%d" % L] = r.astype(np.int64)
    T = len(tokens)
    for L, sel in selection.items():
        k = model.cfg.index_topk
        a = np.full((T, min(k, T)), -1, dtype=np.int64)
        for t, s in enumerate(sel):
            a[t, :len(s)] = s
        out["indexer_%d" % L] = a
    try:
        with open(args.out, "wb") as f:
            np.savez(f, **out)
    except OSError as e:
        fail("cannot write %s: %s" % (args.out, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
