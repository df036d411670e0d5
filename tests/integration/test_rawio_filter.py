"""The dhcp worker's raw sockets see DHCP, not the data plane (real kernel, real BPF).

Two namespaces joined by a veth: frames sent from one end (scapy builds them, an AF_PACKET
socket sends them) reach the ``RawSocket``s on the other end only if their filter lets them
through. Checked per family: DHCP replies (UDP to 68), DHCPv6 replies (UDP to 546) and router
advertisements arrive; TCP, other UDP ports, a later IPv4 fragment, neighbour solicitations,
DHCP requests (UDP to 67/547) and ARP do not.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6ND_RA, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from anchord.dhcp.rawio import ETH_P_IP, ETH_P_IPV6, RawSocket
from tests.integration.inbound_topo import inside
from tests.netns import Netns, topology, wait_until

DST = "02:00:00:00:00:0b"
SRC = "02:00:00:00:00:0a"


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with topology("rw") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.veth(a, "eth0", b, "eth0")
        a.run("ip", "link", "set", "eth0", "address", SRC)
        b.run("ip", "link", "set", "eth0", "address", DST)
        yield a, b


def _frames() -> dict[str, tuple[Packet, int | None]]:
    """name -> (frame, the socket that must receive it, None: neither)."""
    eth = Ether(src=SRC, dst=DST)
    return {
        "dhcp4 reply": (eth / IP(src="192.0.2.1", dst="192.0.2.9") / UDP(sport=67, dport=68)
                        / Raw(b"x" * 300), ETH_P_IP),
        "dhcp4 request": (eth / IP(dst="192.0.2.1") / UDP(sport=68, dport=67) / Raw(b"x"), None),
        "udp 53": (eth / IP(dst="192.0.2.9") / UDP(sport=68, dport=53) / Raw(b"x"), None),
        "tcp 68": (eth / IP(dst="192.0.2.9") / TCP(sport=1000, dport=68), None),
        "fragment": (eth / IP(dst="192.0.2.9", frag=10, proto=17) / Raw(b"\x00\x43\x00\x44"),
                     None),
        "dhcp6 reply": (eth / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=547, dport=546)
                        / Raw(b"y" * 40), ETH_P_IPV6),
        "dhcp6 request": (eth / IPv6(dst="ff02::1:2") / UDP(sport=546, dport=547), None),
        "router advert": (eth / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA(),
                          ETH_P_IPV6),
        "neighbour solicit": (eth / IPv6(dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2"),
                              None),
        "tcp6": (eth / IPv6(dst="fe80::2") / TCP(dport=443), None),
        "arp": (eth / ARP(pdst="192.0.2.9"), None),
    }


SENTINEL = b"sentinel"


def _sentinels() -> list[Packet]:
    """Frames that pass both filters: sent after each test frame, their arrival proves that
    the test frame (queued before them on the same wire) had its chance too."""
    eth = Ether(src=SRC, dst=DST)
    return [eth / IP(src="192.0.2.1", dst="192.0.2.9") / UDP(sport=67, dport=68) / Raw(SENTINEL),
            eth / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=547, dport=546) / Raw(SENTINEL)]


def test_only_dhcp_and_router_advertisements_pass(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    with inside(b):
        socks = {ETH_P_IP: RawSocket("eth0", ETH_P_IP), ETH_P_IPV6: RawSocket("eth0", ETH_P_IPV6)}
    with inside(a):
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind(("eth0", 0))
    try:
        for name, (frame, want) in _frames().items():
            sender.send(bytes(frame))
            for sentinel in _sentinels():
                sender.send(bytes(sentinel))
            got = _collect(socks)
            expected = {want: 1} if want is not None else {}
            assert got == expected, (name, got)
    finally:
        sender.close()
        for sock in socks.values():
            sock.close()


def _collect(socks: dict[int, RawSocket]) -> dict[int, int]:
    """Frames each socket received before its sentinel (which must come within 5 s)."""
    seen: dict[int, list[bytes]] = {ethertype: [] for ethertype in socks}

    def both_sentinels() -> bool:
        for ethertype, sock in socks.items():
            seen[ethertype].extend(sock.receive())
        return all(any(f.endswith(SENTINEL) for f in frames) for frames in seen.values())

    wait_until(both_sentinels, 5, what="the sentinel frames")
    return {ethertype: n for ethertype, frames in seen.items()
            if (n := sum(not f.endswith(SENTINEL) for f in frames))}
