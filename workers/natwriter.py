"""The nat-writer worker: the desired backend table, applied to nftables.

Owns the loop around ``anchord.nft.NatTables``: adopt the tables at start (a
restart keeps the kernel state and converges), apply every new
``BackendsDesired`` snapshot as one transaction of the differing elements, and
report each generation as ``NatApplied`` (owned state, republished on Hello and
heartbeat). Readiness: ``nat_tables`` (tables installed) and ``reconciled`` (one
generation applied). Only a container shutdown deletes the tables.
"""

from __future__ import annotations

import logging
import time

from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import Lifecycle
from anchord.nft import NatTables, NftError
from bus.client import BusClient
from bus.events import BackendsDesired, Condition, Event, LinkChanged, NatApplied

log = logging.getLogger(__name__)

SUBSCRIBE: tuple[type[Event], ...] = (BackendsDesired, LinkChanged)


def local_parent(parent: str) -> str:
    """The VLAN parent's name when it is an interface of this namespace ("" when it lives in
    the host's, ``/path/to/netns:ifname``, or is not resolved yet)."""
    return "" if (not parent or ":" in parent or "/" in parent) else parent
RETRY = 1.0  # seconds between attempts after an nftables error


class _Writer:
    def __init__(self, tables: NatTables) -> None:
        self.tables = tables
        self.last: NatApplied | None = None
        self.done: BackendsDesired | None = None  # the snapshot `last` answers
        self.next_try = 0.0
        self.error = ""

    def conditions(self) -> list[Condition]:
        return [
            Condition("nat_tables", self.tables.installed, self.error if not
                      self.tables.installed else ""),
            Condition("reconciled", bool(self.last and self.last.ok),
                      "" if self.last and self.last.ok else
                      (self.last.error if self.last else "no desired table received yet")),
        ]

    def state(self) -> list[Event]:
        return [self.last] if self.last else []

    def adopt(self) -> bool:
        try:
            self.tables.adopt()
            self.error = ""
            return True
        except (NftError, OSError) as exc:
            self.error = str(exc)
            log.error("cannot install nftables tables", extra={"fields": {"error": str(exc)}})
            return False

    def apply(self, desired: BackendsDesired) -> NatApplied:
        result = self.tables.apply_groups(desired.groups)
        applied = NatApplied(
            generation=desired.generation,
            ok=result.ok,
            duration=result.duration,
            event_time=desired.event_time,
            added=result.added,
            removed=result.removed,
            changed=result.changed,
            counts=result.counts,
            stale=result.stale,
            error=result.error,
            tables=self.tables.installed,
        )
        fields = {"generation": desired.generation, "ok": result.ok,
                  "added": result.added, "removed": result.removed, "changed": result.changed,
                  "stale": len(result.stale), "duration_ms": round(result.duration * 1000, 3)}
        if result.ok:
            log.info("nat applied", extra={"fields": fields})
        else:
            log.error("nat apply failed", extra={"fields": {**fields, "error": result.error}})
        return applied


def run(config: NetworkAnchorConfig, bus: BusClient, life: Lifecycle) -> int:
    writer = _Writer(NatTables(config.ext_iface))
    bus.set_state(writer.state)
    bus.set_conditions(writer.conditions)
    writer.adopt()
    bus.state_changed()
    pending: BackendsDesired | None = None
    try:
        while not life.stop_requested:
            for ev in bus.poll(0.5):
                if isinstance(ev, BackendsDesired):
                    pending = ev  # full snapshots: the newest one is all that matters
                elif isinstance(ev, LinkChanged) and ev.interface == config.ext_iface:
                    parent = local_parent(ev.parent)
                    lan = (parent,) if parent else ()
                    try:
                        writer.tables.set_lan_ifaces(lan)
                    except (NftError, OSError) as exc:
                        writer.tables.installed = False  # re-adopted with them below
                        log.error("cannot set the LAN-facing interfaces", extra={"fields": {
                            "interfaces": lan, "error": str(exc)}})
            now = time.monotonic()
            if now < writer.next_try:
                continue
            if not writer.tables.installed and not writer.adopt():
                writer.next_try = now + RETRY
                continue
            if pending is None or (
                # A heartbeat repeats the snapshot already applied: nothing to do.
                writer.last is not None and writer.last.ok and pending == writer.done
            ):
                continue
            writer.last = writer.apply(pending)
            writer.done = pending
            if not writer.last.ok:
                writer.next_try = now + RETRY
            bus.state_changed()
    finally:
        if life.shutting_down():
            log.info("container shutdown: deleting nftables tables")
            try:
                writer.tables.delete()
            except (NftError, OSError) as exc:
                log.error("cannot delete nftables tables", extra={"fields": {"error": str(exc)}})
        else:
            log.info("worker restart: nftables tables kept for the next instance")
        writer.tables.close()
    return 0
