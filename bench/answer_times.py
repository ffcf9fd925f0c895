#!/usr/bin/env python3
"""The plugin's own answer times, from its metrics file (histogram
docker_tls_manager_authz_answer_seconds): the share of calls answered within each bucket.
    answer_times.py PROM_FILE"""
import re
import sys

buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'docker_tls_manager_authz_answer_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
    if m:
        buckets.append((m.group(1), int(m.group(2))))
total = buckets[-1][1]
if total == 0:
    sys.exit("no calls counted in " + sys.argv[1])
shares = " ".join(f"<={float(le) * 1000:g}ms {100 * n / total:.2f}%" for le, n in buckets[:-1])
print(f"plugin answer times ({total} calls): {shares}")
