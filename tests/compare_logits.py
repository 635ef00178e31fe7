#!/usr/bin/python3
"""Compares dsm-run's outputs with the float64 reference (tests/ref/run_ref.py) or with each other.

    compare_logits.py logits REF.npz OURS.npy MAX_NMSE [ROWS]   NMSE of every row (of the first ROWS) <= MAX
    compare_logits.py pair A.npy B.npy MAX_NMSE                  same for two engine dumps (common rows)
    compare_logits.py routing REF.npz ROUTING.txt                experts identical at every MoE layer/position
    compare_logits.py selection REF.npz SELECTION.txt            indexer choices identical
    compare_logits.py greedy REF.npz RUN.json                    the generated ids equal the reference's greedy
    compare_logits.py agreement REF.npz ROUTING.txt              prints the share of identical routing rows
    compare_logits.py force REF.npz ROUTING_OUT SELECTION_OUT    writes the reference's choices for --force-*
    compare_logits.py dense CKPT TOKENS TOPK OURS.npy MAX_NMSE   reference with index_topk overridden

NMSE = sum((a - b)^2) / sum(b^2) per position (docs TESTING.md). Exit 0 when the check holds, 1 otherwise.
"""

import json
import os
import sys

import numpy as np

sys.dont_write_bytecode = True


def nmse_rows(a, b):
    return ((a - b) ** 2).sum(axis=1) / (b ** 2).sum(axis=1)


def check_nmse(ours, ref, limit, what):
    d = nmse_rows(ours.astype(np.float64), ref.astype(np.float64))
    worst = int(np.argmax(d))
    print("%s: %d positions, NMSE max %.3g (position %d), median %.3g, limit %.3g"
          % (what, len(d), d[worst], worst, float(np.median(d)), limit))
    return 0 if d[worst] <= limit and np.all(np.isfinite(d)) else 1


def read_choices(path):
    rows = {}
    with open(path) as f:
        for line in f:
            v = [int(x) for x in line.split()]
            rows[(v[0], v[1])] = v[2:]
    return rows


def ref_rows(ref, key):
    layers = [int(L) for L in ref[key + "_layers"]]
    out = {}
    for L in layers:
        a = ref["%s_%d" % (key, L)]
        for t in range(a.shape[0]):
            out[(L, t)] = [int(x) for x in a[t] if x >= 0]
    return out


def cmd_logits(args):
    ref = np.load(args[0])["logits"]
    ours = np.load(args[1])
    limit = float(args[2])
    rows = int(args[3]) if len(args) > 3 else ref.shape[0]
    if ours.shape[0] < rows or ours.shape[1] != ref.shape[1]:
        print("shape mismatch: ours %s, reference %s" % (ours.shape, ref.shape))
        return 1
    return check_nmse(ours[:rows], ref[:rows], limit, "logits vs reference")


def cmd_pair(args):
    a, b = np.load(args[0]), np.load(args[1])
    n = min(a.shape[0], b.shape[0])
    if n == 0 or a.shape[1] != b.shape[1]:
        print("shape mismatch: %s vs %s" % (a.shape, b.shape))
        return 1
    return check_nmse(a[:n], b[:n], float(args[2]), "logits %s vs %s" % (os.path.basename(args[0]),
                                                                         os.path.basename(args[1])))


def compare_choices(expected, got, what):
    bad = [k for k in sorted(expected) if got.get(k) != expected[k]]
    print("%s: %d rows compared, %d differ%s" % (what, len(expected), len(bad),
                                               (" (first: layer %d position %d: ours %s, reference %s)"
                                                % (bad[0][0], bad[0][1], got.get(bad[0]), expected[bad[0]]))
                                               if bad else ""))
    return bad


def cmd_routing(args):
    ref = np.load(args[0])
    expected = ref_rows(ref, "routing")
    got = read_choices(args[1])
    if not expected:
        print("routing: the reference has no MoE layer")
        return 1
    return 1 if compare_choices(expected, got, "routing") else 0


def cmd_agreement(args):
    ref = np.load(args[0])
    expected = ref_rows(ref, "routing")
    got = read_choices(args[1])
    same = sum(1 for k in expected if got.get(k) == expected[k])
    print("routing agreement: %d of %d rows (%.1f%%)" % (same, len(expected), 100.0 * same / max(1, len(expected))))
    return 0


def cmd_selection(args):
    ref = np.load(args[0])
    expected = {}
    for k, v in ref_rows(ref, "indexer").items():
        # rows where the indexer had to choose (position + 1 > index_topk) are the ones dsm-run dumps
        if len(v) < k[1] + 1:
            expected[k] = v
    got = read_choices(args[1])
    if not expected:
        print("selection: no query had to choose (prompt not longer than index_topk)")
        return 1
    return 1 if compare_choices(expected, got, "indexer selection") else 0


def cmd_greedy(args):
    ref = [int(x) for x in np.load(args[0])["greedy"]]
    with open(args[1]) as f:
        got = json.load(f)["tokens"]
    same = got[:len(ref)] == ref
    print("greedy: %d reference tokens, %s%s" % (len(ref), "identical" if same else "DIFFER",
                                                 "" if same else "\n  ours %s\n  ref  %s" % (got, ref)))
    return 0 if same and ref else 1


def cmd_force(args):
    ref = np.load(args[0])
    with open(args[1], "w") as f:
        for (L, t), v in sorted(ref_rows(ref, "routing").items()):
            f.write("%d %d %s\n" % (L, t, " ".join(map(str, v))))
    with open(args[2], "w") as f:
        for (L, t), v in sorted(ref_rows(ref, "indexer").items()):
            if len(v) < t + 1:
                f.write("%d %d %s\n" % (L, t, " ".join(map(str, v))))
    return 0


def cmd_dense(args):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref"))
    from deepseek_ref import Model
    ckpt, tokens, topk, ours, limit = args[0], [int(t) for t in args[1].split(",")], int(args[2]), args[3], float(args[4])
    m = Model(ckpt, config_overrides={"index_topk": topk})
    logits, _, _ = m.forward(tokens)
    return check_nmse(np.load(ours)[:len(tokens)], logits, limit, "logits vs reference with index_topk %d" % topk)


COMMANDS = {"logits": (cmd_logits, 3), "pair": (cmd_pair, 3), "routing": (cmd_routing, 2),
            "selection": (cmd_selection, 2), "greedy": (cmd_greedy, 2), "agreement": (cmd_agreement, 2),
            "force": (cmd_force, 3), "dense": (cmd_dense, 5)}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS or len(argv) - 2 < COMMANDS[argv[1]][1]:
        sys.stderr.write(__doc__)
        return 2
    return COMMANDS[argv[1]][0](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
