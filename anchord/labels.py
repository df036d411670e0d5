"""Labels to the desired backend table: pure logic, no Docker, no I/O.

This module owns the meaning of the ``anchord.expose`` and ``anchord.expose.v6``
labels, the conflict rule between containers and the building of the whole
desired table from a list of containers as discovery sees them (``ContainerView``).

Rules (SPEC "Labels"):

- ``anchord.expose`` is a comma-separated list of ``proto/port`` or
  ``proto/first-last``; spaces are tolerated around every part; proto is ``tcp`` or
  ``udp``; ports are 1..65535 and ``first <= last``. One bad token rejects the whole
  label of that container (a partial exposure would hide the mistake); other
  containers are unaffected. Entries of one label that overlap each other are a
  bad token too: the nat-writer's interval maps cannot hold overlapping keys.
- ``anchord.expose.v6``: ``auto`` (default, also when empty) mirrors every entry to
  the container's transit IPv6 address if it has one; ``off`` publishes no IPv6 entry.
- Conflicts are decided on the label entries (proto and port range, whatever the
  family): among the *running* containers with a transit address, the one created
  first (Docker ``Created``; tie: name) keeps its entry; every entry of a later
  container that overlaps an already kept entry is rejected, whole, with
  ``kind="conflict"``. The order of Docker events never matters, so there is no
  last-writer-wins. A stopped container holds no claim.
- Health only gates exposure of a container that won its claims: an unhealthy
  winner leaves its ports without backend rather than handing them to the loser,
  so a health flap never moves a port between containers. Where the container's IPv4
  default route leads to anchord from its first instant (``route_v4``: the transit
  network's gateway is anchord's), its IPv4 entries do not wait for the healthcheck
  (Docker runs the first one a whole interval after the start); nor do the entries of a
  family whose default route its service-anchor reported leading to anchord
  (``routes_ready``, see ``anchord.routesignal``).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from anchord.spans import Spans
from bus.events import Backend, BackendGroup, Rejection, group_entries

EXPOSE_LABEL = "anchord.expose"
EXPOSE_V6_LABEL = "anchord.expose.v6"
PROTOS = ("tcp", "udp")

_TOKEN = re.compile(r"^([A-Za-z]+)\s*/\s*([0-9]+)(?:\s*-\s*([0-9]+))?$")


class LabelError(ValueError):
    """A label value that cannot be used; ``token`` is the offending part."""

    def __init__(self, token: str, problem: str, source: str = "expose") -> None:
        self.token = token
        self.problem = problem
        self.source = source  # "expose" or "v6": which label it came from
        super().__init__(f"bad token {token!r}: {problem}")


@dataclass(frozen=True, order=True)
class PortRange:
    """``proto/first-last`` (``first == last`` for a single port)."""

    proto: str
    first: int
    last: int

    def overlaps(self, other: PortRange) -> bool:
        return self.proto == other.proto and self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        if self.first == self.last:
            return f"{self.proto}/{self.first}"
        return f"{self.proto}/{self.first}-{self.last}"


def _port(token: str, text: str) -> int:
    # A port of thousands of digits must be a rejection, not a ValueError out of int() (which
    # refuses more than 4 300 digits) that would stop discovery for every container.
    digits = text.lstrip("0") or "0"
    if len(digits) > 5:
        raise LabelError(token, f"port {text[:12]}{'...' if len(text) > 12 else ''} is "
                         "outside 1-65535")
    value = int(digits)
    if not 1 <= value <= 65535:
        raise LabelError(token, f"port {value} is outside 1-65535")
    return value


def parse_token(token: str) -> PortRange:
    """One ``proto/port`` or ``proto/first-last`` (already split on commas)."""
    text = token.strip()
    if not text:
        raise LabelError(token, "empty entry (stray comma?)")
    m = _TOKEN.match(text)
    if not m:
        raise LabelError(text, "expected proto/port or proto/first-last, e.g. tcp/443")
    proto = m.group(1).lower()
    if proto not in PROTOS:
        raise LabelError(text, f"protocol {m.group(1)!r} is not tcp or udp")
    first = _port(text, m.group(2))
    last = _port(text, m.group(3)) if m.group(3) is not None else first
    if first > last:
        raise LabelError(text, f"range {first}-{last} is reversed")
    return PortRange(proto, first, last)


def parse_expose(value: str) -> tuple[PortRange, ...]:
    """The whole ``anchord.expose`` value; raises LabelError naming the first bad token."""
    if not value.strip():
        raise LabelError(value, "the label is empty")
    ranges: list[PortRange] = []
    held = _Held()
    for token in value.split(","):
        pr = parse_token(token)
        earlier = held.first_overlap(pr)
        if earlier is not None:
            raise LabelError(token.strip(), f"overlaps {earlier[0]} earlier in the same label")
        held.add(_Parsed.of((pr,)), "")
        ranges.append(pr)
    return tuple(ranges)


@dataclass(frozen=True)
class _Parsed:
    """A parsed ``anchord.expose`` value, indexed for the conflict checks."""

    ranges: tuple[PortRange, ...]
    singles: dict[tuple[str, int], int]  # (proto, port) -> position in the label
    spans: tuple[tuple[int, PortRange], ...]  # (position, range) of the real ranges
    ports: dict[str, list[int]]  # proto -> its single ports, sorted

    @classmethod
    def of(cls, ranges: tuple[PortRange, ...]) -> _Parsed:
        singles = {(pr.proto, pr.first): i for i, pr in enumerate(ranges) if pr.first == pr.last}
        ports: dict[str, list[int]] = {}
        for proto, port in singles:
            ports.setdefault(proto, []).append(port)
        for sorted_ports in ports.values():
            sorted_ports.sort()
        spans = tuple((i, pr) for i, pr in enumerate(ranges) if pr.first != pr.last)
        return cls(ranges, singles, spans, ports)

    def covers_single(self, span: PortRange) -> bool:
        """Whether one of the single ports falls in ``span``."""
        ports = self.ports.get(span.proto, [])
        i = bisect.bisect_left(ports, span.first)
        return i < len(ports) and ports[i] <= span.last


@functools.lru_cache(maxsize=1024)
def _parsed(value: str) -> _Parsed | LabelError:
    """``parse_expose``, indexed and cached by value (a bad value caches its error).

    Discovery rebuilds the table from every label on each change, and a label
    listing thousands of ports is the same string every time.
    """
    try:
        return _Parsed.of(parse_expose(value))
    except LabelError as exc:
        return exc


# (container order, position in its label): earlier holds win, and are named first.
_Order = tuple[int, int]


class _Held:
    """Port ranges already taken, each with an owner, answering "what overlaps?" fast.

    A label (or a project) may hold thousands of ports: single ports sit in a dict by
    (proto, port), ranges in a sorted index per proto (``anchord.spans``), so a lookup
    costs O(log ranges + length of the range asked about) instead of O(everything
    held), and a label of single ports that overlaps nothing is added in one C-level
    update.
    """

    def __init__(self) -> None:
        # (proto, port) -> (container order, owner, the owner's positions by port)
        self._singles: dict[tuple[str, int], tuple[int, str, dict[tuple[str, int], int]]] = {}
        self._spans: dict[str, Spans] = {}  # proto -> the ranges held
        self._ranges: dict[tuple[str, int], tuple[_Order, PortRange, str]] = {}  # by start
        self._next = 0

    def first_overlap(self, pr: PortRange) -> tuple[PortRange, str] | None:
        """The earliest held range overlapping ``pr`` and its owner, or None."""
        spans = self._spans.get(pr.proto)
        hits = [self._ranges[(pr.proto, a)]
                for a, _ in (spans.overlapping(pr.first, pr.last) if spans else ())]
        if self._singles:
            get = self._singles.get
            for p in (pr.first,) if pr.first == pr.last else range(pr.first, pr.last + 1):
                single = get((pr.proto, p))
                if single is not None:
                    order, owner, positions = single
                    hits.append(((order, positions[(pr.proto, p)]),
                                 PortRange(pr.proto, p, p), owner))
        if not hits:
            return None
        _, held, owner = min(hits, key=lambda h: h[0])
        return held, owner

    def overlaps_any(self, parsed: _Parsed) -> bool:
        if not self._singles.keys().isdisjoint(parsed.singles):
            return True
        for proto, ports in parsed.ports.items():
            spans = self._spans.get(proto)
            if not spans:
                continue
            # Whichever is fewer is walked, the other bisected.
            if len(spans) <= len(ports):
                if any(parsed.covers_single(PortRange(proto, a, b)) for a, b in spans):
                    return True
            elif any(spans.overlapping(p, p) for p in ports):
                return True
        return any(self.first_overlap(pr) is not None for _, pr in parsed.spans)

    def add(self, parsed: _Parsed, owner: str) -> None:
        """Hold every range of ``parsed`` (which must overlap nothing held) for ``owner``."""
        order, self._next = self._next, self._next + 1
        self._singles.update(dict.fromkeys(parsed.singles, (order, owner, parsed.singles)))
        for i, pr in parsed.spans:
            self._spans.setdefault(pr.proto, Spans()).add(pr.first, pr.last)
            self._ranges[(pr.proto, pr.first)] = ((order, i), pr, owner)


def parse_v6(value: str | None) -> bool:
    """``anchord.expose.v6``: True for auto (the default), False for off."""
    text = (value or "").strip().lower()
    if text in ("", "auto"):
        return True
    if text == "off":
        return False
    raise LabelError(value or "", "expected auto or off", source="v6")


@dataclass(frozen=True)
class ContainerView:
    """What the table builder needs to know about one container of the project."""

    id: str
    name: str
    created: str  # Docker's RFC 3339 ``Created``; same-length UTC strings sort in time order
    labels: tuple[tuple[str, str], ...] = ()
    service: str = ""
    running: bool = False  # running and not paused/restarting
    healthy: bool = True  # no healthcheck, or the healthcheck says healthy
    # Its IPv4 replies route through anchord from the start (Docker's default route leads to
    # the transit gateway, which anchord holds): IPv4 exposure need not wait for health.
    route_v4: bool = False
    # Families whose default route its service-anchor reported leading to anchord
    # (anchord.routesignal): exposure of that family need not wait for health either.
    routes_ready: frozenset[int] = frozenset()
    health: str = ""  # Docker's health status, for the reason text ("" = no healthcheck)
    transit_v4: str = ""  # address on the transit network ("" = none)
    transit_v6: str = ""
    network_owner: str = ""  # name of the container whose namespace it joined, if any

    def routed(self, family: int) -> bool:
        """Whether its replies of ``family`` come back through anchord, so that the family's
        entries may be exposed: healthy (the service-anchor's healthcheck says its routes are
        in place), or known by other means (``route_v4``, ``routes_ready``)."""
        address = self.transit_v4 if family == 4 else self.transit_v6
        if self.healthy:
            return True
        if not address:
            return False
        return family in self.routes_ready or (family == 4 and self.route_v4)

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None

    @property
    def order_key(self) -> tuple[str, str]:
        return (_normalise_created(self.created), self.name)


def _normalise_created(created: str) -> str:
    # Docker writes nanoseconds but drops trailing zeros ("...:05.1Z" vs "...:05.123456789Z"):
    # pad the fraction so plain string order is time order.
    m = re.match(r"^(.*?T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$", created)
    if not m:
        return created
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}{m.group(3)}"


@dataclass(frozen=True)
class Table:
    """The desired table discovery publishes: sorted groups of entries, and rejections."""

    groups: tuple[BackendGroup, ...]
    rejections: tuple[Rejection, ...]

    @property
    def entries(self) -> tuple[Backend, ...]:
        """Every entry, in table order."""
        return tuple(sorted(itertools.chain.from_iterable(g.backends() for g in self.groups)))


def build_table(containers: Iterable[ContainerView], transit_network: str) -> Table:
    """The whole desired table from the project's containers (see module docstring)."""
    groups: list[BackendGroup] = []
    rejections: list[Rejection] = []
    claims: list[tuple[ContainerView, str, _Parsed, bool]] = []
    for c in sorted(containers, key=lambda c: c.order_key):
        raw = c.label(EXPOSE_LABEL)
        if raw is None:
            continue
        try:
            parsed = _parsed(raw)
            if isinstance(parsed, LabelError):
                raise parsed
            v6 = parse_v6(c.label(EXPOSE_V6_LABEL))
        except LabelError as exc:
            label = EXPOSE_LABEL if exc.source == "expose" else EXPOSE_V6_LABEL
            rejections.append(Rejection(
                container=c.name,
                reason=f"label {label} of container {c.name} rejected: {exc}",
                kind="label",
            ))
            continue
        if not c.running:
            continue  # a stopped container holds no claim and is not an error
        if not c.transit_v4 and not c.transit_v6:
            rejections.append(Rejection(
                container=c.name, reason=_no_transit_reason(c, transit_network), kind="no-transit"
            ))
            continue
        claims.append((c, raw, parsed, v6))

    kept = _Held()  # ranges kept so far and their owner's name, in creation order
    for c, raw, parsed, v6 in claims:
        if not kept.overlaps_any(parsed):
            # The usual case: the whole label is kept, and its groups are the same
            # objects as in the last table as long as the container's address is.
            kept.add(parsed, c.name)
            ok4, ok6 = c.routed(4), c.routed(6)
            if ok4 or ok6:
                groups.extend(_groups(raw, v6 and ok6, c.name, c.service,
                                      c.transit_v4 if ok4 else "", c.transit_v6 if ok6 else ""))
            continue
        won: list[PortRange] = []
        for pr in parsed.ranges:
            held = kept.first_overlap(pr)
            if held is not None:
                rejections.append(Rejection(
                    container=c.name,
                    reason=(f"{pr} of container {c.name} conflicts with {held[0]} of container "
                            f"{held[1]}, created earlier, which keeps it"),
                    kind="conflict",
                ))
                continue
            kept.add(_Parsed.of((pr,)), c.name)
            won.append(pr)
        ok4, ok6 = c.routed(4), c.routed(6)
        if ok4 or ok6:
            groups.extend(group_entries(_backends(
                won, v6 and ok6, c.name, c.service, c.transit_v4 if ok4 else "",
                c.transit_v6 if ok6 else "")))
    # Groups sort by (family, proto, address, container): the same order every time.
    return Table(tuple(sorted(groups)), tuple(sorted(
        rejections, key=lambda r: (r.container, r.kind, r.reason))))


