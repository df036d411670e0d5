"""The DHCPv4 state machine driven with recorded-style packets, a fake host and a fake clock."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from anchord.dhcp import packets
from anchord.dhcp.leasefile import StoredLease
from anchord.dhcp.v4 import ALLOWED, DECLINE_WAIT, Dhcp4Client, IllegalTransition, State

MAC = "02:42:aa:bb:cc:01"
SERVER_MAC = "02:00:00:00:00:09"


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeHost:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.applied: list[tuple[str, float]] = []
        self.removed: list[str] = []
        self.changes: list[tuple[str | None, str | None, str]] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def apply(self, lease: StoredLease, remaining: float) -> None:
        self.applied.append((lease.address, remaining))

    def remove(self, lease: StoredLease) -> None:
        self.removed.append(lease.address)

    def changed(self, lease: StoredLease | None, previous: StoredLease | None,
                reason: str) -> None:
        self.changes.append((lease.address if lease else None,
                             previous.address if previous else None, reason))


def sent_type(frame: bytes) -> int:
    return packets.parse_options(frame[42 + 240:])[53][0]


def reply(msg_type: int, xid: int, yiaddr: str = "10.0.0.5", lease: int = 100,
          extra: bytes = b"", server: str = "10.0.0.1") -> bytes:
    opts = bytes([53, 1, msg_type]) + bytes([54, 4]) + bytes(map(int, server.split(".")))
    if lease:
        opts += bytes([51, 4]) + struct.pack("!I", lease)
    opts += bytes([1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 0, 1]) + extra + b"\xff"
    chaddr = packets.mac_bytes(MAC) + b"\x00" * 10
    bootp = (struct.pack("!BBBBIHH", 2, 1, 6, 0, xid, 0, 0) + b"\x00" * 4
             + bytes(map(int, yiaddr.split("."))) + b"\x00" * 8 + chaddr + b"\x00" * 192
             + packets.MAGIC + opts)
    udp = struct.pack("!HHHH", 67, 68, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes(map(int, yiaddr.split("."))))
    return packets.mac_bytes(MAC) + packets.mac_bytes(SERVER_MAC) + b"\x08\x00" + ip + udp


def st(client: Any) -> Any:
    """The state, opaque to mypy's narrowing (it changes behind method calls)."""
    return client.state


def finish_probe(client: Dhcp4Client, clock: Clock) -> None:
    """Let the RFC 5227 probe run out (no conflicting ARP comes)."""
    while st(client) == State.PROBING:
        clock.mono = client.wakeup
        client.tick()


def make() -> tuple[Dhcp4Client, FakeHost, Clock]:
    clock, host = Clock(), FakeHost()
    client = Dhcp4Client(host, MAC, "proj", 30.0, lambda: clock.mono, lambda: clock.wall,
                         random.Random(7))
    return client, host, clock


def bind(client: Dhcp4Client, host: FakeHost, clock: Clock, lease: int = 100) -> None:
    client.start(None)
    client.tick()
    assert st(client) == State.SELECTING
    assert sent_type(host.sent[-1]) == packets.DISCOVER
    client.on_frame(reply(packets.OFFER, client.xid, lease=lease))
    assert st(client) == State.REQUESTING
    assert sent_type(host.sent[-1]) == packets.REQUEST
    client.on_frame(reply(packets.ACK, client.xid, lease=lease))
    assert st(client) == State.PROBING
    while st(client) == State.PROBING:
        clock.mono = client.wakeup
        clock.wall += 0.3
        client.tick()
    assert st(client) == State.BOUND


