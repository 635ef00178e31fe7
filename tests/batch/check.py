"""Checks a dsm-batch results file against its input, independently of dsm-batch's own reading:
every whole line is a JSON object with a string id, the proof search's document keys and a stop reason;
no id twice; every id a valid problem of the input; with --complete, every valid problem of the input
present (those in the errors file excepted).

usage: check.py RESULTS INPUT [--complete] [--errors FILE] [--allow-partial] [--shard I/N]
"""
import json
import sys

DOC_KEYS = ("problem", "settings", "candidates", "selected", "phases", "rounds", "seconds", "stop_reason",
            "error", "note")


def input_ids(path, shard=(0, 1)):
    """The ids of the input's valid lines of the shard, first occurrence only, in order."""
    ids, seen = [], set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                o = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(o, dict) or not isinstance(o.get("id"), str) or not o["id"]:
                continue
            if not isinstance(o.get("problem"), str) or not o["problem"]:
                continue
            if o["id"] in seen:
                continue
            seen.add(o["id"])
            if (n - 1) % shard[1] == shard[0]:
                ids.append(o["id"])
    return ids


def read_results(path, allow_partial=True):
    """(ids in order, bytes of a partial last line); raises on a bad whole line."""
    with open(path, "rb") as f:
        data = f.read()
    whole = data.rfind(b"\n") + 1
    partial = len(data) - whole
    if partial and not allow_partial:
        raise ValueError("%s: a partial last line of %d bytes" % (path, partial))
    ids = []
    for n, line in enumerate(data[:whole].split(b"\n")[:-1], 1):
        o = json.loads(line)  # raises on a torn or bad line
        if not isinstance(o, dict) or not isinstance(o.get("id"), str):
            raise ValueError("%s: line %d has no string id" % (path, n))
        if list(o)[0] != "id":
            raise ValueError("%s: line %d: id is not the first member" % (path, n))
        for k in DOC_KEYS:
            if k not in o:
                raise ValueError("%s: line %d (%s) lacks %s" % (path, n, o["id"], k))
        ids.append(o["id"])
    return ids, partial


def check(results, inp, complete=False, errors=None, allow_partial=True, shard=(0, 1)):
    """A list of problems found (empty: good) and the result ids."""
    bad = []
    try:
        ids, partial = read_results(results, allow_partial)
    except (ValueError, OSError) as e:
        return [str(e)], []
    valid = input_ids(inp, shard)
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        bad.append("ids more than once: %s" % dup[:10])
    unknown = sorted(set(ids) - set(valid))
    if unknown:
        bad.append("ids not among the input's problems: %s" % unknown[:10])
    if complete:
        errored = set()
        if errors:
            with open(errors) as f:
                for line in f:
                    e = json.loads(line)
                    if e.get("id") is not None:
                        errored.add(e["id"])
        missing = [i for i in valid if i not in set(ids) and i not in errored]
        if missing:
            bad.append("%d problems without a result: %s" % (len(missing), missing[:10]))
    return bad, ids


def main(argv):
    args = argv[1:]
    complete = "--complete" in args
    allow_partial = "--allow-partial" in args
    errors, shard = None, (0, 1)
    if "--errors" in args:
        errors = args[args.index("--errors") + 1]
    if "--shard" in args:
        i, n = args[args.index("--shard") + 1].split("/")
        shard = (int(i), int(n))
    pos = [a for k, a in enumerate(args) if not a.startswith("--") and (k == 0 or args[k - 1] not in ("--errors", "--shard"))]
    bad, ids = check(pos[0], pos[1], complete, errors, allow_partial, shard)
    for b in bad:
        print("check.py: %s: %s" % (pos[0], b))
    if not bad:
        print("check.py: %s: %d results, each once" % (pos[0], len(ids)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
