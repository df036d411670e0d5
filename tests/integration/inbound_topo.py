"""The inbound test topology: a LAN with a client, an anchor, backends on a transit bridge.

    lan ns                 anchor ns                             backend ns b1..bn
    eth0 192.0.2.10 ── anchord-ext 192.0.2.50 (project addr)
    2001:db8:1::10         2001:db8:1::50
                           transit 172.31.0.1 ── sw ns: bridge br0 ── eth0 172.31.0.1<i>
                                   fd00:31::1                               fd00:31::1<i>

The project address is assigned statically (DHCP is another worker's job). Also
here: entering a namespace from the test process (libnftables and pyroute2
sockets belong to the namespace they were created in), small servers that
answer with their name and the peer address they see, and clients that report
every attempt with a timestamp. All traffic stays inside these namespaces.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.netns import Netns, Topology, wait_until

EXT = "anchord-ext"
PROJECT4, PROJECT6 = "192.0.2.50", "2001:db8:1::50"
CLIENT4, CLIENT6 = "192.0.2.10", "2001:db8:1::10"
TRANSIT4, TRANSIT6 = "172.31.0.1", "fd00:31::1"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_ns_lock = threading.Lock()
# Every process started here, so that stop_all() can reap them and close their pipes.
_procs: list[subprocess.Popen[bytes]] = []


@contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run the body with this thread in ``ns`` (sockets created here stay there)."""
    with _ns_lock:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(ns.path, os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
            try:
                yield
            finally:
                if _libc.setns(home, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back home")
        finally:
            os.close(home)
            os.close(target)


@dataclass
class Backend:
    ns: Netns
    name: str
    v4: str
    v6: str
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)


@dataclass
class Inbound:
    topo: Topology
    lan: Netns
    anchor: Netns
    backends: list[Backend]


def build(topo: Topology, n_backends: int = 2) -> Inbound:
    lan = topo.netns("lan")
    anchor = topo.netns("anc")
    for ns in (lan, anchor):
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
    anchor.sysctl("net.ipv4.ip_forward", "1")
    anchor.sysctl("net.ipv6.conf.all.forwarding", "1")
    topo.veth(lan, "eth0", anchor, EXT)
    lan.run("ip", "addr", "add", f"{CLIENT4}/24", "dev", "eth0")
    lan.run("ip", "-6", "addr", "add", f"{CLIENT6}/64", "dev", "eth0", "nodad")
    anchor.run("ip", "addr", "add", f"{PROJECT4}/24", "dev", EXT)
    anchor.run("ip", "-6", "addr", "add", f"{PROJECT6}/64", "dev", EXT, "nodad")
    # The transit bridge lives in its own namespace, like Docker's bridge on the host:
    # the anchor sees a plain interface. (A bridge inside the anchor namespace would
    # bring br_netfilter's "bridged DNAT" into play, which no real anchor has.)
    switch = topo.netns("sw")
    switch.run("ip", "link", "add", "br0", "type", "bridge")
    switch.run("ip", "link", "set", "br0", "up")
    topo.veth(anchor, "transit", switch, "up0")
    switch.run("ip", "link", "set", "up0", "master", "br0")
    anchor.run("ip", "addr", "add", f"{TRANSIT4}/24", "dev", "transit")
    anchor.run("ip", "-6", "addr", "add", f"{TRANSIT6}/64", "dev", "transit", "nodad")
    backends = []
    for i in range(1, n_backends + 1):
        ns = topo.netns(f"b{i}")
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        topo.veth(ns, "eth0", switch, f"tb{i}")
        switch.run("ip", "link", "set", f"tb{i}", "master", "br0")
        v4, v6 = f"172.31.0.{10 + i}", f"fd00:31::{10 + i:x}"
        ns.run("ip", "addr", "add", f"{v4}/24", "dev", "eth0")
        ns.run("ip", "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
        ns.run("ip", "route", "add", "default", "via", TRANSIT4)
        ns.run("ip", "-6", "route", "add", "default", "via", TRANSIT6)
        backends.append(Backend(ns, f"b{i}", v4, v6))
    return Inbound(topo, lan, anchor, backends)


# --- servers and clients (python one-liners run inside the namespaces) --------

SERVER = r"""
import selectors, socket, sys
name, tcp, udp = sys.argv[1], sys.argv[2], sys.argv[3]
ports = lambda s: [int(p) for p in s.split(",") if p]
sel = selectors.DefaultSelector()
def peer(addr):
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") else host
for kind, plist in ((socket.SOCK_STREAM, ports(tcp)), (socket.SOCK_DGRAM, ports(udp))):
    for port in plist:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(512)
        sel.register(s, selectors.EVENT_READ, kind)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if key.data == socket.SOCK_STREAM:
            try:
                c, addr = s.accept()
                c.sendall(f"{name} {peer(addr)} {s.getsockname()[1]}\n".encode())
                c.close()
            except OSError:
                pass
        else:
            data, addr = s.recvfrom(2048)
            s.sendto(f"{name} {peer(addr)} {s.getsockname()[1]}\n".encode(), addr)
"""

ASK = r"""
import socket, sys
addr, proto, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[4]))
try:
    s.connect((addr, port))
    if proto == "udp":
        s.send(b"hi")
        print(s.recv(2048).decode().strip())
    else:
        print(s.makefile().readline().strip())
except OSError as exc:
    print(f"ERROR {type(exc).__name__}")
"""

TCP_LOOP = r"""
import socket, sys, time
addr, port, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
print("started", flush=True)
while True:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    t = time.time()
    try:
        s.connect((addr, port))
        line = s.makefile().readline().strip()
        result = f"ok {line}" if line else "fail empty"
    except OSError as exc:
        result = f"fail {type(exc).__name__}"
    finally:
        s.close()
    # Start and end of the attempt: a SYN retransmitted after a second ends much later.
    print(f"{t:.6f} {result} @{time.time():.6f}", flush=True)
    time.sleep(pause)
"""

UDP_STREAM = r"""
import socket, sys, time
addr, port, sport, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
s.connect((addr, port))
s.settimeout(interval)
print("started", flush=True)
while True:
    t = time.time()
    try:
        s.send(b"ping")
    except OSError:
        pass
    while True:
        left = t + interval - time.time()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            print(f"{time.time():.6f} {s.recv(2048).decode().strip()}", flush=True)
        except socket.timeout:
            break
        except OSError as exc:
            print(f"{time.time():.6f} error {type(exc).__name__}", flush=True)
            time.sleep(max(0.0, t + interval - time.time()))
            break
"""


def _start(ns: Netns, argv: list[str]) -> subprocess.Popen[bytes]:
    proc = ns.popen(argv, stdout=subprocess.PIPE)
    _procs.append(proc)
    return proc


def stop_all() -> None:
    """Terminate every server and client this module started (test teardown)."""
    while _procs:
        proc = _procs.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


BURST = r"""
import socket, sys
addr, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
for port in range(first, first + n):
    try:
        s.sendto(b"x", (addr, port))
    except OSError:  # an ICMP unreachable from an earlier datagram, reported here
        pass
"""


def udp_burst(ns: Netns, addr: str, first: int, n: int) -> None:
    """One datagram to each of ``n`` ports: ``n`` conntrack entries on the way."""
    ns.run(sys.executable, "-c", BURST, addr, str(first), str(n), timeout=60)


def _wait_line(proc: subprocess.Popen[bytes], want: str, timeout: float = 10) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline().decode()
            if not line:
                break
            if line.strip() == want:
                return
    raise TimeoutError(f"process {proc.args!r} did not print {want!r}")


def serve(b: Backend, tcp: Sequence[int] = (), udp: Sequence[int] = ()) -> None:
    """Start a server in backend ``b`` answering ``<name> <peer address> <port>``."""
    proc = _start(
        b.ns,
        [sys.executable, "-c", SERVER, b.name, ",".join(map(str, tcp)), ",".join(map(str, udp))],
    )
    _wait_line(proc, "ready")
    b.servers.append(proc)


def ask(ns: Netns, addr: str, proto: str, port: int, timeout: float = 2.0) -> str:
    """One request from ``ns``: the server's answer line, or ``ERROR <exception>``."""
    return ns.run(sys.executable, "-c", ASK, addr, proto, str(port), str(timeout),
                  timeout=timeout + 10).strip()


class Stream:
    """A client process whose stdout lines are collected (with our receive time) by a thread."""

    def __init__(self, ns: Netns, script: str, *args: str) -> None:
        self.proc = _start(ns, [sys.executable, "-c", script, *args])
        _wait_line(self.proc, "started")
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode().strip())

    def stop(self) -> list[str]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._thread.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return list(self.lines)

    def records(self) -> list[tuple[float, str]]:
        out = []
        for line in list(self.lines):
            t, _, rest = line.partition(" ")
            out.append((float(t), rest))
        return out


def tcp_loop(ns: Netns, addr: str, port: int, pause: float = 0.0) -> Stream:
    """A client connecting in a loop, ``pause`` s between attempts (0: a tight loop).

    One line per attempt: ``<start> ok <answer> @<end>`` or ``<start> fail <error> @<end>``.
    """
    return Stream(ns, TCP_LOOP, addr, str(port), str(pause))


def udp_stream(ns: Netns, addr: str, port: int, sport: int, interval: float = 0.1) -> Stream:
    return Stream(ns, UDP_STREAM, addr, str(port), str(sport), str(interval))


def wait_records(
    stream: Stream, pred: Callable[[tuple[float, str]], bool], timeout: float, what: str
) -> None:
    wait_until(lambda: any(pred(r) for r in stream.records()), timeout=timeout, what=what)


def nft_json(ns: Netns, *argv: str) -> dict[str, object]:
    return json.loads(ns.run("nft", "-j", *argv))  # type: ignore[no-any-return]
