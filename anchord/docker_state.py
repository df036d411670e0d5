"""Talking to Docker for discovery: connecting, listing, the event stream, reading inspect data.

This module owns every Docker API call anchord makes (through docker-py's low-level
``APIClient``) and the interpretation of Docker's inspect documents: which container
is anchord itself, which network is the transit network, what one container looks
like to the table builder (``anchord.labels.ContainerView``) and which Compose
networks the anchord container is on. It never touches the kernel; reading the MACs
of this network namespace's interfaces (an ioctl, read-only) is the one exception.

Event stream: docker-py ends an event stream *quietly* (plain StopIteration) when the
daemon or a socket proxy goes away, so ``EventPump`` treats any end of the stream as
the API being lost, reports it, and subscribes again with backoff. Every
subscription asks the daemon to replay from a second before it was made (``since``):
Docker flushes the response headers before it registers the subscriber, so without
the replay an event in between would be lost. The consumer re-lists after each
``subscribed`` report; events are only ever a hint of which container to re-read.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import queue
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import requests

from anchord.labels import EXPOSE_LABEL, ContainerView
from bus.events import NetworkAttachment

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NETWORK_LABEL = "com.docker.compose.network"

# Every API call but the event stream gives up after this many seconds: a hung proxy must not
# freeze the worker. (The API version is negotiated: 1.41 on Docker 20.10.)
API_TIMEOUT = 10.0
API_MIN = "1.24"  # docker-py's floor, only used to ask the daemon which version it speaks
API_MAX = "1.44"  # the newest version this docker-py knows
# A tcp:// DOCKER_HOST (a socket proxy) is checked before each call within this many seconds:
# name resolution is not bounded by API_TIMEOUT, and Docker's DNS takes 10 s to give up on the
# name of a stopped proxy on an internal network; discovery's loop must not block that long.
PROBE_TIMEOUT = 1.0

# Container actions that can change what a container contributes to the table.
# Not "kill": a signal changes nothing by itself (a "die" follows if the container exits),
# and an inspect right after it would wait on the container's lock for the whole stop.
CONTAINER_ACTIONS = frozenset(
    {"start", "restart", "die", "stop", "destroy", "pause", "unpause", "rename", "create",
     "update"}
)
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})

Inspect = Mapping[str, Any]  # one container inspect document, as Docker returns it


class DockerUnavailable(Exception):
    """The Docker API did not answer (daemon down, proxy stopped, timeout)."""


# Everything docker-py and requests raise when the API is gone or broken.
_API_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
)
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*_API_ERRORS, KeyError)


def connect(docker_host: str, timeout: float = API_TIMEOUT) -> docker.APIClient:
    """An API client for ``DOCKER_HOST`` with a negotiated API version.

    Raises DockerUnavailable when the API does not answer.
    """
    # Negotiated by hand rather than with docker-py's version="auto": that one leaks the
    # probe client's socket when the daemon does not answer, and we retry a lot then.
    _reachable(docker_host, timeout)
    try:
        with docker.APIClient(base_url=docker_host, version=API_MIN, timeout=timeout) as probe:
            server = str(probe.version(api_version=False)["ApiVersion"])
    except _PROBE_ERRORS as exc:
        raise DockerUnavailable(f"{docker_host}: {exc}") from exc
    version = min((server, API_MAX), key=lambda v: tuple(int(x) for x in v.split(".")))
    return docker.APIClient(base_url=docker_host, version=version, timeout=timeout)


def _reachable(docker_host: str, timeout: float, connect: bool = True) -> None:
    """Fail fast, and without leaking a socket, when the API's endpoint is not there.

    docker-py's unix transport does not close its socket when ``connect`` fails; while the
    API is down we retry often, so check the socket ourselves first. For ``tcp://`` the
    host name must resolve within PROBE_TIMEOUT and, with ``connect``, accept a TCP
    connection within it: docker-py would block up to 10 s on either.
    """
    if docker_host.startswith(("tcp://", "http://")):
        _tcp_reachable(docker_host, min(timeout, PROBE_TIMEOUT), connect)
        return
    if not docker_host.startswith("unix://"):
        return
    path = docker_host[len("unix://"):]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as exc:
            raise DockerUnavailable(f"{docker_host}: {exc}") from exc


# Lookups in flight per (host, port): (thread, result, monotonic start), newest last.
_resolving: dict[tuple[str, int], list[tuple[threading.Thread, list[Any], float]]] = {}
_resolving_lock = threading.Lock()
# A lookup older than the probe's timeout is not shared: Docker's DNS may take 10 s to fail
# on a stopped proxy's name, and a caller after the proxy's return must not inherit that
# wait (it would delay the recovery by up to 10 s). Bounded: at most this many per name.
_MAX_LOOKUPS = 12


def _tcp_reachable(docker_host: str, timeout: float, connect: bool) -> None:
    rest = docker_host.split("://", 1)[1].split("/", 1)[0]
    host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "2375")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        return  # let docker-py report a malformed DOCKER_HOST
    key = (host, port)
    with _resolving_lock:
        lookups = _resolving.setdefault(key, [])
        fresh = lookups and time.monotonic() - lookups[-1][2] < timeout
        if fresh or len(lookups) >= _MAX_LOOKUPS:
            pending = lookups[-1]  # a recent lookup: share it
        else:
            # getaddrinfo has no timeout: resolve in a thread and stop waiting after
            # ``timeout``. Concurrent callers share a recent lookup.
            result: list[Any] = []

            def lookup() -> None:
                try:
                    result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
                except OSError as exc:
                    result.append(exc)
                finally:
                    with _resolving_lock:
                        mine = _resolving.get(key, [])
                        mine[:] = [p for p in mine if p[1] is not result]
                        if not mine:
                            _resolving.pop(key, None)

            pending = (threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True),
                       result, time.monotonic())
            lookups.append(pending)
            pending[0].start()
    thread, result, _ = pending
    thread.join(timeout)
    if not result:
        raise DockerUnavailable(f"{docker_host}: {host} does not resolve within {timeout:g}s")
    if isinstance(result[0], OSError):
        raise DockerUnavailable(f"{docker_host}: cannot resolve {host}: {result[0]}")
    if not connect:
        return
    # Every address the name resolves to, in order: with IPv6 on the proxy's network the
    # first answer is its IPv6 address, which a proxy listening on IPv4 only refuses.
    errors = []
    for family, kind, proto, _, address in result[0]:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(timeout)
            try:
                s.connect(address)
                return
            except OSError as exc:
                errors.append(f"{address[0]}: {exc}")
    raise DockerUnavailable(f"{docker_host}: {host}:{port}: {'; '.join(errors)}")


class DockerApi:
    """The calls discovery makes, with every failure turned into DockerUnavailable."""

    def __init__(self, docker_host: str, project: str) -> None:
        self.docker_host = docker_host
        self.project = project
        self._client: docker.APIClient | None = None

    def _api(self) -> docker.APIClient:
        if self._client is None:
            self._client = connect(self.docker_host)
        else:
            # A unix socket gone away: fail here instead of in docker-py (which leaks then);
            # a proxy's name gone: fail within PROBE_TIMEOUT, not docker-py's 10 s.
            _reachable(self.docker_host, API_TIMEOUT, connect=False)
        return self._client

    def _fail(self, exc: BaseException) -> DockerUnavailable:
        # Drop the client: a proxy or daemon that comes back may speak another API version.
        if self._client is not None:
            self._client.close()
        self._client = None
        return DockerUnavailable(f"{self.docker_host}: {exc}")

    def list_project(self) -> dict[str, Inspect]:
        """Inspect of every container (any state) of the project, by id."""
        try:
            api = self._api()
            project_filter = {"label": f"{PROJECT_LABEL}={self.project}"}
            summaries = api.containers(all=True, filters=project_filter)
            result: dict[str, Inspect] = {}
            for s in summaries:
                try:
                    result[s["Id"]] = api.inspect_container(s["Id"])
                except docker.errors.NotFound:
                    continue  # removed between the list and the inspect
            return result
        except DockerUnavailable:
            raise
        except _API_ERRORS as exc:
            raise self._fail(exc) from exc

    def inspect(self, container_id: str) -> Inspect | None:
        """One container's inspect, or None if it no longer exists."""
        try:
            return dict(self._api().inspect_container(container_id))
        except docker.errors.NotFound:
            return None
        except DockerUnavailable:
            raise
        except _API_ERRORS as exc:
            raise self._fail(exc) from exc

    def network_facts(self, network_id: str) -> NetworkFacts | None:
        try:
            return network_facts(self._api().inspect_network(network_id))
        except docker.errors.NotFound:
            return None
        except DockerUnavailable:
            raise
        except _API_ERRORS as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --- the event stream ------------------------------------------------------------------------

