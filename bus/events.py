"""The event catalogue: every message that travels on the anchord bus.

This module owns the one list of event types. Each is a frozen ``msgspec.Struct``
with a ``TOPIC`` (the type name followed by ``/`` so that prefix subscriptions
never collide) and a ``VERSION`` (bumped when a field changes meaning or type).
The codec (``bus.codec``) has msgspec decode and validate every field against the
annotations here, in C, so the annotations are the schema: keep them to ``str``,
``int``, ``float``, ``bool``, ``X | None``, ``tuple[X, ...]``, nested structs of
``_Strict`` and ``NamedTuple`` records (JSON arrays in field order, trailing fields
with defaults optional). Structs reject unknown fields; they are immutable,
hashable and compare by type and fields.

State on the bus is level-triggered: an owner always publishes its whole current
state, never a delta, so any subscriber that (re)starts converges from the next
message alone.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

import msgspec


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every struct on the wire: immutable, and a field it does not know is an error."""


class Event(_Strict, frozen=True):
    """Base of every bus event."""

    TOPIC: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


# --- lifecycle ---------------------------------------------------------------


class Hello(Event, frozen=True):
    """A worker (re)started: every owner of state republishes it."""

    TOPIC: ClassVar[str] = "Hello/"
    worker: str
    pid: int


class Condition(_Strict, frozen=True):
    """One readiness condition a worker owns (``key: detail`` on /readyz)."""

    key: str
    ok: bool
    detail: str = ""


class WorkerStatus(Event, frozen=True):
    """Heartbeat of a worker: liveness, its readiness conditions, bus counters."""

    TOPIC: ClassVar[str] = "WorkerStatus/"
    worker: str
    pid: int
    started: float
    conditions: tuple[Condition, ...] = ()
    received: int = 0
    decode_errors: int = 0
    summary: str = ""


# --- discovery ---------------------------------------------------------------


class Backend(NamedTuple):
    """One desired DNAT entry: ``proto/first-last`` of ``family`` goes to ``address``.

    Tuple order is the table's order (family, proto, ports, address). Not on the
    wire itself: ``BackendsDesired`` carries entries as ``BackendGroup`` rows.
    """

    family: int  # 4 or 6
    proto: str  # "tcp" or "udp"
    first: int
    last: int
    address: str
    container: str  # container name, for people (status output); never a metric label
    service: str = ""


class PortSpan(NamedTuple):
    """A port range ``first-last`` (first < last) of a ``BackendGroup``."""

    first: int
    last: int


class BackendGroup(NamedTuple):
    """The entries of one container that share family, proto and address: its ports.

    The wire form of the desired table: a big project exposes thousands of ports
    from a few containers, so the address and names are written once per group and
    the ports as a plain list of integers.
    A group is also the unit a consumer can compare to find what changed.
    """

    family: int  # 4 or 6
    proto: str  # "tcp" or "udp"
    address: str
    container: str
    service: str = ""
    ports: tuple[int, ...] = ()  # single ports
    ranges: tuple[PortSpan, ...] = ()

    def backends(self) -> list[Backend]:
        """The entries of the group: its single ports, then its ranges."""
        fam, proto, addr, name, service = self[:5]
        out = [Backend(fam, proto, p, p, addr, name, service) for p in self.ports]
        out.extend(Backend(fam, proto, a, b, addr, name, service) for a, b in self.ranges)
        return out


def group_entries(entries: Iterable[Backend]) -> tuple[BackendGroup, ...]:
    """``entries`` as groups (in the order each group first appears; ports keep theirs)."""
    ports: dict[tuple[int, str, str, str, str], tuple[list[int], list[PortSpan]]] = {}
    for e in entries:
        key = (e.family, e.proto, e.address, e.container, e.service)
        singles, spans = ports.setdefault(key, ([], []))
        if e.first == e.last:
            singles.append(e.first)
        else:
            spans.append(PortSpan(e.first, e.last))
    return tuple(BackendGroup(*key, tuple(singles), tuple(spans))
                 for key, (singles, spans) in ports.items())


class Rejection(_Strict, frozen=True):
    """A label (or part of one) discovery refused, and why."""

    container: str
    reason: str
    kind: str = "label"  # "label", "conflict" or "no-transit"


