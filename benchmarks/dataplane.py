"""The data plane: a LAN client to a service through anchord against Docker's own paths.

Owns section 1 of the report (docs/benchmarks.md): TCP throughput (iperf3, 1 and 4 streams),
the rate of short request/response exchanges over fresh connections, and the UDP packet rate
(iperf3, 64-byte datagrams, no rate limit), each repeated, through four paths:

    (a) anchord   a namespace plugged into the stack's LAN bridge (e2e/compose/stack: dnsmasq,
                  the real image as network-anchor with macvlan + DNAT, web-anchor) -> the
                  project's DHCP address, tcp+udp/8080 -> the service in web-anchor's namespace
    (b) ports: with the userland proxy: the host namespace -> 127.0.0.1:P; dockerd (proxy on,
                  its default) hands loopback connections to docker-proxy, which connects anew
    (c) ports: without it: a namespace on a veth to the host -> 198.18.77.1:P; an external
                  client's packets take dockerd's iptables DNAT (PREROUTING), never the proxy
                  -- the same path a daemon with ``userland-proxy: false`` gives everyone
    (d) ceiling   the same namespace -> the service in the host namespace (host networking)

and, in a second phase with a rig of its own (the first one's stack taken down),

    (e) anchord   the README's real-host topology (e2e/compose/realhost, benchmarks' expose
                  adds udp/8080): the LAN namespace on a veth whose host end is the macvlan
                  child's parent, as a NIC is on a real host -- no LAN bridge -> the project's
                  address -> the service in web-anchor's namespace; the transit network as the
                  README builds it, at bridge-nf-call-iptables=1 (a stock Docker host's value)
    (d)           again, interleaved with (e): (e)'s ratios are to this (d)

The shared daemon's configuration is never touched: (b) and (c) are the two paths one daemon
with the proxy on already has, told apart by where the client sits. The servers (iperf3 and
``serve`` below) are the same programs in every path, started with nsenter in the service's
namespace, so only the path differs. Host CPU per path comes from /proc/stat; the dhcp
worker's CPU during (a) from /proc/<pid>/stat.

The request/response server and client are benchmarks/probes.py (stdlib sockets; the client
reports its own CPU so the report can say whether it was the bottleneck).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HostCpu,
    bridge_of,
    container_pid,
    container_processes,
    lan_host,
    load,
    median,
    pct,
    precise_cpu_seconds,
    proc_cpu_seconds,
)
from e2e import harness
from e2e import realhost_support as realhost
from e2e.stack_support import STACK_FILE, Stack, build_lan_image, random_ula64
from tests.netns import Netns, Topology, sh, topology, wait_until

ROOT = Path(__file__).resolve().parents[1]
LAN_CLIENT = "10.77.0.30"  # outside dnsmasq's pool (.100-.199)
HOST_END, EXT_CLIENT = "198.18.77.1", "198.18.77.2"  # RFC 2544 benchmarking range
SERVICE_PORT = 8080
REALHOST_PATHS = {
    "e": "anchord, the README's real-host topology (macvlan on a host interface + DNAT)",
    "d": "host networking (ceiling), again",
}
PATHS = {
    "a": "anchord (macvlan + DNAT)",
    "b": "ports: userland proxy",
    "c": "ports: iptables DNAT (proxy off)",
    "d": "host networking (ceiling)",
}


# --- measurements ----------------------------------------------------------------------


@dataclass
class Path_:
    key: str
    host: str
    port: int
    client_ns: str | None  # a namespace's name; None: the host namespace
    client_addr: str
    server_pid_of: int | None  # a process in the service's namespace (None: the host's)
    server_port: int  # where the service listens in its namespace

    def argv(self, *argv: str) -> list[str]:
        if self.client_ns is None:
            return list(argv)
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def server_argv(self, *argv: str) -> list[str]:
        if self.server_pid_of is None:
            return list(argv)
        return ["nsenter", "-t", str(self.server_pid_of), "-n", *argv]


@dataclass
class PathResult:
    key: str
    tcp1: list[float] = field(default_factory=list)  # Gbit/s per run
    tcp4: list[float] = field(default_factory=list)
    udp_pps: list[float] = field(default_factory=list)  # received datagrams/s per run
    udp_loss: list[float] = field(default_factory=list)  # %
    rr_rate: list[float] = field(default_factory=list)  # exchanges/s per run
    rr_lat: list[float] = field(default_factory=list)  # seconds, every exchange
    rr_failures: int = 0
    rr_client_cpu: list[float] = field(default_factory=list)  # client CPU / wall
    rr_server_cpu: list[float] = field(default_factory=list)  # server CPU / wall
    cpu: dict[str, list[float]] = field(default_factory=dict)  # test -> host cores per run
    peers: list[str] = field(default_factory=list)
    client_addr: str = ""
    dhcp_cpu: dict[str, list[float]] = field(default_factory=dict)  # test -> dhcp CPU s/run
    dhcp_idle: float = 0.0  # dhcp CPU seconds over the same time at idle
    iperf_cpu: list[float] = field(default_factory=list)  # iperf3 host_total %, tcp1

    def real_address(self) -> bool:
        return bool(self.peers) and all(p == self.client_addr for p in self.peers)


def iperf(path: Path_, seconds: float, extra: list[str]) -> dict[str, Any]:
    out = sh(*path.argv("iperf3", "-c", path.host, "-p", str(path.port), "-t", str(seconds),
                        "-J", *extra), timeout=seconds + 60)
    data: dict[str, Any] = json.loads(out)
    if "error" in data:
        raise RuntimeError(f"iperf3 to {path.key}: {data['error']}")
    return data


def measure_path(path: Path_, res: PathResult, what: str, seconds: float, reps: int,
                 dhcp_pid: int | None) -> None:
    """One kind of test through one path, ``reps`` times."""
    for _ in range(reps):
        cpu = HostCpu()
        d0 = precise_cpu_seconds(dhcp_pid) if dhcp_pid else 0.0
        if what == "tcp1":
            data = iperf(path, seconds, [])
            res.tcp1.append(data["end"]["sum_received"]["bits_per_second"] / 1e9)
            res.iperf_cpu.append(data["end"]["cpu_utilization_percent"]["host_total"])
        elif what == "tcp4":
            data = iperf(path, seconds, ["-P", "4"])
            res.tcp4.append(data["end"]["sum_received"]["bits_per_second"] / 1e9)
        elif what == "udp":
            data = iperf(path, seconds, ["-u", "-b", "0", "-l", "64"])
            s = data["end"]["sum"]
            res.udp_pps.append((s["packets"] - s["lost_packets"]) / s["seconds"])
            res.udp_loss.append(float(s["lost_percent"]))
        res.cpu.setdefault(what, []).append(cpu.cores())
        if dhcp_pid:
            res.dhcp_cpu.setdefault(what, []).append(precise_cpu_seconds(dhcp_pid) - d0)


def measure_rr(path: Path_, res: PathResult, n: int, reps: int, dhcp_pid: int | None) -> None:
    server = subprocess.Popen(
        path.server_argv(sys.executable, "-m", "benchmarks.probes", "serve",
                         str(path.server_port), HOST_END if path.key == "d" else ""),
        cwd=ROOT, stdout=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"rr server of {path.key} did not start")
        for _ in range(reps):
            cpu = HostCpu()
            s0 = proc_cpu_seconds(server.pid)
            d0 = precise_cpu_seconds(dhcp_pid) if dhcp_pid else 0.0
            out = sh(*path.argv(sys.executable, "-m", "benchmarks.probes", "rr", path.host,
                                str(path.port), str(n)), cwd=ROOT, timeout=n * 0.05 + 120)
            data = json.loads(out.strip().splitlines()[-1])
            res.cpu.setdefault("rr", []).append(cpu.cores())
            res.rr_rate.append(len(data["lat"]) / data["wall"])
            res.rr_lat += data["lat"]
            res.rr_failures += data["failures"]
            res.rr_client_cpu.append(data["cpu"] / data["wall"])
            res.rr_server_cpu.append((proc_cpu_seconds(server.pid) - s0) / data["wall"])
            res.peers = sorted(set(res.peers) | set(data["peers"]))
            if dhcp_pid:
                res.dhcp_cpu.setdefault("rr", []).append(precise_cpu_seconds(dhcp_pid) - d0)
    finally:
        server.kill()
        server.wait(10)


@contextmanager
def iperf_servers(paths: list[Path_]) -> Iterator[None]:
    procs = []
    try:
        seen = set()
        for p in paths:
            if (p.server_pid_of, p.server_port) in seen:  # (b) and (c): one service
                continue
            seen.add((p.server_pid_of, p.server_port))
            bind = ["-B", HOST_END] if p.key == "d" else []
            procs.append(subprocess.Popen(p.server_argv("iperf3", "-s", "-p", str(p.server_port),
                                                        *bind),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in paths:  # listening (a probe connection would disturb iperf3's next test)
            wait_until(lambda p=p: sh(*p.server_argv("ss", "-Hltn", f"sport = :{p.server_port}"))  # type: ignore[misc]
                       .strip(), timeout=30, what=f"iperf3 server of path {p.key}")
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


# --- the rig ---------------------------------------------------------------------------


def free_port() -> int:
    for _ in range(100):
        port = random.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def ext_client(topo: Topology, stack: ExitStack) -> Netns:
    """A namespace on a veth to the host, EXT_CLIENT -> HOST_END: the client of (c) and (d)."""
    ext = topo.netns("ext")
    host_end = f"bx{os.urandom(3).hex()}"
    sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "bxtmp" + host_end[2:])
    stack.callback(sh, "ip", "link", "del", host_end, check=False)
    sh("ip", "link", "set", "bxtmp" + host_end[2:], "netns", ext.name)
    ext.run("ip", "link", "set", "bxtmp" + host_end[2:], "name", "eth0")
    ext.run("ip", "link", "set", "eth0", "up")
    ext.run("ip", "addr", "add", f"{EXT_CLIENT}/30", "dev", "eth0")
    ext.run("ip", "route", "add", "default", "via", HOST_END)
    ext.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
    sh("ip", "addr", "add", f"{HOST_END}/30", "dev", host_end)
    sh("ip", "link", "set", host_end, "up")
    return ext


@contextmanager
def rig(image: str) -> Iterator[tuple[list[Path_], Stack, int]]:
    """The stack, the namespaces, the published container; everything removed on exit.
    Yields the paths, the stack and the dhcp worker's host pid."""
    with ExitStack() as stack:
        build_lan_image()
        project = harness.ComposeProject(
            compose_file=STACK_FILE, name=harness.unique_project_name("bench-dp"),
            env={"ANCHORD_IMAGE": image, "ANCHORD_LAN_IMAGE": "anchord-demo-lan:local",
                 "LAN6_DOCKER_SUBNET": random_ula64(), "TRANSIT6_DOCKER_SUBNET": random_ula64(),
                 "ANCHORD_LOG_LEVEL": "warn"})
        stack.callback(project.down)
        project.up()
        st = Stack(project)
        project.stop("web")  # its port is the service's: our servers take it
        topo: Topology = stack.enter_context(topology("bd"))
        lan = topo.netns("lan")
        lan_host(lan, bridge_of(f"{project.name}_lan"), LAN_CLIENT)
        address = wait_until(lambda: st.project_address(4), timeout=60, what="the DHCP lease")
        anchor_pid = container_pid(st.cid("web-anchor"))
        # (c)/(d): a namespace on a veth to the host.
        ext = ext_client(topo, stack)
        # (b)/(c): one container, its port published on loopback and on the veth's address.
        pub_port, host_port = free_port(), free_port()
        name = f"bench-dp-pub-{os.urandom(3).hex()}"
        sh("docker", "run", "-d", "--rm", "--name", name,
           "-p", f"127.0.0.1:{pub_port}:{SERVICE_PORT}/tcp",
           "-p", f"127.0.0.1:{pub_port}:{SERVICE_PORT}/udp",
           "-p", f"{HOST_END}:{pub_port}:{SERVICE_PORT}/tcp",
           "-p", f"{HOST_END}:{pub_port}:{SERVICE_PORT}/udp",
           "debian:bookworm-slim", "sleep", "infinity")
        stack.callback(sh, "docker", "rm", "-f", name, check=False)
        pub_pid = container_pid(name)
        dhcp_pid = next(pid for pid, args in container_processes(st.cid("anchord"))
                        if "worker dhcp" in args)
        paths = [
            Path_("a", address, SERVICE_PORT, lan.name, LAN_CLIENT, anchor_pid, SERVICE_PORT),
            Path_("b", "127.0.0.1", pub_port, None, "127.0.0.1", pub_pid, SERVICE_PORT),
            Path_("c", HOST_END, pub_port, ext.name, EXT_CLIENT, pub_pid, SERVICE_PORT),
            Path_("d", HOST_END, host_port, ext.name, EXT_CLIENT, None, host_port),
        ]
        yield paths, st, dhcp_pid


