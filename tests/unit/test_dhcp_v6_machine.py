"""The DHCPv6 client state machine with a fake host, kernel and clock: RFC 8415 clause by clause.

The fake kernel keeps the child's IPv6 addresses as the real one does for the machine: an
installed address is tentative until the test says DAD passed (or failed), a link-local
address may be missing, an install may be refused (EACCES with IPv6 off).
"""

from __future__ import annotations

import itertools
import random
import struct
from typing import Any

import pytest

from anchord.dhcp import packets6
from anchord.dhcp.kernel6 import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_PERMANENT,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    RT_SCOPE_LINK,
    Addr6,
)
from anchord.dhcp.leasefile import StoredLease
from anchord.dhcp.slaac import project_address
from anchord.dhcp.v6 import (
    REB_TIMEOUT,
    REN_TIMEOUT,
    REQ_MAX_RC,
    IllegalTransition,
    State,
    V6Client,
)

MAC = "02:42:aa:bb:cc:01"
LL = "fe80::42:aaff:febb:cc01"
SERVER_A = b"\x00\x03\x00\x01\x02\x00\x00\x00\x00\x09"
SERVER_B = b"\x00\x03\x00\x01\x02\x00\x00\x00\x00\x0b"
ADDR = "fd77::105"
ADDR2 = "fd77::106"


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeKernelHost:
    """V6Host over a dict of addresses standing in for the child."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.applied: list[tuple[str, float]] = []
        self.removed: list[str] = []
        self.changes: list[tuple[str | None, str | None, str]] = []
        self.addrs: dict[str, Addr6] = {LL: Addr6(LL, 64, IFA_F_PERMANENT, RT_SCOPE_LINK,
                                                  0xFFFFFFFF, 0xFFFFFFFF)}
        self.refuse = False

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def apply6(self, lease: StoredLease, valid: float, preferred: float) -> bool:
        if self.refuse:
            return False
        self.applied.append((lease.address, valid))
        old = self.addrs.get(lease.address)
        flags = old.flags if old is not None else IFA_F_TENTATIVE
        self.addrs[lease.address] = Addr6(lease.address, 128, flags, 0, int(valid),
                                          int(preferred))
        return True

    def dad(self, address: str, ok: bool = True) -> None:
        a = self.addrs[address]
        flags = a.flags & ~IFA_F_TENTATIVE if ok else a.flags | IFA_F_DADFAILED
        self.addrs[address] = Addr6(a.address, a.prefixlen, flags, a.scope, a.valid,
                                    a.preferred)

    def remove(self, lease: StoredLease) -> None:
        self.removed.append(lease.address)
        self.addrs.pop(lease.address, None)

    def changed(self, lease: StoredLease | None, previous: StoredLease | None,
                reason: str) -> None:
        self.changes.append((lease.address if lease else None,
                             previous.address if previous else None, reason))

    def addresses6(self) -> list[Addr6]:
        return list(self.addrs.values())

    # --- reading what was sent ---

    def dhcp(self) -> list[bytes]:
        """The DHCPv6 payloads sent, oldest first."""
        return [f[62:] for f in self.sent if f[12:14] == b"\x86\xdd" and f[20] == 17]

    def types(self) -> list[int]:
        return [p[0] for p in self.dhcp()]

    def rs_frames(self) -> list[bytes]:
        return [f for f in self.sent if f[20] == 58 and f[54] == 133]


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def iaaddr(address: str, preferred: int, valid: int) -> bytes:
    import ipaddress
    return _opt(5, ipaddress.IPv6Address(address).packed + struct.pack("!II", preferred, valid))


def ia(iaid: int, t1: int, t2: int, *subs: bytes) -> bytes:
    return _opt(3, struct.pack("!III", iaid, t1, t2) + b"".join(subs))


def status(code: int) -> bytes:
    return _opt(13, struct.pack("!H", code) + b"msg")


def answer(client: V6Client, msg: int, t1: int = 0, t2: int = 0, valid: int = 120,
           address: str = ADDR, server: bytes = SERVER_A, extra: bytes = b"",
           ia_options: bytes | None = None, preference: int | None = None) -> bytes:
    if ia_options is None:
        ia_options = ia(client.iaid, t1, t2, iaaddr(address, valid // 2, valid))
    pref = _opt(7, bytes([preference])) if preference is not None else b""
    return (bytes([msg]) + client.xid.to_bytes(3, "big") + _opt(1, client.duid)
            + _opt(2, server) + pref + ia_options + extra)


def st(client: Any) -> Any:
    """The state, opaque to mypy's narrowing (it changes behind method calls)."""
    return client.state


