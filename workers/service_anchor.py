"""Service-anchor mode: keep this namespace's default route(s) pointed at the network-anchor.

Owns the whole service-anchor process (SPEC F-11, F-18, S-9): resolving the gateway name
through the system resolver (Docker's embedded DNS) for IPv4 and IPv6 separately, deciding
when a default route must move, its metrics, its readiness (HTTP and the health file that the
image's healthcheck reads) and its shutdown. Kernel writes go through ``anchord.routes``, the
listener is ``anchord.httpserve``. It runs once per exposed service, so it carries no
supervisord and no bus, and imports nothing heavy (no scapy, docker or zmq).

Behaviour worth knowing:
- A default route is replaced only when the kernel's one is not via a current answer; with
  several answers the route stays on the one it already uses.
- On a non-internal Docker network the container starts with Docker's own default route via the
  bridge: it is replaced (sending egress through the network-anchor is the point) and not put
  back on exit. Default routes with another metric or in another table are left alone.
- A name that stops resolving (the network-anchor being recreated) leaves the last route in
  place and is retried with a short backoff, so the new address is followed quickly.
- SIGTERM/SIGINT remove the routes this process installed (only those still via the gateway it
  installed) and exit 0. A crash leaves them for the next instance, which adopts them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from anchord import __version__, health, routesignal
from anchord.backoff import Backoff
from anchord.config import ServiceAnchorConfig
from anchord.health import HEALTH_FILE, STALE_AFTER
from anchord.routes import RouteError, RouteTable, family_name

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from anchord.httpserve import Listener

log = logging.getLogger(__name__)

FAMILIES: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
# First retry after a failed resolution; doubles up to the resolve interval.
BACKOFF_FIRST = 0.25
# For this long after the start, a failed resolution is retried at BACKOFF_FIRST without
# doubling: at `compose up` the gateway's container may join the network a moment after us,
# and a doubling backoff (0.25 + 0.5 + 1 + 2 s) would add seconds to the project's start.
STARTUP_RETRY = 15.0
# And a success is looked up (and so announced to anchord) again after this, not after the
# resolve interval: the first announcement can reach anchord before it listens, and the next
# one would come only an interval later.
STARTUP_REPEAT = 1.0
# The health file is rewritten at least this often, so that only a hung process looks stale.
HEALTH_REFRESH = STALE_AFTER / 3
# Bounded label values of anchord_gateway_resolve_total{outcome}.
OUTCOMES = ("ok", "not_found", "error")


def choose_gateway(answers: Sequence[str], current: str | None) -> str | None:
    """The gateway the default route should use given the resolver's ``answers``.

    The current one as long as it is still an answer (no flapping between several addresses),
    else the lowest address, so that the choice does not depend on the resolver's order.
    """
    if not answers:
        return None
    if current is not None and current in answers:
        return current
    return min(answers, key=ipaddress.ip_address)


def usable_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """Answers a route can go via, deduplicated in order (link-local ones need an interface)."""
    seen: dict[str, None] = {}
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        if addr.is_link_local or addr.is_unspecified or addr.is_multicast:
            continue
        seen.setdefault(str(addr), None)
    return tuple(seen)


def outcome_of(exc: OSError) -> str:
    """``not_found`` for a definite "no such name/record", ``error`` for everything else."""
    if isinstance(exc, socket.gaierror) and exc.errno in (
        socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)
    ):
        return "not_found"
    return "error"


@dataclass(frozen=True)
class Resolution:
    """One answer of the resolver for one family."""

    family: int
    addresses: tuple[str, ...]
    outcome: str  # one of OUTCOMES
    error: str = ""


def resolve(host: str, family: int) -> Resolution:
    """Ask the system resolver for ``host`` in ``family`` (blocking)."""
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except OSError as exc:
        return Resolution(family, (), outcome_of(exc), str(exc))
    addresses = usable_addresses([str(info[4][0]) for info in infos])
    if not addresses:
        return Resolution(family, (), "not_found", "no usable address in the answer")
    return Resolution(family, addresses, "ok")


class Lookups:
    """Resolutions run in daemon threads, one at most per family at a time.

    getaddrinfo cannot be interrupted and can block for the resolver's whole timeout; in a
    thread it never delays shutdown. Each finished lookup writes a byte to ``wake_fd`` so
    that the main loop picks the result up at once.
    """

    def __init__(self, host: str, wake_fd: int,
                 resolver: Callable[[str, int], Resolution] = resolve) -> None:
        self._host = host
        self._wake_fd = wake_fd
        self._resolver = resolver
        self._results: queue.SimpleQueue[Resolution] = queue.SimpleQueue()
        self._pending: set[int] = set()

    def start(self, family: int) -> bool:
        """Start a lookup unless one of ``family`` is still running."""
        if family in self._pending:
            return False
        self._pending.add(family)
        threading.Thread(target=self._run, args=(family,), name=f"resolve-{family_name(family)}",
                         daemon=True).start()
        return True

    def _run(self, family: int) -> None:
        self._results.put(self._resolver(self._host, family))
        # full or closed: the loop's timeout picks the result up anyway
        with contextlib.suppress(OSError):
            os.write(self._wake_fd, b"r")

    def results(self) -> list[Resolution]:
        done: list[Resolution] = []
        while True:
            try:
                res = self._results.get_nowait()
            except queue.Empty:
                return done
            self._pending.discard(res.family)
            done.append(res)


class Metrics:
    """This process's own series (SPEC F-19), kept as plain numbers.

    prometheus_client (with http.server, urllib, ssl and email under it) is imported only
    when a listener asks for :attr:`registry`: the service-anchor listens on nothing by
    default, and it runs once per exposed service, so the ~5 MB of modules are not paid for
    nothing.
    """

    def __init__(self) -> None:
        # Every series exists from the start, so that rate() and absence alerts work at once.
        names = [family_name(family) for family in FAMILIES]
        self.resolve_total = {(n, outcome): 0.0 for n in names for outcome in OUTCOMES}
        self.route_replaces = dict.fromkeys(names, 0.0)
        self.route_errors = dict.fromkeys(names, 0.0)
        self.route_present = dict.fromkeys(names, 0.0)
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            self._registry = _registry_of(self)
        return self._registry


def _registry_of(metrics: Metrics) -> CollectorRegistry:
    """A registry whose one collector reads ``metrics`` at every scrape."""
    import prometheus_client
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
    )

    disable_created = getattr(prometheus_client, "disable_created_metrics", None)
    if disable_created is not None:  # *_created series are noise here (prometheus-client 0.18+)
        disable_created()

    class Collector(prometheus_client.registry.Collector):
        def collect(self) -> Iterator[Metric]:
            resolve = CounterMetricFamily(
                "anchord_gateway_resolve", "Resolutions of the gateway name, by family and "
                "outcome", labels=["family", "outcome"])
            for (name, outcome), value in metrics.resolve_total.items():
                resolve.add_metric([name, outcome], value)
            replaces = CounterMetricFamily(
                "anchord_gateway_route_replaces", "Default routes replaced (installed or moved)",
                labels=["family"])
            errors = CounterMetricFamily(
                "anchord_gateway_route_errors", "Default route replacements the kernel refused",
                labels=["family"])
            present = GaugeMetricFamily(
                "anchord_default_route_present",
                "1 while a default route via the resolved gateway is installed", labels=["family"])
            for metric, series in ((replaces, metrics.route_replaces),
                                   (errors, metrics.route_errors),
                                   (present, metrics.route_present)):
                for name, value in series.items():
                    metric.add_metric([name], value)
            build = InfoMetricFamily("anchord_build", "anchord build")
            build.add_metric([], {"version": __version__, "role": "service-anchor"})
            yield from (resolve, replaces, errors, present, build)

    registry = prometheus_client.CollectorRegistry()
    registry.register(Collector())
    return registry


class HealthFile:
    """``<run_dir>/health.json``: readiness for ``anchord healthcheck``, listener or not.

    The format is ``anchord.health``'s (``{"ready", "unmet", "pid", "time"}``, ``unmet`` holding
    the same ``key: value`` pairs as ``/readyz``) plus ``mode`` and ``routes`` (the gateway per
    family, or null) for people. It is replaced atomically (write + rename) on every change
    and at least every ``HEALTH_REFRESH`` seconds, well inside the reader's staleness limit.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._last: dict[str, object] | None = None
        self._written_at = -math.inf
        self._failed = False

    def update(self, ready: bool, unmet: dict[str, str], routes: dict[str, str | None]) -> None:
        state: dict[str, object] = {"mode": "service-anchor", "pid": os.getpid(), "ready": ready,
                                    "unmet": unmet, "routes": routes}
        now = self._clock()
        if state == self._last and now - self._written_at < HEALTH_REFRESH:
            return
        body = dict(state, time=round(now, 3))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not ready:  # the marker never outlives a "not ready" on disk
                health.mark(self.path.parent, False)
            tmp.write_text(json.dumps(body, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
            if ready:
                health.mark(self.path.parent, True)
        except OSError as exc:
            if not self._failed:  # once: it would repeat every few seconds otherwise
                log.warning("cannot write health file %s: %s", self.path, exc)
            self._failed = True
            return
        self._failed = False
        self._last = state
        self._written_at = now

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            health.mark(self.path.parent, False)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class FamilyState:
    """What the keeper knows about one family."""

    family: int
    backoff: Backoff
    due: float = 0.0  # monotonic time of the next lookup; inf while one is running
    installed: str | None = None  # gateway this process installed or adopted
    present: bool = False  # the kernel's default route is via ``installed``
    last: tuple[str, str] = field(default=("pending", ""))  # (outcome, error), for log dedup

    @property
    def name(self) -> str:
        return family_name(self.family)


class RouteKeeper:
    """Turns resolutions into default routes; knows readiness. Not thread-safe except
    :meth:`unmet`, which the listener thread calls and which only reads."""

    def __init__(self, config: ServiceAnchorConfig, routes: RouteTable, metrics: Metrics,
                 health: HealthFile, clock: Callable[[], float] = time.monotonic,
                 announce: Callable[[str], None] = lambda gateway: None) -> None:
        self._config = config
        self._routes = routes
        # Called with the gateway after each resolution that leaves the route via it in
        # place: tells anchord (anchord.routesignal) so that it exposes us without waiting
        # for Docker's healthcheck.
        self._announce = announce
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._started = clock()
        cap = config.gateway_resolve_interval
        self.states: dict[int, FamilyState] = {
            f: FamilyState(f, Backoff(initial=BACKOFF_FIRST, cap=cap)) for f in FAMILIES}

    def handle(self, res: Resolution) -> None:
        st = self.states[res.family]
        self._metrics.resolve_total[st.name, res.outcome] += 1
        self._log_outcome(st, res)
        starting = self._clock() - self._started < STARTUP_RETRY
        if res.addresses:
            st.backoff.reset()
            delay = self._config.gateway_resolve_interval
            if starting:
                delay = min(delay, STARTUP_REPEAT)
            if not self._converge(st, res.addresses):
                delay = st.backoff.next()
            elif st.installed is not None:
                self._announce(st.installed)
        elif starting:
            delay = BACKOFF_FIRST
        else:
            delay = st.backoff.next()
        st.due = self._clock() + delay
        self.refresh()

    def _converge(self, st: FamilyState, answers: tuple[str, ...]) -> bool:
        current = self._routes.gateway(st.family)
        want = choose_gateway(answers, current)
        assert want is not None  # answers is not empty
        if current != want:
            try:
                self._routes.replace(st.family, want)
            except RouteError as exc:
                self._metrics.route_errors[st.name] += 1
                log.warning("cannot install default route via %s: %s", want, exc,
                            extra=_fields(family=st.name, gateway=want))
                return False
            self._metrics.route_replaces[st.name] += 1
            log.info("default route via %s (%s) installed, was %s", want, st.name,
                     current or "none",
                     extra=_fields(family=st.name, gateway=want, previous=current))
        st.installed = want
        return True

    def _log_outcome(self, st: FamilyState, res: Resolution) -> None:
        now = (res.outcome, res.error)
        if now == st.last:
            return
        st.last = now
        host = self._config.gateway_hostname
        extra = _fields(family=st.name, outcome=res.outcome)
        if res.outcome == "ok":
            log.info("%s resolves to %s (%s)", host, ", ".join(res.addresses), st.name,
                     extra=extra)
        elif res.outcome == "not_found" and (st.family == socket.AF_INET6 or
                                             self.states[socket.AF_INET].present):
            # Expected on an IPv4-only network, and while the network-anchor is recreated.
            log.info("%s has no %s address (%s); retrying", host, st.name, res.error,
                     extra=extra)
        else:
            log.warning("cannot resolve %s (%s): %s; retrying with backoff", host, st.name,
                        res.error, extra=extra)

    def refresh(self) -> None:
        """Re-read the kernel's default routes; update metrics, readiness and the health file."""
        for st in self.states.values():
            st.present = (st.installed is not None
                          and self._routes.gateway(st.family) == st.installed)
            self._metrics.route_present[st.name] = 1 if st.present else 0
        unmet = self.conditions()
        self._health.update(not unmet, unmet, {st.name: st.installed if st.present else None
                                               for st in self.states.values()})

    def conditions(self) -> dict[str, str]:
        """Unmet readiness conditions; ready = a default route (either family) installed."""
        if any(st.present for st in self.states.values()):
            return {}
        why = "; ".join(f"{st.name}: {st.last[1] or st.last[0]}" for st in self.states.values())
        return {"default_route": f"none via {self._config.gateway_hostname} ({why})"}

    def unmet(self) -> list[str]:
        return [f"{key}: {value}" for key, value in self.conditions().items()]

    def teardown(self) -> None:
        """Remove the default routes this process installed, if they are still its own."""
        for st in self.states.values():
            if st.installed is None:
                continue
            try:
                removed = self._routes.delete(st.family, st.installed)
            except RouteError as exc:
                log.warning("cannot remove default route: %s", exc,
                            extra=_fields(family=st.name))
                continue
            if removed:
                log.info("default route via %s (%s) removed", st.installed, st.name,
                         extra=_fields(family=st.name, gateway=st.installed))
            else:
                log.info("default route via %s (%s) is no longer ours: left alone",
                         st.installed, st.name, extra=_fields(family=st.name))
            st.installed = None
            st.present = False


def _fields(**fields: object) -> dict[str, object]:
    # anchord.logsetup puts ``extra["fields"]`` into each JSON line.
    return {"fields": fields}


class _Stop:
    requested = False


def main(config: ServiceAnchorConfig) -> int:
    """Run the service-anchor until SIGTERM/SIGINT; 0 on a clean stop."""
    stop = _Stop()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.requested = True  # only the flag: the loop does the work

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # The handler's byte on the pipe wakes select() at once instead of at its timeout.
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    routes = RouteTable()
    listener: Listener | None = None
    try:
        metrics = Metrics()
        health = HealthFile(config.run_dir / HEALTH_FILE)
        keeper = RouteKeeper(config, routes, metrics, health, announce=routesignal.send)
        keeper.refresh()  # not ready yet, and say so before the first lookup
        if config.metrics_addr is not None:
            from anchord.httpserve import serve  # http.server only when asked for a listener

            listener = serve(config.metrics_addr, metrics.registry, keeper.unmet)
        lookups = Lookups(config.gateway_hostname, wake_w)
        log.info("service-anchor keeping the default route via %s (every %gs)",
                 config.gateway_hostname, config.gateway_resolve_interval,
                 extra=_fields(gateway_hostname=config.gateway_hostname))
        _loop(stop, keeper, lookups, wake_r)
        keeper.teardown()
        health.remove()
        log.info("service-anchor stopped")
        return 0
    finally:
        if listener is not None:
            listener.close()
        routes.close()
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def _loop(stop: _Stop, keeper: RouteKeeper, lookups: Lookups, wake_r: int) -> None:
    next_refresh = time.monotonic() + HEALTH_REFRESH
    while not stop.requested:
        now = time.monotonic()
        for st in keeper.states.values():
            if st.due <= now and lookups.start(st.family):
                st.due = math.inf
        if now >= next_refresh:
            keeper.refresh()  # notices routes removed behind our back; keeps the file fresh
            next_refresh = now + HEALTH_REFRESH
        wake_at = min([next_refresh, *(st.due for st in keeper.states.values())])
        select.select([wake_r], [], [], max(0.0, wake_at - time.monotonic()))
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 512)
        for res in lookups.results():
            keeper.handle(res)
