"""IPv6 on the child: SLAAC observed, stateful DHCPv6 (RFC 8415) when the RA asks for it.

Owns the IPv6 side of the external identity. SLAAC is the kernel's job (the
link module sets accept_ra/autoconf); this module watches for the resulting
global address and reports it. Router Advertisements are read from the raw
socket: a Managed (M) flag starts the DHCPv6 client, a state machine of its own
(SOLICIT -> REQUEST -> BOUND -> RENEW at T1 -> REBIND at T2 -> expiry) that
never waits for, nor blocks, the DHCPv4 client.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from pyroute2 import IPRoute

from anchord.dhcp import kernel
from anchord.dhcp.leasefile import StoredLease
from anchord.dhcp.timers import Backoff

log = logging.getLogger(__name__)

ALL_ROUTERS = "ff02::2"
ALL_NODES = "ff02::1"
ALL_DHCP = "ff02::1:2"
OBSERVE_EVERY = 1.0  # seconds between looks at the kernel's SLAAC addresses
RS_INTERVAL = 4.0  # RFC 4861 RTR_SOLICITATION_INTERVAL


class State(enum.Enum):
    IDLE = "idle"  # no RA with M seen: SLAAC only, or no IPv6 at all
    SOLICITING = "soliciting"
    REQUESTING = "requesting"
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    CONFIRMING = "confirming"  # restart with a stored lease: Renew it at once (RFC 8415 18.2.4)
    STOPPED = "stopped"


S = State
ALLOWED: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.SOLICITING, S.CONFIRMING, S.STOPPED}),
    S.SOLICITING: frozenset({S.REQUESTING, S.IDLE, S.STOPPED, S.CONFIRMING}),
    S.REQUESTING: frozenset({S.BOUND, S.SOLICITING, S.IDLE, S.STOPPED, S.CONFIRMING}),
    S.BOUND: frozenset({S.RENEWING, S.SOLICITING, S.STOPPED, S.CONFIRMING}),
    S.RENEWING: frozenset({S.BOUND, S.REBINDING, S.SOLICITING, S.STOPPED, S.CONFIRMING}),
    S.REBINDING: frozenset({S.BOUND, S.SOLICITING, S.STOPPED, S.CONFIRMING}),
    S.CONFIRMING: frozenset({S.BOUND, S.RENEWING, S.REBINDING, S.SOLICITING, S.STOPPED,
                             S.CONFIRMING}),
    S.STOPPED: frozenset(),
}
HOLDS_LEASE = frozenset({S.BOUND, S.RENEWING, S.REBINDING, S.CONFIRMING})


class V6Host(Protocol):
    def send(self, frame: bytes) -> None: ...
    def apply(self, lease: StoredLease, remaining: float) -> None: ...
    def remove(self, lease: StoredLease) -> None: ...
    def changed(self, lease: StoredLease | None, previous: StoredLease | None,
                reason: str) -> None: ...


def link_local(mac: str) -> str:
    """fe80:: + modified EUI-64 of ``mac`` (what the kernel uses with addr_gen_mode 0)."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def multicast_mac(address: str) -> str:
    tail = ipaddress.IPv6Address(address).packed[-4:]
    return "33:33:" + ":".join(f"{x:02x}" for x in tail)