def test_discover_offer_request_ack_probe_bind() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    arp = [f for f in host.sent if f[12:14] == b"\x08\x06"]
    assert len(arp) == 3  # two probes (sender 0.0.0.0), one announcement
    assert arp[0][28:32] == b"\x00\x00\x00\x00"
    assert arp[-1][28:32] == bytes([10, 0, 0, 5])
    assert host.applied[-1] == ("10.0.0.5", 100.0)
    assert host.changes[-1] == ("10.0.0.5", None, "bound")
    assert client.lease is not None
    assert client.lease.server_mac == SERVER_MAC
    request = packets.parse_options(host.sent[1][42 + 240:])
    assert request[12] == b"proj"
    assert request[61] == b"\x01" + packets.mac_bytes(MAC)
    assert request[50] == bytes([10, 0, 0, 5])
    assert 81 not in request  # RFC 4702: 12 only
    assert 121 in request[55]


def test_renew_unicast_at_t1_then_rebind_broadcast_at_t2_then_expiry() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    clock.advance(49)
    client.tick()
    assert st(client) == State.BOUND
    clock.advance(1)
    client.tick()
    assert st(client) == State.RENEWING
    renew = host.sent[-1]
    assert renew[0:6] == packets.mac_bytes(SERVER_MAC)
    assert renew[30:34] == bytes([10, 0, 0, 1])
    while st(client) == State.RENEWING:
        clock.mono = client.wakeup
        clock.wall = 1_700_000_000.0 + (clock.mono - 1000.0)
        client.tick()
    assert st(client) == State.REBINDING
    assert host.sent[-1][0:6] == b"\xff" * 6
    assert host.removed == []  # F-6a: nothing dropped before expiry
    while st(client) == State.REBINDING:
        clock.mono = client.wakeup
        clock.wall = 1_700_000_000.0 + (clock.mono - 1000.0)
        client.tick()
    assert st(client) == State.INIT  # expired: address removed, starting over at once
    client.tick()
    assert st(client) == State.SELECTING
    assert host.removed == ["10.0.0.5"]
    assert host.changes[-1] == (None, "10.0.0.5", "expired")


def test_rebind_ack_from_other_server_and_changed_address() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    clock.advance(90)
    client.tick()
    assert st(client) == State.REBINDING
    client.on_frame(reply(packets.ACK, client.xid, yiaddr="10.0.0.9", server="10.0.0.2"))
    assert st(client) == State.PROBING  # a new address: probed before use (RFC 5227)
    finish_probe(client, clock)
    assert st(client) == State.BOUND
    assert client.lease is not None
    assert client.lease.server == "10.0.0.2"
    assert host.removed == ["10.0.0.5"]
    assert host.changes[-1] == ("10.0.0.9", "10.0.0.5", "bound")


def test_nak_in_requesting_goes_back_to_init() -> None:
    client, _host, clock = make()
    client.start(None)
    client.tick()
    client.on_frame(reply(packets.OFFER, client.xid))
    client.on_frame(reply(packets.NAK, client.xid, yiaddr="0.0.0.0", lease=0))
    assert st(client) == State.INIT
    assert client.wakeup > clock.mono


def test_conflict_declines_and_waits() -> None:
    client, host, clock = make()
    client.start(None)
    client.tick()
    client.on_frame(reply(packets.OFFER, client.xid))
    client.on_frame(reply(packets.ACK, client.xid))
    assert st(client) == State.PROBING
    other = "02:00:00:00:00:77"
    arp = (b"\xff" * 6 + packets.mac_bytes(other) + b"\x08\x06"
           + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + packets.mac_bytes(other)
           + bytes([10, 0, 0, 5]) + packets.mac_bytes(MAC) + b"\x00" * 4)
    client.on_arp(arp)
    assert st(client) == State.INIT
    assert sent_type(host.sent[-1]) == packets.DECLINE
    assert client.wakeup == pytest.approx(clock.mono + DECLINE_WAIT)
    assert client.acquisitions["conflict"] == 1


