"""The DHCPv6 client state machine with a fake host and clock: RFC 8415 timers."""

from __future__ import annotations

import random
import struct
from typing import Any

from anchord.dhcp import packets6
from anchord.dhcp.v6 import State, V6Client, link_local
from tests.unit.test_dhcp_v4_machine import MAC, Clock, FakeHost


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def answer(client: V6Client, msg: int, t1: int = 0, t2: int = 0, valid: int = 120) -> bytes:
    ia = _opt(3, struct.pack("!III", client.iaid, t1, t2) + _opt(5, bytes.fromhex(
        "fd770000000000000000000000000105") + struct.pack("!II", valid // 2, valid)))
    return (bytes([msg]) + client.xid.to_bytes(3, "big") + _opt(1, client.duid)
            + _opt(2, b"\x00\x03\x00\x01\x02\x00\x00\x00\x00\x09") + ia)


def st(client: Any) -> Any:
    """The state, opaque to mypy's narrowing (it changes behind method calls)."""
    return client.state


def make() -> tuple[V6Client, FakeHost, Clock]:
    clock, host = Clock(), FakeHost()
    client = V6Client(host, MAC, "proj", 30.0, lambda: clock.mono, lambda: clock.wall,
                      random.Random(3))
    client.start(None)
    return client, host, clock


def test_link_local_is_eui64_of_the_mac() -> None:
    assert link_local(MAC) == "fe80::42:aaff:febb:cc01"


def test_managed_ra_solicit_request_reply_and_zero_t1_t2_do_not_send_at_once() -> None:
    client, host, clock = make()
    client.tick()  # a router solicitation
    assert st(client) == State.IDLE
    client._on_ra(packets6.RouterAdvert("fe80::1", managed=True, other=False, lifetime=1800))
    assert st(client) == State.SOLICITING
    clock.advance(client.wakeup - clock.mono)
    client.tick()
    assert host.sent[-1][54 + 8] == packets6.SOLICIT
    client._on_dhcp6(answer(client, packets6.ADVERTISE))
    assert st(client) == State.REQUESTING and host.sent[-1][54 + 8] == packets6.REQUEST
    client._on_dhcp6(answer(client, packets6.REPLY, t1=0, t2=0))
    assert st(client) == State.BOUND
    assert host.applied[-1] == ("fd77::105", 120.0)
    # T1 = T2 = 0: the client picks 0.5 and 0.8 of the preferred lifetime, never "now".
    assert abs(client.wakeup - clock.mono - 30.0) < 1e-6
    sent = len(host.sent)
    client.tick()
    assert len(host.sent) == sent and st(client) == State.BOUND
    clock.advance(30)
    client.tick()
    assert st(client) == State.RENEWING and host.sent[-1][54 + 8] == packets6.RENEW
    while st(client) == State.RENEWING:
        clock.advance(client.wakeup - clock.mono)
        client.tick()
    assert st(client) == State.REBINDING and host.sent[-1][54 + 8] == packets6.REBIND
    assert host.removed == []
    while st(client) == State.REBINDING:
        clock.advance(client.wakeup - clock.mono)
        client.tick()
    assert host.removed == ["fd77::105"] and st(client) == State.SOLICITING


def test_no_ra_means_idle_and_nothing_blocks() -> None:
    client, host, clock = make()
    for _ in range(5):
        clock.advance(4)
        client.tick()
    assert st(client) == State.IDLE and client.current() is None
    # Router solicitations only, and some (all() over nothing sent would pass vacuously).
    assert host.sent and all(frame[54] == 133 for frame in host.sent)
