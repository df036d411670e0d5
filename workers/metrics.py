"""The metrics worker: /metrics, /healthz and /readyz of the network-anchor, from bus events only.

It subscribes to every event, keeps the last state each worker reported, and
turns it into Prometheus metrics at scrape time (so labels stay bounded: family,
proto, result/outcome, source, worker, topic — never a container, IP or port)
and into readiness: every expected worker heartbeating with all its conditions
met. It also writes the readiness file the image's healthcheck reads, so health
works with the listener disabled, with the workers' restart counts in it for
``anchord status``; those counts survive a restart of this worker through that file (which
the entry process removes at a container start), and such a restart counts as one of its own.
It never changes any state but its own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from anchord import __version__, health, httpserve
from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import Lifecycle
from anchord.runner import WORKERS
from bus.client import HEARTBEAT, BusClient, all_event_types
from bus.events import (
    BackendsDesired,
    ConntrackFlushed,
    DhcpCounters,
    DockerEventsSeen,
    Event,
    LeaseChanged,
    LeaseLost,
    NatApplied,
    WorkerStatus,
)

log = logging.getLogger(__name__)

SUBSCRIBE_ALL = True
SUBSCRIBE: tuple[type[Event], ...] = ()

# A worker whose heartbeat is older than this is reported as not ready (hung,
# stopped, or FATAL in supervisord: it then never heartbeats again).
STALE_AFTER = 3 * HEARTBEAT
# Label values every counter series exists with from the start, at zero (so that rate() and
# absence alerts work at once, and the number of series does not grow as events first happen):
# every topic of the event catalogue, every DHCP outcome of both families.
TOPICS = frozenset(cls.TOPIC.rstrip("/") for cls in all_event_types())
DHCP_SERIES = tuple(
    (family, outcome)
    for family in (4, 6)
    for outcome in ("ok", "nak", "timeout", "conflict", "expired")
)
# supervisord's program names of this worker and of the broker (keys of their restarts).
SELF = "metrics"
BUS = "bus"


@dataclass
class _Running:
    """A counter fed by a running total that resets when its owner restarts."""

    total: float = 0.0
    last: float = 0.0

    def update(self, value: float) -> None:
        self.total += value - self.last if value >= self.last else value
        self.last = value


@dataclass
class State:
    """Everything the metrics worker knows, built from events alone."""

    expected: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)
    workers: dict[str, tuple[WorkerStatus, float]] = field(default_factory=dict)
    messages: Counter[str] = field(default_factory=Counter)
    reconciles: Counter[str] = field(default_factory=Counter)
    dnat_entries: dict[tuple[int, str], int] = field(default_factory=dict)
    conntrack_flushes: Counter[int] = field(default_factory=Counter)
    conntrack_removed: Counter[int] = field(default_factory=Counter)
    docker_events: dict[str, _Running] = field(default_factory=dict)
    leases: dict[int, LeaseChanged] = field(default_factory=dict)
    rejections: Counter[str] = field(default_factory=Counter)  # by kind
    dhcp: dict[tuple[int, str], _Running] = field(default_factory=dict)
    dhcp_dropped: dict[int, _Running] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)  # worker -> pid changes seen
    bus_connects: int = 0
    last_nat: tuple[int, float] | None = None
    reconcile_seconds: Histogram | None = None

    def handle(self, event: Event, now: float) -> None:
        self.messages[event.TOPIC.rstrip("/")] += 1
        if isinstance(event, WorkerStatus):
            previous = self.workers.get(event.worker)
            if previous is not None and previous[0].pid != event.pid:
                self.restarts[event.worker] += 1
            self.workers[event.worker] = (event, now)
        elif isinstance(event, NatApplied):
            # NatApplied is republished on every heartbeat: count each generation once.
            key = (event.generation, event.duration)
            if key != self.last_nat:
                self.last_nat = key
                self.reconciles["ok" if event.ok else "error"] += 1
                if self.reconcile_seconds is not None:
                    self.reconcile_seconds.observe(event.duration)
            self.dnat_entries = {(c.family, c.proto): c.count for c in event.counts}
        elif isinstance(event, ConntrackFlushed):
            self.conntrack_flushes[event.family] += 1
            self.conntrack_removed[event.family] += event.removed
        elif isinstance(event, DockerEventsSeen):
            for source, value in (("event", event.events), ("poll", event.polls)):
                self.docker_events.setdefault(source, _Running()).update(value)
        elif isinstance(event, LeaseChanged):
            self.leases[event.lease.family] = event
        elif isinstance(event, LeaseLost):
            self.leases.pop(event.family, None)
        elif isinstance(event, BackendsDesired):
            self.rejections = Counter(r.kind for r in event.rejections)
        elif isinstance(event, DhcpCounters):
            for count in event.acquisitions:
                self.dhcp.setdefault((event.family, count.key), _Running()).update(count.value)
            self.dhcp_dropped.setdefault(event.family, _Running()).update(event.dropped)

    def restart_counts(self) -> dict[str, int]:
        """Restarts of the bus, of every expected worker and of this one, zeros included."""
        return {name: self.restarts[name] for name in (BUS, *self.expected, SELF)}

    def bus_connected(self, connects: int) -> None:
        """Count a restart of the broker: every connection to it after the first one."""
        if connects > self.bus_connects:
            self.restarts[BUS] += connects - max(self.bus_connects, 1)
            self.bus_connects = connects

    def unmet(self, now: float) -> list[str]:
        """Readiness: the unmet conditions as ``key: detail`` lines (empty = ready)."""
        lines = []
        for name in self.expected:
            seen = self.workers.get(name)
            if seen is None:
                lines.append(f"worker_{name}: no heartbeat yet")
                continue
            status, at = seen
            if now - at > STALE_AFTER:
                lines.append(f"worker_{name}: no heartbeat for {now - at:.0f}s")
            for cond in status.conditions:
                if not cond.ok:
                    lines.append(f"{cond.key}: {cond.detail or 'not met'}")
        return lines


class _Collector(Collector):
    """Turns ``State`` into metric families at scrape time."""

    def __init__(self, state: State, bus: BusClient) -> None:
        self.state = state
        self.bus = bus

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
        s, now = self.state, time.monotonic()
        info = InfoMetricFamily("anchord_build", "anchord version and role")
        info.add_metric([], {"version": __version__, "role": "network-anchor"})
        yield info
        msgs = CounterMetricFamily("anchord_bus_messages", "Bus messages received by the "
                                   "metrics worker, by topic", labels=["topic"])
        for topic in sorted(TOPICS | set(s.messages)):
            msgs.add_metric([topic], s.messages[topic])
        yield msgs
        errors = CounterMetricFamily("anchord_bus_decode_errors", "Bus messages dropped as "
                                     "undecodable, by receiving worker", labels=["worker"])
        reported = {name: st.decode_errors for name, (st, _) in s.workers.items()}
        reported["metrics"] = sum(self.bus.decode_errors.values())
        for name, n in sorted(reported.items()):
            errors.add_metric([name], n)
        yield errors
        up = GaugeMetricFamily("anchord_worker_up", "1 if the worker heartbeats on the bus",
                               labels=["worker"])
        for name in self.state.expected:
            seen = s.workers.get(name)
            up.add_metric([name], 1.0 if seen and now - seen[1] <= STALE_AFTER else 0.0)
        yield up
        ready = GaugeMetricFamily("anchord_ready", "1 when the network-anchor is ready")
        ready.add_metric([], 0.0 if s.unmet(now) else 1.0)
        yield ready
        rec = CounterMetricFamily("anchord_reconcile", "NAT reconciles by result",
                                  labels=["result"])
        for result in ("ok", "error"):
            rec.add_metric([result], s.reconciles[result])
        yield rec
        dnat = GaugeMetricFamily("anchord_dnat_entries", "DNAT map entries",
                                 labels=["family", "proto"])
        for (family, proto), n in sorted(s.dnat_entries.items()):
            dnat.add_metric([f"ipv{family}", proto], n)
        yield dnat
        flush = CounterMetricFamily("anchord_conntrack_flushes", "Conntrack flushes by family",
                                    labels=["family"])
        removed = CounterMetricFamily("anchord_conntrack_entries_removed",
                                      "Conntrack entries removed by family", labels=["family"])
        for family in (4, 6):
            flush.add_metric([f"ipv{family}"], s.conntrack_flushes[family])
            removed.add_metric([f"ipv{family}"], s.conntrack_removed[family])
        yield flush
        yield removed
        dock = CounterMetricFamily("anchord_docker_events", "Docker events handled by source",
                                   labels=["source"])
        for source in ("event", "poll"):
            dock.add_metric([source], s.docker_events.get(source, _Running()).total)
        yield dock
        # Names shared with the Go anchord keep its users' dashboards and alerts working.
        lease = GaugeMetricFamily("anchord_dhcp_lease_remaining_seconds",
                                  "Seconds until the current lease expires", labels=["family"])
        wall = time.time()
        for family, ev in sorted(s.leases.items()):
            if ev.lease.expiry:
                lease.add_metric([f"ipv{family}"], max(0.0, ev.lease.expiry - wall))
        yield lease
        rej = GaugeMetricFamily("anchord_label_rejections", "Labels or ports discovery "
                                "rejects now, by outcome (label, conflict, no-transit)",
                                labels=["outcome"])
        for kind in ("label", "conflict", "no-transit"):
            rej.add_metric([kind], s.rejections[kind])
        yield rej
        acq = CounterMetricFamily("anchord_dhcp_acquired", "DHCP lease acquisitions by "
                                  "family and outcome (each counted once: renewals are not "
                                  "acquisitions, a retransmission is not another timeout)",
                                  labels=["family", "outcome"])
        for family, outcome in sorted(set(DHCP_SERIES) | set(s.dhcp)):
            running = s.dhcp.get((family, outcome), _Running())
            acq.add_metric([f"ipv{family}", outcome], running.total)
        yield acq
        dropped = CounterMetricFamily("anchord_dhcp_packets_dropped", "Received DHCP packets "
                                      "dropped as malformed or unexpected", labels=["family"])
        for family in sorted({4, 6} | set(s.dhcp_dropped)):
            dropped.add_metric([f"ipv{family}"], s.dhcp_dropped.get(family, _Running()).total)
        yield dropped
        client = CounterMetricFamily("anchord_dhcp_client_restarts", "Restarts of the DHCP "
                                     "client (the dhcp worker)")
        client.add_metric([], s.restart_counts().get("dhcp", 0))
        yield client
        restarts = CounterMetricFamily("anchord_worker_restarts", "Worker restarts seen on the "
                                       "bus (a new pid; the bus: a reconnection)",
                                       labels=["worker"])
        for name, n in s.restart_counts().items():
            restarts.add_metric([name], n)
        yield restarts


def build_registry(state: State, bus: BusClient) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(state, bus))
    state.reconcile_seconds = Histogram(
        "anchord_reconcile_duration_seconds", "Time to apply one desired backend table",
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    return registry


def run(config: NetworkAnchorConfig, bus: BusClient, life: Lifecycle,
        expected: Iterable[str] | None = None) -> int:
    state = State(expected=tuple(n for n in (expected or WORKERS) if n != SELF))
    previous = health.read_restarts(config.run_dir)
    if previous is not None:
        # Only a previous instance of this worker in this container start wrote the counts.
        state.restarts.update(previous)
        state.restarts[SELF] += 1
    registry = build_registry(state, bus)
    listener = None
    if config.metrics_addr is not None:
        listener = httpserve.serve(config.metrics_addr, registry,
                                   lambda: state.unmet(time.monotonic()))
    last_written: tuple[bool, tuple[str, ...], dict[str, int]] | None = None
    next_write = 0.0
    try:
        while not life.stop_requested:
            for event in bus.poll(1.0):
                state.handle(event, time.monotonic())
            state.bus_connected(bus.connects)
            now = time.monotonic()
            unmet = state.unmet(now)
            # A restart seen is written at once, so `anchord status` shows it within a second.
            current = (not unmet, tuple(unmet), state.restart_counts())
            if current != last_written or now >= next_write:
                if current[0] != (last_written or (None,))[0]:
                    log.info("readiness changed", extra={"fields": {
                        "ready": current[0], "unmet": unmet}})
                health.write(config.run_dir, current[0],
                             dict(line.split(": ", 1) for line in unmet), current[2])
                last_written, next_write = current, now + HEARTBEAT
    finally:
        if listener is not None:
            listener.close()
    return 0