def test_init_reboot_keeps_address_and_falls_back_to_bound_without_answer() -> None:
    client, host, clock = make()
    stored = StoredLease(family=4, address="10.0.0.5", prefixlen=24, server="10.0.0.1",
                         router="10.0.0.1", lease_time=100, t1=50, t2=87.5,
                         acquired=clock.wall - 10)
    client.start(stored)
    assert st(client) == State.INIT_REBOOT
    assert host.applied == [("10.0.0.5", 90.0)]  # kept on the interface meanwhile
    client.tick()
    assert st(client) == State.REBOOTING
    opts = packets.parse_options(host.sent[-1][42 + 240:])
    assert opts[50] == bytes([10, 0, 0, 5])
    assert 54 not in opts
    for _ in range(2):
        clock.advance(client.wakeup - clock.mono)
        client.tick()
    assert st(client) == State.BOUND
    assert host.removed == []


def test_stored_expired_lease_starts_fresh() -> None:
    client, host, clock = make()
    stored = StoredLease(family=4, address="10.0.0.5", prefixlen=24, server="10.0.0.1",
                         router="", lease_time=100, t1=50, t2=87.5, acquired=clock.wall - 200)
    client.start(stored)
    assert st(client) == State.INIT
    assert host.applied == []


def test_unexpected_and_foreign_replies_are_counted_not_acted_on() -> None:
    client, _host, _clock = make()
    client.start(None)
    client.tick()
    client.on_frame(reply(packets.OFFER, client.xid ^ 1))
    client.on_frame(reply(packets.ACK, client.xid))  # ACK while selecting
    client.on_frame(b"\x00" * 20)
    assert st(client) == State.SELECTING
    assert client.dropped["wrong_xid"] == 1
    assert client.dropped["unexpected"] == 1


def test_illegal_transition_refused() -> None:
    client, _host, _clock = make()
    with pytest.raises(IllegalTransition):
        client._go(State.BOUND, "test")
    assert all(State.STOPPED in targets for state, targets in ALLOWED.items()
               if state != State.STOPPED)


def test_release_sends_release_and_removes() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    client.release()
    assert sent_type(host.sent[-1]) == packets.RELEASE
    assert host.removed == ["10.0.0.5"]
    assert st(client) == State.STOPPED


def test_backoff_capped() -> None:
    client, _host, clock = make()
    client.start(None)
    client.tick()
    delays = []
    for _ in range(10):
        delays.append(client.wakeup - clock.mono)
        clock.mono = client.wakeup
        client.tick()
    assert delays[0] < delays[1] < delays[2]
    assert max(delays) <= 30.0
    assert delays[-1] >= 27.0


@pytest.mark.parametrize("step", [3 * 3600.0, -3 * 3600.0])
def test_wall_clock_steps_change_no_timer(step: float) -> None:
    """An NTP step of hours (a host without an RTC) neither renews early nor expires early:
    T1, T2 and expiry run on the monotonic clock."""
    client, host, clock = make()
    bind(client, host, clock, lease=600)
    bound_at = clock.mono
    clock.wall += step
    clock.mono = bound_at + 299
    client.tick()
    assert st(client) == State.BOUND, "renewed early after a wall step"
    assert client._remaining() == pytest.approx(301)
    clock.mono = bound_at + 300
    client.tick()
    assert st(client) == State.RENEWING
    clock.wall -= 2 * step
    clock.mono = bound_at + 599
    client.tick()
    assert st(client) in (State.RENEWING, State.REBINDING)
    assert host.removed == []
    clock.mono = bound_at + 600
    client.tick()
    assert host.removed == ["10.0.0.5"], "expired at the wrong time"


def test_stored_lease_is_read_against_the_wall_clock_once() -> None:
    """A lease in the file carries wall times: read once at start, then monotonic only."""
    client, _host, clock = make()
    stored = StoredLease(family=4, address="10.0.0.5", prefixlen=24, server="10.0.0.1",
                         router="10.0.0.1", lease_time=600, t1=300, t2=525,
                         acquired=clock.wall - 100)
    client.start(stored)
    assert client._remaining() == pytest.approx(500)
    clock.wall += 7200  # stepped after the start: still 500 s left
    assert client._remaining() == pytest.approx(500)


