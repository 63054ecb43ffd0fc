#!/usr/bin/env python3
"""Where a replayed decode step's time goes, from kernel_trace.cpp's CSV.

Each CUDA graph launch (one correlation id) is one step. Within a step the kernels are
taken in the order they end; each is charged the time from the previous kernel's end to
its own (from its start, if it started later, the gap before it being charged to
"(idle)"). The charges add up to the step's span, so a kernel launched early under
programmatic dependent launch is charged only for the time it adds, and a kernel hidden
under another stream's is charged little. Prints the mean per step by kernel and grid,
then what happens between two steps: the copies and the host's runtime calls from one
graph's last kernel to the next graph's first, in order, averaged over the steps.

With --timeline, instead: the kernels of one step (the last but one) in the order they
start, each with its start and end (us from the step's first start), its duration, its
stream and grid -- the layer-by-layer critical path.

  python3 trace_step.py trace.csv [--last N] [--top K] [--timeline]
"""
import argparse
import collections
import csv
import re


def short(name):
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    depth, out = 0, []
    for c in name:  # drop the parameter list: the first '(' outside template brackets
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            break
        out.append(c)
    s = "".join(out)
    return s[5:] if s.startswith("void ") else s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--last", type=int, default=16, help="steps to average (the last ones)")
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--timeline", action="store_true", help="one step's kernels in start order")
    a = ap.parse_args()
    steps = collections.OrderedDict()
    other = []
    with open(a.csv) as f:
        for r in csv.DictReader(f):
            if r.get("kind", "k") != "k":
                other.append(r)
                continue
            if r["graph"] == "0":
                continue
            steps.setdefault(r["correlation"], []).append(r)
    runs = list(steps.values())[-a.last:]
    if not runs:
        raise SystemExit("no kernels replayed from a graph in " + a.csv)
    if a.timeline:
        timeline(runs[-2] if len(runs) > 1 else runs[-1])
        return
    charge = collections.defaultdict(float)
    busy = collections.defaultdict(float)
    count = collections.defaultdict(int)
    spans = []
    for ks in runs:
        ks = sorted(ks, key=lambda r: int(r["end_ns"]))
        t = min(int(r["start_ns"]) for r in ks)
        spans.append(int(ks[-1]["end_ns"]) - t)
        for r in ks:
            s, e = int(r["start_ns"]), int(r["end_ns"])
            key = (short(r["name"]), r["grid"])
            if s > t:
                charge[("(idle)", "")] += s - t
                t = s
            charge[key] += max(0, e - t)
            busy[key] += e - s
            count[key] += 1
            t = max(t, e)
    n = len(runs)
    total = sum(spans) / n
    print(f"{n} steps, span {total / 1e3:.1f} us mean (min {min(spans) / 1e3:.1f}, max {max(spans) / 1e3:.1f})")
    print(f"{'charged us':>10} {'%':>5} {'busy us':>9} {'n':>4}  kernel [grid]")
    rows = sorted(charge.items(), key=lambda kv: -kv[1])
    for key, v in rows[: a.top]:
        print(f"{v / n / 1e3:10.1f} {100 * v / n / total:5.1f} {busy[key] / n / 1e3:9.1f} {count[key] / n:4.0f}  "
              f"{key[0]} [{key[1]}]")
    between(runs, other)


def timeline(ks):
    """One step's kernels in start order (the last step may be cut short by the program's end)."""
    ks = sorted(ks, key=lambda r: int(r["start_ns"]))
    t0 = int(ks[0]["start_ns"])
    print(f"{'start':>8} {'end':>8} {'us':>6} {'stream':>6} {'grid':>12}  kernel   (us from the step's first start)")
    for r in ks:
        s, e = int(r["start_ns"]) - t0, int(r["end_ns"]) - t0
        print(f"{s / 1e3:8.1f} {e / 1e3:8.1f} {(e - s) / 1e3:6.1f} {r['stream']:>6} {r['grid']:>12}  {short(r['name'])}")


def between(runs, other):
    """Copies and runtime calls between consecutive steps, relative to the first's end."""
    bounds = [(min(int(r["start_ns"]) for r in ks), max(int(r["end_ns"]) for r in ks)) for ks in runs]
    if len(bounds) < 2 or not other:
        return
    events = collections.defaultdict(list)  # (order, kind, name) -> [(start, end) rel. to the step's end]
    gaps = []
    for (s0, e0), (s1, _) in zip(bounds, bounds[1:]):
        gaps.append(s1 - e0)
        seen = collections.Counter()
        for r in other:
            s, e = int(r["start_ns"]), int(r["end_ns"])
            if e < e0 - 20000 or s > s1:  # from a little before the step's end (the sync) to the next start
                continue
            name = r["kind"] + " " + r["name"]
            seen[name] += 1
            events[(name, seen[name])].append((s - e0, e - e0))
    m = len(gaps)
    print(f"\nbetween steps: {m} gaps, {sum(gaps) / m / 1e3:.1f} us mean from a step's last kernel to the next's first")
    print(f"{'from us':>8} {'to us':>8} {'n':>4}  copy (m) or runtime call (a), times from the step's last kernel end")
    rows = []
    for (name, k), v in events.items():
        rows.append((sum(x[0] for x in v) / len(v), sum(x[1] for x in v) / len(v), len(v), name))
    for a, b, c, name in sorted(rows):
        print(f"{a / 1e3:8.1f} {b / 1e3:8.1f} {c:4d}  {name}")


if __name__ == "__main__":
    main()