MAX_QUEUED = 10_000  # event reports waiting for the consumer, at most


@dataclass(frozen=True)
class PumpReport:
    """What the event thread tells the main loop."""

    kind: str  # "subscribed", "event" or "lost"
    event: Mapping[str, Any] | None = None
    error: str = ""


class EventPump:
    """A thread that keeps one Docker event subscription alive and queues what it reads.

    The main loop waits on ``fileno()`` (a pipe written once per report) and calls
    ``drain()``. The thread has its own API client: docker-py clients are not shared
    across threads.
    """

    def __init__(self, docker_host: str, backoff_min: float = 0.5, backoff_max: float = 0.5):
        self.docker_host = docker_host
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # Bounded: a flood of events (or a stalled consumer) costs at most this many; past
        # it, events are dropped and the consumer is told to re-list (events are only hints).
        self._queue: queue.Queue[PumpReport] = queue.Queue(maxsize=MAX_QUEUED)
        self._overflow = threading.Event()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._stop = threading.Event()
        self._stream: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)

    def fileno(self) -> int:
        return self._rfd

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        started = self._thread.ident is not None
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a dead stream may fail in many ways
                pass
        if started:
            self._thread.join(timeout)
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def drain(self) -> list[PumpReport]:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        reports: list[PumpReport] = []
        while True:
            try:
                reports.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if self._overflow.is_set():
            self._overflow.clear()
            log.warning("docker events dropped (more than %d waiting): re-listing", MAX_QUEUED)
            reports.append(PumpReport("subscribed"))
        return reports

    def _report(self, report: PumpReport) -> None:
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self._overflow.set()
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the reader is behind) or closed (stopping): fine

    def _run(self) -> None:
        delay = self.backoff_min
        since = time.time()
        while not self._stop.is_set():
            api: docker.APIClient | None = None
            try:
                api = connect(self.docker_host)
                # Replay from a second before: Docker registers the subscriber only after it
                # sent the headers, so an event in between would otherwise be lost.
                stream = api.events(since=int(since) - 1,
                                    filters={"type": ["container", "network"]}, decode=True)
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():
                    break
                self._report(PumpReport("subscribed"))
                delay = self.backoff_min
                for ev in stream:
                    since = time.time()
                    self._report(PumpReport("event", event=ev))
                error = "the event stream ended (daemon or proxy gone)"
            except DockerUnavailable as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - any failure of the stream is the API lost
                error = f"event stream failed: {exc!r}"
            finally:
                with self._lock:
                    stream, self._stream = self._stream, None
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:  # noqa: BLE001
                        pass
                if api is not None:
                    api.close()
            if self._stop.is_set():
                break
            self._report(PumpReport("lost", error=error))
            since = time.time()
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max)


