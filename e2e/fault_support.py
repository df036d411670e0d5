"""Support of e2e/test_faults.py and benchmarks/soak.py: the fault stack, its steady load, and
what the faults and the soak read.

Owns:

- ``start_fault_stack``: e2e/compose/faults/compose.yaml (the full stack with a project-scoped
  Docker API proxy, the DHCP server of e2e/compose/dhcp — dnsmasq, or Kea for short leases —
  a tcp/8081 echo for long-lived streams and a spare backend) started as a uniquely named
  project and answering; ``FaultStack`` the questions asked of it (its lease at the server,
  the child's addresses, the DNAT maps, a backend's transit address, readiness).
- ``FaultLoad``: the steady load every fault runs under — e2e/lifecycle_support.py's
  ``LoadClient`` (one long TCP stream echoing every 50 ms, a new tcp/8080 connection every
  50 ms) plus one UDP flow (one socket, a datagram to udp/8080 every 50 ms, each answered with
  the client's own address) and the app's egress (a new connection from ``web`` to the LAN
  client every 100 ms, which must see the project's address) — and ``LoadResult``, what the
  clients saw: failures, the longest outage around a fault, one figure line.
- ``ProcessSampler``: RSS and open descriptors of every program of the anchord container and
  of the proxy (read from the host's /proc: the container's root has no CAP_SYS_PTRACE to
  read an unprivileged worker's descriptors), DNAT map elements and conntrack entries.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import dhcp_support, harness, stack_support
from e2e import lifecycle_support as ls
from e2e.harness import ComposeProject, wait_until
from e2e.stack_support import CLIENT_V4, LAN_IMAGE

FAULTS_FILE = harness.COMPOSE_DIR / "faults" / "compose.yaml"
APP_PORT = 8080
SPARE_PORT = 8082  # spare-anchor's port: the backend the faults and the soak restart
ECHO_PORT = 9000  # the LAN client's listener: the egress target
# S-1's start target: a project answers within 10 s of its start.
START_TARGET = 10.0
PROGRAMS = ("bus", "discovery", "dhcp", "nat-writer", "conntrack-flusher", "metrics")


def build_images() -> None:
    """The LAN image and the DHCP server's image (cached after the first build)."""
    dhcp_support.build_dhcp_image()


@dataclass
class FaultStack(dhcp_support.Project):
    """The fault stack: one project holding the LAN (``dhcp``, ``client``) and anchord."""

    server: str = "dnsmasq"

    def leases(self) -> list[stack_support.Lease]:
        if self.server == "dnsmasq":
            return stack_support.parse_leases(
                self.exec("dhcp", "cat", dhcp_support.DNSMASQ_LEASES))
        text = self.exec("dhcp", "cat", dhcp_support.KEA_LEASES[4], check=False)
        return dhcp_support.parse_kea_leases(text, 4)

    def transit4(self, service: str) -> str:
        return ls.transit_addresses(self.project, service)[0]

    def maps(self) -> dict[str, dict[int, str]]:
        """The plain DNAT maps of both families and protocols, {"4/tcp": {port: backend}}."""
        return {f"{family}/{proto}": self.dnat_map(family, proto)
                for family in (4, 6) for proto in ("tcp", "udp")}

    def answers(self, host: str, port: int = APP_PORT, timeout: float = 1.0) -> bool:
        """The LAN client's one connection to host:port got the app's answer with its own
        address."""
        result = self.query("client", "tcp", host, port, timeout=timeout)
        return bool(result.get("reply", {}).get("peer") == CLIENT_V4)

    def logged(self, prefix: str, service: str = "anchord") -> list[dict[str, Any]]:
        """The JSON log lines of ``service`` whose message starts with ``prefix``."""
        return [line for line in harness.json_log_lines(self.project.logs(service))
                if str(line["message"]).startswith(prefix)]

    def healthy(self, service: str) -> bool:
        return bool(self.project.state(service).get("Health", {}).get("Status") == "healthy")


