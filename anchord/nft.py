"""The project's nftables state: the only module in anchord that speaks nftables.

It owns the tables ``anchord_v4`` (ip) and ``anchord_v6`` (ip6) and everything in
them: per proto a plain map (single ports) and an interval map (port ranges) from
destination port to backend address, the DNAT chains that consult both, the
masquerade of egress and of hairpinned flows, and the LAN filter (F-9).

Rules never name the project address (DHCP may change it at any time): "traffic
for the project address" is ``fib daddr . iif type local`` on the external
interface, i.e. any address that is local *on that interface*, so a new lease needs
no rule change at all.

Talks to the kernel through libnftables in-process (ctypes on ``libnftables.so.1``,
one context kept open): a changed element costs ~0.1 ms instead of the ~4 ms of
spawning ``nft -f`` (docs/nat.md has the measurement). Every change is one
buffer, hence one atomic netlink transaction. The applied state is kept in memory;
the ruleset is listed only once, when adopting tables left by a previous instance.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import operator
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anchord.spans import Spans
from bus.events import Backend, BackendGroup, EntryCount, StaleBackend, group_entries

log = logging.getLogger(__name__)

PROTOS = ("tcp", "udp")
FAMILIES = (4, 6)
# family -> (nft family, table name, address type)
TABLES: dict[int, tuple[str, str, str]] = {
    4: ("ip", "anchord_v4", "ipv4_addr"),
    6: ("ip6", "anchord_v6", "ipv6_addr"),
}

# (family, proto, first port, last port) -> backend address (normalised text)
Key = tuple[int, str, int, int]
Desired = dict[Key, str]

_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_HANDLE = 1 << 3
_NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    """libnftables refused a command (the message is nft's own error text)."""


class Nft:
    """One libnftables context, kept open for the life of the worker.

    The context's netlink socket belongs to the network namespace the thread was
    in when the first command ran; callers that switch namespaces (tests) must
    create and use it inside the namespace.
    """

    def __init__(self, library: str = "libnftables.so.1") -> None:
        lib = ctypes.CDLL(library, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        # Without buffering, libnftables prints to our stdout/stderr.
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._flags = lib.nft_ctx_output_get_flags(self._ctx)

    def run(self, commands: str, json_output: bool = False) -> str:
        """Run ``commands`` (nft syntax, one transaction); return nft's output."""
        if self._ctx is None:
            raise NftError("nftables context is closed")
        flags = self._flags | (_NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE if json_output else 0)
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with {rc}")
        return out

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


# --- pure logic: desired table, diff, stale backends -------------------------


@dataclass(frozen=True)
class Diff:
    """What one transaction must do to turn the applied table into the desired one."""

    add: dict[Key, str] = field(default_factory=dict)
    remove: dict[Key, str] = field(default_factory=dict)  # key -> old address
    change: dict[Key, tuple[str, str]] = field(default_factory=dict)  # key -> (old, new)

    def __bool__(self) -> bool:
        return bool(self.add or self.remove or self.change)


# (family, proto) -> the port ranges (first < last) of a table: the keys a port lookup
# cannot find by itself, indexed (a table may hold thousands).
Ranges = dict[tuple[int, str], Spans]


def desired_from(entries: Iterable[Backend]) -> tuple[Desired, list[str]]:
    """Normalise discovery's entries into a table; returns (table, problems).

    Discovery already resolves conflicts; this is the last line of defence so a
    bad entry can never make the whole transaction fail: an entry with a bad
    address, family or port, or one overlapping an earlier entry, is skipped and
    reported (the earlier one wins, like discovery's first-created rule).
    """
    table, problems, _ = _build(entries)
    return table, problems


def _build(entries: Iterable[Backend]) -> tuple[Desired, list[str], Ranges]:
    table: Desired = {}
    ranges: Ranges = {}
    addresses: dict[tuple[int, str], str | None] = {}
    problems: list[str] = []
    for e in entries:
        problem = _admit(e, table, ranges, addresses)
        if problem:
            problems.append(f"{problem}: {e.family}/{e.proto}/{e.first}-{e.last} -> "
                            f"{e.address} ({e.container})")
    return table, problems, ranges


def _admit(e: Backend, table: Desired, ranges: Ranges,
           addresses: dict[tuple[int, str], str | None]) -> str:
    """Add ``e`` to ``table`` (and ``ranges``) unless it is bad or overlaps; the problem if so.

    ``addresses`` caches normalised addresses: a table has thousands of entries but
    one address per container.
    """
    if e.family not in FAMILIES or e.proto not in PROTOS:
        return "bad family or proto"
    if not 1 <= e.first <= e.last <= 65535:
        return "bad port range"
    akey = (e.family, e.address)
    if akey in addresses:
        addr = addresses[akey]
    else:
        addr = addresses[akey] = _normalise(e.family, e.address)
    if addr is None:
        return "bad address (or not of this family)"
    if _overlaps(table, ranges, e.family, e.proto, e.first, e.last):
        return "overlaps an earlier entry"
    table[(e.family, e.proto, e.first, e.last)] = addr
    if e.first != e.last:
        ranges.setdefault((e.family, e.proto), Spans()).add(e.first, e.last)
    return ""


def _overlaps(table: Mapping[Key, str], ranges: Ranges, family: int, proto: str,
              first: int, last: int) -> bool:
    """Whether a key of ``table`` (whose ranges are ``ranges``) shares a port with first-last."""
    spans = ranges.get((family, proto))
    if spans is not None and spans.overlapping(first, last):
        return True
    if first == last:
        return (family, proto, first, first) in table
    return any((family, proto, p, p) in table for p in range(first, last + 1))


def _ranges_of(table: Mapping[Key, str]) -> Ranges:
    ranges: Ranges = {}
    for fam, proto, first, last in table:
        if first != last:
            ranges.setdefault((fam, proto), Spans()).add(first, last)
    return ranges


def _normalise(family: int, address: str) -> str | None:
    """Canonical text of an address of ``family``, or None.

    inet_pton/ntop rather than ipaddress: ~20x faster, which matters at 10 000
    entries per snapshot (ipaddress alone took 180 ms there).
    """
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        return socket.inet_ntop(af, socket.inet_pton(af, address))
    except (OSError, ValueError):
        return None


def diff(applied: Mapping[Key, str], desired: Mapping[Key, str],
         touched: Iterable[Key] | None = None) -> Diff:
    """The element changes from ``applied`` to ``desired``.

    ``touched``: the only keys that may differ (an incremental update knows them),
    so the cost follows the change instead of the table's size.
    """
    if touched is None:
        add = {k: v for k, v in desired.items() if k not in applied}
        remove = {k: v for k, v in applied.items() if k not in desired}
        change = {k: (applied[k], v) for k, v in desired.items()
                  if k in applied and applied[k] != v}
        return Diff(add, remove, change)
    add, remove, change = {}, {}, {}
    for k in touched:
        old, new = applied.get(k), desired.get(k)
        if old is None and new is not None:
            add[k] = new
        elif new is None and old is not None:
            remove[k] = old
        elif old is not None and new is not None and old != new:
            change[k] = (old, new)
    return Diff(add, remove, change)


def _subtract(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``span`` minus the (sorted) ``holes``, as inclusive intervals."""
    out = []
    start, end = span
    for a, b in holes:
        if b < start or a > end:
            continue
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
        if start > end:
            return out
    if start <= end:
        out.append((start, end))
    return out


def stale_backends(applied: Mapping[Key, str], desired: Mapping[Key, str],
                   touched: Iterable[Key] | None = None,
                   ranges: Ranges | None = None) -> list[StaleBackend]:
    """Backends whose flows must be flushed: the ports an address served and no longer does.

    A range that shrinks only makes the ports it lost stale; a backend that keeps
    a port keeps its flows. ``touched`` (the keys that may differ) and ``ranges``
    (those of ``desired``) make the cost follow the change, not the table.
    """
    keys = applied if touched is None else (k for k in touched if k in applied)
    gone = sorted((k, applied[k]) for k in keys if desired.get(k) != applied[k])
    if not gone:
        return []
    if ranges is None:
        ranges = _ranges_of(desired)
    out = []
    for (fam, proto, first, last), addr in gone:
        # What the same address still serves within first-last: looked up, not scanned.
        spans = ranges.get((fam, proto))
        holes = [(a, b) for a, b in (spans.overlapping(first, last) if spans else ())
                 if desired.get((fam, proto, a, b)) == addr]
        holes.extend((p, p) for p in range(first, last + 1)
                     if desired.get((fam, proto, p, p)) == addr)
        holes.sort()
        for a, b in _subtract((first, last), holes):
            out.append(StaleBackend(family=fam, proto=proto, first=a, last=b, address=addr))
    return out


def counts(table: Mapping[Key, str]) -> tuple[EntryCount, ...]:
    """Elements per family/proto (always all four, so a metric can drop to zero)."""
    n = Counter(map(_family_proto, table))  # C loop: this runs on every apply
    return tuple(EntryCount(family=f, proto=p, count=n[(f, p)])
                 for f in FAMILIES for p in PROTOS)


_family_proto = operator.itemgetter(0, 1)


def single_map(proto: str) -> str:
    """The map of single ports: ``dnat_tcp`` / ``dnat_udp``, the Go anchord's names, so that
    scripts reading the maps keep working."""
    return f"dnat_{proto}"


def range_map(proto: str) -> str:
    return f"{proto}_ranges"


# map name -> the proto its elements belong to
MAP_PROTOS = {name: proto for proto in PROTOS for name in (single_map(proto), range_map(proto))}


def _map_name(proto: str, first: int, last: int) -> str:
    # Single ports live in a plain map (O(1) updates); ranges need `flags interval`,
    # whose updates cost grows with the map's size, so they get their own map.
    return single_map(proto) if first == last else range_map(proto)


def _key_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def render_diff(d: Diff) -> str:
    """The commands of one transaction: all deletions first (ranges may be reshaped)."""
    dels: dict[tuple[int, str], list[str]] = {}
    adds: dict[tuple[int, str], list[str]] = {}
    for (fam, proto, first, last) in [*d.remove, *d.change]:
        dels.setdefault((fam, _map_name(proto, first, last)), []).append(_key_text(first, last))
    for (fam, proto, first, last), addr in [
        *d.add.items(), *((k, new) for k, (_, new) in d.change.items())
    ]:
        adds.setdefault((fam, _map_name(proto, first, last)), []).append(
            f"{_key_text(first, last)} : {addr}"
        )
    lines = []
    for verb, groups in (("delete", dels), ("add", adds)):
        for (fam, name), elems in sorted(groups.items()):
            nfam, table, _ = TABLES[fam]
            lines.append(f"{verb} element {nfam} {table} {name} {{ {', '.join(elems)} }}")
    return "\n".join(lines) + "\n"


def _q(name: str) -> str:
    return json.dumps(name)  # nft accepts a double-quoted string, escaping like JSON


def render_lan_ifaces(ext_iface: str, family: int, lan_ifaces: Iterable[str]) -> str:
    """Refill the set of LAN-facing interfaces: the child and a parent inside the container."""
    nfam, t, _ = TABLES[family]
    names = ", ".join(_q(n) for n in sorted({ext_iface, *lan_ifaces}))
    return (f"add set {nfam} {t} lan_ifaces {{ type ifname; }}\n"
            f"flush set {nfam} {t} lan_ifaces\n"
            f"add element {nfam} {t} lan_ifaces {{ {names} }}\n")


def render_skeleton(ext_iface: str, family: int, lan_ifaces: Iterable[str] = ()) -> str:
    """Create-or-refresh the table of ``family`` without touching its map elements.

    ``add`` of an existing table/map/chain is a no-op, and each chain is flushed and
    refilled in the same transaction, so a restarted nat-writer converges the rules
    (even from an older version) with no instant where a rule is missing.

    LAN-facing means the set ``lan_ifaces``: the child, and the VLAN parent when it is an
    interface of this namespace (a simulated LAN), which has an address of its own and would
    otherwise be a way in that no filter covers. Forwarding is default-deny (F-9): replies,
    DNATed inbound (from the child, or hairpinned from inside), the project's egress out of
    the child — nothing else, so anchord is never a router for the LAN.
    """
    nfam, t, addr_type = TABLES[family]
    ext = _q(ext_iface)
    v4 = family == 4
    lines = [f"add table {nfam} {t}"]
    for proto in PROTOS:
        lines.append(
            f"add map {nfam} {t} {single_map(proto)} {{ type inet_service : {addr_type}; }}")
        lines.append(
            f"add map {nfam} {t} {range_map(proto)} "
            f"{{ type inet_service : {addr_type}; flags interval; }}"
        )
    lines.append(render_lan_ifaces(ext_iface, family, lan_ifaces).rstrip("\n"))
    icmp_hygiene = [
        # Nobody on the LAN may change our routes.
        "icmp type redirect drop",
    ] if v4 else [
        "icmpv6 type nd-redirect drop",
        # Neighbour discovery and router advertisements only from the link itself (RFC 4861:
        # a router or neighbour sends them with hop limit 255; anything less was routed).
        "icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } "
        "ip6 hoplimit != 255 drop",
    ]
    chains: list[tuple[str, str, list[str]]] = [
        # Regular chains first: base chains jump to them.
        ("dnat_ports", "", [
            f"meta l4proto {proto} dnat to {proto} dport map @{name}"
            for proto in PROTOS for name in (single_map(proto), range_map(proto))
        ]),
        ("ext_in", "", [
            "ct state established,related accept",
            *icmp_hygiene,
            # DHCP replies reach the client on its packet socket before this hook; no UDP
            # socket listens, so letting them in would only draw an ICMP port unreachable
            # from the child for every unicast ACK. Dropped silently.
            "udp sport 67 udp dport 68 drop" if v4 else "udp sport 547 udp dport 546 drop",
            "meta l4proto icmp accept" if v4 else "meta l4proto ipv6-icmp accept",
            # Answer like a closed port on a real server, never a silent drop.
            "meta l4proto tcp reject with tcp reset",
            "reject",
        ]),
        ("ext_fwd", "", [
            # Redirects and off-link ND are dropped whichever way they go.
            *icmp_hygiene,
            "ct state established,related accept",
            # DNAT happens only for the LAN on the child and for hairpinned flows from
            # inside (prerouting below): both are exposed ports.
            "ct status dnat accept",
            # The project's egress: from inside, out of the child only.
            f"iifname != @lan_ifaces oifname {ext} accept",
        ]),
        ("prerouting", "type nat hook prerouting priority dstnat; policy accept;", [
            # From the LAN, to an address that is local on the external interface:
            # the project address, whatever DHCP made it.
            f"iifname {ext} fib daddr . iif type local jump dnat_ports",
            # Hairpin: from inside (never from a LAN-facing interface: that would hand the
            # LAN a masqueraded way in), to a local address that is not on the incoming
            # interface (the project address seen from the transit network).
            "iifname != @lan_ifaces fib daddr type local fib daddr . iif type != local "
            "jump dnat_ports",
        ]),
        ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", [
            f"oifname {ext} masquerade",
            # Hairpinned flows: without this the backend would answer the client
            # directly on the transit network, bypassing the reverse DNAT.
            "iifname != @lan_ifaces ct status dnat masquerade",
        ]),
        ("input", "type filter hook input priority filter; policy accept;", [
            "iifname @lan_ifaces jump ext_in",
        ]),
        ("forward", "type filter hook forward priority filter; policy drop;", [
            "jump ext_fwd",
        ]),
    ]
    for name, base, rules in chains:
        spec = f" {{ {base} }}" if base else ""
        lines.append(f"add chain {nfam} {t} {name}{spec}")
        lines.append(f"flush chain {nfam} {t} {name}")
        lines.extend(f"add rule {nfam} {t} {name} {rule}" for rule in rules)
    return "\n".join(lines) + "\n"


def _port_key(key: Any) -> tuple[int, int] | None:
    if isinstance(key, int):
        return key, key
    if isinstance(key, dict) and "range" in key:
        a, b = key["range"]
        return int(a), int(b)
    if isinstance(key, dict) and "elem" in key:  # element with attributes
        return _port_key(key["elem"].get("val"))
    return None


def parse_table_json(listing: str, family: int) -> tuple[int | None, Desired]:
    """(table handle, elements) of one ``list table`` JSON output."""
    handle = None
    table: Desired = {}
    for obj in json.loads(listing).get("nftables", []):
        if "table" in obj:
            handle = obj["table"].get("handle")
        m = obj.get("map")
        if not m:
            continue
        proto = MAP_PROTOS.get(m["name"], "")
        if not proto:
            continue
        for elem in m.get("elem", []):
            key = _port_key(elem[0])
            if key is None or not isinstance(elem[1], str):
                log.warning("ignoring unexpected map element", extra={"fields": {
                    "map": m["name"], "element": json.dumps(elem)}})
                continue
            address = ipaddress.ip_address(elem[1]).compressed
            table[(family, proto, key[0], key[1])] = address
    return handle, table


# --- the tables ----------------------------------------------------------------


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    duration: float  # seconds, diff + transaction
    added: int = 0
    removed: int = 0
    changed: int = 0
    stale: tuple[StaleBackend, ...] = ()
    counts: tuple[EntryCount, ...] = ()
    error: str = ""
    skipped: tuple[str, ...] = ()  # entries refused by desired_from


@dataclass(frozen=True)
class _Wanted:
    """A desired table, ready to diff against the applied one."""

    table: Desired
    ranges: Ranges
    problems: tuple[str, ...]
    touched: set[Key] | None  # the keys that may differ from `applied`; None: any
    groups: frozenset[BackendGroup] | None  # the groups, if the table holds every entry


class NatTables:
    """The two anchord tables of this namespace, their applied state in memory."""

    def __init__(self, ext_iface: str, nft: Nft | None = None,
                 lan_ifaces: Iterable[str] = ()) -> None:
        self.ext_iface = ext_iface
        # LAN-facing interfaces besides the child: a VLAN parent inside this namespace.
        self.lan_ifaces = tuple(sorted(set(lan_ifaces)))
        self._nft = nft
        self.applied: Desired = {}
        self.installed = False
        self._ranges: Ranges = {}  # the range keys of `applied`
        # The groups `applied` was built from, if no entry was skipped: the base of
        # the next incremental update (None: rebuild from scratch).
        self._groups: frozenset[BackendGroup] | None = None
        self._counts = counts(self.applied)  # counts(applied), kept up to date

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    def adopt(self) -> Desired:
        """Take over whatever tables exist (listing them once), then converge the rules.

        Map elements already there are kept and become the applied state, so the
        first ``apply`` after a restart only changes what really differs.
        """
        applied: Desired = {}
        unreadable: list[str] = []
        for fam, (nfam, t, _) in TABLES.items():
            try:
                listing = self.nft.run(f"list table {nfam} {t}", json_output=True)
            except NftError:
                continue  # not there yet: the skeleton below creates it
            try:
                _, elements = parse_table_json(listing, fam)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                # A listing we cannot read must not block every later update: start that
                # family's maps over (the first apply refills them, within milliseconds).
                log.warning("cannot read the existing table: its maps are refilled", extra={
                    "fields": {"table": t, "error": str(exc)[:200]}})
                unreadable.extend(f"flush map {nfam} {t} {name}\n" for name in MAP_PROTOS)
                continue
            applied.update(elements)
        adopted = len(applied)
        self.nft.run("".join(render_skeleton(self.ext_iface, fam, self.lan_ifaces)
                             for fam in FAMILIES) + "".join(unreadable))
        self.applied, self._ranges, self._groups = applied, _ranges_of(applied), None
        self._counts = counts(applied)
        self.installed = True
        log.info("nftables tables adopted", extra={"fields": {
            "elements": adopted, "ext_iface": self.ext_iface}})
        return dict(applied)

    def set_lan_ifaces(self, names: Iterable[str]) -> bool:
        """Make ``names`` (plus the child) the LAN-facing interfaces, in one transaction;
        whether the kernel has them (installed tables) after this call."""
        wanted = tuple(sorted(set(names) - {self.ext_iface}))
        if wanted == self.lan_ifaces and self.installed:
            return True
        self.lan_ifaces = wanted
        if not self.installed:
            return False  # adopt() installs them with the skeleton
        self.nft.run("".join(render_lan_ifaces(self.ext_iface, fam, wanted) for fam in FAMILIES))
        log.info("LAN-facing interfaces set", extra={"fields": {
            "interfaces": [self.ext_iface, *wanted]}})
        return True

    def apply(self, entries: Iterable[Backend]) -> ApplyResult:
        """Make the maps equal to ``entries`` in one transaction of the differing elements."""
        return self.apply_groups(group_entries(entries))

    def apply_groups(self, groups: Sequence[BackendGroup]) -> ApplyResult:
        """``apply`` for the entries as ``BackendsDesired`` carries them, in groups."""
        start = time.perf_counter()
        try:
            if not self.installed:
                self.adopt()
            want = self._desired(tuple(groups))
            for p in want.problems:
                log.warning("desired entry skipped", extra={"fields": {"problem": p}})
            d = diff(self.applied, want.table, want.touched)
            if d:
                try:
                    self.nft.run(render_diff(d))
                except NftError as exc:
                    if len(d.add) + len(d.remove) + len(d.change) <= 1:
                        raise
                    return self._apply_one_by_one(d, want, start, str(exc))
        except (NftError, OSError) as exc:
            # The transaction is atomic: nothing changed. Re-list on the next try
            # in case someone removed our tables behind our back.
            self.installed = False
            return ApplyResult(ok=False, duration=time.perf_counter() - start,
                               error=str(exc), counts=counts(self.applied))
        stale = stale_backends(self.applied, want.table, want.touched, want.ranges)
        if want.touched is None:
            self._counts = counts(want.table)
        elif d.add or d.remove:
            # Counted from the change: a count over the whole table costs ~3 ms at 10 000.
            n = {(c.family, c.proto): c.count for c in self._counts}
            for fam, proto, _, _ in d.add:
                n[(fam, proto)] += 1
            for fam, proto, _, _ in d.remove:
                n[(fam, proto)] -= 1
            self._counts = tuple(EntryCount(family=f, proto=p, count=c)
                                 for (f, p), c in n.items())
        self.applied, self._ranges, self._groups = want.table, want.ranges, want.groups
        return ApplyResult(
            ok=True,
            duration=time.perf_counter() - start,
            added=len(d.add),
            removed=len(d.remove),
            changed=len(d.change),
            stale=tuple(stale),
            counts=self._counts,
            skipped=tuple(want.problems),
        )

    def _apply_one_by_one(self, d: Diff, want: _Wanted, start: float,
                          error: str) -> ApplyResult:
        """The batch was refused (one element the kernel rejects): apply each change as a
        transaction of its own, so that one bad element cannot block every later update.
        Each refused one is reported and left as it was; the next apply tries it again.
        """
        table = dict(self.applied)
        refused: list[str] = []
        steps: list[tuple[Key, Diff]] = [
            *((k, Diff(remove={k: old})) for k, old in d.remove.items()),
            *((k, Diff(change={k: pair})) for k, pair in d.change.items()),
            *((k, Diff(add={k: new})) for k, new in d.add.items()),
        ]
        for key, step in steps:
            try:
                self.nft.run(render_diff(step))
            except NftError as exc:
                refused.append(f"{key[0]}/{key[1]}/{key[2]}-{key[3]}: {exc}")
                continue
            if step.remove:
                table.pop(key, None)
            else:
                table[key] = want.table[key]
        if len(refused) == len(steps):
            # Nothing went in: the tables themselves are the problem; re-list next time.
            self.installed = False
            return ApplyResult(ok=False, duration=time.perf_counter() - start, error=error,
                               counts=counts(self.applied))
        log.warning("nft refused the batch: applied change by change", extra={"fields": {
            "error": error, "refused": refused}})
        stale = stale_backends(self.applied, table, None, _ranges_of(table))
        self.applied, self._ranges, self._groups = table, _ranges_of(table), None
        self._counts = counts(table)
        return ApplyResult(
            ok=True, duration=time.perf_counter() - start,
            added=len(d.add), removed=len(d.remove), changed=len(d.change),
            stale=tuple(stale), counts=self._counts,
            skipped=(*want.problems, *(f"refused by nft: {r}" for r in refused)))

    def _desired(self, groups: tuple[BackendGroup, ...]) -> _Wanted:
        """The table ``groups`` describe, built from what changed when that is exact.

        Discovery resends the whole table for every change, and at 10 000 entries
        normalising and checking all of them was most of the apply time. When the
        applied table holds every entry of the groups it was built from, the new
        table is the old one minus the entries of the groups that went plus those of
        the groups that came (entries in both cancel out), each checked against the
        table as it stands: the same result as ``desired_from`` whenever that would
        skip nothing. Any problem (or a big change) and the whole table is rebuilt by
        the exact, order-aware rules.
        """
        current = frozenset(groups)
        base = self._groups
        if base is not None and len(current) == len(groups):
            gone = {e for g in base - current for e in g.backends()}
            arrived = [e for g in current - base for e in g.backends()]
            common = gone.intersection(arrived)
            gone -= common
            came = [e for e in arrived if e not in common]
            small = len(gone) + len(came) <= max(64, len(self.applied) // 8)
            # A repeated entry is an overlap desired_from reports: only the full path.
            if small and len(set(arrived)) == len(arrived):
                table = dict(self.applied)
                ranges = {fp: spans.copy() for fp, spans in self._ranges.items()}
                touched = set()
                for e in gone:
                    key = (e.family, e.proto, e.first, e.last)
                    del table[key]
                    if e.first != e.last:
                        ranges[(e.family, e.proto)].remove(e.first, e.last)
                    touched.add(key)
                addresses: dict[tuple[int, str], str | None] = {}
                if not any(_admit(e, table, ranges, addresses) for e in came):
                    touched.update((e.family, e.proto, e.first, e.last) for e in came)
                    return _Wanted(table, ranges, (), touched, current)
        table, problems, ranges = _build(e for g in groups for e in g.backends())
        exact = not problems and len(current) == len(groups)
        return _Wanted(table, ranges, tuple(problems), None, current if exact else None)

    def delete(self) -> None:
        """Remove both tables (container shutdown only)."""
        for nfam, t, _ in TABLES.values():
            try:
                self.nft.run(f"delete table {nfam} {t}")
            except NftError as exc:
                if "No such file or directory" not in str(exc):
                    raise
        self.installed = False
        self.applied, self._ranges, self._groups = {}, {}, None
        self._counts = counts(self.applied)
        log.info("nftables tables deleted")

    def close(self) -> None:
        if self._nft is not None:
            self._nft.close()
            self._nft = None