class V6Client:
    """SLAAC watcher plus the DHCPv6 client of one interface."""

    def __init__(self, host: V6Host, mac: str, hostname: str, backoff_max: float,
                 monotonic: Callable[[], float], wall: Callable[[], float],
                 rng: random.Random) -> None:
        from anchord.dhcp import packets6  # scapy's inet6 layers load only when v6 is built

        self.p6 = packets6
        self.host = host
        self.mac = mac
        self.hostname = hostname
        self.monotonic = monotonic
        self.wall = wall
        self.rng = rng
        self.duid = packets6.duid_ll(mac)
        self.iaid = int.from_bytes(bytes(int(x, 16) for x in mac.split(":"))[2:], "big")
        self.link_local = link_local(mac)
        self.backoff = Backoff(initial=1.0, cap=backoff_max, rng=rng)
        self.state = S.IDLE
        self.lease: StoredLease | None = None  # the DHCPv6 lease
        self.base = 0.0  # monotonic time the current lease was granted
        self.slaac: StoredLease | None = None
        self.managed = False
        self.ra_seen = False
        self.router = ""
        self.server_duid = b""
        self.offer: packets6.Reply6 | None = None
        self.xid = 0
        self.tries = 0
        self.started = 0.0
        self.wakeup = 0.0
        self.next_observe = 0.0
        self.next_rs = 0.0
        self.announced: set[str] = set()
        self.dropped: Counter[str] = Counter()
        self.acquisitions: Counter[str] = Counter()

    # --- transitions ---------------------------------------------------------

    def _go(self, new: State, why: str) -> None:
        if new not in ALLOWED[self.state]:
            raise RuntimeError(f"illegal dhcpv6 transition {self.state.value} -> {new.value}")
        log.info("dhcpv6 %s -> %s (%s)", self.state.value, new.value, why,
                 extra={"fields": {"family": 6, "from": self.state.value, "to": new.value,
                                   "why": why}})
        self.state = new

    def describe(self) -> str:
        if self.state != S.IDLE:
            return f"dhcpv6 {self.state.value}"
        if self.slaac is not None:
            return "slaac"
        return "waiting for a router advertisement" if not self.ra_seen else "slaac pending"

    def current(self) -> tuple[StoredLease, str] | None:
        if self.lease is not None and self.state in HOLDS_LEASE:
            return self.lease, "dhcpv6"
        if self.slaac is not None:
            return self.slaac, "slaac"
        return None

    def start(self, stored: StoredLease | None) -> None:
        now = self.monotonic()
        self.next_rs = now
        self.wakeup = now
        if stored is not None and stored.expiry > self.wall() + 1 and stored.server:
            # The wall clock is read here only: from now on the lease runs on the monotonic
            # clock (an NTP step must not move T1, T2 or expiry).
            self.lease = stored
            self.base = now - (self.wall() - stored.acquired)
            self.server_duid = bytes.fromhex(stored.server)
            self._go(S.CONFIRMING, "stored lease still valid")
            self.host.apply(stored, self._remaining())
            self._new_exchange(now)

    def restart(self, why: str) -> None:
        now = self.monotonic()
        self.next_rs = now
        self.wakeup = now
        self.announced.clear()
        if self.state == S.STOPPED:
            return
        if self.lease is not None and self._remaining() > 1:
            self._go(S.CONFIRMING, why)
            self.host.apply(self.lease, self._remaining())
            self._new_exchange(now)

    # --- time ----------------------------------------------------------------

    def _new_exchange(self, now: float) -> None:
        self.xid = self.rng.getrandbits(24)
        self.tries = 0
        self.started = now
        self.backoff.reset()

    def _remaining(self) -> float:
        assert self.lease is not None
        return max(0.0, self.base + self.lease.lease_time - self.monotonic())

    def _deadlines(self) -> tuple[float, float, float]:
        """T1, T2 and expiry of the current lease as monotonic times."""
        assert self.lease is not None
        base = self.base
        return base + self.lease.t1, base + self.lease.t2, base + self.lease.lease_time

    def tick(self) -> None:
        now = self.monotonic()
        if self.state == S.STOPPED:
            return
        if not self.ra_seen and now >= self.next_rs:
            self.host.send(self.p6.router_solicit(self.mac, self.link_local))
            self.next_rs = now + RS_INTERVAL
        if now < self.wakeup:
            return
        if self.lease is not None and self.state in HOLDS_LEASE:
            t1, t2, expiry = self._deadlines()
            if now >= expiry:
                self._expire()
                return
        if self.state == S.IDLE:
            self.wakeup = self.next_rs if not self.ra_seen else now + 3600
            if not self.ra_seen:
                self.wakeup = min(self.wakeup, now + RS_INTERVAL)
            return
        if self.state == S.SOLICITING:
            self._send(self.p6.SOLICIT, now)
        elif self.state == S.REQUESTING:
            if self.tries >= 10:  # RFC 8415 REQ_MAX_RC
                self._go(S.SOLICITING, "no reply to request")
                self._new_exchange(now)
                self._send(self.p6.SOLICIT, now)
            else:
                self._send(self.p6.REQUEST, now)
        elif self.state == S.BOUND:
            t1, t2, expiry = self._deadlines()
            if now < t1:
                self.wakeup = t1
                return
            self._go(S.RENEWING, "T1 reached")
            self._new_exchange(now)
            self._send(self.p6.RENEW, now, until=t2)
        elif self.state in (S.RENEWING, S.CONFIRMING):
            t1, t2, expiry = self._deadlines()
            if now >= t2:
                self._go(S.REBINDING, "T2 reached")
                self._new_exchange(now)
                self._send(self.p6.REBIND, now, until=expiry)
            else:
                self._send(self.p6.RENEW, now, until=t2)
        elif self.state == S.REBINDING:
            t1, t2, expiry = self._deadlines()
            self._send(self.p6.REBIND, now, until=expiry)

    def _send(self, msg_type: int, now: float, until: float | None = None) -> None:
        lease = self.lease if msg_type in (self.p6.RENEW, self.p6.REBIND,
                                           self.p6.RELEASE) else None
        if msg_type == self.p6.REQUEST and self.offer is not None:
            address, server = self.offer.address, self.offer.server_duid
        else:
            address = lease.address if lease else ""
            server = self.server_duid if msg_type in (self.p6.RENEW, self.p6.RELEASE) else b""
        elapsed = min(int((now - self.started) * 100), 0xFFFF)
        self.host.send(self.p6.build(msg_type, self.mac, self.link_local, self.xid, self.duid,
                                     self.iaid, self.hostname, address=address,
                                     server_duid=server, elapsed=elapsed))
        self.tries += 1
        delay = self.backoff.next()
        self.wakeup = now + delay if until is None else min(until, now + delay)

    # --- input -----------------------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        try:
            kind, value = self.p6.classify(frame, self.mac)
        except self.p6.Malformed as exc:
            self.dropped[exc.reason] += 1
            log.debug("ipv6 packet dropped", extra={"fields": {"reason": str(exc)[:200]}})
            return
        if kind == "ra":
            assert isinstance(value, self.p6.RouterAdvert)
            self._on_ra(value)
        elif kind == "dhcp6":
            assert isinstance(value, bytes)
            self._on_dhcp6(value)

    def _on_ra(self, ra: object) -> None:
        assert isinstance(ra, self.p6.RouterAdvert)
        if not self.ra_seen:
            log.info("router advertisement seen", extra={"fields": {
                "router": ra.source, "managed": ra.managed, "lifetime": ra.lifetime}})
        self.ra_seen = True
        if ra.lifetime:
            self.router = ra.source
        if ra.managed and not self.managed:
            self.managed = True
            if self.state == S.IDLE:
                now = self.monotonic()
                self._go(S.SOLICITING, "router advertisement with the M flag")
                self._new_exchange(now)
                # RFC 8415 18.2.1: delay the first Solicit by up to SOL_MAX_DELAY (1 s).
                self.wakeup = now + self.rng.uniform(0.0, 0.2)

    def _on_dhcp6(self, payload: bytes) -> None:
        if self.state in (S.IDLE, S.STOPPED, S.BOUND):
            self.dropped["unexpected"] += 1
            return
        try:
            reply = self.p6.parse_reply(payload, self.xid, self.duid, self.iaid)
        except self.p6.Malformed as exc:
            self.dropped[exc.reason] += 1
            log.debug("dhcpv6 packet dropped", extra={"fields": {"reason": str(exc)[:200]}})
            return
        now = self.monotonic()
        if reply.msg_type == self.p6.ADVERTISE:
            if self.state != S.SOLICITING or not reply.address:
                self.dropped["unexpected"] += 1
                return
            self.offer = reply
            self._go(S.REQUESTING, f"advertise of {reply.address}")
            self._new_exchange(now)
            self._send(self.p6.REQUEST, now)
            return
        if self.state == S.SOLICITING:
            self.dropped["unexpected"] += 1
            return
        if not reply.address or reply.valid == 0:
            # NoBinding/NoAddrsAvail or a zero lifetime: start over with a Solicit.
            self.acquisitions["nak"] += 1
            self._drop_lease("server refused the address")
            self._go(S.SOLICITING, f"reply without a usable address (status {reply.status})")
            self._new_exchange(now)
            self.wakeup = now + self.backoff.next()
            return
        self._bind(reply, now)

    def _bind(self, reply: object, now: float) -> None:
        assert isinstance(reply, self.p6.Reply6)
        valid, preferred = float(reply.valid), float(min(reply.preferred, reply.valid))
        t1, t2 = float(reply.t1), float(reply.t2)
        # RFC 8415 21.4: T1/T2 of 0 leave the timing to the client; never send at once.
        if not 0 < t1 < valid:
            t1 = preferred * 0.5 if preferred else valid * 0.5
        if not t1 < t2 < valid:
            t2 = preferred * 0.8 if preferred and preferred * 0.8 > t1 else valid * 0.8
        t1 = max(min(t1, t2), 1.0)
        previous = self.lease
        lease = StoredLease(family=6, address=reply.address, prefixlen=128,
                            server=reply.server_duid.hex(), router="", lease_time=valid,
                            t1=t1, t2=t2, acquired=self.wall(), iaid=self.iaid,
                            preferred=preferred)
        if previous is not None and previous.address != lease.address:
            self.host.remove(previous)
        self.lease = lease
        self.base = now
        self.server_duid = reply.server_duid
        self.host.apply(lease, valid)
        if self.state not in (S.RENEWING, S.REBINDING):
            self.acquisitions["ok"] += 1  # a renewal is not an acquisition
        self._go(S.BOUND, f"{lease.address} for {valid:.0f} s")
        self.wakeup = now + t1
        self.host.changed(lease, previous if previous is not None else self.slaac, "bound")

    def _drop_lease(self, reason: str) -> None:
        if self.lease is not None:
            lost = self.lease
            self.host.remove(lost)
            self.lease = None
            self.host.changed(self.slaac, lost, reason) if self.slaac else \
                self.host.changed(None, lost, reason)

    def _expire(self) -> None:
        log.warning("dhcpv6 lease expired", extra={"fields": {"family": 6}})
        self.acquisitions["expired"] += 1
        self._drop_lease("expired")
        self._go(S.SOLICITING, "lease expired")
        self._new_exchange(self.monotonic())

    # --- SLAAC ------------------------------------------------------------------

    def observe(self, ipr: IPRoute, index: int) -> None:
        """Look at the kernel's global addresses: report SLAAC, announce new ones."""
        now = self.monotonic()
        if now < self.next_observe or not index:
            return
        self.next_observe = now + OBSERVE_EVERY
        found = kernel.global_v6(ipr, index)
        ours = self.lease.address if self.lease is not None else ""
        for address, *_ in found:
            if address not in self.announced:
                self.announced.add(address)
                self.host.send(self.p6.unsolicited_na(self.mac, address))
        slaac = [f for f in found if f[0] != ours and not f[2] & kernel.IFA_F_PERMANENT]
        previous = self.slaac
        if slaac:
            address, prefixlen, _flags, valid, preferred = sorted(slaac)[0]
            same = previous is not None and previous.address == address
            lease = StoredLease(family=6, address=address, prefixlen=prefixlen, server="",
                                router=self.router, lease_time=float(valid), t1=0.0, t2=0.0,
                                acquired=self.wall(), preferred=float(preferred))
            self.slaac = lease
            if not same and self.current() == (lease, "slaac"):
                log.info("slaac address", extra={"fields": {"family": 6, "address": address}})
                self.host.changed(lease, previous, "slaac")
        elif previous is not None:
            self.slaac = None
            if self.current() is None:
                self.host.changed(None, previous, "slaac address gone")

    def release(self) -> None:
        if self.lease is not None and self.state in HOLDS_LEASE:
            self._new_exchange(self.monotonic())
            self._send(self.p6.RELEASE, self.monotonic())
            lost = self.lease
            self.host.remove(lost)
            self.lease = None
            self.host.changed(None, lost, "released")
        if self.state != S.STOPPED:
            self._go(S.STOPPED, "released")

