"""IPv6 on the child: SLAAC observed, stateful DHCPv6 (RFC 8415) when the RA asks for it.

Owns the IPv6 side of the external identity. SLAAC is the kernel's job (the
link module sets accept_ra/autoconf); this module solicits routers (RFC 7559
backoff), watches the resulting addresses and reports the project's one
(``anchord.dhcp.slaac`` decides which). Router Advertisements are read from the
raw socket: a Managed (M) flag starts the DHCPv6 client, a state machine of its
own that never waits for, nor blocks, the DHCPv4 client.

As in ``v4.py`` the states are an enum, every move is checked against
``ALLOWED`` (``IllegalTransition`` otherwise) and logged once at INFO; the
machine touches the world only through a ``V6Host``, so the unit tests drive
it with a fake host and clock. RFC 8415 behaviour, clause by clause:

- 18.2.1/18.2.9: Advertises are collected until the first Solicit RT has passed
  and the highest preference wins; a preference of 255 is taken at once; an
  Advertise without a usable address is ignored but its SOL_MAX_RT (21.24) is
  honoured.
- 7.6/15: every exchange has its RFC constants (SOL_TIMEOUT/SOL_MAX_RT,
  REQ_TIMEOUT/REQ_MAX_RT/REQ_MAX_RC, REN_TIMEOUT/REN_MAX_RT until T2,
  REB_TIMEOUT/REB_MAX_RT until the valid lifetime ends, DEC_TIMEOUT/DEC_MAX_RC).
- 18.2.10.1: NoBinding to a Renew or Rebind sends a Request for the same
  address, which stays on the interface; UnspecFail (and UseMulticast, IAs
  missing from the Reply) waits for the next scheduled retransmission, never a
  sooner one; NoAddrsAvail to a Request starts over with a growing pause, to a
  Renew or Rebind keeps the lease; an address with valid lifetime 0 is the
  server withdrawing it.
- 18.2.10.1/18.2.8: a new address is installed and held in DAD until the kernel
  says Duplicate Address Detection passed; a failure (IFA_F_DADFAILED, or the
  address deleted while tentative, which is what the kernel does to an address
  with lifetimes) sends a Decline.
  An address the kernel refuses to install is never reported as bound.
- Messages leave from the link-local address the kernel has (and has finished
  DAD for); until there is one, nothing is sent but Router Solicitations from ::.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from anchord.dhcp import kernel6, slaac
from anchord.dhcp.kernel6 import Addr6
from anchord.dhcp.leasefile import StoredLease
from anchord.dhcp.timers import Backoff

log = logging.getLogger(__name__)

ALL_ROUTERS = "ff02::2"
ALL_NODES = "ff02::1"
ALL_DHCP = "ff02::1:2"
OBSERVE_EVERY = 1.0  # seconds between looks at the kernel's addresses

# RFC 8415 7.6 transmission and retransmission parameters (seconds, counts).
SOL_MAX_DELAY = 1.0
SOL_TIMEOUT, SOL_MAX_RT = 1.0, 3600.0
REQ_TIMEOUT, REQ_MAX_RT, REQ_MAX_RC = 1.0, 30.0, 10
REN_TIMEOUT, REN_MAX_RT = 10.0, 600.0
REB_TIMEOUT, REB_MAX_RT = 10.0, 600.0
DEC_TIMEOUT, DEC_MAX_RC = 1.0, 4
# DAD: the kernel needs DupAddrDetectTransmits x RetransTimer (1 x 1 s by default); we look
# every DAD_POLL and give up waiting (and use the address) after DAD_WAIT, which only a link
# without carrier reaches.
DAD_POLL = 0.1
DAD_WAIT = 10.0
# No link-local address yet (DAD of the link-local itself, about 1 s): look again this soon.
NO_SOURCE_WAIT = 0.2


class State(enum.Enum):
    IDLE = "idle"  # no RA with M seen: SLAAC only, or no IPv6 at all
    SOLICITING = "soliciting"
    REQUESTING = "requesting"
    DAD = "dad"  # a new address is on the child, tentative: DAD decides
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    CONFIRMING = "confirming"  # restart with a stored lease: Renew it at once (RFC 8415 18.2.4)
    DECLINING = "declining"  # DAD failed: Decline sent (RFC 8415 18.2.8)
    STOPPED = "stopped"


S = State
ALLOWED: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.SOLICITING, S.CONFIRMING, S.STOPPED}),
    S.SOLICITING: frozenset({S.REQUESTING, S.STOPPED, S.CONFIRMING}),
    S.REQUESTING: frozenset({S.DAD, S.BOUND, S.SOLICITING, S.RENEWING, S.REBINDING,
                             S.STOPPED, S.CONFIRMING}),
    S.DAD: frozenset({S.BOUND, S.DECLINING, S.SOLICITING, S.STOPPED, S.CONFIRMING}),
    S.BOUND: frozenset({S.RENEWING, S.SOLICITING, S.STOPPED, S.CONFIRMING}),
    S.RENEWING: frozenset({S.BOUND, S.DAD, S.REBINDING, S.REQUESTING, S.SOLICITING,
                           S.STOPPED, S.CONFIRMING}),
    S.REBINDING: frozenset({S.BOUND, S.DAD, S.REQUESTING, S.SOLICITING, S.STOPPED,
                            S.CONFIRMING}),
    S.CONFIRMING: frozenset({S.BOUND, S.DAD, S.REBINDING, S.REQUESTING, S.SOLICITING,
                             S.IDLE, S.STOPPED, S.CONFIRMING}),
    S.DECLINING: frozenset({S.SOLICITING, S.STOPPED}),
    S.STOPPED: frozenset(),
}
# States in which a lease may be held (and reported). REQUESTING holds one only while
# reinstating it after NoBinding, DAD only while the server moves us to a new address.
HOLDS_LEASE = frozenset({S.BOUND, S.RENEWING, S.REBINDING, S.CONFIRMING, S.REQUESTING, S.DAD})
# States that wait for a Reply (or an Advertise) with the current transaction id.
EXPECTS_REPLY = frozenset({S.SOLICITING, S.REQUESTING, S.RENEWING, S.REBINDING, S.CONFIRMING,
                           S.DECLINING})


class IllegalTransition(RuntimeError):
    pass


class V6Host(Protocol):
    """What the machine needs from the world."""

    def send(self, frame: bytes) -> None: ...

    def apply6(self, lease: StoredLease, valid: float, preferred: float) -> bool:
        """Install the address with these lifetimes left; False if the kernel refused it."""

    def remove(self, lease: StoredLease) -> None: ...

    def changed(self, lease: StoredLease | None, previous: StoredLease | None,
                reason: str) -> None: ...

    def addresses6(self) -> list[Addr6]:
        """The child's IPv6 addresses as the kernel has them now."""


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
        self.backoff_max = backoff_max
        self.monotonic = monotonic
        self.wall = wall
        self.rng = rng
        self.duid = packets6.duid_ll(mac)
        self.iaid = int.from_bytes(bytes(int(x, 16) for x in mac.split(":"))[2:], "big")
        self.rs = slaac.RouterSolicitations(rng)
        self.sol_max_rt = 0.0  # the server's SOL_MAX_RT (RFC 8415 21.24), 0 if none
        self.backoff = Backoff(initial=SOL_TIMEOUT, cap=self._sol_cap(), rng=rng)
        # Pause between failed acquisitions (NoAddrsAvail, a refused or declined address).
        self.retry = Backoff(initial=SOL_TIMEOUT, cap=backoff_max, rng=rng)
        self.state = S.IDLE
        self.lease: StoredLease | None = None  # the DHCPv6 lease
        self.base = 0.0  # monotonic time the current lease was granted
        self.slaac: StoredLease | None = None
        self.managed = False
        self.ra_seen = False
        self.router = ""
        self.server_duid = b""
        self.advertises: list[packets6.Reply6] = []
        self.collect_until = 0.0
        self.offer_address = ""
        self.offer_server = b""
        self.pending: StoredLease | None = None  # in DAD
        self.pending_base = 0.0
        self.dad_deadline = 0.0
        self.dad_watched = False  # the pending address was seen tentative
        self.verified = ""  # the address whose DAD passed on this child
        self.declined = ""
        self.xid = 0
        self.tries = 0
        self.max_tries = 0
        self.started = 0.0
        self.timer = 0.0
        self.no_source = False
        self.next_observe = 0.0
        self.announced: set[str] = set()
        self.dropped: Counter[str] = Counter()
        self.acquisitions: Counter[str] = Counter()

    # --- transitions ---------------------------------------------------------

    def _go(self, new: State, why: str) -> None:
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {new.value}")
        fields: dict[str, object] = {"family": 6, "from": self.state.value, "to": new.value,
                                     "why": why}
        if self.lease is not None:
            fields["address"] = self.lease.address
        log.info("dhcpv6 %s -> %s (%s)", self.state.value, new.value, why,
                 extra={"fields": fields})
        self.state = new

    def describe(self) -> str:
        if self.state != S.IDLE:
            waiting = " (no link-local address yet)" if self.no_source else ""
            return f"dhcpv6 {self.state.value}{waiting}"
        if self.slaac is not None:
            return "slaac"
        return "waiting for a router advertisement" if not self.ra_seen else "slaac pending"

    def current(self) -> tuple[StoredLease, str] | None:
        if self.lease is not None and self.state in HOLDS_LEASE:
            return self.lease, "dhcpv6"
        if self.slaac is not None:
            return self.slaac, "slaac"
        return None

    @property
    def wakeup(self) -> float:
        """Monotonic time of the next thing to do (a Router Solicitation included)."""
        if self.state == S.STOPPED:
            return self.timer
        return min(self.timer, self.rs.next) if not self.rs.done else self.timer

    def start(self, stored: StoredLease | None) -> None:
        now = self.monotonic()
        self.rs.restart(now)
        self.timer = now
        if stored is not None and stored.expiry > self.wall() + 1 and stored.server:
            # The wall clock is read here only: from now on the lease runs on the monotonic
            # clock (an NTP step must not move T1, T2 or expiry).
            self.lease = stored
            self.base = now - (self.wall() - stored.acquired)
            self.server_duid = bytes.fromhex(stored.server)
            self._go(S.CONFIRMING, "stored lease still valid")
            self._confirm(now)

    def restart(self, why: str) -> None:
        now = self.monotonic()
        self.rs.restart(now)
        self.timer = now
        self.announced.clear()
        self.verified = ""  # a new child: its addresses go through DAD again
        if self.state == S.STOPPED:
            return
        if self.lease is not None and self._remaining() > 1:
            self._go(S.CONFIRMING, why)
            self._confirm(now)

    def _confirm(self, now: float) -> None:
        assert self.lease is not None
        if not self.host.apply6(self.lease, self._remaining(), self._preferred_left()):
            self._refused(self.lease, now)
            return
        self._exchange(now, REN_TIMEOUT, REN_MAX_RT)

    # --- time ----------------------------------------------------------------

    def _sol_cap(self) -> float:
        # A server's SOL_MAX_RT is a MUST (RFC 8415 21.24: it slows clients a server cannot
        # serve); without one, RFC 8415's 3600 s, within ANCHORD_DHCP_BACKOFF_MAX (F-5).
        return self.sol_max_rt or min(SOL_MAX_RT, self.backoff_max)

    def _exchange(self, now: float, irt: float, mrt: float, mrc: int = 0) -> None:
        """A new transaction: new id, its own RFC 8415 15 retransmission parameters."""
        self.xid = self.rng.getrandbits(24)
        self.tries = 0
        self.max_tries = mrc
        self.started = now
        self.backoff = Backoff(initial=irt, cap=mrt, jitter=0.1, rng=self.rng)
        self.timer = now

    def _remaining(self) -> float:
        assert self.lease is not None
        return max(0.0, self.base + self.lease.lease_time - self.monotonic())

    def _preferred_left(self) -> float:
        assert self.lease is not None
        return max(0.0, self.base + self.lease.preferred - self.monotonic())

    def _deadlines(self) -> tuple[float, float, float]:
        """T1, T2 and expiry of the current lease as monotonic times."""
        assert self.lease is not None
        base = self.base
        return base + self.lease.t1, base + self.lease.t2, base + self.lease.lease_time

    def tick(self) -> None:
        now = self.monotonic()
        if self.state == S.STOPPED:
            return
        if self.rs.due(now):
            self.host.send(self.p6.router_solicit(self.mac, self._source() or "::"))
            self.rs.sent_one(now)
        if now < self.timer:
            return
        if self.lease is not None and self.state in HOLDS_LEASE and now >= self._deadlines()[2]:
            self._expire(now)
            return
        if self.state == S.IDLE:
            self.timer = now + 3600
        elif self.state == S.SOLICITING:
            if self.advertises and now >= self.collect_until:
                self._select(now)
            else:
                self._send(self.p6.SOLICIT, now)
        elif self.state == S.REQUESTING:
            if self.tries >= REQ_MAX_RC:
                self._request_failed(now)
            else:
                self._send(self.p6.REQUEST, now, address=self.offer_address,
                           server=self.offer_server)
        elif self.state == S.DAD:
            self._check_dad(now)
        elif self.state == S.BOUND:
            t1 = self._deadlines()[0]
            if now < t1:
                self.timer = t1
                return
            self._go(S.RENEWING, "T1 reached")
            self._exchange(now, REN_TIMEOUT, REN_MAX_RT)
            self._renew_or_rebind(now)
        elif self.state in (S.RENEWING, S.CONFIRMING, S.REBINDING):
            self._renew_or_rebind(now)
        elif self.state == S.DECLINING:
            if self.tries >= DEC_MAX_RC:
                self._solicit_again(now, "no reply to the decline")
            else:
                self._send(self.p6.DECLINE, now, address=self.declined,
                           server=self.offer_server)

    def _renew_or_rebind(self, now: float) -> None:
        assert self.lease is not None
        _t1, t2, expiry = self._deadlines()
        if self.state != S.REBINDING and now >= t2:
            self._go(S.REBINDING, "T2 reached")
            self._exchange(now, REB_TIMEOUT, REB_MAX_RT)
        if self.state == S.REBINDING:
            self._send(self.p6.REBIND, now, until=expiry, address=self.lease.address)
        else:  # RFC 8415 18.2.4: Renew to the server that granted the lease, until T2
            self._send(self.p6.RENEW, now, until=t2, address=self.lease.address,
                       server=self.server_duid)

    def _source(self, tentative_ok: bool = False) -> str:
        return kernel6.link_local(self.host.addresses6(), tentative_ok)

    def _send(self, msg_type: int, now: float, until: float | None = None, address: str = "",
              server: bytes = b"") -> None:
        # A Release at shutdown cannot wait for the new child's link-local DAD (about 1 s):
        # it leaves from the kernel's link-local even while that is still tentative.
        source = self._source(tentative_ok=msg_type == self.p6.RELEASE)
        self.no_source = not source
        if not source:
            # RFC 8415 13.1: a client message's source is its link-local address; the kernel
            # has none yet (DAD of it running, or IPv6 off on the child). Look again soon.
            self.timer = now + NO_SOURCE_WAIT
            return
        elapsed = min(int((now - self.started) * 100), 0xFFFF)
        self.host.send(self.p6.build(msg_type, self.mac, source, self.xid, self.duid,
                                     self.iaid, self.hostname, address=address,
                                     server_duid=server, elapsed=elapsed))
        self.tries += 1
        delay = self.backoff.next()
        if msg_type == self.p6.SOLICIT and self.tries == 1:
            # RFC 8415 18.2.1: the first Solicit's RT is strictly greater than IRT; the
            # Advertises received until it has passed are compared by preference.
            delay = SOL_TIMEOUT * (1 + self.rng.uniform(0.001, 0.1))
            self.collect_until = now + delay
        self.timer = now + delay if until is None else min(until, now + delay)

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
        now = self.monotonic()
        if not self.ra_seen:
            log.info("router advertisement seen", extra={"fields": {
                "router": ra.source, "managed": ra.managed, "lifetime": ra.lifetime}})
        self.ra_seen = True
        self.rs.advert_seen()
        # The kernel acts on the same RA (SLAAC, renumbering): look at its addresses now,
        # not at the next regular look.
        self.next_observe = min(self.next_observe, now + 0.05)
        if ra.lifetime:
            self.router = ra.source
        if ra.managed and not self.managed:
            self.managed = True
            if self.state == S.IDLE:
                self._go(S.SOLICITING, "router advertisement with the M flag")
                self._solicit_exchange(now)
                # RFC 8415 18.2.1: delay the first Solicit by up to SOL_MAX_DELAY.
                self.timer = now + self.rng.uniform(0.0, SOL_MAX_DELAY)

    def _solicit_exchange(self, now: float) -> None:
        self._exchange(now, SOL_TIMEOUT, self._sol_cap())
        self.advertises = []

    def _on_dhcp6(self, payload: bytes) -> None:
        if self.state not in EXPECTS_REPLY:
            self.dropped["unexpected"] += 1
            return
        try:
            reply = self.p6.parse_reply(payload, self.xid, self.duid, self.iaid)
        except self.p6.Malformed as exc:
            self.dropped[exc.reason] += 1
            log.debug("dhcpv6 packet dropped", extra={"fields": {"reason": str(exc)[:200]}})
            return
        now = self.monotonic()
        if reply.sol_max_rt and reply.sol_max_rt != self.sol_max_rt:
            self.sol_max_rt = float(reply.sol_max_rt)
            log.info("server set SOL_MAX_RT", extra={"fields": {"sol_max_rt": reply.sol_max_rt}})
            if self.state == S.SOLICITING:
                self.backoff.cap = self._sol_cap()
        if reply.msg_type == self.p6.ADVERTISE:
            self._on_advertise(reply, now)
        elif self.state == S.SOLICITING:
            self.dropped["unexpected"] += 1  # a Reply to a Solicit is Rapid Commit: not asked
        elif self.state == S.DECLINING:
            self._solicit_again(now, "decline acknowledged")
        else:
            self._on_reply(reply, now)

    def _on_advertise(self, reply: object, now: float) -> None:
        assert isinstance(reply, self.p6.Reply6)
        if self.state != S.SOLICITING:
            self.dropped["unexpected"] += 1
            return
        if not reply.address:
            # RFC 8415 18.2.9: an Advertise without addresses (NoAddrsAvail) is ignored.
            self.dropped["advertise_without_address"] += 1
            log.info("advertise without an address ignored", extra={"fields": {
                "status": self.p6.status_name(reply.refusal),
                "server": reply.server_duid.hex()}})
            return
        self.advertises.append(reply)
        if reply.preference == 255 or now >= self.collect_until:
            self._select(now)

    def _select(self, now: float) -> None:
        # The highest preference; among equals the first received (RFC 8415 18.2.9).
        order = range(len(self.advertises))
        best = self.advertises[max(order, key=lambda i: (self.advertises[i].preference, -i))]
        self.advertises = []
        self.offer_address, self.offer_server = best.address, best.server_duid
        self._go(S.REQUESTING, f"advertise of {best.address} (preference {best.preference})")
        self._exchange(now, REQ_TIMEOUT, REQ_MAX_RT, REQ_MAX_RC)
        self._send(self.p6.REQUEST, now, address=self.offer_address, server=self.offer_server)

    def _on_reply(self, reply: object, now: float) -> None:
        assert isinstance(reply, self.p6.Reply6)
        p6 = self.p6
        status = reply.refusal
        if status in (p6.UNSPEC_FAIL, p6.USE_MULTICAST) or (status == p6.SUCCESS
                                                            and not reply.ia_found):
            # RFC 8415 18.2.10: retry, rate-limited and for a limited time: the retransmission
            # already scheduled by this exchange (RT, MRC, MRD) is the retry.
            reason = p6.status_name(status) if status else "reply without our IA"
            self.dropped[reason] += 1
            log.info("dhcpv6 reply not acted on, retrying at the next retransmission",
                     extra={"fields": {"family": 6, "status": reason,
                                       "retry_in": round(max(0.0, self.timer - now), 2)}})
            return
        if status == p6.NO_BINDING and self.lease is not None and \
                self.state in (S.RENEWING, S.REBINDING, S.CONFIRMING):
            # 18.2.10.1: reinstate the binding with a Request for the same address, which
            # stays on the interface meanwhile.
            self.offer_address, self.offer_server = self.lease.address, reply.server_duid
            self._go(S.REQUESTING, f"NoBinding: requesting {self.lease.address} again")
            self._exchange(now, REQ_TIMEOUT, REQ_MAX_RT, REQ_MAX_RC)
            self._send(p6.REQUEST, now, address=self.offer_address, server=self.offer_server)
            return
        if status == p6.NOT_ON_LINK:
            self._drop_lease("not on link")
            self._solicit_again(now, "NotOnLink", pause=True)
            return
        usable = reply.addresses if reply.ok else ()
        if usable:
            held = self.lease.address if self.lease is not None else ""
            pick = next((a for a in usable if a.address == held), usable[0])
            self._accept(reply, pick, now)
            return
        if self.lease is not None and self.lease.address in reply.withdrawn:
            self._drop_lease("withdrawn by the server")
            self._solicit_again(now, "the server withdrew the address (valid lifetime 0)",
                                pause=True)
            return
        if self.lease is not None:
            # NoAddrsAvail (or nothing) for a lease we hold: keep it until it expires and
            # keep asking at the scheduled retransmissions (18.2.10.1; F-6a).
            self.dropped[p6.status_name(status) if status else "reply_without_address"] += 1
            log.info("dhcpv6 reply without an address: keeping the lease", extra={"fields": {
                "family": 6, "status": p6.status_name(status),
                "address": self.lease.address}})
            return
        self.acquisitions["no_address"] += 1
        self._solicit_again(now, f"reply without a usable address ({p6.status_name(status)})",
                            pause=True)

    def _lease_from(self, reply: object, pick: object) -> StoredLease:
        assert isinstance(reply, self.p6.Reply6)
        assert isinstance(pick, self.p6.IaAddress)
        valid, preferred = float(pick.valid), float(min(pick.preferred, pick.valid))
        t1, t2 = float(reply.t1), float(reply.t2)
        # RFC 8415 21.4: T1/T2 of 0 leave the timing to the client; never send at once.
        if not 0 < t1 < valid:
            t1 = preferred * 0.5 if preferred else valid * 0.5
        if not t1 < t2 < valid:
            t2 = preferred * 0.8 if preferred and preferred * 0.8 > t1 else valid * 0.8
        t1 = max(min(t1, t2), 1.0)
        return StoredLease(family=6, address=pick.address, prefixlen=128,
                           server=reply.server_duid.hex(), router="", lease_time=valid,
                           t1=t1, t2=t2, acquired=self.wall(), iaid=self.iaid,
                           preferred=preferred)

    def _accept(self, reply: object, pick: object, now: float) -> None:
        lease = self._lease_from(reply, pick)
        if self.lease is not None and self.lease.address == lease.address and \
                self.verified != lease.address:
            # A confirmed stored lease: DAD already done if the kernel has the address
            # usable (a restarted worker adopting its child).
            seen = kernel6.find(self.host.addresses6(), lease.address)
            if seen is not None and seen.usable:
                self.verified = lease.address
        if self.lease is not None and self.lease.address == lease.address and \
                self.verified == lease.address:
            # A renewal of the address we hold: new lifetimes, no DAD.
            if not self.host.apply6(lease, lease.lease_time, lease.preferred):
                self._refused(lease, now)
                return
            self._commit(lease, now)
            return
        if not self.host.apply6(lease, lease.lease_time, lease.preferred):
            self._refused(lease, now)
            return
        self.pending, self.pending_base = lease, now
        self.dad_deadline = now + DAD_WAIT
        self.dad_watched = False
        self._go(S.DAD, f"{lease.address} installed, duplicate address detection")
        self._check_dad(now)

    def _check_dad(self, now: float) -> None:
        assert self.pending is not None
        seen = kernel6.find(self.host.addresses6(), self.pending.address)
        if seen is None and self.dad_watched:
            # The kernel deletes an address with lifetimes whose DAD failed (it keeps only
            # permanent ones, flagged IFA_F_DADFAILED): gone while tentative is a failure.
            self._decline(now)
        elif seen is None:
            self._refused(self.pending, now)
        elif seen.dad_failed:
            self._decline(now)
        elif seen.tentative and now < self.dad_deadline:
            self.dad_watched = True
            self.timer = now + DAD_POLL
        else:
            if seen.tentative:
                log.warning("dad still running, using the address", extra={"fields": {
                    "family": 6, "address": seen.address}})
            lease, self.pending = self.pending, None
            self._commit(lease, self.pending_base)

    def _commit(self, lease: StoredLease, base: float) -> None:
        previous = self.lease
        if previous is not None and previous.address != lease.address:
            self.host.remove(previous)
        renewal = previous is not None and previous.address == lease.address and \
            self.state in (S.RENEWING, S.REBINDING, S.REQUESTING)
        self.lease = lease
        self.base = base
        self.server_duid = bytes.fromhex(lease.server)
        self.verified = lease.address
        self.pending = None
        if not renewal:
            self.acquisitions["ok"] += 1  # a renewal is not an acquisition
        self.retry.reset()
        self._go(S.BOUND, f"{lease.address} for {lease.lease_time:.0f} s")
        self.timer = base + lease.t1
        if lease.address not in self.announced:
            self.announced.add(lease.address)
            self.host.send(self.p6.unsolicited_na(self.mac, lease.address))
        self.host.changed(lease, previous if previous is not None else self.slaac, "bound")

    def _refused(self, lease: StoredLease, now: float) -> None:
        """The kernel would not install ``lease`` (IPv6 off on the child: EACCES; the
        address gone during DAD): it is not ours to report."""
        log.warning("the kernel refused the dhcpv6 address; not bound", extra={"fields": {
            "family": 6, "address": lease.address}})
        self.acquisitions["refused"] += 1
        self.pending = None
        self._drop_lease("refused by the kernel")
        self._solicit_again(now, f"kernel refused {lease.address}", pause=True)

    def _decline(self, now: float) -> None:
        assert self.pending is not None
        bad, self.pending = self.pending, None
        log.warning("duplicate address detection failed: declining it", extra={"fields": {
            "family": 6, "address": bad.address, "server": bad.server}})
        self.acquisitions["conflict"] += 1
        self.host.remove(bad)
        # The server moved us to an address someone else has: the old one is not ours either.
        self._drop_lease("conflict")
        self.declined, self.offer_server = bad.address, bytes.fromhex(bad.server)
        self._go(S.DECLINING, f"{bad.address} is in use on the link")
        self._exchange(now, DEC_TIMEOUT, DEC_TIMEOUT * 8, DEC_MAX_RC)
        self._send(self.p6.DECLINE, now, address=self.declined, server=self.offer_server)

    def _request_failed(self, now: float) -> None:
        if self.lease is None:
            self._solicit_again(now, "no reply to request")
            return
        # Reinstating after NoBinding got no answer: carry on with the lease we hold.
        t2 = self._deadlines()[1]
        if now < t2:
            self._go(S.RENEWING, "no reply to request, lease still valid")
            self._exchange(now, REN_TIMEOUT, REN_MAX_RT)
        else:
            self._go(S.REBINDING, "no reply to request, past T2")
            self._exchange(now, REB_TIMEOUT, REB_MAX_RT)
        self._renew_or_rebind(now)

    def _solicit_again(self, now: float, why: str, pause: bool = False) -> None:
        self._go(S.SOLICITING, why)
        self._solicit_exchange(now)
        # After a refusal the next Solicit waits a growing pause (RFC 8415 18.2.10.1: a
        # server without addresses is not asked in a tight loop).
        self.timer = now + (self.retry.next() if pause
                            else self.rng.uniform(0.0, SOL_MAX_DELAY))

    def _drop_lease(self, reason: str) -> None:
        if self.lease is not None:
            lost = self.lease
            self.host.remove(lost)
            self.lease = None
            self.verified = ""
            self.host.changed(self.slaac, lost, reason) if self.slaac else \
                self.host.changed(None, lost, reason)

    def _expire(self, now: float) -> None:
        log.warning("dhcpv6 lease expired", extra={"fields": {"family": 6}})
        self.acquisitions["expired"] += 1
        if self.pending is not None:
            self.host.remove(self.pending)
            self.pending = None
        self._drop_lease("expired")
        self._solicit_again(now, "lease expired")

    # --- SLAAC ------------------------------------------------------------------

    def observe(self) -> None:
        """Look at the kernel's addresses: report the SLAAC one, announce new ones."""
        now = self.monotonic()
        if now < self.next_observe or self.state == S.STOPPED:
            return
        self.next_observe = now + OBSERVE_EVERY
        found = self.host.addresses6()
        for a in found:
            if a.scope == kernel6.RT_SCOPE_UNIVERSE and a.usable and \
                    not a.flags & kernel6.IFA_F_TEMPORARY and a.address not in self.announced \
                    and (self.pending is None or a.address != self.pending.address):
                self.announced.add(a.address)
                self.host.send(self.p6.unsolicited_na(self.mac, a.address))
        ours = self.lease.address if self.lease is not None else ""
        previous = self.slaac
        chosen = slaac.project_address(found, exclude=ours,
                                       current=previous.address if previous else "")
        if chosen is not None:
            same = previous is not None and previous.address == chosen.address
            lease = StoredLease(family=6, address=chosen.address, prefixlen=chosen.prefixlen,
                                server="", router=self.router,
                                lease_time=float(chosen.valid), t1=0.0, t2=0.0,
                                acquired=self.wall(), preferred=float(chosen.preferred))
            self.slaac = lease
            if not same and self.current() == (lease, "slaac"):
                log.info("slaac address", extra={"fields": {
                    "family": 6, "address": chosen.address,
                    "previous": previous.address if previous else ""}})
                self.host.changed(lease, previous, "slaac")
        elif previous is not None:
            self.slaac = None
            if self.current() is None:
                self.host.changed(None, previous, "slaac address gone")

    def release(self) -> None:
        if self.lease is not None and self.state in HOLDS_LEASE:
            now = self.monotonic()
            self._exchange(now, 1.0, 1.0)
            # Sent once: the container is going away (RFC 8415 18.2.7's REL_MAX_RC is for a
            # client that stays).
            self._send(self.p6.RELEASE, now, address=self.lease.address,
                       server=self.server_duid)
            lost = self.lease
            self.host.remove(lost)
            self.lease = None
            self.host.changed(None, lost, "released")
        if self.state != S.STOPPED:
            self._go(S.STOPPED, "released")
