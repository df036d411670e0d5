"""The conntrack-flusher worker: forget flows that point where nothing lives any more.

Owns, through ``anchord.conntrack``, two clean-ups:

- Backends, from state (F-13): whenever the nat-writer reports a generation applied
  (``NatApplied`` ok), the table of that generation (``BackendsDesired``, kept by generation)
  is the truth, and every DNATed flow to the project's address whose backend is not the one
  the table gives for its port is deleted (``Conntrack.reconcile``: one dump per family,
  grouped, one settle pause). The same runs every ``RECONCILE_EVERY`` seconds and when this
  worker starts: a lost message, a broker outage, a failed flush or a restart of this worker
  across a backend move is repaired by the next pass, not lost for good.
- Addresses: ``LeaseChanged``/``LeaseLost`` (an external address replaced or lost) delete the
  flows of the old address.

Publishes ``ConntrackFlushed``. Never touches nftables.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import time
from collections.abc import Callable

from anchord.config import NetworkAnchorConfig
from anchord.conntrack import Conntrack
from anchord.lifecycle import Lifecycle
from anchord.netlink import NetlinkError
from bus.client import BusClient
from bus.events import (
    BackendsDesired,
    ConntrackFlushed,
    Event,
    LeaseChanged,
    LeaseLost,
    NatApplied,
)

log = logging.getLogger(__name__)

SUBSCRIBE: tuple[type[Event], ...] = (BackendsDesired, NatApplied, LeaseChanged, LeaseLost)
RECONCILE_EVERY = 30.0  # seconds: the safety net under the event-driven passes
KEEP_GENERATIONS = 16  # desired tables kept until the nat-writer reports one applied


class Lookup:
    """(family, proto, port) -> backend of one applied table: single ports in a dict, ranges
    bisected."""

    def __init__(self, desired: BackendsDesired) -> None:
        self.singles: dict[tuple[int, str, int], str] = {}
        ranges: dict[tuple[int, str], list[tuple[int, int, str]]] = {}
        for e in desired.entries:
            try:
                address = ipaddress.ip_address(e.address).compressed
            except ValueError:
                continue
            if e.first == e.last:
                self.singles[(e.family, e.proto, e.first)] = address
            else:
                ranges.setdefault((e.family, e.proto), []).append((e.first, e.last, address))
        self.ranges = {k: sorted(v) for k, v in ranges.items()}
        self.firsts = {k: [r[0] for r in v] for k, v in self.ranges.items()}

    def backend_of(self, family: int) -> Callable[[str, int], str | None]:
        def find(proto: str, port: int) -> str | None:
            found = self.singles.get((family, proto, port))
            if found is not None:
                return found
            spans = self.ranges.get((family, proto))
            if not spans:
                return None
            i = bisect.bisect_right(self.firsts[(family, proto)], port) - 1
            if i >= 0 and spans[i][0] <= port <= spans[i][1]:
                return spans[i][2]
            return None
        return find


class Flusher:
    """What was handled already, and the flushing itself (usable without a bus)."""

    def __init__(self, ct: Conntrack, clock: Callable[[], float] = time.monotonic) -> None:
        self.ct = ct
        self.clock = clock
        self.desired: dict[int, BackendsDesired] = {}  # by generation, not yet applied
        self.applied: Lookup | None = None
        self.applied_generation: int | None = None
        self.addresses: dict[int, str] = {}  # family -> the project's address now
        self.handled_addresses: set[tuple[int, str]] = set()
        self.next_reconcile = clock()  # at once after a start

    def on_desired(self, ev: BackendsDesired) -> None:
        self.desired[ev.generation] = ev
        while len(self.desired) > KEEP_GENERATIONS:
            del self.desired[min(self.desired)]

    def on_nat_applied(self, ev: NatApplied) -> list[ConntrackFlushed]:
        if not ev.ok or ev.generation == self.applied_generation:
            return []
        desired = self.desired.get(ev.generation)
        if desired is None:
            return []  # its table comes with the next snapshot of discovery
        self.applied = Lookup(desired)
        self.applied_generation = ev.generation
        for generation in [g for g in self.desired if g <= ev.generation]:
            del self.desired[generation]
        return self.reconcile("applied")

    def reconcile(self, why: str) -> list[ConntrackFlushed]:
        """Check every DNATed flow of each family against the applied table."""
        self.next_reconcile = self.clock() + RECONCILE_EVERY
        if self.applied is None:
            return []
        out = []
        for family, address in sorted(self.addresses.items()):
            res = self.ct.reconcile(family, address, self.applied.backend_of(family))
            if res.matched or res.removed:
                log.info("flushed flows of stale backends", extra={"fields": {
                    "family": family, "why": why, "generation": self.applied_generation,
                    "stale": res.matched, "removed": res.removed,
                    "duration_ms": round(res.duration * 1000, 3)}})
                out.append(ConntrackFlushed(family=family, removed=res.removed,
                                            duration=res.duration, reason="backend"))
        return out

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
        if isinstance(ev, BackendsDesired):
            self.on_desired(ev)
            return []
        if isinstance(ev, NatApplied):
            return self.on_nat_applied(ev)
        if isinstance(ev, LeaseChanged):
            current = ev.lease.address.split("/", 1)[0]
            known = self.addresses.get(ev.lease.family)
            self.addresses[ev.lease.family] = current
            # The address is in use again: a later loss of it must flush again.
            self.handled_addresses.discard((ev.lease.family, current))
            previous = ev.previous.split("/", 1)[0]
            out = []
            if previous and previous != current:
                out = self.on_address_gone(ev.lease.family, previous)
            if known != current:
                # Learnt after the table (a restarted flusher hears them in any order): the
                # flows to this address are checked now, not at the next periodic pass.
                out += self.reconcile("address")
            return out
        if isinstance(ev, LeaseLost):
            if self.addresses.get(ev.family) == ev.address.split("/", 1)[0]:
                del self.addresses[ev.family]
            return self.on_address_gone(ev.family, ev.address)
        return []

    def reconcile_soon(self) -> None:
        """Make the next ``due()`` a full pass (messages were lost on the bus)."""
        self.next_reconcile = self.clock()

    def due(self) -> list[ConntrackFlushed]:
        """The periodic pass, when it is time."""
        if self.clock() < self.next_reconcile:
            return []
        return self.reconcile("periodic")


def run(config: NetworkAnchorConfig, bus: BusClient, life: Lifecycle) -> int:
    with Conntrack() as ct:
        flusher = Flusher(ct)
        # A lost table or lease message is never waited for: the next pass works from the
        # current state, so it comes at once.
        bus.on_gap(lambda source, topic: flusher.reconcile_soon())
        while not life.stop_requested:
            for ev in [*bus.poll(0.5), None]:
                try:
                    flushed = flusher.handle(ev) if ev is not None else flusher.due()
                except (NetlinkError, OSError, ValueError) as exc:
                    # Nothing is lost: the next pass (periodic at the latest) checks every
                    # flow against the table again.
                    log.error("conntrack flush failed", extra={"fields": {"error": str(exc)}})
                    continue
                for msg in flushed:
                    bus.publish(msg)
    return 0