def relevant_container(ev: Mapping[str, Any], project: str) -> str | None:
    """The container id a Docker event is about, if it may matter to ``project``.

    Container events carry the container's labels, so they are filtered on the project
    here. Network events carry only the network's name and the container id: they are
    returned and the caller decides after reading the container.
    """
    kind = ev.get("Type")
    action = str(ev.get("Action") or ev.get("status") or "")
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    if kind == "container":
        if attrs.get(PROJECT_LABEL) != project:
            return None
        if action in CONTAINER_ACTIONS or action.startswith("health_status"):
            return str(actor.get("ID") or ev.get("id") or "") or None
        return None
    if kind == "network" and action in NETWORK_ACTIONS:
        return str(attrs.get("container") or "") or None
    return None


def event_network(ev: Mapping[str, Any]) -> tuple[str, str]:
    """(network id, network name) of a network event."""
    actor = ev.get("Actor") or {}
    return str(actor.get("ID") or ""), str((actor.get("Attributes") or {}).get("name") or "")


def event_time(ev: Mapping[str, Any]) -> float:
    """The event's own time, in unix seconds (``timeNano`` when present)."""
    nano = ev.get("timeNano")
    if isinstance(nano, int) and nano > 0:
        return nano / 1e9
    t = ev.get("time")
    return float(t) if isinstance(t, (int, float)) else 0.0


# --- reading inspect documents ---------------------------------------------------------------


def parse_time(value: str) -> float:
    """Docker's RFC 3339 time with nanoseconds (UTC, ``Z``) in unix seconds; 0.0 if unset."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", value or "")
    if not m or m.group(1).startswith("0001"):
        return 0.0
    whole = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{m.group(2) or '0'}")


def fingerprint(info: Inspect | None) -> tuple[object, ...] | None:
    """Everything of a container that discovery's output depends on (None: no container)."""
    if info is None:
        return None
    nets = tuple(sorted(
        (name, str(n.get("IPAddress") or ""), str(n.get("GlobalIPv6Address") or ""),
         str(n.get("MacAddress") or ""), str(n.get("NetworkID") or ""))
        for name, n in networks_of(info).items()))
    return (is_running(info), health_of(info), name_of(info), str(info.get("Created", "")),
            tuple(sorted(labels_of(info).items())), nets,
            str((info.get("HostConfig") or {}).get("NetworkMode") or ""))


