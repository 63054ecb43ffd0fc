#!/usr/bin/env python3
"""One decode step's kernels from an Nsight Compute CSV (--csv --metrics gpu__time_duration.sum):
the step is the stretch between the last two launches of the widest-grid kernel (the output
head's GEMV), or of the kernels whose name and grid match the regex given second; its
kernels are summed by name and printed, longest first, with the total.

    ncu_step.py NCU.csv [MARKER_REGEX]"""
import csv
import re
import sys
from collections import defaultdict

rows = []
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    grid = r.get("Grid Size", "")
    rows.append((r["Kernel Name"], grid, float(r["Metric Value"].replace(",", "")) / 1e3))  # ns -> us
if not rows:
    sys.exit("no kernels in the CSV")


def gsize(g):
    return eval(g.replace("(", "").replace(")", "").replace(",", "*")) if g else 0


if len(sys.argv) > 2:
    idx = [i for i, (n, g, _) in enumerate(rows) if re.search(sys.argv[2], f"{n} {g}")]
else:
    widest = max(gsize(g) for _, g, _ in rows)
    idx = [i for i, (_, g, _) in enumerate(rows) if gsize(g) == widest]
step = rows[idx[-2] + 1: idx[-1] + 1] if len(idx) >= 2 else rows
by = defaultdict(lambda: [0, 0.0])
for name, grid, us in step:
    short = name.replace("(anonymous namespace)::", "").replace("ds3::cuda::", "")
    short = re.sub(r"\([^()]*\)$", "", re.sub(r"^void ", "", short))
    key = f"{short[:90]} {grid}"
    by[key][0] += 1
    by[key][1] += us
total = sum(us for _, _, us in step)
print(f"kernels in one step: {len(step)}, sum of kernel times {total:.1f} us")
for k, (n, us) in sorted(by.items(), key=lambda kv: -kv[1][1]):
    print(f"{us:9.1f} us {100 * us / total:5.1f}%  x{n:<3d} {k}")
