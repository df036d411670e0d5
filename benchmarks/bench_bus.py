"""Benchmark of the bus (prints figures; not a test).

    python3 -m benchmarks.bench_bus          (from the repository root; no root needed)

This module owns the bus figures: it starts the real broker (``anchord worker
bus``) in a throw-away run directory, one publisher and one subscriber process
(each a ``bus.client.BusClient``, i.e. this module run with a hidden role), and
a metrics worker, and prints one table:

1. one hop publisher -> broker -> subscriber for a small event, p50/p99 over
   several thousand messages paced so no queue builds (encode, two ipc hops,
   the broker, ``BusClient.poll`` and decode all included);
2. the same hop for a 10 / 1 000 / 10 000-entry ``BackendsDesired``;
3. messages/s at saturation: the publisher sends flat out, the subscriber counts;
4. encode / decode (with validation) of a 10 / 1 000 / 10 000-entry
   ``BackendsDesired`` in this process;
5. RSS of the broker (idle, and after the load) and of a metrics worker at idle.

The small event is a ``ConntrackFlushed`` rather than a ``Hello``: every client
that receives a ``Hello`` republishes its state, so a stream of them would
measure that reaction too, not a hop. Latencies use ``time.monotonic()``, which
is one clock for every process of the machine.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bus.client import BusClient
from bus.codec import decode, encode
from bus.events import Backend, BackendsDesired, ConntrackFlushed, Event, Rejection

ROOT = Path(__file__).resolve().parents[1]
HOP_MESSAGES = 5_000
HOP_INTERVAL = 0.001  # 1 kHz: a few percent of what the bus carries, so no queue builds
FLOOD_MESSAGES = 100_000
TABLE_SIZES = (10, 1_000, 10_000)
# Table messages over the bus, and the gap after each: longer than the slowest
# codec ever took for one on a loaded machine (the old one: ~0.6 s at 10 000),
# so that each is measured alone and no queue inflates the figure.
TABLE_ROUNDS = {10: 200, 1_000: 40, 10_000: 15}
TABLE_GAP = {10: 0.01, 1_000: 0.2, 10_000: 1.5}
HEARTBEAT = 3600.0  # no heartbeat traffic in the middle of a measurement


# --- helpers -------------------------------------------------------------------


def table(n: int) -> BackendsDesired:
    """A realistic desired table of ``n`` entries (names and addresses all distinct)."""
    return BackendsDesired.of(
        generation=1,
        cause="event",
        event_time=1700000000.125,
        entries=tuple(
            Backend(4 if i % 2 else 6, "udp" if i % 3 else "tcp", 10_000 + i,
                    10_000 + i + i % 3, f"10.{i >> 8 & 255}.{i & 255}.1",
                    f"bench-svc{i}-1", f"svc{i}")
            for i in range(n)
        ),
        rejections=tuple(Rejection(f"c{i}", "bad token 'tcp/0'") for i in range(n // 100)),
        transit_network="bench_transit",
        transit_v4="172.20.0.2",
        transit_v6="fd00::2",
    )


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` in ms (nearest rank)."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settled_rss_kib(pid: int, timeout: float = 20.0) -> int:
    """VmRSS once it stopped changing for 2 s (a worker allocates while it starts)."""
    deadline = time.monotonic() + timeout
    last, since = rss_kib(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            break
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# --- the two bus processes -----------------------------------------------------


def publisher(run_dir: Path, ctl: Path) -> None:
    """Warm up, then the paced hop, the tables, the flood, and stop."""
    with BusClient("bench-pub", run_dir, heartbeat=HEARTBEAT) as bus:
        while not bus.hello_acked:
            bus.poll(0.05)
        # The subscriber says it is ready only once our messages reach it: our
        # PUB knows its subscription, so nothing below is lost to slow joining.
        while not (ctl / "sub-ready").exists():
            bus.publish(ConntrackFlushed(family=4, removed=-1, reason="warmup"))
            bus.poll(0.02)
        next_at = time.monotonic()
        for i in range(HOP_MESSAGES):
            next_at += HOP_INTERVAL
            bus.publish(ConntrackFlushed(family=4, removed=i, duration=time.monotonic(),
                                         reason="hop"))
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(0.5)
        for n in TABLE_SIZES:
            groups = table(n).groups
            for k in range(TABLE_ROUNDS[n]):
                bus.publish(BackendsDesired(generation=k, cause=f"bench-{n}",
                                            event_time=time.monotonic(), groups=groups))
                time.sleep(TABLE_GAP[n])
        time.sleep(0.5)
        start = time.monotonic()
        for i in range(FLOOD_MESSAGES):
            bus.publish(ConntrackFlushed(family=4, removed=i, reason="flood"))
        sent_for = time.monotonic() - start
        time.sleep(1.0)
        deadline = time.monotonic() + 30
        while not (ctl / "sub-done").exists() and time.monotonic() < deadline:
            bus.publish(ConntrackFlushed(family=4, removed=-1, reason="stop"))
            bus.poll(0.2)
    (ctl / "pub.json").write_text(json.dumps({"flood_sent": FLOOD_MESSAGES,
                                              "flood_send_seconds": sent_for}))


def subscriber(run_dir: Path, ctl: Path) -> None:
    """Record the latency of every hop and table message, count the flood."""
    hops: list[float] = []
    tables: dict[str, list[float]] = {}
    flood = {"received": 0, "first": 0.0, "last": 0.0}
    with BusClient("bench-sub", run_dir, subscribe=(ConntrackFlushed, BackendsDesired),
                   heartbeat=HEARTBEAT) as bus:
        while True:
            events: list[Event] = bus.poll(1.0)
            now = time.monotonic()
            for ev in events:
                if isinstance(ev, BackendsDesired):
                    tables.setdefault(ev.cause, []).append(now - ev.event_time)
                elif isinstance(ev, ConntrackFlushed):
                    if ev.reason == "hop":
                        hops.append(now - ev.duration)
                    elif ev.reason == "flood":
                        if not flood["received"]:
                            flood["first"] = now
                        flood["received"] += 1
                        flood["last"] = now
                    elif ev.reason == "warmup":
                        (ctl / "sub-ready").touch()
                    elif ev.reason == "stop":
                        (ctl / "sub.json").write_text(json.dumps({
                            "hops": hops, "tables": tables, "flood": flood,
                            "decode_errors": sum(bus.decode_errors.values())}))
                        (ctl / "sub-done").touch()
                        return


# --- the run ---------------------------------------------------------------------


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=out)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def codec_rows() -> list[tuple[str, str]]:
    rows = []
    for n in TABLE_SIZES:
        event = table(n)
        frames = encode(event, "discovery", 1)
        reps = {10: 2000, 1_000: 100, 10_000: 20}[n]
        enc = timed(lambda: encode(event, "discovery", 1), reps)  # noqa: B023 - used at once
        dec = timed(lambda: decode(frames), reps)  # noqa: B023
        rows.append((f"codec {n:>6} entries ({len(frames[1]) / 1024:,.0f} KiB) encode",
                     f"p50 {pct(enc, .5):8.3f} ms   min {min(enc) * 1000:8.3f} ms"))
        rows.append((f"codec {n:>6} entries decode+validate",
                     f"p50 {pct(dec, .5):8.3f} ms   min {min(dec) * 1000:8.3f} ms"))
    return rows


def run() -> dict[str, Any]:
    """Every figure of the table, as data (the report of benchmarks/report.py uses it)."""
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp_name:
        tmp = Path(tmp_name)
        run_dir, ctl, log = tmp / "run", tmp / "ctl", tmp / "workers.log"
        ctl.mkdir()
        env = os.environ | {
            "ANCHORD_RUN_DIR": str(run_dir), "ANCHORD_PROJECT": "bench",
            "ANCHORD_VLAN_PARENT": "lo", "ANCHORD_LOG_LEVEL": "warn",
            "PYTHONPATH": str(ROOT)}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            broker = start(["-m", "anchord", "worker", "bus"], env, log)
            procs.append(broker)
            wait_for(lambda: (run_dir / "sub.ipc").exists(), 10, "broker sockets")
            broker_idle = settled_rss_kib(broker.pid)

            metrics = start(["-m", "anchord", "worker", "metrics"],
                            env | {"ANCHORD_METRICS_ADDR": f"127.0.0.1:{free_port()}"}, log)
            procs.append(metrics)
            metrics_idle = settled_rss_kib(metrics.pid)
            if metrics.poll() is not None:
                raise RuntimeError(f"metrics worker exited; see {log}")
            stop(metrics)  # it subscribes to everything: keep it out of the figures

            rows += codec_rows()

            sub = start(["-m", "benchmarks.bench_bus", "_subscriber", str(run_dir), str(ctl)],
                        env, log)
            pub = start(["-m", "benchmarks.bench_bus", "_publisher", str(run_dir), str(ctl)],
                        env, log)
            procs += [sub, pub]
            wait_for(lambda: pub.poll() is not None and sub.poll() is not None, 300,
                     "publisher and subscriber")
            if pub.returncode or sub.returncode:
                raise RuntimeError(f"a bench process failed; see {log}: "
                                   f"{log.read_text()[-2000:]}")
            broker_after = rss_kib(broker.pid)
            got = json.loads((ctl / "sub.json").read_text())
            sent = json.loads((ctl / "pub.json").read_text())
        finally:
            for proc in procs:
                stop(proc)

    return {"rows": rows, "got": got, "sent": sent, "broker_idle": broker_idle,
            "broker_after": broker_after, "metrics_idle": metrics_idle}


def main() -> int:
    data = run()
    rows: list[tuple[str, str]] = data["rows"]
    got, sent = data["got"], data["sent"]
    broker_idle, broker_after = data["broker_idle"], data["broker_after"]
    metrics_idle = data["metrics_idle"]
    hops: list[float] = got["hops"]
    rows.insert(0, (f"hop ConntrackFlushed, {len(hops)}/{HOP_MESSAGES} at 1 kHz",
                    f"p50 {pct(hops, .5):8.3f} ms   p99 {pct(hops, .99):8.3f} ms"
                    f"   max {max(hops) * 1000:8.3f} ms"))
    for i, n in enumerate(TABLE_SIZES):
        lat: list[float] = got["tables"].get(f"bench-{n}", [])
        rows.insert(1 + i, (f"hop BackendsDesired {n:>6} entries, {len(lat)}/{TABLE_ROUNDS[n]}",
                            f"p50 {pct(lat, .5):8.3f} ms   p99 {pct(lat, .99):8.3f} ms"
                            f"   max {max(lat) * 1000:8.3f} ms" if lat else "none received"))
    flood = got["flood"]
    span = flood["last"] - flood["first"]
    rows.insert(4, ("saturation: received by the subscriber",
                    f"{flood['received'] / span:9,.0f} msg/s  ({flood['received']:,} of "
                    f"{sent['flood_sent']:,} delivered)" if span > 0 else "none"))
    rows.insert(5, ("saturation: sent by the publisher",
                    f"{sent['flood_sent'] / sent['flood_send_seconds']:9,.0f} msg/s"))
    rows += [
        ("RSS broker, idle", f"{broker_idle / 1024:8.1f} MiB"),
        ("RSS broker, after the run", f"{broker_after / 1024:8.1f} MiB"),
        ("RSS metrics worker, idle", f"{metrics_idle / 1024:8.1f} MiB"),
        ("decode errors at the subscriber", str(got["decode_errors"])),
    ]
    load = os.getloadavg()
    print(f"bus benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        print(f"  {what:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in ("_publisher", "_subscriber"):
        role = publisher if sys.argv[1] == "_publisher" else subscriber
        role(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
