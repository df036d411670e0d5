"""Benchmark of the nat-writer's kernel side (prints figures; not a test).

    sudo python3 -m benchmarks.bench_nat          (from the repository root)

1. transaction time against map size (10 / 1 000 / 10 000 elements): one element
   changed, plain map and interval map, libnftables in-process vs ``nft -f -``;
2. NatTables.apply latency (diff + render + transaction) when one backend of N moves;
3. bus round trip: BackendsDesired published -> NatApplied received from the real
   nat-writer process (the nat-writer's share of event-to-map latency).

Everything runs in throw-away network namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anchord.nft import NatTables, Nft
from bus.client import BusClient
from bus.events import Backend, BackendsDesired, NatApplied
from tests.integration.inbound_topo import inside
from tests.netns import Netns, topology, wait_until

SIZES = (10, 1_000, 10_000)
BASE = 10_000


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def line(what: str, samples: list[float]) -> None:
    print(f"  {what:<58} p50 {pct(samples, .5):8.3f} ms  p99 {pct(samples, .99):8.3f} ms"
          f"  (n={len(samples)})")


def entries(n: int, ranges: bool, flip: int = -1) -> list[Backend]:
    out = []
    for i in range(n):
        addr = f"10.{(i >> 8) & 255}.{i & 255}.{2 if i == flip else 1}"
        if ranges:
            first = BASE + 3 * i
            out.append(Backend(4, "tcp", first, first + 1, addr, f"c{i}"))
        else:
            out.append(Backend(4, "tcp", BASE + i, BASE + i, addr, f"c{i}"))
    return out


def one_size(ns: Netns, n: int, ranges: bool) -> None:
    kind = "interval map" if ranges else "plain map"
    with inside(ns):
        t = NatTables("anchord-ext")
        t.adopt()
        start = time.perf_counter()
        t.apply(entries(n, ranges))
        load = time.perf_counter() - start
        nft = t.nft
    key = BASE + 3 * (n // 2) if ranges else BASE + n // 2
    keytxt = f"{key}-{key + 1}" if ranges else str(key)
    mapname = "tcp_ranges" if ranges else "dnat_tcp"

    def batch(last_octet: int) -> str:
        return (f"delete element ip anchord_v4 {mapname} {{ {keytxt} }}\n"
                f"add element ip anchord_v4 {mapname} {{ {keytxt} : 10.9.9.{last_octet} }}\n")

    lib, cli = [], []
    with inside(ns):
        for i in range(200):
            start = time.perf_counter()
            nft.run(batch(1 + i % 2))
            lib.append(time.perf_counter() - start)
    for i in range(30):
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], check=True,
                       input=batch(3 + i % 2).encode())
        cli.append(time.perf_counter() - start)
    print(f"  {kind}, {n} elements: initial load {load * 1000:.1f} ms")
    line(f"{kind} {n:>6}: libnftables in-process", lib)
    line(f"{kind} {n:>6}: nft -f - (new process)", cli)
    with inside(ns):
        t.delete()
        t.close()


def transactions(ns: Netns) -> None:
    print("1. one changed element, one transaction, against map size")
    for ranges in (False, True):
        for n in SIZES:
            one_size(ns, n, ranges)


def apply_one(ns: Netns, n: int) -> None:
    with inside(ns):
        t = NatTables("anchord-ext")
        t.adopt()
        t.apply(entries(n, False))
        toggle = [entries(n, False, flip=n // 2), entries(n, False)]
        samples = []
        for i in range(200):
            start = time.perf_counter()
            r = t.apply(toggle[i % 2])
            samples.append(time.perf_counter() - start)
            assert r.ok, r
            assert r.changed == 1, r
        t.delete()
        t.close()
    line(f"apply, {n:>6} entries", samples)


def apply_latency(ns: Netns) -> None:
    print("2. NatTables.apply (normalise + diff + render + transaction), one backend of N moves")
    for n in SIZES:
        apply_one(ns, n)


BROKER = r"""
import signal, sys
from pathlib import Path
from bus import broker
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
broker.serve(Path(sys.argv[1]), lambda: bool(stop))
"""

WORKER = r"""
import logging, sys
from pathlib import Path
from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import Lifecycle
from bus.client import BusClient
from workers import natwriter
logging.basicConfig(level=logging.WARNING)
run_dir = Path(sys.argv[1])
life = Lifecycle(run_dir)
life.install_signal_handlers()
config = NetworkAnchorConfig(project="b", vlan_parent="x", run_dir=run_dir)
with BusClient("nat-writer", run_dir, subscribe=natwriter.SUBSCRIBE) as bus:
    sys.exit(natwriter.run(config, bus, life))
"""


def bus_round_trip(ns: Netns) -> None:
    print("3. bus: BackendsDesired published -> NatApplied received (real nat-writer process)")
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        procs = [subprocess.Popen([sys.executable, "-c", BROKER, str(run_dir)], env=env)]
        try:
            wait_until(lambda: (run_dir / "sub.ipc").exists(), 10, what="broker")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, "-c", WORKER, str(run_dir)],
                env=env))
            with BusClient("bench", run_dir, subscribe=(NatApplied,)) as bus:
                gen = 0
                for n in SIZES:
                    samples = []
                    variants = [tuple(entries(n, False)), tuple(entries(n, False, flip=n // 2))]
                    for i in range(201):
                        gen += 1
                        t0 = time.time()
                        msg = BackendsDesired.of(generation=gen, cause="event", event_time=t0,
                                              entries=variants[i % 2])
                        deadline = time.monotonic() + 30
                        got = None
                        while got is None and time.monotonic() < deadline:
                            bus.publish(msg)
                            for ev in bus.poll(1.0):
                                if isinstance(ev, NatApplied) and ev.generation == gen:
                                    got = ev
                                    break
                        assert got is not None, f"no NatApplied for {gen}"
                        assert got.ok, f"no NatApplied for {gen}"
                        if i:  # the first one loads the table
                            samples.append(time.time() - t0)
                    line(f"publish -> NatApplied, {n:>6} entries", samples)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(timeout=15)


def main() -> None:
    with topology("bn") as topo:
        ns = topo.netns("anc")
        nft_version = subprocess.run(["nft", "--version"], capture_output=True, text=True)
        print(f"# {nft_version.stdout.strip()}, python {sys.version.split()[0]}")
        with inside(ns):
            Nft().close()
        if "--skip-transactions" not in sys.argv:
            transactions(ns)
        apply_latency(ns)
        bus_round_trip(ns)


if __name__ == "__main__":
    main()