def stopped(info: Inspect) -> Inspect:
    """``info`` as it reads once the container stopped (a ``die`` event says so)."""
    state = dict(info.get("State") or {})
    state.update(Running=False, Paused=False, Restarting=False)
    return {**info, "State": state}


def transition_time(before: Inspect | None, after: Inspect | None) -> float:
    """When Docker says the container started or stopped, if that happened between the two."""
    if after is None:
        return 0.0
    running = is_running(after)
    if before is not None and is_running(before) == running:
        return 0.0
    state = after.get("State") or {}
    return parse_time(str(state.get("StartedAt" if running else "FinishedAt") or ""))


def name_of(info: Inspect) -> str:
    return str(info.get("Name") or "").lstrip("/") or str(info.get("Id", ""))[:12]


def labels_of(info: Inspect) -> dict[str, str]:
    return dict((info.get("Config") or {}).get("Labels") or {})


def networks_of(info: Inspect) -> dict[str, Mapping[str, Any]]:
    return dict((info.get("NetworkSettings") or {}).get("Networks") or {})


def is_running(info: Inspect) -> bool:
    state = info.get("State") or {}
    return bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")


def health_of(info: Inspect) -> str:
    """Docker's health status ("starting", "healthy", "unhealthy"), "" without healthcheck."""
    health = (info.get("State") or {}).get("Health")
    return str(health.get("Status") or "") if isinstance(health, Mapping) else ""


def transit_subnets(self_info: Inspect, transit_network: str) -> tuple[IPNetwork, ...]:
    """The transit network's subnets, as anchord's own addresses on it say."""
    net = networks_of(self_info).get(transit_network) or {}
    out: list[IPNetwork] = []
    for addr_key, len_key in (("IPAddress", "IPPrefixLen"),
                              ("GlobalIPv6Address", "GlobalIPv6PrefixLen")):
        address, prefix = net.get(addr_key), net.get(len_key)
        if address and isinstance(prefix, int) and prefix > 0:
            try:
                out.append(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
            except ValueError:
                continue
    return tuple(out)


def outside(address: str, subnets: Sequence[IPNetwork]) -> bool:
    """Whether a backend address Docker gave lies outside the transit subnets (never DNATed
    to: a value from Docker is checked before it reaches the kernel, F-22)."""
    if not address or not subnets:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return not any(ip.version == net.version and ip in net for net in subnets)


def container_view(info: Inspect, transit_network: str,
                   names: Mapping[str, str] | None = None,
                   subnets: Sequence[IPNetwork] = (), route_v4: bool = False) -> ContainerView:
    """What the table builder needs from one inspect document. An address outside
    ``subnets`` counts as none (the container is then reported as without transit)."""
    labels = labels_of(info)
    net = networks_of(info).get(transit_network) if transit_network else None
    running = is_running(info)
    health = health_of(info)
    mode = str((info.get("HostConfig") or {}).get("NetworkMode") or "")
    owner = ""
    if mode.startswith("container:"):
        owner_id = mode.split(":", 1)[1]
        owner = (names or {}).get(owner_id, owner_id[:12])
    return ContainerView(
        id=str(info.get("Id", "")),
        name=name_of(info),
        created=str(info.get("Created", "")),
        labels=tuple(sorted(labels.items())),
        service=labels.get(SERVICE_LABEL, ""),
        running=running,
        healthy=health in ("", "healthy"),
        health=health,
        route_v4=route_v4,
        # A stopped container keeps its network entry with stale or empty addresses.
        transit_v4=_checked(str(net.get("IPAddress") or ""), subnets) if net and running
        else "",
        transit_v6=_checked(str(net.get("GlobalIPv6Address") or ""), subnets)
        if net and running else "",
        network_owner=owner,
    )


def _checked(address: str, subnets: Sequence[IPNetwork]) -> str:
    return "" if outside(address, subnets) else address


def local_macs() -> set[str]:
    """MACs of this network namespace's interfaces (netlink-free: SIOCGIFHWADDR).

    ``/sys/class/net`` would show the namespace sysfs was mounted in, not necessarily ours.
    """
    macs: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            mac = ":".join(f"{b:02x}" for b in raw[18:24])
            if mac != "00:00:00:00:00:00":
                macs.add(mac)
    return macs


def find_self(
    infos: Iterable[Inspect], macs: set[str], hostname: str
) -> tuple[Inspect | None, str]:
    """The anchord container among the project's containers, and why we think so.

    First by MAC: a container whose network endpoint has the MAC of one of our own
    interfaces shares our network namespace, which is proof (and works with a custom
    ``hostname:``). Then by host name: Docker sets it to the first 12 hex digits of the
    container id unless the compose file overrides it.
    """
    infos = list(infos)
    for info in infos:
        for net_name, net in networks_of(info).items():
            mac = str(net.get("MacAddress") or "").lower()
            if mac and mac in macs:
                return info, (f"its MAC {mac} on network {net_name} belongs to an interface of "
                              f"this network namespace")
    host = hostname.strip().lower()
    if len(host) >= 12:
        for info in infos:
            if str(info.get("Id", "")).startswith(host):
                return info, f"its id starts with this host name {host}"
    return None, (f"no container of the project has a MAC of this namespace "
                  f"({', '.join(sorted(macs)) or 'none'}) or an id starting with the host "
                  f"name {host!r}")


# The bridge driver option that keeps the host's IPv4 address off a network's bridge.
INHIBIT_IPV4_OPTION = "com.docker.network.bridge.inhibit_ipv4"
# The spellings of true that Docker's option parser (Go's strconv.ParseBool) accepts.
_GO_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})