# dict=True gives instances a __dict__, where the cached ``entries`` lives (never on the wire).
class BackendsDesired(Event, frozen=True, dict=True):
    """The whole desired backend table of the project, as discovery sees it.

    Version 2: the entries travel as ``groups`` (one per container, family, proto and
    address) instead of one object per port; ``entries`` expands them on first use.
    Build one from entries with ``BackendsDesired.of``.
    """

    TOPIC: ClassVar[str] = "BackendsDesired/"
    VERSION: ClassVar[int] = 2
    generation: int
    cause: str  # "event", "poll", "heartbeat" or "route" (a service-anchor's route report)
    event_time: float  # Docker event time (unix seconds) that caused it, 0 if none
    groups: tuple[BackendGroup, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    transit_network: str = ""
    transit_v4: str = ""  # the anchord container's own transit address(es)
    transit_v6: str = ""

    @classmethod
    def of(cls, *, entries: Iterable[Backend] = (), **fields: Any) -> BackendsDesired:
        """A table from its entries (grouped as the wire wants them)."""
        return cls(groups=group_entries(entries), **fields)

    @property
    def size(self) -> int:
        """How many entries, without expanding them."""
        return sum(len(g.ports) + len(g.ranges) for g in self.groups)

    @functools.cached_property
    def entries(self) -> tuple[Backend, ...]:
        """Every entry, in table order (family, proto, ports, address)."""
        return tuple(sorted(itertools.chain.from_iterable(g.backends() for g in self.groups)))


class NetworkAttachment(_Strict, frozen=True):
    """One Compose network the anchord container is attached to."""

    network: str  # full Docker network name (e.g. "proj_lan")
    alias: str  # the name in the compose file (e.g. "lan")
    mac: str
    ipv4: str = ""
    ipv6: str = ""
    # The network's IPv4 gateway when anchord takes it over (the transit network whose bridge
    # has no host address): every container on it then routes through anchord from its start.
    gateway: str = ""


class NetworkMap(Event, frozen=True):
    """Which interface of the anchord container is on which Compose network.

    Only discovery can ask Docker; the dhcp worker uses it to resolve an
    ``ANCHORD_VLAN_PARENT`` that names a network instead of an interface.
    """

    TOPIC: ClassVar[str] = "NetworkMap/"
    networks: tuple[NetworkAttachment, ...] = ()


class DockerEventsSeen(Event, frozen=True):
    """Running counters of Docker events discovery handled, by source (event/poll)."""

    TOPIC: ClassVar[str] = "DockerEventsSeen/"
    events: int = 0
    polls: int = 0
    errors: int = 0
    connected: bool = False


# --- nat-writer --------------------------------------------------------------


class EntryCount(_Strict, frozen=True):
    family: int
    proto: str
    count: int


class StaleBackend(_Strict, frozen=True):
    """A backend that vanished or moved: its conntrack entries must go."""

    family: int
    proto: str
    first: int
    last: int
    address: str


class NatApplied(Event, frozen=True):
    """The nat-writer applied (or failed to apply) one desired generation."""

    TOPIC: ClassVar[str] = "NatApplied/"
    generation: int
    ok: bool
    duration: float  # seconds spent in the transaction
    event_time: float  # the Docker event time this answers (0 if none)
    added: int = 0
    removed: int = 0
    changed: int = 0
    counts: tuple[EntryCount, ...] = ()
    stale: tuple[StaleBackend, ...] = ()
    error: str = ""
    tables: bool = True  # tables installed


# --- dhcp --------------------------------------------------------------------


class LinkChanged(Event, frozen=True):
    TOPIC: ClassVar[str] = "LinkChanged/"
    interface: str
    mac: str
    up: bool
    parent: str = ""


class Lease(_Strict, frozen=True):
    family: int
    address: str  # address/prefixlen
    gateway: str = ""
    server: str = ""
    lease_time: float = 0.0
    t1: float = 0.0
    t2: float = 0.0
    expiry: float = 0.0  # unix time
    source: str = "dhcp"  # "dhcp", "dhcpv6" or "slaac"
    hostname: str = ""


class LeaseChanged(Event, frozen=True):
    """The current lease of one family (full snapshot; ``previous`` set on a change)."""

    TOPIC: ClassVar[str] = "LeaseChanged/"
    lease: Lease
    previous: str = ""  # previous address/prefixlen if the address changed


class LeaseLost(Event, frozen=True):
    TOPIC: ClassVar[str] = "LeaseLost/"
    family: int
    address: str
    reason: str = ""


class Count(_Strict, frozen=True):
    key: str
    value: int


class DhcpCounters(Event, frozen=True):
    """Running totals of one family's DHCP client (reset when the dhcp worker restarts)."""

    TOPIC: ClassVar[str] = "DhcpCounters/"
    family: int
    # by outcome: ok, nak, timeout, conflict, expired, defended, defend_lost (RFC 5227 2.4)
    acquisitions: tuple[Count, ...] = ()
    dropped: int = 0  # received packets dropped as malformed or unexpected


# --- conntrack-flusher -------------------------------------------------------


class ConntrackFlushed(Event, frozen=True):
    TOPIC: ClassVar[str] = "ConntrackFlushed/"
    family: int
    removed: int
    duration: float = 0.0
    reason: str = ""  # "backend" or "address"


CATALOGUE: dict[str, type[Event]] = {
    cls.TOPIC: cls
    for cls in (
        Hello,
        WorkerStatus,
        BackendsDesired,
        NetworkMap,
        DockerEventsSeen,
        NatApplied,
        LinkChanged,
        LeaseChanged,
        LeaseLost,
        DhcpCounters,
        ConntrackFlushed,
    )
}
"""Every event type by topic: the one place that lists them."""

__all__ = [
    "CATALOGUE",
    "Backend",
    "BackendGroup",
    "BackendsDesired",
    "Condition",
    "ConntrackFlushed",
    "Count",
    "DhcpCounters",
    "DockerEventsSeen",
    "EntryCount",
    "Event",
    "Hello",
    "Lease",
    "LeaseChanged",
    "LeaseLost",
    "LinkChanged",
    "NatApplied",
    "NetworkAttachment",
    "NetworkMap",
    "PortSpan",
    "Rejection",
    "StaleBackend",
    "WorkerStatus",
    "group_entries",
]
