#!/usr/bin/env python3
"""Summary of bench/authz.sh's lines ("LABEL TRANSPORT PATH p50=MS p99=MS", one per round):
the median over rounds of each percentile per label, and what the plugin adds: ours against no
plugin, the floor plugin against no plugin, ours against the floor.
    authz_summary.py < LINES"""
import re
import statistics
import sys

runs = {}
for line in sys.stdin:
    m = re.match(r"(\w+) (\w+) (\S+) p50=([\d.]+) p99=([\d.]+)$", line.strip())
    if m:
        label, transport, path, p50, p99 = m.groups()
        runs.setdefault((transport, path), {}).setdefault(label, []).append((float(p50), float(p99)))

print("| ms (median of rounds) | p50 without / floor / ours | p99 without / floor / ours "
      "| ours added p50 / p99 | floor added p50 / p99 | ours beyond floor p50 / p99 |")
print("|---|---|---|---|---|---|")
for (transport, path), by in runs.items():
    med = {l: [statistics.median(x[i] for x in v) for i in (0, 1)] for l, v in by.items()}
    w, f, o = med["without"], med["floor"], med["with"]
    print(f"| {transport} `{path}` | {w[0]:.3f} / {f[0]:.3f} / {o[0]:.3f} | {w[1]:.2f} / {f[1]:.2f} / {o[1]:.2f} "
          f"| {o[0]-w[0]:+.3f} / {o[1]-w[1]:+.2f} | {f[0]-w[0]:+.3f} / {f[1]-w[1]:+.2f} "
          f"| {o[0]-f[0]:+.3f} / {o[1]-f[1]:+.2f} |")
print(f"rounds: {min(len(v) for by in runs.values() for v in by.values())}")
