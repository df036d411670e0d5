"""The conntrack-flusher worker: forget flows that point where nothing lives any more.

Owns the reaction to ``NatApplied`` (stale backends: delete their flows) and to
``LeaseChanged``/``LeaseLost`` (an external address replaced or lost: delete the
flows of the old address), through ``anchord.conntrack``. Publishes
``ConntrackFlushed``. Snapshots are republished on every heartbeat, so each is
handled once: a restarted flusher may flush one generation again, which is
harmless. Never touches nftables.
"""

from __future__ import annotations

import logging

from pyroute2.netlink.exceptions import NetlinkError

from anchord.config import NetworkAnchorConfig
from anchord.conntrack import Conntrack, FlushResult
from anchord.lifecycle import Lifecycle
from bus.client import BusClient
from bus.events import ConntrackFlushed, Event, LeaseChanged, LeaseLost, NatApplied

log = logging.getLogger(__name__)

SUBSCRIBE: tuple[type[Event], ...] = (NatApplied, LeaseChanged, LeaseLost)


class Flusher:
    """What was handled already, and the flushing itself (usable without a bus)."""

    def __init__(self, ct: Conntrack) -> None:
        self.ct = ct
        self.handled_nat: NatApplied | None = None
        self.handled_addresses: set[tuple[int, str]] = set()

    def on_nat_applied(self, ev: NatApplied) -> list[ConntrackFlushed]:
        if ev == self.handled_nat or not ev.ok:
            return []
        self.handled_nat = ev
        results: dict[int, list[FlushResult]] = {}
        for s in ev.stale:
            res = self.ct.flush_backend(s.family, s.address, s.proto, s.first, s.last)
            results.setdefault(s.family, []).append(res)
            log.info("flushed stale backend", extra={"fields": {
                "family": s.family, "address": s.address, "proto": s.proto,
                "ports": f"{s.first}-{s.last}", "removed": res.removed,
                "duration_ms": round(res.duration * 1000, 3)}})
        return [ConntrackFlushed(family=f, removed=sum(r.removed for r in rs),
                                 duration=sum(r.duration for r in rs), reason="backend")
                for f, rs in sorted(results.items())]

    def on_address_gone(self, family: int, address: str) -> list[ConntrackFlushed]:
        address = address.split("/", 1)[0]
        if not address or (family, address) in self.handled_addresses:
            return []
        self.handled_addresses.add((family, address))
        res = self.ct.flush_address(family, address)
        log.info("flushed old external address", extra={"fields": {
            "family": family, "address": address, "removed": res.removed,
            "duration_ms": round(res.duration * 1000, 3)}})
        return [ConntrackFlushed(family=family, removed=res.removed, duration=res.duration,
                                 reason="address")]

    def handle(self, ev: Event) -> list[ConntrackFlushed]:
        if isinstance(ev, NatApplied):
            return self.on_nat_applied(ev)
        if isinstance(ev, LeaseChanged):
            current = ev.lease.address.split("/", 1)[0]
            # The address is in use again: a later loss of it must flush again.
            self.handled_addresses.discard((ev.lease.family, current))
            previous = ev.previous.split("/", 1)[0]
            if previous and previous != current:
                return self.on_address_gone(ev.lease.family, previous)
            return []
        if isinstance(ev, LeaseLost):
            return self.on_address_gone(ev.family, ev.address)
        return []


def run(config: NetworkAnchorConfig, bus: BusClient, life: Lifecycle) -> int:
    with Conntrack() as ct:
        flusher = Flusher(ct)
        while not life.stop_requested:
            for ev in bus.poll(0.5):
                try:
                    flushed = flusher.handle(ev)
                except (NetlinkError, OSError, ValueError) as exc:
                    # The next snapshot (heartbeat) is a new chance only if it differs;
                    # forget this one so that a repeat of it is retried.
                    flusher.handled_nat = None
                    log.error("conntrack flush failed", extra={"fields": {"error": str(exc)}})
                    continue
                for msg in flushed:
                    bus.publish(msg)
    return 0