def start_fault_stack(
    image: str, hint: str, server: str = "dnsmasq", **env: str
) -> FaultStack:
    """The fault stack started, leased, ready and answering tcp/8080 from the LAN client."""
    build_images()
    project = ComposeProject(
        compose_file=FAULTS_FILE,
        name=harness.unique_project_name(hint),
        env={
            "ANCHORD_IMAGE": image,
            "ANCHORD_LAN_IMAGE": LAN_IMAGE,
            "ANCHORD_DHCP_IMAGE": dhcp_support.DHCP_IMAGE,
            "LAN6_DOCKER_SUBNET": stack_support.random_ula64(),
            "TRANSIT6_DOCKER_SUBNET": stack_support.random_ula64(),
            "STREAM_SERVER": ls.ECHO_SERVER,
            "SERVER": server,
            **env,
        },
    )
    stack = FaultStack(project, server=server)
    try:
        project.up(timeout=240)
        v4 = wait_until(lambda: stack.project_address(4), 60, interval=0.5,
                        message="the project's IPv4 lease")
        wait_until(lambda: stack.status_json()["ready"], 60, interval=0.5,
                   message="anchord ready")
        wait_until(lambda: stack.answers(v4), 60, interval=0.3,
                   message=f"tcp/{APP_PORT} on {v4} answering the LAN client")
        wait_until(lambda: stack.dnat_map(4).get(SPARE_PORT) == stack.transit4("spare-anchor"),
                   60, interval=0.3, message="the spare backend mapped")
    except BaseException:
        print(project.dump())
        down(stack)
        raise
    return stack


def down(stack: FaultStack) -> None:
    """Take the stack down fast: the apps' stop is not under test."""
    stack.project.compose("--profile", "*", "down", "-v", "--remove-orphans", "-t", "2",
                          check=False, timeout=180)


def hold(seconds: float) -> None:
    """Let a fault last ``seconds`` while the load runs: a duration the test sets, not a
    condition to wait for."""
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, seconds + 5, interval=0.05,
               message=f"{seconds:g} s of fault")


# --- the UDP flow and the app's egress ---------------------------------------------------------
# Run in a container: argv = kind host port want interval deadline. kind "udp": one socket,
# a datagram every interval, each answer must name ``want`` as the peer (1 s to answer);
# kind "tcp": a new connection every interval, the answer must name ``want``. Prints "ready"
# after the first success (or "not ready" at the deadline), stops when stdin closes and
# prints one JSON report: {"ok": [times], "failed": [[time, error]]}.
FLOW_SCRIPT = r"""
import json, socket, sys, threading, time
kind, host, port, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
interval, deadline = float(sys.argv[5]), float(sys.argv[6])
stop = threading.Event()
ok, failed = [], []
udp = None
if kind == "udp":
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect((host, port))
    udp.settimeout(1.0)

def once(seq):
    started = time.time()
    try:
        if udp is not None:
            udp.send(b"%d\n" % seq)
            while True:  # a late answer to an earlier datagram is not this one's
                data = udp.recv(4096)
                if data:
                    break
        else:
            with socket.create_connection((host, port), timeout=2) as c:
                c.settimeout(2)
                data = b""
                while True:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        reply = json.loads(data.decode())
        if reply.get("peer") != want:
            raise ValueError("peer %r" % (reply.get("peer"),))
    except Exception as exc:
        failed.append([started, "%s: %s" % (type(exc).__name__, exc)])
        return False
    ok.append(started)
    return True

seq = 0
end = time.monotonic() + deadline
while not once(seq):
    seq += 1
    if time.monotonic() > end:
        break
    time.sleep(0.1)
failed.clear()  # failures before the first success are the start, not the test
print("ready" if ok else "not ready", flush=True)

def loop():
    n = seq + 1
    while not stop.is_set():
        once(n)
        n += 1
        stop.wait(interval)

t = threading.Thread(target=loop)
t.start()
sys.stdin.read()
stop.set()
t.join(10)
print(json.dumps({"ok": ok, "failed": failed}), flush=True)
"""


