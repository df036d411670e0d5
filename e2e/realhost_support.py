"""Support of e2e/test_realhost.py: the real-host topology (F-6d) around a Compose project.

Owns the host side that a real server would already have and a test must make: a LAN network
namespace (``ip netns add``) joined to the host (root) namespace by a veth pair, whose host end
``arh<random>`` plays the VLAN parent (``eth0.42``); dnsmasq serving DHCPv4 on the LAN end
(lease file and log in a temporary directory); a TCP/UDP listener in the LAN namespace that
answers with the peer address (the egress target, ``lantool.py serve`` run by the host's
Python); router advertisements (dnsmasq, SLAAC) of an IPv6 prefix of the LAN's own; queries
from the LAN namespace (``lantool.py query``); a handle of the host's network
namespace made with ``ip netns attach`` (PID 1's namespace file cannot be opened on these
machines), which the compose file mounts read-only as anchord's ``/run/host-netns/net``.
Also starting the project of e2e/compose/realhost/compose.yaml against all that, and
removing leftovers of a killed run (namespaces and the processes in them).

Everything the LAN namespace does stays inside it and the veth: nothing is routed to or from
the host, the host end has no address (and IPv6 off, so the host stays silent on the LAN).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchord.health import pid_alive
from e2e import harness
from e2e.harness import ComposeProject
from e2e.stack_support import Lease, parse_leases

REALHOST_FILE = harness.COMPOSE_DIR / "realhost" / "compose.yaml"
LANTOOL = harness.COMPOSE_DIR / "demo" / "lan" / "lantool.py"
# The LAN spoken in the LAN namespace: dnsmasq (also the router it announces, the client and
# the egress listener) on .1, leases from .100-.150. It exists only in that namespace and in
# the project's macvlan child, so a fixed prefix collides with nothing.
LAN_PREFIX = "10.88.0"
LAN_ADDRESS = f"{LAN_PREFIX}.1"
LAN_PREFIX6 = "fd88:0:0:1"  # a /64 announced for SLAAC
LAN_ADDRESS6 = f"{LAN_PREFIX6}::1"
# Long enough that dnsmasq never rewrites its lease file for a renewal (T1 = 5 min) while the
# module runs: the tests read that file.
LEASE_TIME = "10m"
LISTEN_PORT = 9000
NS_PREFIX = "arh"  # namespaces: arh<pytest pid>-<tag>-lan / -host; host veth: arh<tag>
_NS_NAME = re.compile(rf"^{NS_PREFIX}(\d+)-([0-9a-f]+)-(lan|host)$")


def ip(*args: str, check: bool = True) -> str:
    return harness.run(["ip", *args], check=check, timeout=30).stdout


def netns_of(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def remove_stale() -> None:
    """Namespaces (and the processes in them) of a run whose pytest process is gone. Deleting
    a LAN namespace destroys its veth end and with it the host end. A ``-host`` name is only a
    handle of the host namespace: it is deleted, and nothing in it is touched (every process
    of the machine runs there, the one that runs this suite too)."""
    for name in ip("netns", "list").split():
        m = _NS_NAME.match(name)
        if not m or pid_alive(int(m[1])):
            continue
        if m[3] == "lan":
            _kill_ns_processes(name)
        ip("netns", "del", name, check=False)


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL every process in the named namespace, which must not be this process's own:
    ``ip netns pids`` of a handle of the host namespace lists every process of the machine."""
    if os.stat(f"/run/netns/{ns}").st_ino == os.stat("/proc/self/ns/net").st_ino:
        raise RuntimeError(f"refusing to kill the processes of {ns}: it is this namespace")
    for pid in ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RealHostLan:
    """The host side of the topology. ``start()`` makes it, ``close()`` removes every piece
    (also of a half-made one)."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="anchord-realhost-")))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def lan_ns(self) -> str:
        return f"{NS_PREFIX}{os.getpid()}-{self.tag}-lan"

    @property
    def host_handle_name(self) -> str:
        return f"{NS_PREFIX}{os.getpid()}-{self.tag}-host"

    @property
    def host_handle(self) -> str:
        """A handle of the host (root) namespace: what ``/proc/1/ns/net`` is on a real host."""
        return f"/run/netns/{self.host_handle_name}"

    @property
    def parent(self) -> str:
        """The host end of the veth: anchord's VLAN parent (a real host's ``eth0.42``)."""
        return f"{NS_PREFIX}{self.tag}"

    @property
    def lan_iface(self) -> str:
        return f"{NS_PREFIX}l{self.tag}"

    @property
    def leasefile(self) -> Path:
        return self.tmp / "dnsmasq.leases"

    @property
    def dnsmasq_logfile(self) -> Path:
        return self.tmp / "dnsmasq.log"

    def start(self) -> RealHostLan:
        # The host namespace is the one dockerd (and so Docker's bridges) lives in; the veth's
        # host end and the handle must be made there.
        here = netns_of(os.getpid())
        docker_pid = Path("/var/run/docker.pid")
        if docker_pid.exists() and netns_of(docker_pid.read_text().strip()) != here:
            raise RuntimeError("the test must run in dockerd's (the host's) network namespace")
        ip("netns", "add", self.lan_ns)
        ip("-n", self.lan_ns, "link", "set", "lo", "up")
        ip("link", "add", self.parent, "type", "veth", "peer", "name", self.lan_iface,
           "netns", self.lan_ns)
        Path(f"/proc/sys/net/ipv6/conf/{self.parent}/disable_ipv6").write_text("1\n")
        ip("link", "set", self.parent, "up")
        ip("-n", self.lan_ns, "addr", "add", f"{LAN_ADDRESS}/24", "dev", self.lan_iface)
        # The LAN's router: it must not configure itself from its own RAs (dnsmasq's loop
        # back to it), or its SLAAC address becomes the source of its queries and replies.
        harness.run(["ip", "netns", "exec", self.lan_ns, "sysctl", "-qw",
                     f"net.ipv6.conf.{self.lan_iface}.accept_ra=0",
                     f"net.ipv6.conf.{self.lan_iface}.autoconf=0"])
        ip("-n", self.lan_ns, "addr", "add", f"{LAN_ADDRESS6}/64", "dev", self.lan_iface,
           "nodad")
        ip("-n", self.lan_ns, "link", "set", self.lan_iface, "up")
        ip("netns", "attach", self.host_handle_name, str(os.getpid()))
        if os.stat(self.host_handle).st_ino != os.stat(f"/proc/{os.getpid()}/ns/net").st_ino:
            raise RuntimeError(f"{self.host_handle} is not a handle of the host namespace")
        self._start_dnsmasq()
        self._start_listener()
        return self

    def _spawn(self, log: Path, *argv: str) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lan_ns, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def _start_dnsmasq(self) -> None:
        proc = self._spawn(
            self.dnsmasq_logfile,
            "dnsmasq", "--no-daemon", "--port=0", f"--interface={self.lan_iface}",
            "--bind-interfaces", "--conf-file=/dev/null", f"--pid-file={self.tmp}/dnsmasq.pid",
            f"--dhcp-range={LAN_PREFIX}.100,{LAN_PREFIX}.150,255.255.255.0,{LEASE_TIME}",
            f"--dhcp-leasefile={self.leasefile}", "--log-dhcp", "--log-facility=-", "--no-ping",
            "--enable-ra", f"--ra-param={self.lan_iface},4",
            f"--dhcp-range={LAN_PREFIX6}::,ra-only,64",
        )
        harness.wait_until(
            lambda: proc.poll() is None and "sockets bound exclusively" in self.dnsmasq_log(),
            15, message=f"dnsmasq serving DHCP on {self.lan_iface} (log: {self.dnsmasq_logfile})",
        )

    def _start_listener(self) -> None:
        self._spawn(
            self.tmp / "listener.log",
            sys.executable, str(LANTOOL), "serve", "--name", "lan",
            "--tcp", str(LISTEN_PORT), "--udp", str(LISTEN_PORT),
        )
        def answering() -> bool:
            return all("reply" in self.query(proto, address, LISTEN_PORT, 1.0)
                       for proto in ("tcp", "udp") for address in (LAN_ADDRESS, LAN_ADDRESS6))

        harness.wait_until(answering, 15,
                           message=f"the LAN listener on tcp+udp/{LISTEN_PORT}, v4 and v6")

    def close(self) -> None:
        for proc in self.procs:
            _stop(proc)
        names = ip("netns", "list", check=False).split()
        if self.lan_ns in names:
            _kill_ns_processes(self.lan_ns)  # anything a test left running in it
            ip("netns", "del", self.lan_ns, check=False)  # takes both veth ends with it
        if self.host_handle_name in names:
            ip("netns", "del", self.host_handle_name, check=False)  # only the handle
        if ip("link", "show", self.parent, check=False):
            ip("link", "del", self.parent, check=False)
        for path in sorted(self.tmp.glob("*")):
            path.unlink()
        self.tmp.rmdir()

    # --- what the tests ask ----------------------------------------------------------------
    def dnsmasq_log(self) -> str:
        if not self.dnsmasq_logfile.exists():
            return ""
        return self.dnsmasq_logfile.read_text(errors="replace")

    def leases(self) -> list[Lease]:
        return parse_leases(self.leasefile.read_text() if self.leasefile.exists() else "")

    def query(self, proto: str, host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
        """What a LAN host sees connecting to host:port: {"reply": {...}, "local": addr} or
        {"error": "..."}."""
        out = harness.run(
            ["ip", "netns", "exec", self.lan_ns, sys.executable, str(LANTOOL), "query",
             proto, host, str(port), "--timeout", str(timeout)],
            check=False, timeout=timeout + 30,
        ).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def parent_link(self) -> dict[str, Any]:
        """``ip -d -j link show`` of the host end (ifindex, promiscuity, ...)."""
        rows: list[dict[str, Any]] = json.loads(ip("-d", "-j", "link", "show", self.parent))
        return rows[0]


@dataclass
class RealHostProject:
    lan: RealHostLan
    project: ComposeProject
    address: str = ""
    cold_start_seconds: float = 0.0

    def address6(self) -> str:
        """The project's IPv6 address (SLAAC) as anchord's status reports it ("" if none)."""
        status = json.loads(self.exec("anchord", "anchord", "status", "--json"))
        lease = (status.get("leases") or {}).get("ipv6") or {}
        return str(lease.get("address") or "").split("/")[0]

    @property
    def hostname(self) -> str:
        return self.project.name  # the DHCP hostname is the project name (SPEC F-3)

    def my_leases(self) -> list[Lease]:
        return [lease for lease in self.lan.leases()
                if lease.family == 4 and lease.hostname == self.hostname]

    def exec(self, service: str, *cmd: str, check: bool = True, timeout: float = 60.0) -> str:
        return harness.run(
            ["docker", "exec", self.project.container_id(service), *cmd],
            check=check, timeout=timeout,
        ).stdout

    def app_query(self, proto: str, host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
        """What the app ("web", in web-anchor's namespace) sees connecting to host:port."""
        out = self.exec("web", "python3", "/demo/lantool.py", "query", proto, host, str(port),
                        "--timeout", str(timeout), check=False, timeout=timeout + 30)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def anchord_pid(self) -> int:
        return int(self.project.state("anchord")["Pid"])

    def child_link(self) -> dict[str, Any]:
        """``ip -d -j link show anchord-ext`` in the anchord container's namespace (entered
        from the host with nsenter, so the host's ip names the other namespace's ids)."""
        out = harness.run(["nsenter", "-t", str(self.anchord_pid()), "-n",
                           "ip", "-d", "-j", "link", "show", "anchord-ext"]).stdout
        rows: list[dict[str, Any]] = json.loads(out)
        return rows[0]


def transit_v6(tag: str) -> str:
    """A ULA /64 for the transit network, unique per test LAN (Docker refuses overlaps)."""
    return f"fd{tag[:2]}:{tag[2:6]}:7e57::/64"


def start_project(lan: RealHostLan, image: str, lan_image: str,
                  reach_timeout: float = 90.0, expose: str = "tcp/8080") -> RealHostProject:
    """Start the compose project against ``lan`` and wait until a LAN host gets an answer
    from the app on the leased address; ``cold_start_seconds`` counts from ``up`` returning.
    ``expose``: web-anchor's ``anchord.expose`` label."""
    project = ComposeProject(
        compose_file=REALHOST_FILE,
        name=harness.unique_project_name("realhost"),
        env={
            "ANCHORD_IMAGE": image,
            "ANCHORD_LAN_IMAGE": lan_image,
            "ANCHORD_HOST_NETNS": lan.host_handle,
            "ANCHORD_REALHOST_PARENT": lan.parent,
            "ANCHORD_TRANSIT_V6": transit_v6(lan.tag),
            "ANCHORD_REALHOST_EXPOSE": expose,
        },
        bridge_nf_call=1,  # a stock Docker host: no host setting changed for anchord
    )
    started = RealHostProject(lan, project)
    try:
        project.up()
        t0 = time.monotonic()

        def reachable() -> bool:
            mine = started.my_leases()
            if len(mine) != 1:
                return False
            started.address = mine[0].address
            # A short try: a SYN lost before the address is up is retried only after 1 s.
            return "reply" in lan.query("tcp", started.address, 8080, 0.3)

        harness.wait_until(reachable, reach_timeout, interval=0.1,
                           message="a lease in the LAN's dnsmasq and tcp/8080 answering on it")
        started.cold_start_seconds = time.monotonic() - t0
    except BaseException:
        print(project.dump())
        print(lan.dnsmasq_log())
        project.down()
        raise
    return started
