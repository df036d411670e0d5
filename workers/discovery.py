"""The discovery worker: Docker events and polls in, the desired backend table out.

This module owns the worker's state machine: the cache of the project's container
inspect documents, which container is anchord itself, the transit network choice,
the generation counter and the snapshots it publishes (``BackendsDesired``,
``NetworkMap``, ``DockerEventsSeen``) plus its readiness condition ``docker``.
Docker I/O lives in ``anchord.docker_api`` and ``anchord.docker_events``, the reading of
Docker's documents in ``anchord.docker_inspect``, label rules in ``anchord.labels``.

How it stays right:

- The event thread subscribes first and says so; every ``subscribed`` report
  triggers a full re-list, so nothing between subscription and list is lost, and a
  stream that ended (API gone) is re-listed and resumed.
- An event only names a container to re-read; the table is always rebuilt from
  the whole cache, so a dropped or duplicated event cannot corrupt it, and the
  poll every ``poll_interval`` re-reads everything as a safety net.
- The API being unreachable changes nothing but the counters and the ``docker``
  condition: the cache and the last published table stay as they were (F-15).
- The generation increases on every content change and is seeded from the clock
  in milliseconds, so a restarted discovery still publishes generations above the
  ones its predecessor published.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from anchord import routesignal
from anchord.backoff import Backoff
from anchord.config import NetworkAnchorConfig
from anchord.docker_api import DockerApi
from anchord.docker_events import EventPump, PumpReport
from anchord.docker_inspect import (
    INHIBIT_IPV4_OPTION,
    PROJECT_LABEL,
    Inspect,
    IPNetwork,
    NetworkFacts,
    attachments,
    choose_transit,
    container_view,
    event_network,
    event_time,
    find_self,
    fingerprint,
    is_running,
    labels_of,
    name_of,
    network_alias,
    networks_of,
    outside,
    relevant_container,
    stopped,
    transit_subnets,
    transition_time,
)
from anchord.docker_reach import DockerUnavailable
from anchord.labels import Table, build_table
from anchord.lifecycle import Lifecycle
from anchord.local_macs import local_macs
from bus.client import BusClient
from bus.events import (
    BackendsDesired,
    Condition,
    DockerEventsSeen,
    Event,
    NetworkMap,
)

log = logging.getLogger(__name__)

SUBSCRIBE: tuple[type[Event], ...] = ()  # discovery only publishes

# First list if the event stream never subscribes (a proxy that forbids /events).
_FIRST_LIST_FALLBACK = 2.0
# A route report (anchord.routesignal) of a container discovery does not know yet waits this
# long for it; the service-anchor repeats it at every resolution anyway.
_REPORT_TTL = 10.0
ROUTES_FILE = "discovery-routes.json"  # in the run directory: the route reports known


def _load_routes(path: Path) -> dict[str, tuple[str, frozenset[int]]]:
    """The route reports a previous instance kept (container id -> its StartedAt and the
    families); anything unreadable counts as none (the service-anchors report again within
    one resolve interval). A report of a container that restarted since is void by its
    StartedAt."""
    try:
        data = json.loads(path.read_text()) if path.stat().st_size <= 1 << 20 else {}
    except (OSError, ValueError):
        return {}
    found: dict[str, tuple[str, frozenset[int]]] = {}
    if not isinstance(data, dict):
        return found
    for cid, value in data.items():
        if (isinstance(cid, str) and isinstance(value, list) and len(value) == 2
                and isinstance(value[0], str) and isinstance(value[1], list)
                and all(f in (4, 6) for f in value[1])):
            found[cid] = (value[0], frozenset(value[1]))
    return found
_RETRY_MIN = 0.5
# A returning API is seen within half a second (issue 12: maps correct within 1 s of its
# return); a retry is one name lookup and one TCP connect, cheap enough to repeat that often.
_RETRY_MAX = 0.5


class Discovery:
    """Discovery as a library: feed it time, it reads Docker and keeps the snapshots.

    ``on_change`` is called (in the caller's thread) whenever a snapshot changed; the
    worker passes ``bus.state_changed``.
    """

    def __init__(
        self,
        config: NetworkAnchorConfig,
        on_change: Callable[[], None] = lambda: None,
        hostname: str | None = None,
        macs: Callable[[], set[str]] = local_macs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.on_change = on_change
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._macs = macs
        self._clock = clock
        self.api = DockerApi(config.docker_host, config.project)
        self.pump = EventPump(config.docker_host)
        self.cache: dict[str, Inspect] = {}
        self._foreign: set[str] = set()  # containers of other projects seen in network events
        self._networks: dict[str, NetworkFacts] = {}  # by network name, read once each
        self._outside_warned: set[tuple[str, str]] = set()
        self._open_transit_warned = ""
        self.self_id: str | None = None
        self._self_reason = ""
        self._transit: tuple[str, str] = ("", "")
        self._content: tuple[object, ...] | None = None
        self.generation = 0
        self.desired: BackendsDesired | None = None
        self.network_map: NetworkMap | None = None
        self.events = 0
        self.polls = 0
        self.errors = 0
        self.connected = False
        self.answered = False  # the API answered at least once
        self.last_error = ""
        self._pending_time = 0.0  # earliest Docker event time not yet reflected in a rebuild
        self._next_list = 0.0
        self._retry = Backoff(initial=_RETRY_MIN, cap=_RETRY_MAX)  # of failed re-lists
        self._started = False
        # container id -> (its StartedAt, families whose default route its service-anchor
        # reported leading to anchord): a restart makes the report stale by itself.
        # Kept in the run directory too: a restarted discovery that forgot them would shrink
        # the map until the next reports (one resolve interval) and cut live flows.
        self._routes_file = config.run_dir / ROUTES_FILE
        self._routes_ready: dict[str, tuple[str, frozenset[int]]] = _load_routes(
            self._routes_file)
        self._reports: dict[str, float] = {}  # route reports not matched yet: address -> when

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        log.info("discovery starting", extra={"fields": {
            "project": self.config.project, "docker_host": self.config.docker_host,
            "poll_interval": self.config.poll_interval}})
        self._next_list = self._clock() + min(_FIRST_LIST_FALLBACK, self.config.poll_interval)
        self.pump.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self.pump.stop()
        self.api.close()
        self._started = False

    def fileno(self) -> int:
        return self.pump.fileno()

    def alive(self) -> bool:
        return self.pump.alive()

    def timeout(self) -> float:
        """Seconds until discovery needs to run again without any event."""
        return max(0.0, self._next_list - self._clock())

    def wait(self, timeout: float) -> None:
        """Library use without a bus: block until the event pipe is readable or ``timeout``."""
        select.select([self.fileno()], [], [], max(0.0, min(timeout, self.timeout())))

    def step(self) -> None:
        """Handle what the event thread queued, then the poll timer. Never blocks long."""
        reports = self.pump.drain()
        if reports:
            self._handle(reports)
        if self._clock() >= self._next_list:
            self._relist()

    def route_ready(self, address: str) -> None:
        """A service-anchor at ``address`` (a transit address) reported its default route of
        that family leading to anchord (``anchord.routesignal``): expose that family of its
        container without waiting for Docker's healthcheck. The report may come before
        discovery knows the container (it is sent within a few milliseconds of the start): it
        waits for it, at most ``_REPORT_TTL`` seconds."""
        self._reports[address] = self._clock()
        if self._apply_reports(self._transit[0]):
            self._rebuild("route")

    def _apply_reports(self, transit: str) -> bool:
        """Match waiting route reports to containers; True if a container gained a family."""
        now = self._clock()
        changed = False
        for address, at in list(self._reports.items()):
            if now - at > _REPORT_TTL:
                del self._reports[address]
                continue
            family = 6 if ":" in address else 4
            key = "GlobalIPv6Address" if family == 6 else "IPAddress"
            for cid, info in self.cache.items():
                net = networks_of(info).get(transit) if transit else None
                if cid == self.self_id or not net or str(net.get(key) or "") != address:
                    continue
                del self._reports[address]
                started = str((info.get("State") or {}).get("StartedAt") or "")
                families = self._routes_of(cid, info)
                if family not in families:
                    self._routes_ready[cid] = (started, families | {family})
                    self._save_routes()
                    changed = True
                    log.debug("default route via anchord reported", extra={"fields": {
                        "container": name_of(info), "family": family}})
                break
        return changed

    def _save_routes(self) -> None:
        data = {cid: [started, sorted(families)]
                for cid, (started, families) in self._routes_ready.items()}
        tmp = self._routes_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._routes_file)
        except OSError as exc:  # a library use without a run directory: memory only
            log.debug("route reports not saved: %s", exc)

    def _routes_of(self, cid: str, info: Inspect) -> frozenset[int]:
        started = str((info.get("State") or {}).get("StartedAt") or "")
        was_started, families = self._routes_ready.get(cid, ("", frozenset()))
        return families if was_started == started else frozenset()

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Sequence[Event]:
        """The state discovery owns, for the bus client to republish."""
        owned: list[Event] = []
        if self.desired is not None:
            owned.append(self.desired)
        if self.network_map is not None:
            owned.append(self.network_map)
        owned.append(self.counters())
        return owned

    def counters(self) -> DockerEventsSeen:
        return DockerEventsSeen(events=self.events, polls=self.polls, errors=self.errors,
                                connected=self.connected)

    def conditions(self) -> Sequence[Condition]:
        if self.answered:
            detail = "connected" if self.connected else f"reconnecting: {self.last_error}"
            # Without our own container there is no transit network and nothing to expose:
            # a wrong project name must not pass for ready with an empty port list.
            if self.self_id is not None:
                found = Condition("self", True, f"container {self.self_id[:12]}")
            else:
                found = Condition("self", False, (
                    f"this container is not among the containers of project "
                    f"{self.config.project!r}: {self._self_reason or 'not looked for yet'}"))
            return (Condition("docker", True, detail), found)
        return (Condition("docker", False, self.last_error or "no answer from the Docker API yet"),)

    def summary(self) -> str:
        if self.desired is None:
            return "no table yet"
        return (f"generation {self.desired.generation}: {self.desired.size} entries, "
                f"{len(self.desired.rejections)} rejections, transit "
                f"{self.desired.transit_network or '-'}")

    # --- reports and lists -------------------------------------------------------------------

    def _handle(self, reports: list[PumpReport]) -> None:
        relist = False
        dirty = False
        for report in reports:
            if report.kind == "subscribed":
                log.info("docker event stream subscribed; re-listing the project")
                relist = True
            elif report.kind == "lost":
                self._lost(report.error)
            elif report.kind == "event" and report.event is not None:
                dirty |= self._on_event(report.event)
        if relist:
            self._next_list = self._clock()
        elif dirty:
            self._rebuild("event")

    def _on_event(self, ev: Mapping[str, object]) -> bool:
        cid = relevant_container(ev, self.config.project)
        if cid is None or cid in self._foreign:
            return False
        cached = self.cache.get(cid)
        if ev.get("Type") == "network" and cached is None and not self._on_own_network(ev):
            # Every container on the host that joins any network makes a network event, and
            # inspecting one that is starting waits on its lock for the whole start (0.5 s on
            # a busy host), holding up the events behind it. Only the anchord container's
            # networks can carry a transit address; known containers are followed anyway.
            return False
        if ev.get("Type") == "network" and cached is not None and not is_running(cached):
            # A container being started joins its networks first; inspecting it now would
            # wait on Docker's container lock until the start is over, and the change would
            # carry the time of this event instead of the start's. Its "start" event follows.
            return False
        self.events += 1
        t = event_time(ev)
        log.debug("docker event", extra={"fields": {
            "type": ev.get("Type"), "action": ev.get("Action"), "container": cid[:12],
            "time": t}})
        if ev.get("Type") == "container" and ev.get("Action") == "die" and cached is not None:
            # The main process exited: the container is not running, whatever follows (a
            # restart policy's "start" comes as its own event). An inspect now would wait on
            # the container's lock until Docker has torn its network down (0.1 s, more on a
            # busy host), and the withdrawal with it; the "stop" event re-reads it anyway.
            info: Inspect | None = stopped(cached)
        else:
            try:
                info = self.api.inspect(cid)
            except DockerUnavailable as exc:
                self._lost(str(exc))
                # This change is not in the cache: re-list soon rather than at the next poll.
                self._next_list = min(self._next_list, self._clock() + _RETRY_MIN)
                return False
            self._answered()
            if info is not None and labels_of(info).get(PROJECT_LABEL) != self.config.project:
                self._foreign.add(cid)
                return False
        if fingerprint(info) == fingerprint(cached):
            return False  # nothing that matters changed: no rebuild, and no time to lend
        # The inspect waits for Docker's container lock: an event read during a start or
        # stop (e.g. "stop" of the previous run) returns the state after it. The change is
        # then due to that transition, and Docker's own time for it is the honest one.
        t = max(t, transition_time(cached, info))
        if t and (not self._pending_time or t < self._pending_time):
            self._pending_time = t
        if info is None:
            self.cache.pop(cid, None)
        else:
            self.cache[cid] = info
        return True

    def _on_own_network(self, ev: Mapping[str, object]) -> bool:
        """Whether a network event is about a network of the anchord container (or unknown)."""
        self_info = self.cache.get(self.self_id) if self.self_id else None
        if self_info is None:
            return True  # which networks matter is not known yet
        network_id, name = event_network(ev)
        nets = networks_of(self_info)
        return name in nets or any(str(n.get("NetworkID") or "") == network_id
                                   for n in nets.values())

    def _relist(self) -> None:
        try:
            infos = self.api.list_project()
        except DockerUnavailable as exc:
            self._lost(str(exc))
            self._next_list = self._clock() + self._retry.next()
            return
        self._answered()
        self.polls += 1
        self._retry.reset()
        self._next_list = self._clock() + self.config.poll_interval
        self.cache = dict(infos)
        self._foreign.clear()  # bounded by what one poll interval brings
        self._rebuild("poll")

    def _answered(self) -> None:
        was = self.connected
        self.connected = True
        self.answered = True
        if not was:
            log.info("docker API answering", extra={"fields": {
                "docker_host": self.config.docker_host}})
            self.on_change()

    def _lost(self, error: str) -> None:
        self.errors += 1
        self.last_error = error
        if self.connected or self.errors == 1:
            log.warning("docker API lost; keeping the last table and retrying", extra={
                "fields": {"error": error, "generation": self.generation}})
            self.connected = False
            self.on_change()
        else:
            log.debug("docker API still lost", extra={"fields": {"error": error}})

    # --- the table ---------------------------------------------------------------------------

    def _find_self(self) -> Inspect | None:
        if self.self_id in self.cache:
            return self.cache[self.self_id]
        info, reason = find_self(self.cache.values(), self._macs(), self.hostname)
        if info is not None:
            self.self_id = str(info["Id"])
            log.info("found the anchord container", extra={"fields": {
                "container": name_of(info), "id": self.self_id[:12], "why": reason}})
        elif reason != self._self_reason:
            log.error("cannot find the anchord container among the project's containers; "
                      "is ANCHORD_PROJECT the project this container belongs to?",
                      extra={"fields": {"project": self.config.project, "why": reason}})
        self._self_reason = reason
        return info

    def _warn_outside(self, transit: str, subnets: Sequence[IPNetwork]) -> None:
        """Say once per container and address when Docker gave an address outside the
        transit subnets (it is not used; the container is reported without transit)."""
        for cid, info in self.cache.items():
            net = networks_of(info).get(transit) or {}
            for key in ("IPAddress", "GlobalIPv6Address"):
                address = str(net.get(key) or "")
                if outside(address, subnets) and (cid, address) not in self._outside_warned:
                    self._outside_warned.add((cid, address))
                    log.warning("backend address outside the transit network rejected",
                                extra={"fields": {"container": name_of(info),
                                                  "address": address,
                                                  "subnets": [str(n) for n in subnets]}})

    def _network(self, name: str, network_id: str) -> NetworkFacts | None:
        """The facts of one of our networks, read once (None while Docker cannot say)."""
        if name not in self._networks:
            try:
                facts = self.api.network_facts(network_id) if network_id else None
            except DockerUnavailable:
                return None  # try again next time
            if facts is None:
                return None
            self._networks[name] = facts
        return self._networks[name]

    def _alias(self, name: str, network_id: str) -> str:
        facts = self._network(name, network_id)
        return network_alias(name, facts.labels if facts else None, self.config.project)

    def _gateway_claims(self, transit: str, network_id: str) -> tuple[str, ...]:
        """The transit network's gateway is anchord's to take when no host address is on its
        bridge; on an ordinary non-internal bridge, egress could leave through the host."""
        facts = self._network(transit, network_id) if transit else None
        if facts is None:
            return ()
        if facts.gateway_free:
            return (transit,)
        if not facts.internal and self._open_transit_warned != transit:
            self._open_transit_warned = transit
            log.warning(
                "transit network %s is not internal and its bridge carries the host's "
                "address: a container that has not yet routed through anchord can reach the "
                "host and leave through Docker's NAT; set %s: \"true\" on it (see the README)",
                transit, INHIBIT_IPV4_OPTION, extra={"fields": {"network": transit}})
        return ()

    def _rebuild(self, cause: str) -> None:
        caused_at = self._pending_time if cause == "event" else 0.0
        # Events that change nothing (a "stop" after its "die") must not lend their time
        # to a later change.
        self._pending_time = 0.0
        self_info = self._find_self()
        if self_info is None and self.desired is not None:
            return  # a table built while we knew ourselves beats a guess
        transit, reason = "", "the anchord container is not known"
        netmap = NetworkMap()
        route_v4 = False
        self_v4 = self_v6 = ""
        if self_info is not None:
            nets = networks_of(self_info)
            aliases = {n: self._alias(n, str(v.get("NetworkID") or "")) for n, v in nets.items()}
            parent = self.config.vlan_parent
            excluded = {n for n, a in aliases.items() if parent in (n, a)}
            transit, reason = choose_transit(self_info, self.cache.values(), excluded)
            claims = self._gateway_claims(
                transit, str((nets.get(transit) or {}).get("NetworkID") or ""))
            netmap = NetworkMap(networks=attachments(self_info, aliases, claims))
            route_v4 = bool(claims)
            if transit:
                self_v4 = str(nets[transit].get("IPAddress") or "")
                self_v6 = str(nets[transit].get("GlobalIPv6Address") or "")
        if (transit, reason) != self._transit:
            self._transit = (transit, reason)
            if transit:
                log.info("transit network is %s", transit, extra={"fields": {
                    "network": transit, "why": reason, "address": self_v4,
                    "address6": self_v6}})
            else:
                log.warning("no transit network", extra={"fields": {"why": reason}})
        names = {cid: name_of(i) for cid, i in self.cache.items()}
        subnets = transit_subnets(self_info, transit) if self_info is not None else ()
        self._apply_reports(transit)
        views = [replace(container_view(info, transit, names, subnets, route_v4),
                         routes_ready=self._routes_of(cid, info))
                 for cid, info in self.cache.items() if cid != self.self_id]
        # Reports of containers that are gone go with them.
        for cid in set(self._routes_ready) - set(self.cache):
            del self._routes_ready[cid]
            self._save_routes()
        self._warn_outside(transit, subnets)
        table = build_table(views, transit)
        changed = netmap != self.network_map
        self.network_map = netmap
        content = (table, transit, self_v4, self_v6)
        if content != self._content:
            self._publish_table(table, content, cause, caused_at, transit, self_v4, self_v6)
            changed = True
        if changed:
            self.on_change()

    def _publish_table(self, table: Table, content: tuple[object, ...], cause: str,
                       event_time: float, transit: str, self_v4: str, self_v6: str) -> None:
        old = set(self.desired.rejections) if self.desired is not None else set()
        self._content = content
        self.generation = max(self.generation + 1, int(time.time() * 1000))
        self.desired = BackendsDesired(
            generation=self.generation,
            cause=cause,
            event_time=event_time,
            groups=table.groups,
            rejections=table.rejections,
            transit_network=transit,
            transit_v4=self_v4,
            transit_v6=self_v6,
        )
        log.info("desired backends changed", extra={"fields": {
            "generation": self.generation, "cause": cause, "entries": self.desired.size,
            "rejections": len(table.rejections)}})
        for r in table.rejections:
            if r not in old:
                log.warning("rejected: %s", r.reason, extra={"fields": {
                    "container": r.container, "kind": r.kind}})


def run(config: NetworkAnchorConfig, bus: BusClient, life: Lifecycle) -> int:
    """The worker loop (``anchord worker discovery``)."""
    d = Discovery(config, on_change=bus.state_changed)
    bus.set_state(d.snapshot)
    bus.set_conditions(d.conditions)
    bus.set_summary(d.summary)
    bus.watch(d.fileno())
    receiver = routesignal.Receiver()
    bus.watch(receiver.fileno())
    d.start()
    try:
        while not life.stop_requested:
            bus.poll(min(0.5, d.timeout()))
            d.step()
            if receiver.fileno() in bus.ready_fds:
                for address in receiver.receive():
                    d.route_ready(address)
            if not d.alive():
                log.error("the docker event thread died")
                return 1
    finally:
        bus.unwatch(d.fileno())
        bus.unwatch(receiver.fileno())
        receiver.close()
        d.stop()
    # Discovery owns no kernel state: a restart and a shutdown end the same way.
    return 0
