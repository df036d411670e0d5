"""The small programs the benchmarks run inside namespaces (stdlib only: they start fast
and their own CPU is theirs, not their imports').

    python -m benchmarks.probes serve PORT [ADDR]   request/response server: accept, read one
                                                     request, answer the peer's address, close
    python -m benchmarks.probes rr HOST PORT N       N sequential exchanges, each over a fresh
                                                     connection; prints JSON (latencies, peers
                                                     seen, failures, its own CPU seconds)
    python -m benchmarks.probes ready URL            prints the wall time of the first 200
    python -m benchmarks.probes lan NAME DNS PORT    asks DNS for NAME, connects to PORT, prints
                                                     the wall time of the first answer

The pollers try every 20 ms.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import socket
import sys
import time
import urllib.request
from pathlib import Path

LANTOOL = Path(__file__).resolve().parents[1] / "e2e" / "compose" / "demo" / "lan" / "lantool.py"
POLL = 0.02


def serve(port: int, addr: str = "") -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(512)
    print("ready", flush=True)
    while True:
        conn, peer = sock.accept()
        try:
            conn.recv(64)
            conn.sendall(peer[0].encode())
        except OSError:
            pass
        conn.close()  # the server closes first: the client's ports leave no TIME_WAIT


def rr(host: str, port: int, n: int) -> None:
    lat: list[float] = []
    peers: set[str] = set()
    failures = 0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    for _ in range(n):
        t0 = time.monotonic()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(3)
            s.connect((host, port))
            s.sendall(b"q")
            data = b""
            while chunk := s.recv(64):
                data += chunk
            peers.add(data.decode())
            lat.append(time.monotonic() - t0)
        except OSError:
            failures += 1
        finally:
            s.close()
    wall = time.monotonic() - started
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    print(json.dumps({"n": n, "wall": wall, "lat": lat, "peers": sorted(peers),
                      "failures": failures, "cpu": cpu}))


def ready(url: str) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    print(time.time(), flush=True)
                    return
        except OSError:
            pass
        time.sleep(POLL)


def lan(name: str, dns: str, port: int) -> None:
    spec = importlib.util.spec_from_file_location("lantool", LANTOOL)
    assert spec
    assert spec.loader
    lantool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lantool)
    while True:
        try:
            found = lantool.resolve(name, dns, timeout=0.2)
            if found:
                with socket.create_connection((found[0], port), timeout=0.5) as s:
                    s.sendall(b"hello")
                    if s.recv(256):
                        print(time.time(), found[0], flush=True)
                        return
        except (OSError, ValueError, IndexError):
            pass  # no server yet, no name yet, a short answer: try again
        time.sleep(POLL)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(int(argv[1]), argv[2] if len(argv) > 2 else "")
    elif argv[:1] == ["rr"]:
        rr(argv[1], int(argv[2]), int(argv[3]))
    elif argv[:1] == ["ready"]:
        ready(argv[1])
    elif argv[:1] == ["lan"]:
        lan(argv[1], argv[2], int(argv[3]))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
