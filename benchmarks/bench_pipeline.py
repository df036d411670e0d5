"""Benchmark of the Python stages of event-to-map latency, in one process (prints figures).

    python3 -m benchmarks.bench_pipeline [--sizes 10,1000,10000] [--rounds 40] [--profile N]
                                         [--rss-entries 10000]

No Docker and no kernel: the discovery stage runs ``Discovery._rebuild`` on synthetic
inspect documents (filler containers holding many single-port labels, one backend whose
transit address alternates as it would on a restart), then the snapshot goes through
``bus.codec`` encode and decode, then ``NatTables.apply`` with an Nft that only records
the commands (bench_nat measures the transaction itself). Per stage p50/p99 per size;
``--profile N`` prints a cProfile of the whole pipeline at N elements.

Then the memory a worker pays for one big table: a fresh process (this module with a
hidden role) imports what the nat-writer worker imports, decodes a ``--rss-entries``
``BackendsDesired`` (encoded here) and keeps it, as a worker keeps its last table;
it reports VmRSS before and after the decode and VmHWM (the peak, which the decode's
transient objects raise). Two shapes: the pipeline's (ten containers of 1 000 ports)
and the worst one (one container, so one group, per entry).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anchord.config import NetworkAnchorConfig
from anchord.docker_inspect import NetworkFacts
from anchord.nft import NatTables
from bus import codec
from bus.events import Backend, BackendsDesired
from workers.discovery import Discovery

PROJECT = "bench"
TRANSIT = f"{PROJECT}_transit"
SELF_MAC = "02:42:0a:00:00:02"
PORTS_PER_FILLER = 1000
FIRST_PORT = 10_000
# CPU time of this process by default: other test runs share the machine, and wall time
# would measure them too. --wall measures wall time instead.
CLOCK: Callable[[], float] = time.process_time


class RecordingNft:
    """Stands for libnftables: keeps the last buffer, commits nothing."""

    def __init__(self) -> None:
        self.last = ""

    def run(self, commands: str, json_output: bool = False) -> str:
        self.last = commands
        return ""

    def close(self) -> None:
        pass


def inspect(cid: str, name: str, address: str, expose: str | None, mac: str = "") -> dict[str, Any]:
    labels = {"com.docker.compose.project": PROJECT, "com.docker.compose.service": name}
    if expose is not None:
        labels["anchord.expose"] = expose
    return {
        "Id": cid, "Name": f"/{name}", "Created": f"2026-01-01T00:00:{len(cid) % 60:02d}.1Z",
        "State": {"Running": True, "Paused": False, "Restarting": False},
        "Config": {"Labels": labels},
        "HostConfig": {"NetworkMode": TRANSIT},
        "NetworkSettings": {"Networks": {TRANSIT: {
            "IPAddress": address, "GlobalIPv6Address": "", "MacAddress": mac,
            "NetworkID": "n1"}}},
    }


def discovery(size: int) -> Discovery:
    """A Discovery whose cache holds ``size`` exposed ports: fillers and one backend."""
    config = NetworkAnchorConfig(project=PROJECT, vlan_parent="lan",
                                 docker_host="unix:///nonexistent")
    d = Discovery(config, hostname="x", macs=lambda: {SELF_MAC})
    # No Docker: the network's facts are known.
    d._networks = {TRANSIT: NetworkFacts(labels={"com.docker.compose.network": "transit"},
                                         internal=True, gateway_free=False)}
    d.cache["self" * 16] = inspect("self" * 16, "anchord", "10.0.0.2", None, SELF_MAC)
    fillers = size - 1
    port = FIRST_PORT
    i = 0
    while fillers > 0:
        n = min(PORTS_PER_FILLER, fillers)
        label = ",".join(f"tcp/{p}" for p in range(port, port + n))
        cid = f"{i:064x}"
        d.cache[cid] = inspect(cid, f"filler{i}", f"10.0.1.{i + 2}", label)
        port += n
        fillers -= n
        i += 1
    d.cache["b" * 64] = inspect("b" * 64, "backend", "10.0.0.100", "tcp/80")
    return d


def restart(d: Discovery, i: int) -> None:
    """The backend came back with another transit address (what a restart often does)."""
    info = d.cache["b" * 64]
    info["NetworkSettings"]["Networks"][TRANSIT]["IPAddress"] = f"10.0.0.{100 + i % 2}"
    d._pending_time = time.time()


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def run_size(size: int, rounds: int) -> dict[str, list[float]]:
    d = discovery(size)
    d._rebuild("poll")
    tables = NatTables("ext", nft=RecordingNft())  # type: ignore[arg-type]
    tables.installed = True
    assert d.desired is not None
    first = codec.decode(codec.encode(d.desired, "discovery", 0)).event
    assert isinstance(first, BackendsDesired)
    assert first.size == size, first.size
    tables.apply_groups(first.groups)
    stages: dict[str, list[float]] = {k: [] for k in (
        "discovery rebuild", "encode", "decode+validate", "nat apply (python)", "total")}

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = CLOCK()
        out = fn(*args)
        stages[stage].append(CLOCK() - t0)
        return out

    for i in range(1, rounds + 1):
        restart(d, i)
        t0 = CLOCK()
        timed("discovery rebuild", d._rebuild, "event")
        assert d.desired is not None
        frames = timed("encode", codec.encode, d.desired, "discovery", i)
        got = timed("decode+validate", codec.decode, frames).event
        result = timed("nat apply (python)", tables.apply_groups, got.groups)
        stages["total"].append(CLOCK() - t0)
        assert result.ok, result
        assert result.changed == 1, result
    return stages


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def worst_table(size: int) -> BackendsDesired:
    """``size`` entries, each of its own container: one group per entry (the worst shape)."""
    return BackendsDesired.of(
        generation=1, cause="event", event_time=1700000000.125,
        entries=(Backend(4 if i % 2 else 6, "udp" if i % 3 else "tcp", 10_000 + i,
                         10_000 + i + i % 3, f"10.{i >> 8 & 255}.{i & 255}.1",
                         f"bench-svc{i}-1", f"svc{i}") for i in range(size)),
        transit_network="bench_transit", transit_v4="172.20.0.2", transit_v6="fd00::2")


def worker_rss_child(path: Path) -> None:
    """The hidden role: import as the nat-writer does, decode one table, print the figures."""
    import workers.natwriter  # noqa: F401 - the worker's own import cost, before any message

    topic, _, body = path.read_bytes().partition(b"\n")
    before = proc_status_kib("VmRSS")
    event = codec.decode([topic, body]).event
    assert isinstance(event, BackendsDesired)
    after = proc_status_kib("VmRSS")
    print(before, after, proc_status_kib("VmHWM"), event.size)


def worker_rss(size: int) -> list[str]:
    """One line per table shape: the RSS of a fresh worker process around one decode."""
    d = discovery(size)
    d._rebuild("poll")
    assert d.desired is not None
    lines = []
    for shape, event in (("10 containers", d.desired), ("1 per entry", worst_table(size))):
        topic, body = codec.encode(event, "discovery", 1)
        with tempfile.NamedTemporaryFile(prefix="bench-rss-") as f:
            f.write(topic + b"\n" + body)
            f.flush()
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_pipeline",
                                  "--rss-child", f.name], check=True, capture_output=True,
                                 text=True).stdout.split()
        before, after, peak, n = map(int, out)
        assert n == size, n
        lines.append(f"worker RSS, {size} entries ({shape}, {len(body) / 1024:,.0f} KiB): "
                     f"{before / 1024:.1f} MiB before decode, {after / 1024:.1f} MiB after "
                     f"(+{(after - before) / 1024:.1f}), peak {peak / 1024:.1f} MiB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--profile", type=int, default=0, help="cProfile at this size")
    parser.add_argument("--wall", action="store_true", help="wall time instead of CPU time")
    parser.add_argument("--rss-entries", type=int, default=10_000,
                        help="table size for the worker RSS figures (0: none)")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        worker_rss_child(args.rss_child)
        return
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_size(args.profile, args.rounds)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        return
    print(f"# {'wall' if args.wall else 'CPU'} time per stage, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'stage':<22}" + "".join(f"{f'{n} p50/p99 ms':>22}" for n in
                                      map(int, args.sizes.split(","))))
    results = {n: run_size(n, args.rounds) for n in map(int, args.sizes.split(","))}
    for stage in next(iter(results.values())):
        print(f"{stage:<22}" + "".join(
            f"{pct(r[stage], .5):>12.2f} / {pct(r[stage], .99):>7.2f}" for r in results.values()))
    print(f"(rounds per size: {args.rounds}; median total at the largest size "
          f"{statistics.median(results[max(results)]['total']) * 1000:.1f} ms)")
    if args.rss_entries:
        print("\n".join(worker_rss(args.rss_entries)))


if __name__ == "__main__":
    main()
