"""The DHCPv4 client state machine (RFC 2131), with the ARP conflict check and defence of RFC 5227.

Owns the protocol decisions only: which message to send when, which reply to
accept, when a lease is bound, renewed, rebound or lost. Everything it does to
the world goes through a ``V4Host`` (frames out, address and route applied or
removed, "the lease changed"), so the unit tests drive it with a fake host and
a fake clock, and the worker drives it with the kernel.

States are an enum and every move is checked against ``ALLOWED``; each move is
one INFO log line. PROBING is ours, not RFC 2131's: it is the RFC 5227 probe
between the ACK and binding. Once the address is in use it is defended (RFC 5227
2.4 (b)): another host's ARP claiming it is answered with one announcement; a
second claim within DEFEND_INTERVAL means the address is given up (no DHCPDECLINE,
which is for an address not yet in use) and configuration restarts.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from anchord.dhcp import packets
from anchord.dhcp.leasefile import StoredLease
from anchord.dhcp.timers import Backoff

log = logging.getLogger(__name__)


class State(enum.Enum):
    INIT = "init"
    SELECTING = "selecting"
    REQUESTING = "requesting"
    PROBING = "probing"
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    INIT_REBOOT = "init-reboot"
    REBOOTING = "rebooting"
    STOPPED = "stopped"


S = State
ALLOWED: dict[State, frozenset[State]] = {
    S.INIT: frozenset({S.SELECTING, S.INIT_REBOOT, S.STOPPED}),
    S.SELECTING: frozenset({S.REQUESTING, S.INIT, S.INIT_REBOOT, S.STOPPED}),
    S.REQUESTING: frozenset({S.PROBING, S.INIT, S.INIT_REBOOT, S.STOPPED}),
    S.PROBING: frozenset({S.BOUND, S.INIT, S.INIT_REBOOT, S.STOPPED}),
    S.BOUND: frozenset({S.RENEWING, S.INIT, S.INIT_REBOOT, S.STOPPED}),
    S.RENEWING: frozenset({S.BOUND, S.PROBING, S.REBINDING, S.INIT, S.INIT_REBOOT,
                           S.STOPPED}),
    S.REBINDING: frozenset({S.BOUND, S.PROBING, S.INIT, S.INIT_REBOOT, S.STOPPED}),
    S.INIT_REBOOT: frozenset({S.REBOOTING, S.INIT, S.STOPPED}),
    S.REBOOTING: frozenset({S.BOUND, S.PROBING, S.RENEWING, S.REBINDING, S.INIT,
                            S.INIT_REBOOT, S.STOPPED}),
    S.STOPPED: frozenset(),
}
HOLDS_LEASE = frozenset({S.BOUND, S.RENEWING, S.REBINDING, S.INIT_REBOOT, S.REBOOTING})

# RFC 5227 waits 1-2 s between three probes and 2 s after; we probe twice 0.3 s
# apart and wait 0.5 s: a LAN host owning the address answers in milliseconds and
# the shorter check keeps a cold start well inside S-1's 10 s.
PROBE_COUNT = 2
PROBE_INTERVAL = 0.3
PROBE_WAIT = 0.5
# RFC 2131 3.1.5 asks for 10 s after a DECLINE; a conflict is rare, we keep it.
DECLINE_WAIT = 10.0
REQUEST_TRIES = 4  # REQUESTING: REQUESTs without an answer before starting over
# RFC 5227 2.4 (b): one defence (an announcement) per DEFEND_INTERVAL; a second conflict
# inside it gives the address up.
DEFEND_INTERVAL = 10.0
NAK_RESTART = 1.0  # seconds at most from a NAK to the new DISCOVER
REBOOT_TRIES = 2  # REBOOTING: REQUESTs before resuming the stored lease as is


class IllegalTransition(RuntimeError):
    pass


class V4Host(Protocol):
    """What the state machine needs from the world."""

    def send(self, frame: bytes) -> None: ...

    def apply(self, lease: StoredLease, remaining: float) -> None:
        """Put the address (valid for ``remaining`` s) and the default route on the child."""

    def remove(self, lease: StoredLease) -> None:
        """Take the address and its default route off the child."""

    def changed(self, lease: StoredLease | None, previous: StoredLease | None,
                reason: str) -> None:
        """The bound lease changed (or was lost when ``lease`` is None)."""


class Dhcp4Client:
    """One DHCPv4 client on one interface. Call ``tick`` when ``wakeup`` is due."""

    def __init__(
        self,
        host: V4Host,
        mac: str,
        hostname: str,
        backoff_max: float,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.mac = mac
        self.hostname = hostname
        self.monotonic = monotonic
        self.wall = wall
        self.rng = rng or random.Random()
        self.backoff = Backoff(initial=4.0, cap=backoff_max, rng=self.rng)
        self.state = State.INIT
        self.lease: StoredLease | None = None
        self.base = 0.0  # monotonic time the current lease was granted (see _hold)
        self.offer: packets.Reply | None = None
        self.offer_mac = ""
        self.xid = 0
        self.tries = 0
        self.started = 0.0  # monotonic start of the current exchange (secs field)
        self.wakeup = 0.0  # monotonic time of the next action
        self.probes_sent = 0
        self.defended_at: float | None = None  # monotonic time of the last defence (2.4 (b))
        self.dropped: Counter[str] = Counter()
        self.acquisitions: Counter[str] = Counter()  # by outcome, for metrics

    # --- transitions -------------------------------------------------------

    def _go(self, new: State, why: str) -> None:
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {new.value}")
        fields: dict[str, object] = {"family": 4, "from": self.state.value, "to": new.value,
                                     "why": why}
        if self.lease is not None:
            fields["address"] = self.lease.address
        log.info("dhcpv4 %s -> %s (%s)", self.state.value, new.value, why,
                 extra={"fields": fields})
        self.state = new

    def start(self, stored: StoredLease | None) -> None:
        """Begin: INIT-REBOOT if ``stored`` is still valid, else INIT."""
        now = self.monotonic()
        if stored is not None and stored.expiry > self.wall() + 1:
            self._hold(stored, now - (self.wall() - stored.acquired))
            self._go(S.INIT_REBOOT, "stored lease still valid")
            self.host.apply(stored, self._remaining())
        else:
            if stored is not None:
                log.info("stored dhcpv4 lease expired, starting over",
                         extra={"fields": {"address": stored.address}})
            self.lease = None
        self.backoff.reset()
        self.tries = 0
        self.wakeup = now

    def restart(self, why: str) -> None:
        """The link was re-created: confirm a valid lease, or start over."""
        if self.state == S.STOPPED:
            return
        if self.lease is not None and self._remaining() > 1:
            self._go(S.INIT_REBOOT, why)
            self.host.apply(self.lease, self._remaining())
        elif self.state != S.INIT:
            self.lease = None
            self._go(S.INIT, why)
        self.backoff.reset()
        self.tries = 0
        self.wakeup = self.monotonic()

    # --- time ----------------------------------------------------------------

    def _hold(self, lease: StoredLease, base: float) -> None:
        """Make ``lease`` current; ``base`` is when it was granted, on the monotonic clock.

        Timers run on that clock only: the wall clock (stepped by NTP on a host without an
        RTC) is read once, when a stored lease is loaded, and written to the lease file.
        """
        self.lease = lease
        self.base = base

    def _remaining(self) -> float:
        assert self.lease is not None
        return max(0.0, self.base + self.lease.lease_time - self.monotonic())

    def _lease_deadlines(self) -> tuple[float, float, float]:
        """T1, T2 and expiry of the current lease as monotonic times."""
        assert self.lease is not None
        base = self.base
        return (base + self.lease.t1, base + self.lease.t2, base + self.lease.lease_time)

    def _retransmit_floor(self) -> float:
        # RFC 2131 4.4.5 floors the RENEWING/REBINDING retransmission at 60 s;
        # a lease of tens of seconds would then never retry, so scale it down.
        assert self.lease is not None
        return min(60.0, max(1.0, self.lease.lease_time / 8))

    def tick(self) -> None:
        """Do what is due now."""
        now = self.monotonic()
        if now < self.wakeup or self.state == S.STOPPED:
            return
        if self.lease is not None and self.state in HOLDS_LEASE:
            _t1, _t2, expiry = self._lease_deadlines()
            if now >= expiry:
                self._expire()
                return
        handler = getattr(self, f"_tick_{self.state.name.lower()}")
        handler(now)

    def _new_exchange(self, now: float) -> None:
        self.xid = self.rng.getrandbits(32)
        self.tries = 0
        self.started = now

    def _secs(self, now: float) -> int:
        return int(now - self.started)

    def _tick_init(self, now: float) -> None:
        self._new_exchange(now)
        self.offer = None
        self._go(S.SELECTING, "sending discover")
        self._send_discover(now)

    def _send_discover(self, now: float) -> None:
        self.host.send(packets.build(packets.DISCOVER, self.mac, self.xid, self.hostname,
                                     secs=self._secs(now)))
        self.tries += 1
        self.wakeup = now + self.backoff.next()

    def _tick_selecting(self, now: float) -> None:
        if self.tries == 1:  # one timeout per attempt, not one per retransmission
            self.acquisitions["timeout"] += 1
        self._send_discover(now)

    def _send_request(self, now: float) -> None:
        assert self.offer is not None
        self.host.send(packets.build(
            packets.REQUEST, self.mac, self.xid, self.hostname, requested=self.offer.yiaddr,
            server_id=self.offer.server_id, secs=self._secs(now)))
        self.tries += 1
        self.wakeup = now + self.backoff.next()

    def _tick_requesting(self, now: float) -> None:
        if self.tries >= REQUEST_TRIES:
            self._go(S.INIT, "no answer to request")
            self.wakeup = now
            return
        self._send_request(now)

    def _tick_probing(self, now: float) -> None:
        assert self.offer is not None
        if self.probes_sent < PROBE_COUNT:
            self.host.send(packets.arp_probe(self.mac, self.offer.yiaddr))
            self.probes_sent += 1
            self.wakeup = now + (PROBE_INTERVAL if self.probes_sent < PROBE_COUNT
                                 else PROBE_WAIT)
            return
        self._bind(self.offer, self.offer_mac, now)

    def _tick_bound(self, now: float) -> None:
        t1, _t2, _expiry = self._lease_deadlines()
        if now < t1:
            self.wakeup = t1
            return
        self._new_exchange(now)
        self._go(S.RENEWING, "T1 reached")
        self._tick_renewing(now)

    def _tick_renewing(self, now: float) -> None:
        assert self.lease is not None
        _t1, t2, _expiry = self._lease_deadlines()
        if now >= t2:
            self._go(S.REBINDING, "T2 reached")
            self._tick_rebinding(now)
            return
        # Unicast to the server that granted the lease (RFC 2131 4.4.5).
        dst_mac = self.lease.server_mac or packets.BROADCAST_MAC
        self.host.send(packets.build(
            packets.REQUEST, self.mac, self.xid, self.hostname, ciaddr=self.lease.address,
            src_ip=self.lease.address, dst_ip=self.lease.server, dst_mac=dst_mac,
            secs=self._secs(now)))
        self.tries += 1
        self.wakeup = min(t2, now + max((t2 - now) / 2, self._retransmit_floor()))

    def _tick_rebinding(self, now: float) -> None:
        assert self.lease is not None
        _t1, _t2, expiry = self._lease_deadlines()
        self.host.send(packets.build(
            packets.REQUEST, self.mac, self.xid, self.hostname, ciaddr=self.lease.address,
            src_ip=self.lease.address, secs=self._secs(now)))
        self.tries += 1
        self.wakeup = min(expiry, now + max((expiry - now) / 2, self._retransmit_floor()))

    def _tick_init_reboot(self, now: float) -> None:
        self._new_exchange(now)
        self._go(S.REBOOTING, "confirming the stored lease")
        self._tick_rebooting(now)

    def _tick_rebooting(self, now: float) -> None:
        assert self.lease is not None
        if self.tries >= REBOOT_TRIES:
            # RFC 2131 3.2: no answer, keep using the lease until it expires.
            t1, t2, _expiry = self._lease_deadlines()
            self.backoff.reset()
            if now < t1:
                self._go(S.BOUND, "no answer to init-reboot, lease still valid")
                self.wakeup = t1
            elif now < t2:
                self._go(S.RENEWING, "no answer to init-reboot, past T1")
                self._new_exchange(now)
                self._tick_renewing(now)
            else:
                self._go(S.REBINDING, "no answer to init-reboot, past T2")
                self._new_exchange(now)
                self._tick_rebinding(now)
            return
        self.host.send(packets.build(
            packets.REQUEST, self.mac, self.xid, self.hostname, requested=self.lease.address,
            secs=self._secs(now)))
        self.tries += 1
        self.wakeup = now + min(2.0 * self.tries, self.backoff.cap)

    # --- events --------------------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        """A frame from the DHCP socket: validated, or dropped and counted."""
        if self.state not in (S.SELECTING, S.REQUESTING, S.RENEWING, S.REBINDING,
                              S.REBOOTING):
            self.dropped["unexpected"] += 1
            return
        try:
            reply = packets.parse_reply(frame, self.mac, self.xid)
        except packets.Malformed as exc:
            self.dropped[exc.reason] += 1
            log.debug("dhcpv4 packet dropped", extra={"fields": {"reason": str(exc)[:200]}})
            return
        src_mac = ":".join(f"{b:02x}" for b in frame[6:12])
        now = self.monotonic()
        if reply.msg_type == packets.OFFER:
            if self.state != S.SELECTING:
                self.dropped["unexpected"] += 1
                return
            self.offer, self.offer_mac = reply, src_mac
            self._go(S.REQUESTING, f"offer of {reply.yiaddr} from {reply.server_id}")
            self.tries = 0
            self.backoff.reset()  # a new exchange: its retransmissions start short again
            self._send_request(now)
        elif reply.msg_type == packets.ACK:
            self._on_ack(reply, src_mac, now)
        else:
            self._on_nak(reply, now)

    def _on_ack(self, reply: packets.Reply, src_mac: str, now: float) -> None:
        if self.state == S.SELECTING:
            self.dropped["unexpected"] += 1
            return
        if self.state == S.REQUESTING:
            assert self.offer is not None
            if reply.yiaddr != self.offer.yiaddr:
                self.dropped["ack_for_other_address"] += 1
                return
            self.offer = reply
            self.offer_mac = src_mac
            self.probes_sent = 0
            self._go(S.PROBING, f"ack for {reply.yiaddr}, probing for conflicts")
            self.wakeup = now
            self._tick_probing(now)
            return
        # RENEWING, REBINDING, REBOOTING: the same address is ours already, no probe; a
        # different one is new to us and probed first (RFC 5227 2.1).
        if self.lease is not None and reply.yiaddr != self.lease.address:
            self.offer = reply
            self.offer_mac = src_mac
            self.probes_sent = 0
            self._go(S.PROBING, f"the server moved us to {reply.yiaddr}, probing for "
                                "conflicts")
            self.wakeup = now
            self._tick_probing(now)
            return
        self._bind(reply, src_mac, now)

    def _on_nak(self, reply: packets.Reply, now: float) -> None:
        if self.state == S.SELECTING:
            self.dropped["unexpected"] += 1
            return
        if self.state == S.RENEWING and self.lease is not None and \
                reply.server_id and reply.server_id != self.lease.server:
            self.dropped["nak_from_other_server"] += 1
            return
        # In REQUESTING only the chosen server's NAK counts (the REQUEST names it; another
        # server's NAK on a shared segment is not about our offer).
        if self.state == S.REQUESTING and self.offer is not None and \
                reply.server_id and reply.server_id != self.offer.server_id:
            self.dropped["nak_from_other_server"] += 1
            return
        self.acquisitions["nak"] += 1
        if self.lease is not None:
            lost = self.lease
            self.host.remove(lost)
            self.lease = None
            self.host.changed(None, lost, "nak")
        self._go(S.INIT, f"nak from {reply.server_id or reply.src_ip}")
        # RFC 2131 3.1: start over at once; within a second, not a growing backoff (a server
        # that NAKs everything is then asked once a second, not in a tight loop).
        self.wakeup = now + min(NAK_RESTART, self.backoff.next())

    def arp_watch(self) -> tuple[str, bool] | None:
        """The address whose ARP traffic matters now and whether probes for it count (while
        probing), or None: the worker keeps an ARP socket, filtered to that, only then."""
        if self.state == S.PROBING and self.offer is not None:
            return self.offer.yiaddr, True
        if self.state in HOLDS_LEASE and self.lease is not None:
            return self.lease.address, False
        return None

    def on_arp(self, frame: bytes) -> None:
        """An ARP frame: during PROBING, someone else using or probing the offered address;
        while the address is ours, another host claiming it (RFC 5227 2.4)."""
        watching = self.arp_watch()
        if watching is None:
            return
        try:
            seen = packets.parse_arp(frame)
        except packets.Malformed as exc:
            self.dropped[exc.reason] += 1
            return
        if seen.sender_mac == self.mac:
            return
        if self.state != S.PROBING:
            if seen.sender_ip == watching[0]:
                self._conflict_in_use(seen.sender_mac)
            return
        assert self.offer is not None
        target = self.offer.yiaddr
        # RFC 5227 2.1.1: a packet with our address as sender, or another probe for it.
        if seen.sender_ip == target or (seen.sender_ip == "0.0.0.0" and seen.target_ip == target):
            self._decline(seen.sender_mac)

    def _decline(self, other_mac: str) -> None:
        assert self.offer is not None
        offer = self.offer
        log.warning("address conflict: declining it",
                    extra={"fields": {"family": 4, "address": offer.yiaddr,
                                      "other_mac": other_mac, "server": offer.server_id}})
        self.acquisitions["conflict"] += 1
        self.host.send(packets.build(packets.DECLINE, self.mac, self.xid, self.hostname,
                                     requested=offer.yiaddr, server_id=offer.server_id))
        self.offer = None
        if self.lease is not None:
            # The server moved us off the old address and the new one is taken: neither is
            # ours now.
            lost = self.lease
            self.host.remove(lost)
            self.lease = None
            self.host.changed(None, lost, "conflict")
        self._go(S.INIT, f"{offer.yiaddr} in use by {other_mac}")
        self.wakeup = self.monotonic() + DECLINE_WAIT

    def _conflict_in_use(self, other_mac: str) -> None:
        """RFC 5227 2.4 (b): defend once, give the address up on a second conflict within
        DEFEND_INTERVAL of the defence."""
        assert self.lease is not None
        lease = self.lease
        now = self.monotonic()
        fields: dict[str, object] = {"family": 4, "address": lease.address,
                                     "other_mac": other_mac, "state": self.state.value}
        if self.defended_at is None or now - self.defended_at >= DEFEND_INTERVAL:
            self.defended_at = now
            log.warning("address conflict: another host claims our address, defending it",
                        extra={"fields": fields})
            self.acquisitions["defended"] += 1
            self.host.send(packets.arp_announce(self.mac, lease.address))
            return
        log.warning("address conflict again within %.0f s of defending: giving the address up",
                    DEFEND_INTERVAL, extra={"fields": fields})
        self.acquisitions["defend_lost"] += 1
        self.defended_at = None
        self.host.remove(lease)
        self.lease = None
        self.offer = None
        self.host.changed(None, lease, "conflict")
        self._go(S.INIT, f"{lease.address} claimed by {other_mac} after a defence")
        # Configuration restarts at once; the probe before the next use (and a DECLINE if
        # the server offers the same address again) keeps us off the taken address.
        self.backoff.reset()
        self.wakeup = now

    def _bind(self, reply: packets.Reply, server_mac: str, now: float) -> None:
        lease_time = float(reply.lease_time)
        t1, t2 = float(reply.t1), float(reply.t2)
        if not 0 < t1 < lease_time:
            t1 = lease_time * 0.5
            if 0 < t2 < lease_time and t1 >= t2:
                # T2 given without T1, earlier than the default T1: keep T2, and renew before
                # it in the defaults' proportion (0.5 : 0.875).
                t1 = t2 * 0.5 / 0.875
        if not t1 < t2 < lease_time:
            t2 = lease_time * 0.875
        t1 = min(t1, t2)
        previous = self.lease
        lease = StoredLease(
            family=4, address=reply.yiaddr, prefixlen=reply.prefixlen,
            server=reply.server_id, router=reply.router, lease_time=lease_time, t1=t1, t2=t2,
            acquired=self.wall(), server_mac=server_mac)
        if previous is not None and (previous.address, previous.prefixlen) != \
                (lease.address, lease.prefixlen):
            self.host.remove(previous)
        self._hold(lease, now)
        self.host.apply(lease, lease_time)
        fresh = previous is None or previous.address != lease.address
        if fresh:
            self.defended_at = None
            self.host.send(packets.arp_announce(self.mac, lease.address))
        if self.state not in (S.RENEWING, S.REBINDING):
            self.acquisitions["ok"] += 1  # a renewal is not an acquisition
        self.backoff.reset()
        self._go(S.BOUND, f"{lease.address}/{lease.prefixlen} for {lease_time:.0f} s "
                          f"from {lease.server}")
        self.wakeup = now + t1
        self.host.changed(lease, previous, "bound")

    def _expire(self) -> None:
        assert self.lease is not None
        lost = self.lease
        log.warning("dhcpv4 lease expired", extra={"fields": {"family": 4,
                                                             "address": lost.address}})
        self.host.remove(lost)
        self.lease = None
        self.acquisitions["expired"] += 1
        self.host.changed(None, lost, "expired")
        self._go(S.INIT, "lease expired")
        self.backoff.reset()
        self.wakeup = self.monotonic()

    def release(self) -> None:
        """Shutdown of the container: give the lease back (DHCPRELEASE) and stop."""
        if self.lease is not None and self.state in HOLDS_LEASE:
            lease = self.lease
            self.host.send(packets.build(
                packets.RELEASE, self.mac, self.rng.getrandbits(32), self.hostname,
                ciaddr=lease.address, src_ip=lease.address, dst_ip=lease.server,
                dst_mac=lease.server_mac or packets.BROADCAST_MAC, server_id=lease.server))
            self.host.remove(lease)
            self.lease = None
            self.host.changed(None, lease, "released")
        self._go(S.STOPPED, "released")
