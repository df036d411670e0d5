"""The conntrack-flusher's bookkeeping (a fake conntrack; no kernel, no root)."""

from __future__ import annotations

from typing import Any

from anchord.conntrack import FlushResult
from bus.events import Lease, LeaseChanged, LeaseLost, NatApplied, StaleBackend
from workers.conntrack_flusher import Flusher


class FakeConntrack:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def flush_backend(self, family: int, address: str, proto: str | None = None,
                      first: int = 1, last: int = 65535) -> FlushResult:
        self.calls.append(("backend", family, address, proto, first, last))
        return FlushResult(family, 1, 1, 0.001)

    def flush_address(self, family: int, address: str) -> FlushResult:
        self.calls.append(("address", family, address))
        return FlushResult(family, 2, 2, 0.002)


def applied(gen: int, *stale: StaleBackend, duration: float = 0.01) -> NatApplied:
    return NatApplied(generation=gen, ok=True, duration=duration, event_time=0.0, stale=stale)


def test_each_generation_flushed_once_heartbeat_repeats_ignored() -> None:
    ct = FakeConntrack()
    f = Flusher(ct)  # type: ignore[arg-type]
    ev = applied(3, StaleBackend(4, "udp", 53, 53, "10.0.0.1"),
                 StaleBackend(6, "tcp", 1, 9, "fd00::1"))
    out = f.handle(ev)
    assert [(m.family, m.removed, m.reason) for m in out] == [(4, 1, "backend"), (6, 1, "backend")]
    assert f.handle(ev) == []  # the same snapshot again (heartbeat / Hello)
    assert ct.calls == [("backend", 4, "10.0.0.1", "udp", 53, 53),
                        ("backend", 6, "fd00::1", "tcp", 1, 9)]
    # A restarted discovery may reuse a generation number: a new apply still counts.
    f.handle(applied(3, StaleBackend(4, "udp", 53, 53, "10.0.0.7"), duration=0.02))
    assert ct.calls[-1] == ("backend", 4, "10.0.0.7", "udp", 53, 53)
    assert f.handle(NatApplied(generation=4, ok=False, duration=0, event_time=0,
                               stale=(StaleBackend(4, "tcp", 1, 1, "10.0.0.8"),))) == []


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
