#!/usr/bin/env python3
"""Figures for the "hostile clients" table of docs/RELIABILITY.md.

Runs the release binary (default settings unless a case says otherwise) as a
hostile client would, one fresh process per case, and prints what each case
cost: peak resident memory (VmHWM) against idle, and how long a slow client
held its connection.

    cargo build --release -p polku-gateway
    python3 scripts/hostile.py [path/to/polku-gateway [single] [budget] [slow]]
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/polku-gateway"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Gateway:
    def __init__(self, env=None, stdout=subprocess.DEVNULL):
        self.http = free_port()
        e = {
            "PATH": os.environ.get("PATH", ""),
            "POLKU_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "POLKU_HTTP_ADDR": f"127.0.0.1:{self.http}",
            "POLKU_LOG_LEVEL": "warn",
        }
        e.update(env or {})
        self.proc = subprocess.Popen([BIN], env=e, stdout=stdout, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.http), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)
        self.idle_kb = status_kb(self.proc.pid, "VmRSS")

    def post(self, path, body, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.http, timeout=120)
        c.request("POST", path, body=body, headers=headers or {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def peak_kb(self):
        return status_kb(self.proc.pid, "VmHWM")

    def rss_kb(self):
        return status_kb(self.proc.pid, "VmRSS")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


MIB = 1 << 20
LIMIT = 4 * MIB  # POLKU_MAX_MESSAGE_BYTES, the default


def single_requests():
    """The worst single request within the default limits, per shape."""
    n_tiny = (LIMIT - 2) // 2
    shapes = {
        "2 million non-objects `[1,1,...]`": "[" + ",".join(["1"] * n_tiny) + "]",
        "2 million empty objects `[{},...]`": "[" + ",".join(["{}"] * ((LIMIT - 2) // 3)) + "]",
        "one event in 4 MiB of whitespace": '{"source":"s","event_type":"t"' + " " * (LIMIT - 64) + "}",
        # The most metadata entries allowed (64 per event), each as small as
        # can be, in as many events as fit: all of them are accepted.
        "events of 64 tiny metadata entries, as many as fit": json.dumps(
            [
                {"source": "s", "event_type": "t", "metadata": {f"{k:02}": "v" for k in range(64)}}
                for _ in range(LIMIT // 625)
            ],
            separators=(",", ":"),
        ),
    }
    rows = []
    for name, body in shapes.items():
        body = body.encode()
        if len(body) > LIMIT:
            body = body[:LIMIT]
        gw = Gateway()
        t = time.time()
        status, reply = gw.post("/v1/events", body)
        took = time.time() - t
        peak = gw.peak_kb()
        rows.append((name, len(body), status, len(reply), took, gw.idle_kb, peak))
        gw.stop()
    print("| Request (4 MiB limit) | Answer | Reply bytes | Time | Idle RSS | Peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, size, status, rlen, took, idle, peak in rows:
        print(f"| {name}, {size / MIB:.1f} MiB | {status} | {rlen:,} | {took * 1000:.0f} ms | {idle / 1024:.1f} MB | {peak / 1024:.1f} MB |")


def full_budget():
    """A 16 MiB budget filled with the worst-shaped events we know: tiny events
    of 64 one-byte metadata entries, while stdout is never read."""
    budget = 16 * MIB
    r, w = os.pipe()  # stdout goes to a pipe nobody reads: nothing drains
    gw = Gateway(
        {"POLKU_BUFFER_MAX_BYTES": str(budget), "POLKU_BUFFER_CAPACITY": "1000000", "POLKU_BUFFER_TIMEOUT": "0s"},
        stdout=w,
    )
    batch = json.dumps(
        [{"source": "s", "event_type": "t", "metadata": {f"{k:02}": "v" for k in range(64)}} for _ in range(1000)]
    ).encode()
    accepted = 0
    for _ in range(10_000):
        status, reply = gw.post("/v1/events", batch)
        if status != 202:
            break
        accepted += json.loads(reply)["accepted"]
    c = http.client.HTTPConnection("127.0.0.1", gw.http, timeout=10)
    c.request("GET", "/metrics")
    metrics = c.getresponse().read().decode()
    held = next(int(float(l.split()[-1])) for l in metrics.splitlines() if l.startswith("polku_buffer_bytes "))
    print(
        f"full budget: {accepted:,} events accepted until {status}; buffer {held / MIB:.1f} MiB of {budget / MIB:.0f} MiB; "
        f"RSS idle {gw.idle_kb / 1024:.1f} MB, now {gw.rss_kb() / 1024:.1f} MB, peak {gw.peak_kb() / 1024:.1f} MB"
    )
    gw.proc.kill()
    os.close(r)
    os.close(w)


def slow_clients():
    """How long a half-sent header, a silent connection and a stalled body
    hold a connection with the default deadlines."""
    gw = Gateway()
    cases = {
        "half a request header": b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-",
        "nothing at all": b"",
        "headers, then 10 of 100 body bytes": b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"a\":1",
    }
    socks = {}
    for name, data in cases.items():
        s = socket.create_connection(("127.0.0.1", gw.http))
        if data:
            s.sendall(data)
        socks[name] = (s, time.time())
    for name, (s, t) in socks.items():
        s.settimeout(120)
        first = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                first += chunk
        except OSError:
            pass
        print(f"slow client, {name}: cut off after {time.time() - t:.1f} s ({first[:12]!r})")
    gw.stop()


if __name__ == "__main__":
    which = sys.argv[2:] or ["single", "budget", "slow"]
    if "single" in which:
        single_requests()
    if "budget" in which:
        full_budget()
    if "slow" in which:
        slow_clients()
