"""Benchmark of the dhcp worker: start-to-bound time (fresh DISCOVER and INIT-REBOOT) and RSS.

Runs the real worker process in a namespace against dnsmasq on a LAN bridge the
benchmark makes (tests/integration/dhcp_servers.py), several rounds, and prints
the figures. Needs root. Run: ``python3 -m benchmarks.bench_dhcp [rounds]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.dhcp_servers import Dnsmasq, Worker, lan
from tests.netns import wait_until


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _time_to_bound(worker: Worker) -> float:
    """Seconds from process start to a LeaseChanged granted after that start."""
    start_wall = time.time()
    worker.start()
    t0 = time.monotonic()

    def fresh_lease() -> bool:
        lease = worker.lease(4)
        if lease is None:
            return False
        granted = lease["lease"]["expiry"] - lease["lease"]["lease_time"]
        return bool(granted >= start_wall)

    wait_until(fresh_lease, 30, interval=0.01, what="bound")
    return time.monotonic() - t0


def main(rounds: int) -> None:
    fresh: list[float] = []
    reboot: list[float] = []
    rss: list[int] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp, lan(Path(tmp)) as bed:
            server = bed.server_ns("srv", 1)
            # --no-ping: dnsmasq's own 3 s ping check before an OFFER would dominate.
            Dnsmasq(bed, server, "dnsmasq", "--no-ping")
            wait_until(lambda: "started" in Path(tmp, "dnsmasq.log").read_text(), 10)
            worker = Worker(bed)
            fresh.append(_time_to_bound(worker))
            assert worker.proc is not None
            rss.append(_rss_kib(worker.proc.pid))
            worker.stop()  # a restart: child, address and lease file stay
            reboot.append(_time_to_bound(worker))
            worker.stop(shutdown=True)

    def fmt(values: list[float]) -> str:
        return (f"median {statistics.median(values) * 1000:.0f} ms, "
                f"min {min(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")

    print(f"dhcp worker, {rounds} rounds against dnsmasq --no-ping in namespaces")
    print(f"  start -> bound, fresh (DISCOVER, ARP probe): {fmt(fresh)}")
    print(f"  start -> bound, INIT-REBOOT (lease file):    {fmt(reboot)}")
    print(f"  RSS of the worker process when bound: median {statistics.median(rss) / 1024:.1f} "
          f"MiB, max {max(rss) / 1024:.1f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
