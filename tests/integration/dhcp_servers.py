"""Real DHCP servers and a dhcp worker process, in namespaces a test made.

Owns the test bed of the dhcp worker's integration tests: a LAN namespace with
a bridge, server namespaces attached to it (dnsmasq, ISC Kea, radvd, each with
its config and lease file in a temporary directory), the anchor namespace whose
``eth0`` is the VLAN parent, and the worker itself run as a real process in the
anchor namespace (``python3 -m tests.integration.dhcp_servers worker``) with a
bus stand-in that writes every published event as a JSON line to a file, so a
test reads exactly what the worker told the bus.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from tests.netns import Netns, Topology, sh, topology, wait_until

REPO = Path(__file__).resolve().parents[2]
LAN_V4 = "10.77.0"
LAN_V6 = "fd77::"
MAC = "02:42:aa:bb:cc:01"


class Lan:
    """A LAN bridge in its own namespace, an anchor namespace plugged into it."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.lan = topo.netns("lan")
        self.lan.run("ip", "link", "add", "br0", "type", "bridge")
        self.lan.run("ip", "link", "set", "br0", "up")
        self.lan.sysctl("net.ipv6.conf.all.disable_ipv6", "0")
        self.anchor = topo.netns("anc")
        self.ports = 0
        self.plug(self.anchor, "eth0")
        self.procs: list[subprocess.Popen[bytes]] = []

    def plug(self, ns: Netns, ifname: str, address: str = "", address6: str = "") -> None:
        """Connect ``ns`` to the bridge with interface ``ifname``."""
        self.ports += 1
        port = f"p{self.ports}"
        self.topo.veth(ns, ifname, self.lan, port)
        self.lan.run("ip", "link", "set", port, "master", "br0")
        if address:
            ns.run("ip", "addr", "add", address, "dev", ifname)
        if address6:
            ns.run("ip", "addr", "add", address6, "dev", ifname, "nodad")

    def server_ns(self, role: str, last_octet: int) -> Netns:
        ns = self.topo.netns(role)
        # Servers bind to their link-local address at start: no DAD wait for it.
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        self.plug(ns, "eth0", f"{LAN_V4}.{last_octet}/24", f"{LAN_V6}{last_octet}/64")
        return ns

    def start(self, ns: Netns, argv: Sequence[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
            proc = ns.popen(list(argv), stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


@contextmanager
def lan(tmp: Path) -> Iterator[Lan]:
    with topology("dh") as topo:
        bed = Lan(topo, tmp)
        try:
            yield bed
        finally:
            bed.close()


# --- servers -----------------------------------------------------------------


class Dnsmasq:
    """dnsmasq as DHCPv4 (and optionally DHCPv6 + RA) server on ``eth0`` of ``ns``."""

    def __init__(self, bed: Lan, ns: Netns, name: str, *extra: str, first: int = 100,
                 last: int = 150, lease: str = "2m") -> None:
        self.leases = bed.tmp / f"{name}.leases"
        self.log = bed.tmp / f"{name}.log"
        argv = ["dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces",
                "--log-dhcp", "--log-facility=-", f"--dhcp-leasefile={self.leases}",
                f"--pid-file={bed.tmp / name}.pid", "--conf-file=/dev/null",
                f"--dhcp-range={LAN_V4}.{first},{LAN_V4}.{last},255.255.255.0,{lease}",
                *extra]
        self.proc = bed.start(ns, argv, self.log)

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop(self.proc)


class Kea4:
    """ISC kea-dhcp4 with raw sockets and a memfile lease file in the test's directory."""

    def __init__(self, bed: Lan, ns: Netns, name: str, *, valid: int = 30,
                 pool: str = f"{LAN_V4}.160 - {LAN_V4}.170", authoritative: bool = False,
                 renew: int = 0, rebind: int = 0) -> None:
        self.leases = bed.tmp / f"{name}.leases4.csv"
        self.log = bed.tmp / f"{name}.log"
        subnet: dict[str, Any] = {
            "id": 1, "subnet": f"{LAN_V4}.0/24", "pools": [{"pool": pool}],
            "option-data": [{"name": "routers", "data": f"{LAN_V4}.1"}]}
        dhcp4: dict[str, Any] = {
            "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "raw"},
            "lease-database": {"type": "memfile", "persist": True, "name": str(self.leases),
                               "lfc-interval": 0},
            "valid-lifetime": valid, "authoritative": authoritative,
            "subnet4": [subnet],
            "loggers": [{"name": "kea-dhcp4", "severity": "DEBUG", "debuglevel": 40,
                         "output_options": [{"output": "stdout"}]}],
        }
        if renew:
            dhcp4["renew-timer"] = renew
            dhcp4["rebind-timer"] = rebind
        conf = bed.tmp / f"{name}.json"
        conf.write_text(json.dumps({"Dhcp4": dhcp4}))
        env = {"KEA_PIDFILE_DIR": str(bed.tmp), "KEA_LOCKFILE_DIR": str(bed.tmp)}
        self.proc = bed.start(ns, ["kea-dhcp4", "-c", str(conf)], self.log, env)

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop(self.proc)


class Kea6:
    """ISC kea-dhcp6 with a memfile lease file in the test's directory (needs an RA with M)."""

    def __init__(self, bed: Lan, ns: Netns, name: str, *, valid: int = 30, preferred: int = 20,
                 renew: int = 8, rebind: int = 14) -> None:
        self.leases = bed.tmp / f"{name}.leases6.csv"
        self.log = bed.tmp / f"{name}.log"
        dhcp6: dict[str, Any] = {
            "interfaces-config": {"interfaces": ["eth0"]},
            "lease-database": {"type": "memfile", "persist": True, "name": str(self.leases),
                               "lfc-interval": 0},
            "preferred-lifetime": preferred, "valid-lifetime": valid,
            "renew-timer": renew, "rebind-timer": rebind,
            # Not /var/lib/kea: the server DUID stays in memory for a test.
            "server-id": {"type": "LL", "htype": 1, "identifier": "020000000009",
                          "persist": False},
            "subnet6": [{"id": 1, "subnet": f"{LAN_V6}/64", "interface": "eth0",
                         "pools": [{"pool": f"{LAN_V6}200-{LAN_V6}2ff"}]}],
            "loggers": [{"name": "kea-dhcp6", "severity": "DEBUG", "debuglevel": 40,
                         "output_options": [{"output": "stdout"}]}],
        }
        conf = bed.tmp / f"{name}.json"
        conf.write_text(json.dumps({"Dhcp6": dhcp6}))
        env = {"KEA_PIDFILE_DIR": str(bed.tmp), "KEA_LOCKFILE_DIR": str(bed.tmp)}
        self.proc = bed.start(ns, ["kea-dhcp6", "-c", str(conf)], self.log, env)

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop(self.proc)


class Radvd:
    """radvd announcing ``prefix`` for SLAAC only (no M flag) on ``eth0`` of ``ns``."""

    def __init__(self, bed: Lan, ns: Netns, name: str, prefix: str = f"{LAN_V6}/64",
                  managed: bool = False) -> None:
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        flag = "on" if managed else "off"
        autonomous = "off" if managed else "on"
        conf = bed.tmp / f"{name}.conf"
        conf.write_text(
            "interface eth0 {\n AdvSendAdvert on;\n MinRtrAdvInterval 3;\n"
            f" MaxRtrAdvInterval 4;\n AdvManagedFlag {flag};\n"
            f" prefix {prefix} {{\n  AdvOnLink on;\n  AdvAutonomous {autonomous};\n }};\n}};\n")
        self.log = bed.tmp / f"{name}.log"
        self.proc = bed.start(ns, ["radvd", "--nodaemon", "-C", str(conf), "-p",
                                   str(bed.tmp / f"{name}.pid"), "-m", "stderr"], self.log)

    def stop(self) -> None:
        stop(self.proc)


class Kea6Server:
    """kea-dhcp6 with a chosen server DUID, pool and host reservations; restartable, with or
    without its lease file (the NoBinding case). The server DUID is DUID-LL of ``server_mac``:
    ``duid_hex`` is what the client stores as the lease's server."""

    def __init__(self, bed: Lan, ns: Netns, name: str, *, server_mac: str = "020000000009",
                 valid: int = 30, preferred: int = 20, renew: int = 8, rebind: int = 14,
                 pool: str = f"{LAN_V6}200-{LAN_V6}2ff",
                 reservations: Sequence[tuple[str, str]] = ()) -> None:
        self.bed, self.ns, self.name = bed, ns, name
        self.leases = bed.tmp / f"{name}.leases6.csv"
        self.log = bed.tmp / f"{name}.log"
        self.conf = bed.tmp / f"{name}.json"
        self.duid_hex = "00030001" + server_mac
        self.settings: dict[str, Any] = {
            "server_mac": server_mac, "valid": valid, "preferred": preferred, "renew": renew,
            "rebind": rebind, "pool": pool, "reservations": list(reservations)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, **changes: Any) -> None:
        """(Re)start with the settings, ``changes`` applied (e.g. ``reservations=...``)."""
        self.settings.update(changes)
        c = self.settings
        subnet: dict[str, Any] = {
            "id": 1, "subnet": f"{LAN_V6}/64", "interface": "eth0",
            "pools": [{"pool": c["pool"]}],
            "reservations": [{"duid": duid, "ip-addresses": [address]}
                             for duid, address in c["reservations"]]}
        dhcp6: dict[str, Any] = {
            "interfaces-config": {"interfaces": ["eth0"]},
            "lease-database": {"type": "memfile", "persist": True, "name": str(self.leases),
                               "lfc-interval": 0},
            "preferred-lifetime": c["preferred"], "valid-lifetime": c["valid"],
            "renew-timer": c["renew"], "rebind-timer": c["rebind"],
            "server-id": {"type": "LL", "htype": 1, "identifier": c["server_mac"],
                          "persist": False},
            "subnet6": [subnet],
            "loggers": [{"name": "kea-dhcp6", "severity": "DEBUG", "debuglevel": 40,
                         "output_options": [{"output": "stdout"}]}],
        }
        self.conf.write_text(json.dumps({"Dhcp6": dhcp6}))
        env = {"KEA_PIDFILE_DIR": str(self.bed.tmp), "KEA_LOCKFILE_DIR": str(self.bed.tmp)}
        self.proc = self.bed.start(self.ns, ["kea-dhcp6", "-c", str(self.conf)], self.log,
                                   env)
        wait_until(lambda: "DHCP6_STARTED" in self.lines(), 10, what=f"{self.name} started")

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, forget_leases: bool = False) -> None:
        """Stop; with ``forget_leases`` its lease file goes too (a server that lost its
        database)."""
        if self.proc is not None:
            stop(self.proc)
        if forget_leases:
            for path in self.bed.tmp.glob(f"{self.name}.leases6.csv*"):
                path.unlink()


class RadvdPrefixes:
    """radvd announcing several prefixes with chosen lifetimes; ``announce`` rewrites the
    config and reloads it (SIGHUP), as an operator renumbering the LAN would."""

    def __init__(self, bed: Lan, ns: Netns, name: str,
                 prefixes: Sequence[tuple[str, int, int]], managed: bool = False) -> None:
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        self.conf = bed.tmp / f"{name}.conf"
        self.managed = managed
        self.write(prefixes)
        self.log = bed.tmp / f"{name}.log"
        self.proc = bed.start(ns, ["radvd", "--nodaemon", "-C", str(self.conf), "-p",
                                   str(bed.tmp / f"{name}.pid"), "-m", "stderr", "-d", "1"],
                              self.log)

    def write(self, prefixes: Sequence[tuple[str, int, int]]) -> None:
        """``prefixes``: (prefix, preferred lifetime, valid lifetime)."""
        body = "".join(
            f" prefix {prefix} {{\n  AdvOnLink on;\n  AdvAutonomous on;\n"
            f"  AdvPreferredLifetime {preferred};\n  AdvValidLifetime {valid};\n }};\n"
            for prefix, preferred, valid in prefixes)
        flag = "on" if self.managed else "off"
        self.conf.write_text(
            "interface eth0 {\n AdvSendAdvert on;\n MinRtrAdvInterval 3;\n"
            f" MaxRtrAdvInterval 4;\n AdvManagedFlag {flag};\n{body}}};\n")

    def announce(self, prefixes: Sequence[tuple[str, int, int]]) -> None:
        self.write(prefixes)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        stop(self.proc)


class Capture:
    """tcpdump on the LAN bridge (inside the test's LAN namespace), one text line a frame."""

    def __init__(self, bed: Lan, name: str, expression: str) -> None:
        self.out = bed.tmp / f"{name}.pcap.txt"
        self.proc = bed.start(bed.lan, ["tcpdump", "-i", "br0", "-l", "-n", "-e", "-tt",
                                        "-vv", expression], self.out)
        wait_until(lambda: "listening on" in self.text(), 10, what="tcpdump listening")

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def frames(self) -> list[tuple[float, str]]:
        """(time, line) of each frame's first line."""
        out = []
        for line in self.text().splitlines():
            head = line.split(" ", 1)
            # a continuation line of -vv, or tcpdump's own messages
            with contextlib.suppress(ValueError):
                out.append((float(head[0]), line))
        return out

    def stop(self) -> None:
        stop(self.proc)


# --- the worker ----------------------------------------------------------------


class Worker:
    """One dhcp worker process in the anchor namespace, with its event file."""

    def __init__(self, bed: Lan, *, hostname: str = "proj-one", mac: str = MAC,
                 backoff_max: float = 8.0, network_map: dict[str, Any] | None = None,
                 parent: str = "eth0", iface: str = "anchord-ext") -> None:
        self.bed = bed
        self.state_dir = bed.tmp / "state"
        self.run_dir = bed.tmp / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.events = bed.tmp / "events.jsonl"
        self.log = bed.tmp / "worker.log"
        self.iface = iface
        self.spec = {"hostname": hostname, "mac": mac, "backoff_max": backoff_max,
                     "state_dir": str(self.state_dir), "run_dir": str(self.run_dir),
                     "events": str(self.events), "parent": parent, "iface": iface,
                     "network_map": network_map}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Worker:
        self.events.write_text("")
        self.started_at = time.monotonic()
        self.proc = self.bed.start(
            self.bed.anchor,
            [sys.executable, "-m", "tests.integration.dhcp_servers", "worker",
             json.dumps(self.spec)], self.log, {"PYTHONPATH": str(REPO)})
        return self

    def stop(self, shutdown: bool = False, sig: int = signal.SIGTERM,
             release: bool = False) -> int:
        """Stop the worker: a restart, or with ``shutdown`` a container stop (the entry's
        marker), which with ``release`` gives the leases back (``anchord release``)."""
        marker = self.run_dir / "shutdown"
        release_marker = self.run_dir / "release"
        if shutdown:
            marker.write_text("test\n")
        if release:
            release_marker.write_text("test\n")
        assert self.proc is not None
        code = stop(self.proc, sig)
        marker.unlink(missing_ok=True)
        release_marker.unlink(missing_ok=True)
        return code

    def published(self) -> list[dict[str, Any]]:
        out = []
        for line in self.events.read_text().splitlines():
            # a line being written right now
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def lease(self, family: int) -> dict[str, Any] | None:
        """The latest lease state of ``family`` the worker published (None if lost/none)."""
        current = None
        for ev in self.published():
            if ev["topic"] == "LeaseChanged/" and ev["data"]["lease"]["family"] == family:
                current = ev["data"]
            elif ev["topic"] == "LeaseLost/" and ev["data"]["family"] == family:
                current = None
        return current

    def addresses(self, family: int = 4) -> list[str]:
        out = self.bed.anchor.run("ip", "-j", f"-{family}", "addr", "show", "dev", self.iface,
                                  check=False)
        try:
            doc = json.loads(out or "[]")
        except ValueError:
            return []
        return [f"{a['local']}/{a['prefixlen']}" for link in doc for a in link.get("addr_info", [])
                if a.get("scope") == "global"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_lease(self, family: int = 4, timeout: float = 15.0,
                   pred: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        def check() -> Any:
            lease = self.lease(family)
            return lease if lease is not None and pred(lease) else None
        try:
            return wait_until(check, timeout, what=f"a v{family} lease")
        except TimeoutError:
            print(self.log_text()[-4000:])
            raise


# --- the process side: run the worker with a file bus ------------------------------


class FileBus:
    """The BusClient contract, publishing to a JSON-lines file (tests read it)."""

    def __init__(self, path: Path, inbox: Sequence[Any] = ()) -> None:
        self.fh = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the bus's life
        self.ready_fds: set[int] = set()
        self.watched: set[int] = set()
        self.state: Callable[[], Sequence[Any]] = lambda: ()
        self.inbox = list(inbox)
        self.heartbeat = time.monotonic() + 5.0

    def publish(self, event: Any) -> None:
        self.fh.write(json.dumps({"topic": event.TOPIC, "t": time.time(),
                                  "data": msgspec.to_builtins(event)}) + "\n")

    def set_state(self, provider: Callable[[], Sequence[Any]]) -> None:
        self.state = provider

    def state_changed(self) -> None:
        for event in self.state():
            self.publish(event)

    def set_conditions(self, provider: object) -> None:
        self.conditions = provider

    def watch(self, fd: int) -> None:
        self.watched.add(fd)

    def unwatch(self, fd: int) -> None:
        self.watched.discard(fd)

    def poll(self, timeout: float) -> list[Any]:
        if self.inbox:
            events, self.inbox = self.inbox, []
            return events
        try:
            ready, _, _ = select.select(list(self.watched), [], [], timeout)
        except InterruptedError:
            ready = []
        self.ready_fds = set(ready)
        if time.monotonic() >= self.heartbeat:
            self.heartbeat = time.monotonic() + 5.0
            self.state_changed()
        return []


def _worker_main(spec: dict[str, Any]) -> int:
    from anchord.config import NetworkAnchorConfig
    from anchord.lifecycle import Lifecycle
    from bus.events import NetworkAttachment, NetworkMap
    from workers import dhcp

    logging.basicConfig(level=logging.DEBUG if spec.get("debug") else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stdout)
    config = NetworkAnchorConfig(
        project="proj", vlan_parent=spec["parent"], dhcp_hostname=spec["hostname"],
        ext_mac=spec["mac"], ext_iface=spec["iface"], dhcp_backoff_max=spec["backoff_max"],
        state_dir=Path(spec["state_dir"]), run_dir=Path(spec["run_dir"]))
    from bus.events import Condition, WorkerStatus

    # This file bus stands in for the nat-writer too: its tables (the LAN filter) are
    # reported in place, or the worker keeps the child down (tests/integration/test_dhcp_bus.py
    # runs the real nat-writer).
    inbox: list[Any] = [WorkerStatus(worker="nat-writer", pid=0, started=0.0,
                                     conditions=(Condition("nat_tables", True, ""),))]
    if spec.get("network_map"):
        inbox.append(NetworkMap(networks=tuple(
            NetworkAttachment(**a) for a in spec["network_map"]["networks"])))
    class Fields(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return super().format(record) + " " + json.dumps(getattr(record, "fields", {}),
                                                             default=str)

    logging.getLogger().handlers[0].setFormatter(
        Fields("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger("pyroute2").setLevel(logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.INFO)
    bus = FileBus(Path(spec["events"]), inbox)
    life = Lifecycle(config.run_dir)
    life.install_signal_handlers()
    return dhcp.run(config, bus, life)  # type: ignore[arg-type]


def _bootp_reply(mac: str, xid: int, options: bytes, yiaddr: str = f"{LAN_V4}.250") -> bytes:
    import ipaddress
    import struct

    chaddr = bytes(int(x, 16) for x in mac.split(":")) + b"\x00" * 10
    return (struct.pack("!BBBBIHH", 2, 1, 6, 0, xid, 0, 0) + b"\x00" * 4
            + ipaddress.IPv4Address(yiaddr).packed + b"\x00" * 8 + chaddr
            + b"\x00" * 192 + b"\x63\x82\x53\x63" + options)


def _fuzz_main(mac: str, count: int, seed: int) -> int:
    """From a LAN namespace: learn the client's xids, then throw bad replies at it."""
    import random
    import socket
    import struct

    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import ICMPv6ND_RA, IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    rng = random.Random(seed)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind(("eth0", 0))
    sock.settimeout(1.0)
    own = Path("/sys/class/net/eth0/address").read_text().strip()
    src_ll = "fe80::99"

    def sniff(pred: Callable[[bytes], int | None], timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                frame = sock.recv(4096)
            except TimeoutError:
                continue
            found = pred(frame)
            if found is not None:
                return found
        raise TimeoutError("nothing sniffed")

    def v4_xid(frame: bytes) -> int | None:
        if frame[6:12].hex(":") == mac and frame[12:14] == b"\x08\x00" and \
                frame[23] == 17 and frame[36:38] == b"\x00\x43":
            return int(struct.unpack("!I", frame[46:50])[0])
        return None

    def v6_xid(frame: bytes) -> int | None:
        if frame[6:12].hex(":") == mac and frame[12:14] == b"\x86\xdd" and \
                frame[20] == 17 and frame[56:58] == b"\x02\x23":
            return int.from_bytes(frame[63:66], "big")
        return None

    sent = 0

    def send4(payload: bytes) -> None:
        # Valid IP/UDP framing (a LAN bridge with br_netfilter drops bad IP checksums),
        # whatever the BOOTP payload; paced so the client's socket buffer is not the test.
        nonlocal sent
        sock.send(bytes(Ether(src=own, dst=mac) / IP(src=f"{LAN_V4}.9", dst=f"{LAN_V4}.250")
                        / UDP(sport=67, dport=68) / Raw(payload)))
        sent += 1
        time.sleep(0.002)

    xid = sniff(v4_xid)
    good = (b"\x35\x01\x02" + b"\x36\x04" + bytes([10, 77, 0, 9]) + b"\x33\x04\x00\x00\x0e\x10"
            + b"\x01\x04\xff\xff\xff\x00" + b"\x03\x04" + bytes([10, 77, 0, 9]))
    corpus = [
        b"", b"\x02" * 10, _bootp_reply(mac, xid, b"")[:200],  # truncated headers
        _bootp_reply(mac, xid, good),  # no end option
        _bootp_reply(mac, xid, good + b"\x0c\xff" + b"x" * 10 + b"\xff"),  # length past end
        _bootp_reply(mac, xid, b"\x35\x00" + good[3:] + b"\xff"),  # zero-length type
        _bootp_reply(mac, xid, b"\x35\x01\x63" + good[3:] + b"\xff"),  # unknown type
        _bootp_reply(mac, xid, good.replace(b"\x36\x04", b"\x36\x03") + b"\xff"),  # bad id len
        _bootp_reply(mac, xid ^ 1, good + b"\xff"),  # wrong xid
        _bootp_reply("02:00:00:00:00:09", xid, good + b"\xff"),  # wrong chaddr
        # option 43 in four parts (RFC 3396: concatenated to 1 020 octets, fine); the unusable
        # yiaddr keeps it from being taken
        _bootp_reply(mac, xid, good + (b"\x2b\xff" + b"A" * 255) * 4 + b"\xff",
                     yiaddr="224.0.0.2"),
        # 121 of length 0, twice (RFC 3396: concatenated, still empty and ignored); the
        # unusable yiaddr keeps this OFFER from being taken, as every frame here must be.
        _bootp_reply(mac, xid, good + b"\x79\x00" + b"\x79\x00" + b"\xff",
                     yiaddr="255.255.255.255"),
        # repeated mask: concatenated (RFC 3396) into 8 octets, a bad length
        _bootp_reply(mac, xid, good + b"\x01\x04\xff\x00\xff\x00\xff"),
        _bootp_reply(mac, xid, good + b"\xff", yiaddr="255.255.255.255"),  # broadcast yiaddr
        _bootp_reply(mac, xid, good + b"\xff", yiaddr="224.0.0.1"),  # multicast yiaddr
        _bootp_reply(mac, xid, b"\x35\x01\x05" + good[3:] + b"\xff"),  # ACK while selecting
    ]
    for payload in corpus:
        send4(payload)
    # Random mutations of a valid-looking OFFER with our xid, all with a bad server id
    # length so that none of them can bind (the liveness check comes after).
    base = bytearray(_bootp_reply(mac, xid, good.replace(b"\x36\x04", b"\x36\x05")
                                  + b"\x00\x0c\x05" + bytes(range(0xF8, 0xFD)) + b"\xff"))
    for _ in range(count):
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 12)):
            pos = rng.randrange(len(mutated))
            mutated[pos] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[:rng.randrange(len(mutated))]
        send4(bytes(mutated))
    # IPv6: an RA with M makes the client solicit; malformed RAs and DHCPv6 replies follow.
    sent_v4 = sent
    ra = Ether(src=own, dst="33:33:00:00:00:01") / IPv6(src=src_ll, dst="ff02::1", hlim=255) \
        / ICMPv6ND_RA(M=1, routerlifetime=0)
    sock.send(bytes(ra))
    for cut in (15, 40, 58, 60):
        sock.send(bytes(ra)[:cut])
        sent += 1
    xid6 = sniff(v6_xid)
    duid = struct.pack("!HH", 3, 1) + bytes(int(x, 16) for x in mac.split(":"))

    def opt(code: int, value: bytes, length: int | None = None) -> bytes:
        return struct.pack("!HH", code, len(value) if length is None else length) + value

    head6 = bytes([2]) + xid6.to_bytes(3, "big")
    ia = opt(3, struct.pack("!III", 1, 0, 0) + opt(5, b"\xfd\x77" + b"\x00" * 13 + b"\x05"
                                                     + struct.pack("!II", 100, 50)))
    corpus6 = [
        b"", head6[:3], head6,  # truncated, no ids
        head6 + opt(1, duid) + opt(2, b"\x00\x01", 40),  # length past end
        head6 + opt(1, duid) + opt(2, b"\x00\x03\x00\x01" + b"x" * 6) + ia,  # wrong IAID
        head6 + opt(1, b"\x00\x03\x00\x01" + b"\x00" * 6) + opt(2, b"\x00\x03" * 4) + ia,
        head6 + opt(1, duid) + opt(2, b"\x00\x03" * 4) + opt(3, b"\x00" * 5),  # short IA
        head6 + opt(1, duid) + opt(2, b"\x00\x03" * 4) + opt(13, b""),  # empty status
        head6 + opt(1, duid) + opt(2, b"\x00" * 200),  # oversized server id
        head6 + opt(1, duid) + opt(1, duid) + opt(2, b"\x00\x03" * 4),  # two client ids
        (head6 + opt(1, duid) + opt(2, b"\x00\x03" * 4) + opt(39, b"\xff" * 255)) * 4,
    ]
    for payload in corpus6 + [bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
                              for _ in range(count // 4)]:
        frame = bytes(Ether(src=own, dst=mac) / IPv6(src=src_ll, dst="fe80::1", hlim=64)
                      / UDP(sport=547, dport=546) / Raw(payload))
        sock.send(frame)
        sent += 1
        time.sleep(0.002)
    print(json.dumps({"sent": sent, "sent_v4": sent_v4, "xid": xid, "xid6": xid6}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        sys.exit(_worker_main(json.loads(sys.argv[2])))
    if len(sys.argv) == 5 and sys.argv[1] == "fuzz":
        sys.exit(_fuzz_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit("usage: python3 -m tests.integration.dhcp_servers worker '<json spec>' | "
             "fuzz <mac> <count> <seed>")


__all__ = ["Dnsmasq", "Kea4", "Kea6", "Lan", "Radvd", "Worker", "lan", "sh", "stop", "wait_until"]