def sent_option(payload: bytes, code: int) -> bytes | None:
    for c, v in packets6._walk(payload[4:]):
        if c == code:
            return v
    return None


def sent_address(payload: bytes) -> str:
    import ipaddress
    value = sent_option(payload, 3)
    assert value is not None
    subs = packets6._walk(value[12:])
    return str(ipaddress.IPv6Address(subs[0][1][:16])) if subs else ""


def make() -> tuple[V6Client, FakeKernelHost, Clock]:
    clock, host = Clock(), FakeKernelHost()
    client = V6Client(host, MAC, "proj", 30.0, lambda: clock.mono, lambda: clock.wall,
                      random.Random(3))
    client.start(None)
    return client, host, clock


def run_until(client: V6Client, clock: Clock, pred: Any, limit: float = 10_000) -> None:
    """Advance the fake clock from wakeup to wakeup until ``pred()``."""
    end = clock.mono + limit
    while not pred():
        assert clock.mono < end, "condition never reached"
        clock.advance(max(0.0, client.wakeup - clock.mono))
        client.tick()


def managed(client: V6Client, clock: Clock) -> None:
    client._on_ra(packets6.RouterAdvert("fe80::1", managed=True, other=False, lifetime=1800))
    assert st(client) == State.SOLICITING
    run_until(client, clock, lambda: client.host.types()[-1:] == [packets6.SOLICIT])  # type: ignore[attr-defined]


def bound(t1: int = 30, t2: int = 48, valid: int = 120) -> tuple[V6Client, FakeKernelHost,
                                                                   Clock]:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    client._on_dhcp6(answer(client, packets6.REPLY, t1=t1, t2=t2, valid=valid))
    assert st(client) == State.DAD
    host.dad(ADDR)
    clock.advance(0.1)
    client.tick()
    assert st(client) == State.BOUND
    return client, host, clock


# --- transitions -------------------------------------------------------------------------


def test_illegal_transition_raises() -> None:
    client, _host, _clock = make()
    with pytest.raises(IllegalTransition, match="idle -> bound"):
        client._go(State.BOUND, "test")
    with pytest.raises(IllegalTransition):
        client._go(State.DAD, "test")


# --- solicit, advertise, request, DAD ------------------------------------------------------


def test_first_solicit_within_sol_max_delay_from_the_kernels_link_local() -> None:
    client, host, clock = make()
    t0 = clock.mono
    managed(client, clock)
    assert clock.mono - t0 <= 1.0  # SOL_MAX_DELAY
    frame = [f for f in host.sent if f[20] == 17][-1]
    import ipaddress
    assert str(ipaddress.IPv6Address(frame[22:38])) == LL
    oro = sent_option(host.dhcp()[-1], 6)
    assert oro is not None  # the Option Request option asks for SOL_MAX_RT
    assert 82 in struct.unpack(f"!{len(oro) // 2}H", oro)


def test_no_link_local_yet_only_router_solicitations_from_unspecified() -> None:
    client, host, clock = make()
    host.addrs.clear()  # IPv6 off on the child, or the link-local still in DAD
    clock.advance(1.0)
    client.tick()
    client._on_ra(packets6.RouterAdvert("fe80::1", managed=True, other=False, lifetime=1800))
    for _ in range(20):
        clock.advance(0.5)
        client.tick()
    assert host.dhcp() == []
    assert st(client) == State.SOLICITING
    assert "no link-local" in client.describe()
    rs = host.rs_frames()[0]
    assert rs[22:38] == b"\x00" * 16  # from ::, without an SLLAO
    assert len(rs) == 54 + 8
    host.addrs[LL] = Addr6(LL, 64, IFA_F_PERMANENT, RT_SCOPE_LINK, 0xFFFFFFFF, 0xFFFFFFFF)
    clock.advance(0.2)
    client.tick()
    assert host.types() == [packets6.SOLICIT]