@dataclass
class FlowReport:
    ok: list[float]
    failed: list[tuple[float, str]]


class Flow:
    """FLOW_SCRIPT running in ``service``'s container; ``finish`` stops it."""

    def __init__(self, stack: FaultStack, service: str, kind: str, host: str, port: int,
                 want: str, interval: float) -> None:
        self.name = f"{kind} from {service}"
        self.proc = subprocess.Popen(
            ["docker", "exec", "-i", stack.cid(service), "python3", "-c", FLOW_SCRIPT,
             kind, host, str(port), want, str(interval), "20"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("")

    def wait_ready(self, timeout: float = 40.0) -> None:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: not ready after {timeout:g}s") from None
        if line != "ready":
            raise RuntimeError(f"{self.name} did not start: {line!r} {self.kill()}")

    def finish(self, timeout: float = 30.0) -> FlowReport:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        err = self.kill()
        lines = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line:
                lines.append(line)
        if not lines:
            raise RuntimeError(f"{self.name} printed no report: {err}")
        data = json.loads(lines[-1])
        return FlowReport(ok=list(data["ok"]), failed=[(t, e) for t, e in data["failed"]])

    def kill(self) -> str:
        """Stop the script if it still runs and release its pipes (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(10)
        err = ""
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            err = self.proc.stderr.read()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        return err


# --- the steady load ---------------------------------------------------------------------------
@dataclass
class LoadResult:
    """What the LAN client and the app saw over one fault."""

    tcp: ls.LoadReport
    udp: FlowReport
    egress: FlowReport
    started: float
    ended: float = field(default_factory=time.time)

    def stream_broke_at(self) -> float | None:
        """When the long TCP stream broke (the load script stamps its error), or None."""
        if self.tcp.stream_error is None:
            return None
        return float(self.tcp.stream_error.split()[0])

    def failures(self, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        """Failed attempts per kind that started within [start, end]."""
        return {
            "tcp": sum(1 for t, _ in self.tcp.failed if start <= t <= end),
            "udp": sum(1 for t, _ in self.udp.failed if start <= t <= end),
            "egress": sum(1 for t, _ in self.egress.failed if start <= t <= end),
        }

    def outage(self, kind: str, start: float, end: float) -> float:
        """Seconds without a successful attempt of ``kind`` around the failures started in
        [start, end]: from the last success before the first failure to the first success
        after the last one (0 when nothing failed)."""
        report = {"tcp": (self.tcp.ok, self.tcp.failed), "udp": (self.udp.ok, self.udp.failed),
                  "egress": (self.egress.ok, self.egress.failed)}[kind]
        ok, failed = sorted(report[0]), sorted(t for t, _ in report[1] if start <= t <= end)
        if not failed:
            return 0.0
        before = [t for t in ok if t < failed[0]]
        after = [t for t in ok if t > failed[-1]]
        if not after:
            return float("inf")
        return after[0] - (before[-1] if before else start)

    def first_ok_after(self, since: float) -> float | None:
        """Start time of the first answered new TCP connection started at or after ``since``."""
        later = [t for t in self.tcp.ok if t >= since]
        return min(later) if later else None

    def summary(self) -> str:
        broke = self.stream_broke_at()
        stream = (f"stream {self.tcp.echoes} echoes, "
                  + ("intact" if broke is None else f"broke at +{broke - self.started:.1f}s"))
        return (f"{len(self.tcp.ok)} new tcp ok / {len(self.tcp.failed)} failed, {stream}, "
                f"udp {len(self.udp.ok)} ok / {len(self.udp.failed)} lost, "
                f"egress {len(self.egress.ok)} ok / {len(self.egress.failed)} failed")


class FaultLoad:
    """The steady load: long TCP stream + new connections (LoadClient), a UDP flow, and the
    app's egress to the LAN client. Use as a context manager around the fault."""

    def __init__(self, stack: FaultStack, v4: str) -> None:
        self.started = time.time()
        self.tcp = ls.LoadClient(stack, v4, CLIENT_V4)
        self.udp = Flow(stack, "client", "udp", v4, APP_PORT, CLIENT_V4, 0.05)
        self.egress = Flow(stack, "web", "tcp", CLIENT_V4, ECHO_PORT, v4, 0.1)
        self.result: LoadResult | None = None

    def __enter__(self) -> FaultLoad:
        try:
            self.tcp.wait_ready()
            self.udp.wait_ready()
            self.egress.wait_ready()
        except BaseException:
            self.kill()
            raise
        self.started = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.result = self.finish()
        self.kill()

    def finish(self) -> LoadResult:
        tcp = self.tcp.finish() if self.tcp.proc.poll() is None else None
        udp = self.udp.finish()
        egress = self.egress.finish()
        if tcp is None:
            raise RuntimeError(f"the TCP load client ended early: {self.tcp.kill()}")
        return LoadResult(tcp=tcp, udp=udp, egress=egress, started=self.started)

    def kill(self) -> None:
        self.tcp.kill()
        self.udp.kill()
        self.egress.kill()


# --- process, map and conntrack figures --------------------------------------------------------
@dataclass
class Sample:
    """One reading: per process name, RSS (KiB) and open descriptors; map elements, conntrack
    entries; and the pids, to tell a restarted instance from the one sampled before."""

    time: float
    rss_kib: dict[str, int]
    fds: dict[str, int]
    pids: dict[str, int]
    map_elements: int
    conntrack: int


def _process_name(cmdline: list[str]) -> str | None:
    """The program a process of the anchord or proxy container is (by its command line)."""
    if "worker" in cmdline:
        i = cmdline.index("worker")
        return cmdline[i + 1] if i + 1 < len(cmdline) else None
    if "docker-proxy" in cmdline:
        return "docker-proxy"
    joined = " ".join(cmdline)
    if "supervisord" in joined:
        return "supervisord"
    if any(Path(arg).name == "anchord" for arg in cmdline[:2]):
        return "entry"
    return None


def _host_pids(container: str) -> list[int]:
    """Host pids of the container's processes (from its cgroup; `docker top` is slower)."""
    out = harness.run(["docker", "top", container, "-eo", "pid"]).stdout
    return [int(line) for line in out.split()[1:] if line.isdigit()]


def _read_proc(pid: int) -> tuple[str | None, int, int] | None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None  # gone meanwhile
    rss = next((int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")), 0)
    name = _process_name([part.decode(errors="replace") for part in cmdline if part])
    return name, rss, fds


class ProcessSampler:
    """Reads the figures of the soak from the host (root: every process's /proc)."""

    def __init__(self, stack: FaultStack) -> None:
        self.stack = stack

    def processes(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        rss: dict[str, int] = {}
        fds: dict[str, int] = {}
        pids: dict[str, int] = {}
        for service in ("anchord", "docker-proxy"):
            for pid in _host_pids(self.stack.cid(service)):
                found = _read_proc(pid)
                if found is None or found[0] is None:
                    continue  # a short-lived helper (an exec of ours, nft) is not a program
                name, kib, count = found
                assert name is not None
                if name in pids:  # two of one name (e.g. a wrapper and its child): add up
                    name = f"{name}+{pid}"
                rss[name], fds[name], pids[name] = kib, count, pid
        return rss, fds, pids

    def map_elements(self) -> int:
        out = self.stack.exec("anchord", "nft", "-j", "list", "ruleset")
        total = 0
        for item in json.loads(out)["nftables"]:
            for kind in ("map", "set"):
                body = item.get(kind)
                if body and str(body.get("table", "")).startswith("anchord_"):
                    total += len(body.get("elem", []))
        return total

    def conntrack(self) -> int:
        out = self.stack.exec("anchord", "conntrack", "-C", check=False).strip()
        return int(out) if out.isdigit() else -1

    def sample(self) -> Sample:
        rss, fds, pids = self.processes()
        return Sample(time=time.time(), rss_kib=rss, fds=fds, pids=pids,
                      map_elements=self.map_elements(), conntrack=self.conntrack())