@dataclass(frozen=True)
class NetworkFacts:
    """What discovery needs to know of one Docker network besides its containers."""

    labels: Mapping[str, str]
    internal: bool
    # The bridge carries no address of the host's (``inhibit_ipv4``): the IPAM gateway that
    # Docker gives every container as its default route is nobody's until anchord claims it.
    gateway_free: bool


def network_facts(doc: Mapping[str, Any]) -> NetworkFacts:
    """Read a network inspect document."""
    options = doc.get("Options") or {}
    return NetworkFacts(
        labels=dict(doc.get("Labels") or {}),
        internal=bool(doc.get("Internal")),
        gateway_free=str(options.get(INHIBIT_IPV4_OPTION, "")) in _GO_TRUE,
    )


def network_alias(name: str, labels: Mapping[str, str] | None, project: str) -> str:
    """The network's name in the compose file: its compose label, else ``<project>_`` stripped."""
    if labels and labels.get(NETWORK_LABEL):
        return str(labels[NETWORK_LABEL])
    prefix = f"{project}_"
    return name[len(prefix):] if name.startswith(prefix) else name


def attachments(self_info: Inspect, aliases: Mapping[str, str],
                claim: Iterable[str] = ()) -> tuple[NetworkAttachment, ...]:
    """The anchord container's networks, with the MAC and addresses it has on each; for the
    networks named in ``claim``, the IPv4 gateway Docker gave them (anchord's to take)."""
    result = []
    claimed = set(claim)
    for name, net in sorted(networks_of(self_info).items()):
        result.append(NetworkAttachment(
            network=name,
            alias=aliases.get(name, name),
            mac=str(net.get("MacAddress") or "").lower(),
            ipv4=str(net.get("IPAddress") or ""),
            ipv6=str(net.get("GlobalIPv6Address") or ""),
            gateway=str(net.get("Gateway") or "") if name in claimed else "",
        ))
    return tuple(result)


def choose_transit(self_info: Inspect, infos: Iterable[Inspect],
                   excluded: Iterable[str]) -> tuple[str, str]:
    """The transit network and why: the anchord network most labelled containers are on.

    ``excluded`` names networks that cannot be transit (the LAN parent). Ties go to the
    network name, so the choice is the same in every run. Containers count whatever
    their state: the choice must not flip while a backend restarts.
    """
    own = set(networks_of(self_info)) - set(excluded)
    self_id = self_info.get("Id")
    labelled = [i for i in infos if i.get("Id") != self_id and EXPOSE_LABEL in labels_of(i)]
    counts: dict[str, int] = {}
    for info in labelled:
        for net in networks_of(info):
            if net in own:
                counts[net] = counts.get(net, 0) + 1
    if counts:
        best = min(counts, key=lambda n: (-counts[n], n))
        others = ", ".join(f"{n} ({counts[n]})" for n in sorted(counts) if n != best)
        return best, (f"it is shared with {counts[best]} of the {len(labelled)} labelled "
                      f"container(s)" + (f"; other candidates: {others}" if others else ""))
    if len(own) == 1:
        (only,) = own
        return only, "it is the anchord container's only network besides the LAN parent"
    if not own:
        return "", "the anchord container has no network besides the LAN parent"
    return "", (f"no labelled container shares a network with the anchord container yet "
                f"(its networks: {', '.join(sorted(own))})")