def test_advertises_collected_until_first_rt_highest_preference_wins() -> None:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, server=SERVER_A, preference=10))
    client._on_dhcp6(answer(client, packets6.ADVERTISE, server=SERVER_B, address=ADDR2,
                            preference=50))
    assert st(client) == State.SOLICITING  # still collecting
    assert 1.0 < client.wakeup - clock.mono <= 1.1  # the first RT: > SOL_TIMEOUT
    run_until(client, clock, lambda: st(client) == State.REQUESTING)
    request = host.dhcp()[-1]
    assert request[0] == packets6.REQUEST
    assert sent_option(request, 2) == SERVER_B
    assert sent_address(request) == ADDR2
    assert host.types().count(packets6.SOLICIT) == 1  # no second Solicit was needed


def test_preference_255_taken_at_once_and_late_advertise_taken_at_once() -> None:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, server=SERVER_B, preference=255))
    assert st(client) == State.REQUESTING
    assert sent_option(host.dhcp()[-1], 2) == SERVER_B
    client2, _host2, clock2 = make()
    managed(client2, clock2)
    clock2.advance(1.2)  # past the first RT, no Advertise yet
    client2.tick()
    client2._on_dhcp6(answer(client2, packets6.ADVERTISE, preference=0))
    assert st(client2) == State.REQUESTING


def test_advertise_without_address_ignored_but_its_sol_max_rt_honoured() -> None:
    client, _host, clock = make()
    managed(client, clock)
    refusal = answer(client, packets6.ADVERTISE, ia_options=ia(client.iaid, 0, 0, status(2)),
                     extra=_opt(82, struct.pack("!I", 120)))
    client._on_dhcp6(refusal)
    assert st(client) == State.SOLICITING
    assert client.dropped["advertise_without_address"] == 1
    assert client.sol_max_rt == 120.0
    # Solicits back off to 120 s (above ANCHORD_DHCP_BACKOFF_MAX=30, RFC 8415 21.24 MUST).
    gaps = []
    for _ in range(12):
        before = clock.mono
        clock.advance(client.wakeup - clock.mono)
        client.tick()
        gaps.append(clock.mono - before)
    assert max(gaps) > 100
    assert max(gaps) <= 120
    # Out of range (RFC 8415 21.24: 60..86400) is ignored.
    client._on_dhcp6(answer(client, packets6.ADVERTISE, ia_options=ia(client.iaid, 0, 0,
                                                                      status(2)),
                            extra=_opt(82, struct.pack("!I", 5))))
    assert client.sol_max_rt == 120.0


def test_reply_installs_then_bound_only_after_dad_with_unsolicited_na() -> None:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    client._on_dhcp6(answer(client, packets6.REPLY, t1=30, t2=48))
    assert st(client) == State.DAD
    assert host.applied[-1][0] == ADDR
    assert client.current() is None
    assert host.changes == []  # tentative: not reported
    for _ in range(5):
        clock.advance(0.1)
        client.tick()
    assert st(client) == State.DAD
    host.dad(ADDR)
    clock.advance(0.1)
    client.tick()
    assert st(client) == State.BOUND
    assert host.changes[-1] == (ADDR, None, "bound")
    na = [f for f in host.sent if f[20] == 58 and f[54] == 136]
    assert len(na) == 1
    assert na[0][22:38] == bytes.fromhex("fd770000000000000000000000000105")


def test_dad_failure_sends_decline_and_never_binds() -> None:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    client._on_dhcp6(answer(client, packets6.REPLY, t1=30, t2=48))
    host.dad(ADDR, ok=False)
    clock.advance(0.1)
    client.tick()
    assert st(client) == State.DECLINING
    decline = host.dhcp()[-1]
    assert decline[0] == packets6.DECLINE
    assert sent_address(decline) == ADDR
    assert sent_option(decline, 2) == SERVER_A
    assert ADDR in host.removed
    assert host.changes == []
    assert client.acquisitions["conflict"] == 1
    # DEC_TIMEOUT 1 s, DEC_MAX_RC 4, then a new Solicit.
    run_until(client, clock, lambda: st(client) == State.SOLICITING, limit=30)
    assert host.types().count(packets6.DECLINE) == 4
    # A Reply to the Decline ends it at once.
    client2, host2, clock2 = make()
    managed(client2, clock2)
    client2._on_dhcp6(answer(client2, packets6.ADVERTISE, preference=255))
    client2._on_dhcp6(answer(client2, packets6.REPLY))
    host2.dad(ADDR, ok=False)
    clock2.advance(0.1)
    client2.tick()
    client2._on_dhcp6(answer(client2, packets6.REPLY, ia_options=b""))
    assert st(client2) == State.SOLICITING
    # The kernel deletes a non-permanent address whose DAD failed: gone while tentative.
    client3, host3, clock3 = make()
    managed(client3, clock3)
    client3._on_dhcp6(answer(client3, packets6.ADVERTISE, preference=255))
    client3._on_dhcp6(answer(client3, packets6.REPLY))
    clock3.advance(0.1)
    client3.tick()
    del host3.addrs[ADDR]
    clock3.advance(0.1)
    client3.tick()
    assert st(client3) == State.DECLINING
    assert host3.changes == []


