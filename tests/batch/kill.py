"""dsm-batch after SIGKILLs at random moments and after power cuts (the results file cut at random byte
offsets): each time --resume continues, and at every point every whole line parses, no id is there twice,
nothing finished is lost (except what a cut removed) and no finished problem is run again.

usage: kill.py DSM_BATCH MODEL INPUT WORKDIR TEMPLATES KILLS CUTS SEED
"""
import os
import random
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402


def main(argv):
    exe, model, inp, work, templates = argv[1:6]
    kills, cuts, seed = int(argv[6]), int(argv[7]), int(argv[8])
    rng = random.Random(seed)
    out = os.path.join(work, "results.jsonl")
    for f in (out, out + ".errors.jsonl", out + ".state.json"):
        if os.path.exists(f):
            os.unlink(f)
    cmd = [exe, "-m", model, "--in", inp, "--out", out, "--resume", "--templates", templates, "--candidates", "2",
           "--verifications", "1", "--best", "1", "--rounds", "2", "--proof-tokens", "24", "--verification-tokens",
           "12", "--no-rule-checks", "--concurrent", "3", "--threads", "1", "--log-every", "0.2"]
    failures = []
    before = []          # ids finished before this run
    events = kills + cuts
    kinds = ["kill"] * kills + ["cut"] * cuts
    rng.shuffle(kinds)
    killed_mid = 0
    for k, kind in enumerate(kinds):
        if kind == "cut" and os.path.exists(out):
            size = os.path.getsize(out)
            if size:
                at = rng.randrange(size)
                with open(out, "r+b") as f:
                    f.truncate(at)
                before, _ = check.read_results(out)  # what survives the cut
                print("cut: results cut at byte %d of %d (%d whole lines left)" % (at, size, len(before)))
        log = open(os.path.join(work, "run%d.log" % k), "w+")
        p = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
        delay = rng.uniform(0.05, 1.0)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed_mid += 1
        log.seek(0)
        text = log.read()
        log.close()
        m = re.search(r"(\d+) problems: (\d+) done earlier", text)
        if m and int(m.group(2)) != len(before):
            failures.append("run %d: %s done earlier, but %d results were in the file" % (k, m.group(2), len(before)))
        bad, ids = check.check(out, inp)
        if bad:
            failures.append("run %d (%s after %.2f s): %s" % (k, kind, delay, "; ".join(bad)))
        lost = sorted(set(before) - set(ids))
        if lost:
            failures.append("run %d: finished problems lost: %s" % (k, lost[:10]))
        print("run %d: %s, stopped after %.2f s (rc %s): %d results" % (k, kind, delay, p.returncode, len(ids)))
        before = ids
    # the last run finishes the job
    r = subprocess.run(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, timeout=600)
    bad, ids = check.check(out, inp, complete=True, errors=out + ".errors.jsonl", allow_partial=False)
    if r.returncode != 0:
        failures.append("the final --resume exited %d: %s" % (r.returncode, r.stderr.decode()[-2000:]))
    failures += bad
    print("final: %d results; %d of %d runs were killed while running" % (len(ids), killed_mid, events))
    if killed_mid < kills // 2:
        failures.append("only %d runs were killed while running: the test did not test much" % killed_mid)
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
