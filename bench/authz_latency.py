#!/usr/bin/env python3
"""Latency of Docker API requests, over mutual TLS and over the unix socket: N requests each of
GET /_ping and GET /containers/json on one kept-alive connection per transport; prints p50 and
p99 in ms per (transport, path). Python's http.client and ssl: independent of the code under
test.
    authz_latency.py CERT_DIR HOST:PORT N LABEL"""
import http.client
import os
import socket
import ssl
import sys
import time

cert_dir, target, n, label = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
host, port = target.rsplit(":", 1)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


ctx = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.pem"))
ctx.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
conns = {
    "tls": http.client.HTTPSConnection("localhost", int(port), context=ctx),
    "unix": UnixConnection("/run/docker.sock"),
}
for transport, c in conns.items():
    for path in ["/_ping", "/containers/json"]:
        times = []
        for i in range(n + 50):
            t0 = time.perf_counter()
            c.request("GET", "/v1.41" + path)
            r = c.getresponse()
            r.read()
            dt = time.perf_counter() - t0
            if r.status != 200:
                sys.exit(f"{transport} {path}: HTTP {r.status}")
            if i >= 50:  # warm-up
                times.append(dt * 1000)
        times.sort()
        p50 = times[len(times) // 2]
        p99 = times[int(len(times) * 0.99) - 1]
        print(f"{label} {transport} {path} p50={p50:.3f} p99={p99:.3f}")