def test_address_the_kernel_refuses_is_never_bound() -> None:
    client, host, clock = make()
    host.refuse = True  # EACCES: IPv6 disabled on the child
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    client._on_dhcp6(answer(client, packets6.REPLY))
    assert st(client) == State.SOLICITING
    assert client.current() is None
    assert host.changes == []
    assert client.acquisitions["refused"] == 1
    assert client.wakeup - clock.mono >= 0.9  # a pause before trying again, not a loop
    # The same when the add "succeeds" but the kernel never shows the address.
    host.refuse = False
    run_until(client, clock, lambda: host.types()[-1] == packets6.SOLICIT)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    host.apply6 = lambda lease, valid, preferred: True  # type: ignore[method-assign]
    client._on_dhcp6(answer(client, packets6.REPLY))
    assert st(client) == State.SOLICITING
    assert host.changes == []
    assert client.acquisitions["refused"] == 2


# --- timers: T1/T2, RFC constants, the injected clock ------------------------------------


def test_renew_and_rebind_retransmit_with_ren_and_reb_timeouts() -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    t_bound = clock.mono
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    assert abs(clock.mono - (t_bound + 100)) < 0.2
    times = [clock.mono]
    run_until(client, clock, lambda: st(client) == State.REBINDING)
    renews = [p for p in host.dhcp() if p[0] == packets6.RENEW]
    assert all(sent_option(p, 2) == SERVER_A for p in renews)  # Renew names its server
    n = len(renews)
    assert n == 5  # T1 + 10, +20, +40, +80 (all before T2 = T1 + 200), then Rebind at T2
    times.append(clock.mono)
    assert abs(times[1] - (t_bound + 300)) < 0.2  # MRD of Renew: T2
    first_gap = client.wakeup - clock.mono
    assert REB_TIMEOUT * 0.9 <= first_gap <= REB_TIMEOUT * 1.1
    assert sent_option(host.dhcp()[-1], 2) is None  # Rebind names no server
    run_until(client, clock, lambda: st(client) == State.SOLICITING)
    assert abs(clock.mono - (t_bound + 1000)) < 0.2  # expiry, not before
    assert ADDR in host.removed


def test_renew_first_retransmission_is_ren_timeout() -> None:
    client, _host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    gap = client.wakeup - clock.mono
    assert REN_TIMEOUT * 0.9 <= gap <= REN_TIMEOUT * 1.1


def test_wall_clock_steps_move_no_timer() -> None:
    client, _host, clock = bound(t1=100, t2=300, valid=1000)
    clock.wall += 3 * 3600
    clock.advance(50)
    client.tick()
    assert st(client) == State.BOUND
    clock.wall -= 6 * 3600
    run_until(client, clock, lambda: st(client) == State.RENEWING)


def test_zero_t1_t2_do_not_send_at_once() -> None:
    client, host, clock = bound(t1=0, t2=0, valid=120)
    assert abs(client.wakeup - clock.mono - 30.0) < 0.2  # 0.5 of preferred (60)
    sent = len(host.sent)
    client.tick()
    assert len(host.sent) == sent


# --- status codes ----------------------------------------------------------------------------


