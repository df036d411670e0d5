"""The metrics worker's state: built from events only, bounded labels, readiness."""

from __future__ import annotations

from collections import Counter
from typing import cast

from prometheus_client import generate_latest

from bus.client import BusClient, all_event_types
from bus.events import (
    Backend,
    BackendsDesired,
    Condition,
    Count,
    DhcpCounters,
    DockerEventsSeen,
    EntryCount,
    Lease,
    LeaseChanged,
    NatApplied,
    Rejection,
    WorkerStatus,
)
from workers.metrics import STALE_AFTER, State, build_registry

EXPECTED = ("discovery", "nat-writer")


class FakeBus:
    decode_errors: Counter[str] = Counter({"json": 2})


def scrape(state: State) -> str:
    return generate_latest(build_registry(state, cast(BusClient, FakeBus()))).decode()


def series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def status(worker: str, pid: int = 1, *conds: Condition) -> WorkerStatus:
    return WorkerStatus(worker=worker, pid=pid, started=0.0, conditions=conds)


def test_readiness_needs_every_worker_and_condition() -> None:
    state = State(expected=EXPECTED)
    assert state.unmet(0.0) == ["worker_discovery: no heartbeat yet",
                                "worker_nat-writer: no heartbeat yet"]
    state.handle(status("discovery", 1, Condition("docker", True)), 0.0)
    state.handle(status("nat-writer", 1, Condition("nat_tables", False, "not installed")), 0.0)
    assert state.unmet(1.0) == ["nat_tables: not installed"]
    state.handle(status("nat-writer", 1, Condition("nat_tables", True)), 1.0)
    assert state.unmet(2.0) == []
    # A worker that stops heartbeating (hung, stopped, FATAL) makes us not ready.
    assert state.unmet(1.0 + STALE_AFTER + 1) == [
        f"worker_discovery: no heartbeat for {STALE_AFTER + 2:.0f}s",
        f"worker_nat-writer: no heartbeat for {STALE_AFTER + 1:.0f}s"]


def test_reconciles_counted_once_per_generation() -> None:
    state = State(expected=EXPECTED)
    applied = NatApplied(generation=5, ok=True, duration=0.004, event_time=0.0,
                         counts=(EntryCount(4, "tcp", 3),))
    state.handle(applied, 0.0)
    registry_text = scrape(state)
    state.handle(applied, 5.0)  # heartbeat republication
    state.handle(applied, 10.0)
    text = scrape(state)
    assert 'anchord_reconcile_total{result="ok"} 1.0' in text
    assert 'anchord_dnat_entries{family="ipv4",proto="tcp"} 3.0' in text
    assert registry_text


def test_running_totals_survive_owner_restart() -> None:
    state = State(expected=EXPECTED)
    for events, polls in ((3, 1), (5, 2), (1, 0)):  # the last one after a restart
        state.handle(DockerEventsSeen(events=events, polls=polls), 0.0)
    text = scrape(state)
    assert 'anchord_docker_events_total{source="event"} 6.0' in text
    assert 'anchord_docker_events_total{source="poll"} 2.0' in text


def test_dhcp_counters_and_lease_remaining() -> None:
    state = State(expected=EXPECTED)
    state.handle(DhcpCounters(family=4, acquisitions=(Count("ok", 2), Count("nak", 1)),
                              dropped=7), 0.0)
    state.handle(LeaseChanged(lease=Lease(family=4, address="192.0.2.5/24",
                                          expiry=4_000_000_000.0)), 0.0)
    text = scrape(state)
    assert 'anchord_dhcp_acquired_total{family="ipv4",outcome="ok"} 2.0' in text
    assert 'anchord_dhcp_packets_dropped_total{family="ipv4"} 7.0' in text
    assert 'anchord_dhcp_lease_remaining_seconds{family="ipv4"}' in text


def test_worker_restarts_counted_from_pid_changes() -> None:
    state = State(expected=EXPECTED)
    for pid in (10, 10, 11, 12):
        state.handle(status("discovery", pid), 0.0)
    assert 'anchord_worker_restarts_total{worker="discovery"} 2.0' in scrape(state)


def test_series_stay_bounded_after_100_containers() -> None:
    state = State(expected=EXPECTED)

    def table(n: int) -> BackendsDesired:
        return BackendsDesired.of(
            generation=n, cause="event", event_time=float(n),
            entries=tuple(Backend(4, "tcp", 1000 + i, 1000 + i, f"172.20.0.{i + 2}",
                                  f"c{n}-{i}") for i in range(n % 7)),
            rejections=tuple(Rejection(f"bad{n}-{i}", "bad token", "label")
                             for i in range(n % 3)))

    state.handle(table(1), 0.0)
    state.handle(NatApplied(generation=1, ok=True, duration=0.01, event_time=0.0,
                            counts=(EntryCount(4, "tcp", 1),)), 0.0)
    state.handle(status("discovery", 1), 0.0)
    before = series(scrape(state))
    for n in range(2, 102):
        state.handle(table(n), float(n))
        state.handle(NatApplied(generation=n, ok=n % 5 != 0, duration=0.01, event_time=0.0,
                                counts=(EntryCount(4, "tcp", n % 7),)), float(n))
        state.handle(status("discovery", 1), float(n))
    after = series(scrape(state))
    assert after ^ before == set(), sorted(after ^ before)
    assert not any("172.20" in s or "c5-" in s or "bad" in s for s in after)
    assert len(after) == len(before)


def test_restart_counts_include_the_bus_and_this_worker() -> None:
    state = State(expected=EXPECTED)
    assert state.restart_counts() == {"bus": 0, "discovery": 0, "nat-writer": 0, "metrics": 0}
    state.bus_connected(1)  # the first connection is no restart
    state.bus_connected(1)
    assert state.restart_counts()["bus"] == 0
    state.bus_connected(3)  # two reconnections between two looks
    state.handle(status("nat-writer", 5), 0.0)
    state.handle(status("nat-writer", 6), 0.0)
    assert state.restart_counts() == {"bus": 2, "discovery": 0, "nat-writer": 1, "metrics": 0}
    text = scrape(state)
    for worker, n in state.restart_counts().items():
        assert f'anchord_worker_restarts_total{{worker="{worker}"}} {n}.0' in text


def test_counter_series_exist_from_the_start() -> None:
    # Topics and DHCP outcomes not seen yet are there at zero: the number of series does not
    # grow when an event happens for the first time.
    text = scrape(State(expected=EXPECTED))
    for cls in all_event_types():
        assert f'anchord_bus_messages_total{{topic="{cls.TOPIC.rstrip("/")}"}} 0.0' in text
    for family in ("ipv4", "ipv6"):
        for outcome in ("ok", "nak", "timeout", "conflict", "expired"):
            assert (f'anchord_dhcp_acquired_total{{family="{family}",outcome="{outcome}"}} '
                    "0.0") in text
        assert f'anchord_dhcp_packets_dropped_total{{family="{family}"}} 0.0' in text