@functools.lru_cache(maxsize=4096)
def _groups(raw: str, v6: bool, name: str, service: str, transit_v4: str,
            transit_v6: str) -> tuple[BackendGroup, ...]:
    """The groups of a container whose whole label is kept (cached: rebuilt per change)."""
    parsed = _parsed(raw)
    assert not isinstance(parsed, LabelError)  # only called for a label that parsed
    return group_entries(_backends(parsed.ranges, v6, name, service, transit_v4, transit_v6))


def _backends(ranges: Iterable[PortRange], v6: bool, name: str, service: str,
              transit_v4: str, transit_v6: str) -> tuple[Backend, ...]:
    out: list[Backend] = []
    for pr in ranges:
        if transit_v4:
            out.append(Backend(4, pr.proto, pr.first, pr.last, transit_v4, name, service))
        if v6 and transit_v6:
            out.append(Backend(6, pr.proto, pr.first, pr.last, transit_v6, name, service))
    return tuple(out)


def _no_transit_reason(c: ContainerView, transit_network: str) -> str:
    where = f"the transit network {transit_network}" if transit_network else \
        "a network it shares with the anchord container"
    joined = f"; it runs in the network namespace of {c.network_owner}, put the label there" \
        if c.network_owner else ""
    return (f"container {c.name} has label {EXPOSE_LABEL} but no address on {where}: "
            f"the label belongs on the namespace owner (the service-anchor), not on the app"
            f"{joined}")


def describe(rejections: Sequence[Rejection]) -> list[str]:
    """One line per rejection, for logs and status output."""
    return [f"{r.kind}: {r.reason}" for r in rejections]