@pytest.mark.parametrize("rebind", [False, True])
def test_nobinding_to_renew_or_rebind_requests_the_same_address(rebind: bool) -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == (State.REBINDING if rebind
                                                    else State.RENEWING))
    client._on_dhcp6(answer(client, packets6.REPLY, server=SERVER_B,
                            ia_options=ia(client.iaid, 0, 0, status(3))))
    assert st(client) == State.REQUESTING
    request = host.dhcp()[-1]
    assert request[0] == packets6.REQUEST
    assert sent_address(request) == ADDR
    assert sent_option(request, 2) == SERVER_B
    assert host.removed == []  # the address stays meanwhile
    assert client.current() is not None
    client._on_dhcp6(answer(client, packets6.REPLY, server=SERVER_B, t1=100, t2=300,
                            valid=1000))
    assert st(client) == State.BOUND
    assert client.lease is not None
    assert client.lease.address == ADDR
    assert client.lease.server == SERVER_B.hex()
    assert host.removed == []
    assert all(c[0] == ADDR for c in host.changes)
    assert client.acquisitions["ok"] == 1  # reinstated, not a new acquisition


def test_nobinding_then_no_answer_to_request_falls_back_to_the_lease() -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    client._on_dhcp6(answer(client, packets6.REPLY, ia_options=ia(client.iaid, 0, 0,
                                                                  status(3))))
    run_until(client, clock, lambda: st(client) != State.REQUESTING)
    assert host.types().count(packets6.REQUEST) == REQ_MAX_RC + 1  # the first + 10 for NB
    assert st(client) == State.RENEWING
    assert client.lease is not None


def test_unspecfail_retries_only_at_the_scheduled_retransmission() -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    due = client.wakeup
    sent = len(host.sent)
    for _ in range(50):  # a server answering UnspecFail in a loop
        client._on_dhcp6(answer(client, packets6.REPLY, extra=status(1), ia_options=b""))
        client.tick()
    assert len(host.sent) == sent
    assert client.wakeup == due
    assert st(client) == State.RENEWING
    assert client.dropped["UnspecFail"] == 50
    clock.advance(due - clock.mono)
    client.tick()
    assert len(host.sent) == sent + 1


def test_noaddrsavail_to_request_pauses_then_solicits_to_renew_keeps_lease() -> None:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    client._on_dhcp6(answer(client, packets6.REPLY, ia_options=ia(client.iaid, 0, 0,
                                                                  status(2))))
    assert st(client) == State.SOLICITING
    assert client.wakeup - clock.mono >= 0.9
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    client._on_dhcp6(answer(client, packets6.REPLY, ia_options=ia(client.iaid, 0, 0,
                                                                  status(2))))
    assert st(client) == State.RENEWING
    assert host.removed == []


def test_ia_na_matched_by_iaid_before_its_timers_are_taken() -> None:
    client, host, clock = make()
    managed(client, clock)
    client._on_dhcp6(answer(client, packets6.ADVERTISE, preference=255))
    other = ia(client.iaid ^ 1, 1, 2, iaaddr("fd77::999", 50, 100))
    ours = ia(client.iaid, 40, 70, iaaddr(ADDR, 90, 100))
    client._on_dhcp6(answer(client, packets6.REPLY, ia_options=other + ours + other))
    host.dad(ADDR)
    clock.advance(0.1)
    client.tick()
    assert client.lease is not None
    assert client.lease.address == ADDR
    assert (client.lease.t1, client.lease.t2) == (40, 70)


def test_valid_lifetime_zero_is_ignored_and_the_new_address_taken() -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    moved = ia(client.iaid, 100, 300, iaaddr(ADDR, 0, 0), iaaddr(ADDR2, 500, 1000))
    client._on_dhcp6(answer(client, packets6.REPLY, ia_options=moved))
    assert st(client) == State.DAD
    assert client.current() is not None
    assert client.current()[0].address == ADDR  # type: ignore[index]  # the old one until DAD
    host.dad(ADDR2)
    clock.advance(0.1)
    client.tick()
    assert st(client) == State.BOUND
    assert client.lease is not None
    assert client.lease.address == ADDR2
    assert host.changes[-1] == (ADDR2, ADDR, "bound")
    assert ADDR in host.removed


def test_only_address_withdrawn_drops_the_lease() -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    run_until(client, clock, lambda: st(client) == State.RENEWING)
    client._on_dhcp6(answer(client, packets6.REPLY,
                            ia_options=ia(client.iaid, 0, 0, iaaddr(ADDR, 0, 0))))
    assert st(client) == State.SOLICITING
    assert host.changes[-1][0] is None