@contextmanager
def realhost_rig(image: str) -> Iterator[list[Path_]]:
    """Phase 2: the README's real-host topology (e2e/compose/realhost: the macvlan child's
    parent is a host interface, a veth whose peer is the LAN namespace; the transit network as
    the README builds it; bridge-nf-call-iptables=1, a stock Docker host's value), and (d)
    again beside it. Yields [(e), (d)]."""
    with ExitStack() as stack:
        build_lan_image()
        lan = realhost.RealHostLan().start()
        stack.callback(lan.close)
        proj = realhost.start_project(lan, image, "anchord-demo-lan:local",
                                      expose="tcp/8080, udp/8080")
        stack.callback(proj.project.down)
        proj.project.stop("web")  # its port is the service's: our servers take it
        sh("ip", "netns", "exec", lan.lan_ns, "sysctl", "-qw",
           "net.ipv4.ip_local_port_range=1024 65535")
        anchor_pid = container_pid(proj.project.container_id("web-anchor"))
        topo: Topology = stack.enter_context(topology("be"))
        ext = ext_client(topo, stack)
        host_port = free_port()
        yield [
            Path_("e", proj.address, SERVICE_PORT, lan.lan_ns, realhost.LAN_ADDRESS, anchor_pid,
                  SERVICE_PORT),
            Path_("d", HOST_END, host_port, ext.name, EXT_CLIENT, None, host_port),
        ]


