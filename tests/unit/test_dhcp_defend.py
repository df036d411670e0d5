"""RFC 5227 2.4 in the DHCPv4 machine: a bound address is defended once, then given up.

Driven with the fake host and clock of ``test_dhcp_v4_machine``; the kernel filter and a real
second host are in ``tests/integration/test_dhcp_defend.py``.
"""

from __future__ import annotations

from scapy.layers.l2 import ARP, Ether

from anchord.dhcp import packets
from anchord.dhcp.v4 import DEFEND_INTERVAL, State
from tests.unit.test_dhcp_v4_machine import MAC, bind, make, reply, sent_type, st

OTHER = "02:00:00:00:00:77"


def claim(sender_ip: str = "10.0.0.5", sender_mac: str = OTHER, op: int = 1,
          target: str = "10.0.0.1") -> bytes:
    return bytes(Ether(src=sender_mac, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=op, hwsrc=sender_mac, psrc=sender_ip, pdst=target))


def test_first_conflict_defended_second_within_interval_gives_the_address_up() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    assert client.arp_watch() == ("10.0.0.5", False)
    sent = len(host.sent)
    client.on_arp(claim())
    assert st(client) == State.BOUND
    assert client.lease is not None
    assert len(host.sent) == sent + 1
    assert packets.parse_arp(host.sent[-1]) == packets.ArpSeen(1, MAC, "10.0.0.5", "10.0.0.5")
    assert client.acquisitions["defended"] == 1
    clock.advance(DEFEND_INTERVAL - 1)
    client.on_arp(claim(op=2))  # an ARP reply claiming it counts as much as a request
    assert st(client) == State.INIT
    assert client.lease is None
    assert host.removed == ["10.0.0.5"]
    assert host.changes[-1] == (None, "10.0.0.5", "conflict")
    assert client.acquisitions["defend_lost"] == 1
    assert all(f[12:14] == b"\x08\x06" or sent_type(f) != packets.DECLINE for f in host.sent)
    assert client.arp_watch() is None
    # Configuration restarts at once: a DISCOVER, then the probe before any use.
    assert client.wakeup == clock.mono
    client.tick()
    assert st(client) == State.SELECTING
    assert sent_type(host.sent[-1]) == packets.DISCOVER


def test_conflicts_further_apart_than_the_interval_are_each_defended() -> None:
    client, host, clock = make()
    bind(client, host, clock, lease=1000)
    for _ in range(3):
        client.on_arp(claim())
        clock.advance(DEFEND_INTERVAL)
    assert st(client) == State.BOUND
    assert client.acquisitions["defended"] == 3


def test_own_frames_other_addresses_and_probes_are_no_conflict_once_bound() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    for frame in (claim(sender_mac=MAC), claim(sender_ip="10.0.0.6"),
                  claim(sender_ip="0.0.0.0", target="10.0.0.5"), b"\x00" * 20):
        client.on_arp(frame)
        client.on_arp(frame)
    assert st(client) == State.BOUND
    assert client.acquisitions["defended"] == 0


def test_the_address_is_defended_while_renewing_too() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    clock.mono = client.wakeup
    client.tick()
    assert st(client) == State.RENEWING
    assert client.arp_watch() == ("10.0.0.5", False)
    client.on_arp(claim())
    client.on_arp(claim())
    assert st(client) == State.INIT
    assert host.changes[-1] == (None, "10.0.0.5", "conflict")


def test_probing_watches_the_offered_address_with_probes() -> None:
    client, _host, _clock = make()
    client.start(None)
    client.tick()
    assert client.arp_watch() is None
    client.on_frame(reply(packets.OFFER, client.xid))
    client.on_frame(reply(packets.ACK, client.xid))
    assert st(client) == State.PROBING
    assert client.arp_watch() == ("10.0.0.5", True)
