"""The conntrack-flusher's bookkeeping (a fake conntrack; no kernel, no root)."""

from __future__ import annotations

from typing import Any

from anchord.conntrack import FlushResult
from bus.events import Backend, BackendsDesired, Lease, LeaseChanged, LeaseLost, NatApplied
from workers.conntrack_flusher import RECONCILE_EVERY, Flusher


class FakeConntrack:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        # What the kernel "holds": (family, proto, port, backend) of DNATed flows.
        self.flows: list[tuple[int, str, int, str]] = []

    def reconcile(self, family: int, project: str, backend_of: Any,
                  settle: float = 0.05) -> FlushResult:
        stale = [f for f in self.flows if f[0] == family and backend_of(f[1], f[2]) != f[3]]
        self.flows = [f for f in self.flows if f not in stale]
        self.calls.append(("reconcile", family, project, len(stale)))
        return FlushResult(family, len(stale), len(stale), 0.001)

    def flush_address(self, family: int, address: str) -> FlushResult:
        self.calls.append(("address", family, address))
        return FlushResult(family, 2, 2, 0.002)


def desired(gen: int, *entries: Backend) -> BackendsDesired:
    return BackendsDesired.of(generation=gen, cause="event", event_time=0.0, entries=entries)


def applied(gen: int, ok: bool = True) -> NatApplied:
    return NatApplied(generation=gen, ok=ok, duration=0.01, event_time=0.0)


def test_flows_are_checked_against_the_applied_table() -> None:
    ct = FakeConntrack()
    clock = [0.0]
    f = Flusher(ct, clock=lambda: clock[0])  # type: ignore[arg-type]
    f.handle(LeaseChanged(lease=Lease(4, "192.0.2.50/24")))
    ct.flows = [(4, "udp", 53, "10.0.0.1"), (4, "tcp", 8000, "10.0.0.1"),
                (4, "tcp", 443, "10.0.0.2")]
    f.handle(desired(3, Backend(4, "udp", 53, 53, "10.0.0.9", "new"),
                     Backend(4, "tcp", 8000, 8100, "10.0.0.1", "range"),
                     Backend(4, "tcp", 443, 443, "10.0.0.2", "web")))
    assert f.handle(applied(4)) == []  # no table for that generation (yet): nothing judged
    out = f.handle(applied(3))
    assert [(m.family, m.removed, m.reason) for m in out] == [(4, 1, "backend")]
    assert ct.flows == [(4, "tcp", 8000, "10.0.0.1"), (4, "tcp", 443, "10.0.0.2")]
    assert f.handle(applied(3)) == []  # a heartbeat repeat
    assert f.handle(applied(5, ok=False)) == []


def test_a_lost_message_is_repaired_by_the_periodic_pass() -> None:
    """The move happened while nobody listened: the next pass finds the pinned flow."""
    ct = FakeConntrack()
    clock = [0.0]
    f = Flusher(ct, clock=lambda: clock[0])  # type: ignore[arg-type]
    f.handle(LeaseChanged(lease=Lease(4, "192.0.2.50/24")))
    f.handle(desired(7, Backend(4, "udp", 53, 53, "10.0.0.9", "dns")))
    f.handle(applied(7))
    ct.flows = [(4, "udp", 53, "10.0.0.1")]  # pinned to the old backend
    assert f.due() == []  # not yet time
    clock[0] += RECONCILE_EVERY
    assert [m.removed for m in f.due()] == [1]
    assert ct.flows == []


def test_lease_change_and_loss_flush_the_old_address_once() -> None:
    ct = FakeConntrack()
    f = Flusher(ct)  # type: ignore[arg-type]
    changed = LeaseChanged(lease=Lease(4, "192.0.2.60/24"), previous="192.0.2.50/24")
    assert [m.reason for m in f.handle(changed)] == ["address"]
    assert f.handle(changed) == []
    assert f.handle(LeaseChanged(lease=Lease(4, "192.0.2.60/24"))) == []
    f.handle(LeaseLost(family=4, address="192.0.2.60/24"))
    assert ct.calls == [("address", 4, "192.0.2.50"), ("address", 4, "192.0.2.60")]
    # The old address comes back, then goes again: flushed again.
    f.handle(LeaseChanged(lease=Lease(4, "192.0.2.50/24"), previous="192.0.2.60/24"))
    f.handle(LeaseChanged(lease=Lease(4, "192.0.2.61/24"), previous="192.0.2.50/24"))
    assert ct.calls[-1] == ("address", 4, "192.0.2.50")


def test_an_address_learnt_after_the_table_is_checked_at_once() -> None:
    """A restarted flusher may hear the applied table before the lease: no 30 s wait."""
    ct = FakeConntrack()
    f = Flusher(ct)  # type: ignore[arg-type]
    f.handle(desired(5, Backend(4, "udp", 53, 53, "10.0.0.9", "dns")))
    assert f.handle(applied(5)) == []  # no address yet: nothing to check
    ct.flows = [(4, "udp", 53, "10.0.0.1")]
    out = f.handle(LeaseChanged(lease=Lease(4, "192.0.2.50/24")))
    assert [(m.family, m.removed, m.reason) for m in out] == [(4, 1, "backend")]
    assert f.handle(LeaseChanged(lease=Lease(4, "192.0.2.50/24"))) == []  # a repeat: nothing