def measure_all(paths: list[Path_], results: dict[str, PathResult], seconds: float, reps: int,
                connects: int, dhcp_pid: int | None) -> list[str]:
    """Every test through every path, interleaved (a b c d, a b c d, ...) so that a burst of
    load from a neighbour on the shared machine hits every path alike; the dhcp worker (of
    (a), if given) profiled during one more run. Returns the profile."""
    profile: list[str] = []
    with iperf_servers(paths):
        for what in ("tcp1", "tcp4", "udp"):
            for _ in range(reps):
                for p in paths:
                    print(f"  data plane: {what} via {p.key}", file=sys.stderr, flush=True)
                    measure_path(p, results[p.key], what, seconds, 1,
                                 dhcp_pid if p.key == "a" else None)
        if dhcp_pid:
            profile = profile_dhcp(paths[0], dhcp_pid, seconds)
    for p in paths:
        print(f"  data plane: {connects} x {reps} fresh connections via {p.key}",
              file=sys.stderr, flush=True)
        measure_rr(p, results[p.key], connects, reps, dhcp_pid if p.key == "a" else None)
    return profile


def run_realhost(image: str, seconds: float, reps: int, connects: int) -> dict[str, Any]:
    """Phase 2 (see ``realhost_rig``): (e) and (d), interleaved."""
    results = {k: PathResult(k) for k in ("e", "d")}
    before = load()
    with realhost_rig(image) as paths:
        for p in paths:
            results[p.key].client_addr = p.client_addr
        measure_all(paths, results, seconds, reps, connects, None)
    return {"paths": {k: r.__dict__ | {"real_address": r.real_address()}
                      for k, r in results.items()},
            "load_before": before, "load_after": load()}


