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
  so a health flap never moves a port between containers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bus.events import Backend, Rejection

EXPOSE_LABEL = "anchord.expose"
EXPOSE_V6_LABEL = "anchord.expose.v6"
PROTOS = ("tcp", "udp")

_TOKEN = re.compile(r"^([A-Za-z]+)\s*/\s*(\d+)(?:\s*-\s*(\d+))?$")


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
    value = int(text)
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
    for token in value.split(","):
        pr = parse_token(token)
        for earlier in ranges:
            if pr.overlaps(earlier):
                raise LabelError(token.strip(), f"overlaps {earlier} earlier in the same label")
        ranges.append(pr)
    return tuple(ranges)


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
    health: str = ""  # Docker's health status, for the reason text ("" = no healthcheck)
    transit_v4: str = ""  # address on the transit network ("" = none)
    transit_v6: str = ""
    network_owner: str = ""  # name of the container whose namespace it joined, if any

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
    """The desired table discovery publishes: sorted entries and rejections."""

    entries: tuple[Backend, ...]
    rejections: tuple[Rejection, ...]


def build_table(containers: Iterable[ContainerView], transit_network: str) -> Table:
    """The whole desired table from the project's containers (see module docstring)."""
    entries: list[Backend] = []
    rejections: list[Rejection] = []
    claims: list[tuple[ContainerView, tuple[PortRange, ...], bool]] = []
    for c in sorted(containers, key=lambda c: c.order_key):
        raw = c.label(EXPOSE_LABEL)
        if raw is None:
            continue
        try:
            ranges = parse_expose(raw)
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
        claims.append((c, ranges, v6))

    kept: list[tuple[PortRange, str]] = []  # (range, owner name), in creation order
    for c, ranges, v6 in claims:
        for pr in ranges:
            held = next(((k, name) for k, name in kept if k.overlaps(pr)), None)
            if held is not None:
                rejections.append(Rejection(
                    container=c.name,
                    reason=(f"{pr} of container {c.name} conflicts with {held[0]} of container "
                            f"{held[1]}, created earlier, which keeps it"),
                    kind="conflict",
                ))
                continue
            kept.append((pr, c.name))
            if not c.healthy:
                continue
            if c.transit_v4:
                entries.append(Backend(4, pr.proto, pr.first, pr.last, c.transit_v4, c.name,
                                       c.service))
            if v6 and c.transit_v6:
                entries.append(Backend(6, pr.proto, pr.first, pr.last, c.transit_v6, c.name,
                                       c.service))
    return Table(tuple(sorted(entries, key=_entry_key)), tuple(sorted(
        rejections, key=lambda r: (r.container, r.kind, r.reason))))


def _entry_key(b: Backend) -> tuple[int, str, int, int, str]:
    return (b.family, b.proto, b.first, b.last, b.address)


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
