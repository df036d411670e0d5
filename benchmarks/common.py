"""What every section of the benchmark report shares: the conditions of the machine, CPU and
memory readings from /proc, percentiles, the shared Docker lock, and LAN namespaces.

Owns: the report's "conditions" (CPU model, vCPUs, kernel, Docker/nft/Python versions, load
average), whole-host CPU from /proc/stat, a process's CPU from /proc/<pid>/stat, PSS/RSS from
/proc/<pid>/smaps_rollup, ``docker_lock`` (flock(2) on /tmp/anchord-e2e.lock, the same lock
``flock /tmp/anchord-e2e.lock`` takes, held per section so others can interleave), and a
namespace plugged into a Docker bridge as a LAN host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.netns import Netns, sh

LOCK_FILE = "/tmp/anchord-e2e.lock"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    """The q-quantile by nearest rank (0 for no samples)."""
    if not samples:
        return 0.0
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def median(samples: list[float]) -> float:
    return pct(samples, 0.5)


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def _version(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return out.strip().splitlines()[0] if out.strip() else "absent"


def conditions() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu": model,
        "vcpus": os.cpu_count() or 0,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "docker": _version("docker", "version", "--format", "{{.Server.Version}}"),
        "compose": _version("docker", "compose", "version", "--short"),
        "nft": _version("nft", "--version"),
        "python": sys.version.split()[0],
        "iperf3": _version("iperf3", "--version"),
        "load": load(),
    }


# --- CPU ---------------------------------------------------------------------------------


def host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host since boot (iowait counts as idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])  # guest time is already in user/nice
    return total - idle, total


class HostCpu:
    """Whole-host CPU between ``start`` and ``stop``, in cores (2.0 = both vCPUs busy)."""

    def __init__(self) -> None:
        self.busy0, self.total0 = host_jiffies()
        self.t0 = time.monotonic()

    def cores(self) -> float:
        busy, total = host_jiffies()
        if total == self.total0:
            return 0.0
        return (busy - self.busy0) / (total - self.total0) * (os.cpu_count() or 1)


def proc_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of one process (its threads included), seconds; 0 if it is gone. With
    ``children``, plus what its waited-for children used: a containerd shim's ``runc exec``
    per healthcheck is one of those."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = [int(x) for x in stat.rsplit(")", 1)[1].split()[11:15]]
    return sum(fields if children else fields[:2]) / CLK_TCK


def precise_cpu_seconds(pid: int) -> float:
    """CPU of one process, every thread summed, at nanosecond resolution (schedstat's run
    time): /proc/<pid>/stat counts in clock ticks (10 ms), too coarse for a worker that uses
    a few ms in a run of a few seconds. 0 if it is gone."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


def cgroup_cpu_seconds(pid: int) -> float:
    """CPU of the cgroup a process is in: a container's, every exec in it included. cgroup v1
    (``cpuacct.usage``, also what a hybrid host accounts in) if the process has a cpuacct
    controller, else v2 (``cpu.stat``)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = [line.strip().split(":", 2) for line in f if line.strip()]
        for _, controllers, path in lines:
            if "cpuacct" in controllers.split(","):
                for mount in ("cpuacct", "cpu,cpuacct"):
                    usage = Path(f"/sys/fs/cgroup/{mount}{path}/cpuacct.usage")
                    if usage.exists():
                        return int(usage.read_text()) / 1e9
        path = next(p for h, c, p in lines if h == "0" and c == "")
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            stat = Path(f"{root}{path}/cpu.stat")
            if stat.exists():
                for line in stat.read_text().splitlines():
                    if line.startswith("usage_usec"):
                        return int(line.split()[1]) / 1e6
    except (OSError, IndexError, ValueError, StopIteration):
        pass
    return 0.0


# --- memory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mem:
    rss_kib: int
    pss_kib: int


def mem(pid: int) -> Mem:
    """RSS and PSS of one process from /proc/<pid>/smaps_rollup (0/0 if it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return Mem(rss, pss)


def container_processes(cid: str) -> list[tuple[int, str]]:
    """(host pid, command line) of every process of a running container."""
    out = sh("docker", "top", cid, "-eo", "pid,args")
    rows = []
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        rows.append((int(pid), args.strip()))
    return rows


def container_pid(cid: str) -> int:
    return int(sh("docker", "inspect", "-f", "{{.State.Pid}}", cid).strip())


# --- the lock ----------------------------------------------------------------------------


@contextmanager
def docker_lock(section: str) -> Iterator[float]:
    """Hold the shared Docker lock for one section; yields the seconds waited for it."""
    started = time.monotonic()
    with open(LOCK_FILE, "a") as f:
        print(f"[{section}] waiting for {LOCK_FILE} ...", file=sys.stderr, flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        print(f"[{section}] lock held (waited {waited:.0f} s)", file=sys.stderr, flush=True)
        try:
            yield waited
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- a LAN host on a Docker bridge -------------------------------------------------------


def bridge_of(network: str) -> str:
    """The Linux bridge of a Docker bridge network (``br-`` and the first 12 of its id)."""
    nid = sh("docker", "network", "inspect", "-f", "{{.Id}}", network).strip()
    return f"br-{nid[:12]}"


def lan_host(ns: Netns, bridge: str, address: str) -> None:
    """Plug ``ns`` into ``bridge`` with ``address`` (a /24) on its eth0, as a LAN host would
    be; the host end is deleted with the namespace."""
    host_end, ns_end = f"bh{uuid.uuid4().hex[:8]}", f"bn{uuid.uuid4().hex[:8]}"
    sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
    sh("ip", "link", "set", ns_end, "netns", ns.name)
    sh("ip", "link", "set", host_end, "master", bridge, "up")
    ns.run("ip", "link", "set", ns_end, "name", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    ns.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
    # 30 000 fresh connections: the whole port range, no reuse of a 4-tuple within the run.
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
