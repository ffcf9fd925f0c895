#!/usr/bin/env python3
"""Polls Docker's GET PATH (default /_ping) over mutual TLS every INTERVAL seconds, one new
connection per request, until STOPFILE exists; prints requests, failures, the slowest request
and the longest gap between two successful answers (the stall a client sees). An answer counts
when it is a 200 with the whole body (Content-Length), and "OK" for /_ping. Python's ssl
module: independent of the code under test.
    poller.py CERT_DIR HOST:PORT STOPFILE [INTERVAL [PATH]]
The name verified in the server's certificate: $POLL_NAME, else localhost."""
import socket
import ssl
import sys
import time
import os

cert_dir, target, stopfile = sys.argv[1:4]
interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
path = sys.argv[5] if len(sys.argv) > 5 else "/_ping"


def complete(data):
    """A 200 whose body is all there."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) == int(value.strip())
    return len(body) > 0


host, port = target.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.pem"))
ctx.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
ok = fail = 0
slowest = 0.0
last_ok = time.monotonic()
longest_gap = 0.0
errors = {}
while not os.path.exists(stopfile):
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=60) as raw:
            with ctx.wrap_socket(raw, server_hostname=os.environ.get("POLL_NAME", "localhost")) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        if complete(data) and (path != "/_ping" or data.endswith(b"OK")):
            ok += 1
            now = time.monotonic()
            longest_gap = max(longest_gap, now - last_ok)
            last_ok = now
        else:
            fail += 1
            errors["bad answer"] = errors.get("bad answer", 0) + 1
    except Exception as e:  # noqa: BLE001 - every failure counts
        fail += 1
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    slowest = max(slowest, time.monotonic() - t0)
    time.sleep(interval)
print(f"requests={ok + fail} ok={ok} failed={fail} slowest_ms={slowest * 1000:.0f} "
      f"longest_gap_ms={longest_gap * 1000:.0f} errors={errors}")