def test_an_acquisition_counts_once() -> None:
    """A renewal is not an acquisition; a retransmitted DISCOVER is not another timeout."""
    client, _host, clock = make()
    client.start(None)
    client.tick()
    for _ in range(3):
        clock.mono = client.wakeup
        client.tick()
    assert client.acquisitions["timeout"] == 1
    client.on_frame(reply(packets.OFFER, client.xid))
    client.on_frame(reply(packets.ACK, client.xid))
    finish_probe(client, clock)
    assert st(client) == State.BOUND
    assert client.acquisitions["ok"] == 1
    clock.advance(50)
    client.tick()
    assert st(client) == State.RENEWING
    client.on_frame(reply(packets.ACK, client.xid))
    assert st(client) == State.BOUND
    assert client.acquisitions["ok"] == 1


def test_after_a_nak_discover_again_within_a_second() -> None:
    client, host, clock = make()
    bind(client, host, clock)
    clock.advance(50)
    client.tick()
    assert st(client) == State.RENEWING
    for _ in range(5):  # even a server that NAKs everything is asked again within 1 s
        client.on_frame(reply(packets.NAK, client.xid, lease=0))
        assert st(client) == State.INIT
        assert client.wakeup - clock.mono <= 1.0
        clock.mono = client.wakeup
        client.tick()
        assert st(client) == State.SELECTING
        assert sent_type(host.sent[-1]) == packets.DISCOVER
        client.on_frame(reply(packets.OFFER, client.xid))
        assert st(client) == State.REQUESTING


def test_an_offer_restarts_the_backoff_and_only_the_chosen_server_may_nak() -> None:
    client, _host, clock = make()
    client.start(None)
    client.tick()
    for _ in range(4):  # unanswered DISCOVERs: the backoff grows
        clock.mono = client.wakeup
        client.tick()
    client.on_frame(reply(packets.OFFER, client.xid, server="10.0.0.1"))
    assert st(client) == State.REQUESTING
    assert client.wakeup - clock.mono <= 4.5
    client.on_frame(reply(packets.NAK, client.xid, lease=0, server="10.0.0.99"))
    assert st(client) == State.REQUESTING  # not the server we asked
    client.on_frame(reply(packets.NAK, client.xid, lease=0, server="10.0.0.1"))
    assert st(client) == State.INIT


def test_t2_given_without_t1_is_kept() -> None:
    client, _host, clock = make()
    t2_only = bytes([59, 4]) + struct.pack("!I", 30)  # T2 30 s of a 100 s lease, no T1
    client.start(None)
    client.tick()
    client.on_frame(reply(packets.OFFER, client.xid))
    client.on_frame(reply(packets.ACK, client.xid, extra=t2_only))
    finish_probe(client, clock)
    assert client.lease is not None
    assert client.lease.t2 == 30
    assert 0 < client.lease.t1 < 30


def test_an_address_that_changes_at_renewal_is_probed_before_use() -> None:
    """RFC 5227 2.1: the server moves us at a renewal: the new address is probed first."""
    client, host, clock = make()
    bind(client, host, clock)
    clock.advance(50)
    client.tick()
    assert st(client) == State.RENEWING
    before = len(host.sent)
    client.on_frame(reply(packets.ACK, client.xid, yiaddr="10.0.0.6"))
    assert st(client) == State.PROBING
    probe = host.sent[before]
    assert probe[12:14] == b"\x08\x06"
    assert probe[38:42] == bytes([10, 0, 0, 6])
    finish_probe(client, clock)
    assert st(client) == State.BOUND
    assert client.lease is not None
    assert client.lease.address == "10.0.0.6"
    assert host.removed == ["10.0.0.5"]
    # The same address at the next renewal: no probe.
    clock.advance(50)
    client.tick()
    before = len(host.sent)
    client.on_frame(reply(packets.ACK, client.xid, yiaddr="10.0.0.6"))
    assert st(client) == State.BOUND
    assert not [f for f in host.sent[before:] if f[12:14] == b"\x08\x06"]