def test_restart_confirms_with_renew_and_rechecks_dad_on_the_new_child() -> None:
    client, host, clock = bound(t1=100, t2=300, valid=1000)
    del host.addrs[ADDR]  # the new child has only its link-local address
    client.restart("link re-created")
    assert st(client) == State.CONFIRMING
    clock.advance(0.01)
    client.tick()
    assert host.types()[-1] == packets6.RENEW
    client._on_dhcp6(answer(client, packets6.REPLY, t1=100, t2=300, valid=1000))
    assert st(client) == State.DAD
    assert client.current() is not None
    host.dad(ADDR)
    clock.advance(0.1)
    client.tick()
    assert st(client) == State.BOUND


# --- Router Solicitations and SLAAC ------------------------------------------------------------


def test_router_solicitations_back_off_rfc7559() -> None:
    client, host, clock = make()
    times = []
    while clock.mono < 1000 + 200:
        clock.advance(max(0.0, client.wakeup - clock.mono))
        before = len(host.rs_frames())
        client.tick()
        if len(host.rs_frames()) > before:
            times.append(clock.mono - 1000)
    assert times[0] <= 1.0  # MAX_RTR_SOLICITATION_DELAY
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, want in zip(gaps, [4, 8, 16, 32, 64], strict=False):
        assert want * 0.9 <= gap <= want * 1.1
    assert len([t for t in times if t <= 200]) == 6  # not 50 (every 4 s)
    client._on_ra(packets6.RouterAdvert("fe80::1", managed=False, other=False, lifetime=1800))
    sent = len(host.rs_frames())
    clock.advance(5000)
    client.tick()
    assert len(host.rs_frames()) == sent
    client.restart("link up again")  # a new link solicits again, from the start
    clock.advance(1.0)
    client.tick()
    assert len(host.rs_frames()) == sent + 1


def _g(address: str, flags: int = 0, preferred: int = 1000) -> Addr6:
    return Addr6(address, 64, flags, 0, 2000, preferred)


def test_slaac_project_address_global_not_deprecated_not_temporary() -> None:
    found = [_g("fd77::1", IFA_F_TEMPORARY, 5000), _g("fd78::1", IFA_F_DEPRECATED, 0),
             _g("fd79::1", IFA_F_TENTATIVE), _g("fd7a::1", IFA_F_PERMANENT),
             Addr6("fe80::1", 64, 0, RT_SCOPE_LINK, 1, 1), _g("fd7b::1", 0, 10)]
    chosen = project_address(found)
    assert chosen is not None
    assert chosen.address == "fd7b::1"
    assert project_address(found, exclude="fd7b::1") is None
    assert project_address(found, exclude="fd7b::1", current="fd78::1") is not None  # kept
    assert project_address(found, exclude="fd7b::1", current="fd77::1") is None


def test_slaac_renumbering_switches_on_the_ra_that_deprecates_the_old_prefix() -> None:
    client, host, clock = make()
    host.addrs["fd77::42"] = _g("fd77::42")
    client.observe()
    assert client.current() is not None
    assert client.current()[0].address == "fd77::42"  # type: ignore[index]
    # The RA that renumbers: new prefix, old one's preferred lifetime 0. While the new
    # address is in DAD the old one, deprecated but valid, is kept (no loss in between).
    host.addrs["fd88::42"] = _g("fd88::42", IFA_F_TENTATIVE, 1800)
    host.addrs["fd77::42"] = _g("fd77::42", IFA_F_DEPRECATED, 0)
    client._on_ra(packets6.RouterAdvert("fe80::1", managed=False, other=False, lifetime=1800))
    clock.advance(0.05)
    client.observe()
    assert client.current()[0].address == "fd77::42"  # type: ignore[index]
    assert host.changes == [("fd77::42", None, "slaac")]
    host.addrs["fd88::42"] = _g("fd88::42", 0, 1800)
    clock.advance(1.0)
    client._on_ra(packets6.RouterAdvert("fe80::1", managed=False, other=False, lifetime=1800))
    clock.advance(0.05)
    client.observe()
    assert client.current()[0].address == "fd88::42"  # type: ignore[index]
    assert host.changes[-1] == ("fd88::42", "fd77::42", "slaac")
    # Stable: a longer-lived third address does not take over from an eligible current one.
    host.addrs["fd99::42"] = _g("fd99::42", 0, 9000)
    clock.advance(1.0)
    client.observe()
    assert client.current()[0].address == "fd88::42"  # type: ignore[index]
