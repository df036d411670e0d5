"""RFC 5227 2.4: the bound IPv4 address is defended against a real second host, then given up.

A LAN bed with dnsmasq and the dhcp worker (``tests.integration.dhcp_servers``) and an
intruder namespace on the same bridge. Once the worker is bound to X, the intruder configures
X itself and pings the server: its kernel's ARP request says "X is at <intruder MAC>". The
worker answers with one announcement (the server's neighbour entry for X is ours again); a
second claim within 10 s makes it give X up: the address leaves the child, ``LeaseLost``
(reason ``conflict``) and the ``defend_lost`` outcome are published, and configuration
restarts — the probe finds the intruder on X, DECLINEs it, and the worker binds another
address. The kernel filter of the ARP socket is checked on its own first.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from anchord.dhcp.rawio import ETH_P_ARP, RawSocket, arp_filter
from tests.integration.dhcp_servers import LAN_V4, MAC, Dnsmasq, Lan, Worker, lan
from tests.integration.inbound_topo import inside
from tests.netns import Netns, topology, wait_until

OURS = "192.0.2.9"
SRC = "02:00:00:00:00:0a"
DST = "02:00:00:00:00:0b"
SENTINEL_MAC = "02:00:00:00:00:ee"


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with topology("ad") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.veth(a, "eth0", b, "eth0")
        a.run("ip", "link", "set", "eth0", "address", SRC)
        b.run("ip", "link", "set", "eth0", "address", DST)
        yield a, b


def _arp(psrc: str, pdst: str, hwsrc: str = SRC, op: int = 1) -> bytes:
    return bytes(Ether(src=hwsrc, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=op, hwsrc=hwsrc, psrc=psrc, pdst=pdst))


def test_the_arp_filter_passes_only_claims_on_the_address(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    with inside(b):
        defend = RawSocket("eth0", ETH_P_ARP, arp_filter(OURS, probing=False))
        probe = RawSocket("eth0", ETH_P_ARP, arp_filter(OURS, probing=True))
        own = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        own.bind(("eth0", 0))
    with inside(a):
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind(("eth0", 0))
    cases = {  # name -> (frame, passes the defence filter, passes the probe filter)
        "request from the address": (_arp(OURS, "192.0.2.1"), True, True),
        "reply from the address": (_arp(OURS, "192.0.2.1", op=2), True, True),
        "other sender": (_arp("192.0.2.8", OURS), False, False),
        "probe for the address": (_arp("0.0.0.0", OURS), False, True),
        "probe for another": (_arp("0.0.0.0", "192.0.2.8"), False, False),
        "ipv4": (bytes(Ether(src=SRC, dst=DST) / IP(src=OURS, dst="192.0.2.1")
                       / UDP(sport=68, dport=67)), False, False),
    }
    try:
        for name, (frame, in_defend, in_probe) in cases.items():
            sender.send(frame)
            sender.send(_arp(OURS, "192.0.2.1", hwsrc=SENTINEL_MAC))
            got = {sock: _until_sentinel(sock) for sock in (defend, probe)}
            assert (got[defend], got[probe]) == (int(in_defend), int(in_probe)), name
        # A frame this host sends itself (our own announcement) is dropped in the kernel.
        before = (defend.received, probe.received)
        own.send(_arp(OURS, OURS, hwsrc=DST))
        sender.send(_arp(OURS, "192.0.2.1", hwsrc=SENTINEL_MAC))
        assert (_until_sentinel(defend), _until_sentinel(probe)) == (0, 0)
        assert (defend.received, probe.received) == (before[0] + 1, before[1] + 1)
    finally:
        for sock in (sender, own):
            sock.close()
        defend.close()
        probe.close()


def _until_sentinel(sock: RawSocket) -> int:
    """Frames received before the sentinel (which must come within 5 s)."""
    frames: list[bytes] = []

    def sentinel() -> bool:
        frames.extend(sock.receive())
        return any(f[6:12] == bytes.fromhex(SENTINEL_MAC.replace(":", "")) for f in frames)

    wait_until(sentinel, 5, what="the sentinel frame")
    return sum(f[6:12] != bytes.fromhex(SENTINEL_MAC.replace(":", "")) for f in frames)


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def _claim(intruder: Netns) -> None:
    """The intruder's kernel sends a fresh ARP request with sender IP X (its neighbour entry
    for the server is flushed first, so the ping has to resolve it)."""
    intruder.run("ip", "neigh", "flush", "dev", "eth0")
    intruder.run("ping", "-c1", "-W1", f"{LAN_V4}.1", check=False)


def _outcomes(worker: Worker) -> dict[str, int]:
    counters = [ev["data"] for ev in worker.published()
                if ev["topic"] == "DhcpCounters/" and ev["data"]["family"] == 4]
    return {c["key"]: c["value"] for c in counters[-1]["acquisitions"]} if counters else {}


def test_a_second_host_claiming_the_address_is_defended_then_wins(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    dns = Dnsmasq(bed, server, "dnsmasq")
    intruder = bed.topo.netns("intr")
    bed.plug(intruder, "eth0")
    worker = Worker(bed).start()
    address = worker.wait_lease(4)["lease"]["address"]
    ip = address.split("/")[0]

    intruder.run("ip", "addr", "add", address, "dev", "eth0")
    _claim(intruder)
    wait_until(lambda: "defending it" in worker.log_text(), 5, what="the defence")
    # One announcement went out: the server's neighbour entry for X is our MAC again.
    wait_until(lambda: MAC in server.run("ip", "neigh", "show", ip), 5,
               what="the server's neighbour entry back to our MAC")
    assert worker.addresses(4) == [address]
    assert worker.lease(4) is not None

    _claim(intruder)  # a second claim within DEFEND_INTERVAL: the address is given up
    wait_until(lambda: "giving the address up" in worker.log_text(), 5, what="giving up")
    wait_until(lambda: address not in worker.addresses(4), 5, what="the address removed")
    lost = [ev["data"] for ev in worker.published() if ev["topic"] == "LeaseLost/"]
    assert lost
    assert lost[-1]["address"] == address
    assert lost[-1]["reason"] == "conflict"
    wait_until(lambda: _outcomes(worker).get("defend_lost") == 1, 10, what="the counter")
    assert _outcomes(worker).get("defended") == 1
    # Configuration restarted: the offered X is probed, the intruder answers, DECLINE, and
    # after DECLINE_WAIT another address.
    new = worker.wait_lease(4, timeout=30, pred=lambda lease: lease["lease"]["address"] != address)
    assert worker.addresses(4) == [new["lease"]["address"]]
    assert "DHCPDECLINE" in dns.lines()
    assert ip in dns.lines().split("DHCPDECLINE", 1)[1]
    assert worker.stop() == 0