def run(image: str, seconds: float, reps: int, connects: int) -> dict[str, Any]:
    """The whole section; returns what the report needs (JSON-able)."""
    results = {k: PathResult(k) for k in PATHS}
    before = load()
    with rig(image) as (paths, _st, dhcp_pid):
        for p in paths:
            results[p.key].client_addr = p.client_addr
        # The dhcp worker's CPU at idle over one test's length: the baseline of "flat".
        d0 = precise_cpu_seconds(dhcp_pid)
        time.sleep(seconds)
        results["a"].dhcp_idle = precise_cpu_seconds(dhcp_pid) - d0
        profile = measure_all(paths, results, seconds, reps, connects, dhcp_pid)
    out = {k: r.__dict__ | {"real_address": r.real_address()} for k, r in results.items()}
    after = load()
    try:  # phase 2 is a second rig: its failure must not lose phase 1's figures
        phase2 = run_realhost(image, seconds, reps, connects)
    except Exception as exc:  # noqa: BLE001 (reported in the report as it is)
        phase2 = {"error": repr(exc)}
    return {"paths": out, "seconds": seconds, "reps": reps, "connects": connects,
            "load_before": before, "load_after": after, "dhcp_profile": profile,
            "realhost": phase2}


def profile_dhcp(path: Path_, dhcp_pid: int, seconds: float) -> list[str]:
    """py-spy (if installed: the ``bench`` extra) of the dhcp worker during one more TCP run
    through (a): where its CPU goes while traffic flows. Lines ``samples  function (file)``,
    by the innermost frame, most sampled first."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return ["py-spy is not installed (pip install -e '.[bench]')"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "dhcp.txt"
        rec = subprocess.Popen([str(spy), "record", "-p", str(dhcp_pid), "-d",
                                str(max(1, int(seconds))), "-r", "200", "-f", "raw", "-o",
                                str(raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        iperf(path, seconds, [])
        rec.wait(seconds + 60)
        counts: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines() if raw.exists() else []:
            stack, _, n = line.rpartition(" ")
            leaf = stack.split(";")[-1]
            counts[leaf] = counts.get(leaf, 0) + int(n)
            total += int(n)
    rows = [f"{n:6d}  {leaf}" for leaf, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return [f"{total} samples at 200 Hz over {seconds:g} s (idle samples included)", *rows]


def summary(r: dict[str, Any]) -> dict[str, float]:
    """Medians (and p99 latency) of one path's result."""
    return {
        "tcp1": median(r["tcp1"]), "tcp4": median(r["tcp4"]), "udp": median(r["udp_pps"]),
        "rr": median(r["rr_rate"]), "rr_p50": pct(r["rr_lat"], .5),
        "rr_p99": pct(r["rr_lat"], .99),
    }
