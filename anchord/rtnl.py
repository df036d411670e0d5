"""Links, addresses and routes of one network namespace, over rtnetlink.

Owns the encoding and decoding of the rtnetlink messages the dhcp worker needs (the socket
and the framing are ``anchord.netlink``'s):

- links: dump (of this namespace, or of another one through its id), get by index, look up
  by name, add a macvlan child (mode, parent index, MAC, the parent's namespace id), set up,
  delete;
- addresses: dump per family and interface, add or replace with valid/preferred lifetimes
  (``IFA_CACHEINFO``), delete;
- routes: dump one table per family, replace, delete.

It decides nothing: which link, address or route, and when, is the caller's business. The
requests ask what pyroute2's asked for the same calls before this module (compared with
strace; only the attributes' order differs, an explicit ``RTA_TABLE`` equal to the header's
table, and no ``RTA_PRIORITY`` 0 for an IPv4 route without a metric: 0 matches any), so the
kernel does the same: an IPv4 address gets ``IFA_LOCAL`` beside
``IFA_ADDRESS``, a route delete matches on what it is given and scope universe.

Every failure is ``anchord.netlink.NetlinkError`` with the kernel's errno (EEXIST, ENODEV,
ESRCH, EADDRNOTAVAIL, ...), an ``OSError``.

Why not pyroute2: importing it costs ~22 MB of RSS in the dhcp worker, which asks the kernel
a dozen kinds of question; the network-anchor's footprint target (issue 14) has no room for it.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from anchord.netlink import (
    DEFAULT_TIMEOUT,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NetlinkError,
    NetlinkSocket,
    attr,
    attrs,
)

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

# linux/if_link.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_OPERSTATE, IFLA_LINKINFO = 16, 18
IFLA_LINK_NETNSID, IFLA_TARGET_NETNSID = 37, 46
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_MACVLAN_MODE = 1
MACVLAN_MODE_PRIVATE, MACVLAN_MODE_VEPA, MACVLAN_MODE_BRIDGE = 1, 2, 4
MACVLAN_MODE_PASSTHRU, MACVLAN_MODE_SOURCE = 8, 16
MACVLAN_MODES = {MACVLAN_MODE_PRIVATE: "private", MACVLAN_MODE_VEPA: "vepa",
                 MACVLAN_MODE_BRIDGE: "bridge", MACVLAN_MODE_PASSTHRU: "passthru",
                 MACVLAN_MODE_SOURCE: "source"}
# RFC 2863 operational states, as `ip link` names them (linux/if.h IF_OPER_*).
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

# linux/if.h
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000

# linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO, IFA_FLAGS = 1, 2, 6, 8
INFINITY_LIFE_TIME = 0xFFFFFFFF

# linux/rtnetlink.h, routes
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
MAIN_TABLE = 254
RT_TABLE_COMPAT = 252  # the header's 8-bit table field for a table id above 255
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RTPROT_STATIC = 4

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type,
#                                      flags
CACHEINFO = struct.Struct("=IIII")  # preferred, valid, created, updated
_U32 = struct.Struct("=I")
_S32 = struct.Struct("=i")


@dataclass(frozen=True)
class Link:
    """One interface as the kernel reports it."""

    index: int
    name: str
    flags: int  # IFF_*
    address: str  # the link-layer address, "aa:bb:..." lower case; "" if it has none
    operstate: str  # one of OPERSTATES
    mtu: int
    kind: str | None = None  # IFLA_INFO_KIND ("macvlan", "veth", ...); None for a plain device
    macvlan_mode: int | None = None  # a macvlan's MACVLAN_MODE_*
    link: int | None = None  # IFLA_LINK: the parent's (or peer's) index
    link_netnsid: int | None = None  # the namespace of ``link``, when not this one


@dataclass(frozen=True)
class Address:
    """One address of an interface as the kernel reports it."""

    index: int
    family: int
    address: str  # IFA_ADDRESS (the peer's on a point-to-point link, as `ip` shows it)
    prefixlen: int
    flags: int  # IFA_F_*, the 32-bit IFA_FLAGS when present, else the header's 8 bits
    scope: int
    valid: int  # seconds left, INFINITY_LIFE_TIME for forever; 0 without IFA_CACHEINFO
    preferred: int


@dataclass(frozen=True)
class Route:
    """One route as the kernel reports it (multipath next hops are not decoded)."""

    family: int
    dst: str | None  # None for a default route
    dst_len: int
    table: int
    protocol: int
    scope: int
    type: int
    gateway: str | None
    oif: int | None
    priority: int | None  # the metric; None when the kernel reports none (IPv4's 0)


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _mac(value: bytes) -> str:
    return ":".join(f"{b:02x}" for b in value)


def _str(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(found: dict[int, bytes], key: int) -> int | None:
    value = found.get(key)
    return _U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None


def _s32(found: dict[int, bytes], key: int) -> int | None:
    value = found.get(key)
    return _S32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None


def _ip(family: int, value: bytes | None) -> str | None:
    return socket.inet_ntop(family, value) if value else None


def decode_link(payload: bytes) -> Link:
    """An RTM_NEWLINK message's payload; NetlinkError(EBADMSG) if it is too short."""
    if len(payload) < IFINFOMSG.size:
        raise NetlinkError(errno.EBADMSG, f"link message of {len(payload)} bytes")
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    found = attrs(payload[IFINFOMSG.size:])
    kind = mode = None
    if IFLA_LINKINFO in found:
        info = attrs(found[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _str(info[IFLA_INFO_KIND])
        if kind == "macvlan" and IFLA_INFO_DATA in info:
            mode = _u32(attrs(info[IFLA_INFO_DATA]), IFLA_MACVLAN_MODE)
    operstate = (found.get(IFLA_OPERSTATE) or b"\0")[0]
    return Link(
        index=index, name=_str(found.get(IFLA_IFNAME, b"")), flags=flags,
        address=_mac(found.get(IFLA_ADDRESS, b"")),
        operstate=OPERSTATES[operstate] if operstate < len(OPERSTATES) else str(operstate),
        mtu=_u32(found, IFLA_MTU) or 0, kind=kind, macvlan_mode=mode,
        link=_u32(found, IFLA_LINK), link_netnsid=_s32(found, IFLA_LINK_NETNSID))


def decode_address(payload: bytes) -> Address:
    """An RTM_NEWADDR message's payload; NetlinkError(EBADMSG) if it is too short."""
    if len(payload) < IFADDRMSG.size:
        raise NetlinkError(errno.EBADMSG, f"address message of {len(payload)} bytes")
    family, prefixlen, flags, scope, index = IFADDRMSG.unpack_from(payload)
    found = attrs(payload[IFADDRMSG.size:])
    # IFA_FLAGS carries the 32-bit flags (e.g. IFA_F_NOPREFIXROUTE); the header has 8 bits.
    full = _u32(found, IFA_FLAGS)
    valid = preferred = 0
    info = found.get(IFA_CACHEINFO)
    if info is not None and len(info) >= CACHEINFO.size:
        preferred, valid, _, _ = CACHEINFO.unpack_from(info)
    return Address(index=index, family=family,
                   address=_ip(family, found.get(IFA_ADDRESS, found.get(IFA_LOCAL))) or "",
                   prefixlen=prefixlen, flags=flags if full is None else full, scope=scope,
                   valid=valid, preferred=preferred)


def decode_route(payload: bytes) -> Route:
    """An RTM_NEWROUTE message's payload; NetlinkError(EBADMSG) if it is too short."""
    if len(payload) < RTMSG.size:
        raise NetlinkError(errno.EBADMSG, f"route message of {len(payload)} bytes")
    family, dst_len, _, _, table, proto, scope, kind, _ = RTMSG.unpack_from(payload)
    found = attrs(payload[RTMSG.size:])
    full_table = _u32(found, RTA_TABLE)  # the header's table field is only 8 bits
    return Route(family=family, dst=_ip(family, found.get(RTA_DST)), dst_len=dst_len,
                 table=table if full_table is None else full_table, protocol=proto,
                 scope=scope, type=kind, gateway=_ip(family, found.get(RTA_GATEWAY)),
                 oif=_u32(found, RTA_OIF), priority=_u32(found, RTA_PRIORITY))


class Rtnl:
    """An rtnetlink socket in the current network namespace (the thread's, when it is
    created); close it when done. Not thread-safe: one request at a time."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._nl = NetlinkSocket(socket.NETLINK_ROUTE, timeout=timeout)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- links ------------------------------------------------------------------------

    def links(self, target_nsid: int | None = None) -> list[Link]:
        """Every link of this namespace, or of the one this namespace knows as
        ``target_nsid`` (needs only CAP_NET_ADMIN here: no setns)."""
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        if target_nsid is not None:
            body += attr(IFLA_TARGET_NETNSID, _S32.pack(target_nsid))
        return [decode_link(m.payload) for m in self._nl.request(RTM_GETLINK, NLM_F_DUMP, body)
                if m.type == RTM_NEWLINK]

    def link(self, index: int) -> Link:
        """The link ``index``; NetlinkError(ENODEV) if there is none."""
        return self._one_link(IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    def link_by_name(self, name: str) -> Link:
        """The link called ``name``; NetlinkError(ENODEV) if there is none."""
        return self._one_link(IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                              + attr(IFLA_IFNAME, name.encode() + b"\0"))

    def _one_link(self, body: bytes) -> Link:
        for msg in self._nl.request(RTM_GETLINK, 0, body):
            if msg.type == RTM_NEWLINK:
                return decode_link(msg.payload)
        raise NetlinkError(errno.ENODEV)

    def lookup(self, name: str) -> int:
        """The index of the link ``name``; 0 if there is none, or on any failure (a name
        the kernel refuses, e.g. longer than IFNAMSIZ, or no answer): as pyroute2's
        ``link_lookup`` did, so that the callers' "missing, retry later" covers it."""
        try:
            return self.link_by_name(name).index
        except NetlinkError:
            return 0

    def add_macvlan(self, name: str, parent: int, mac: str, mode: int = MACVLAN_MODE_BRIDGE,
                    parent_nsid: int | None = None) -> None:
        """Create the macvlan ``name`` on the link ``parent`` (of the namespace this one
        knows as ``parent_nsid``, if given) with MAC ``mac``, down. EEXIST if ``name`` is
        taken."""
        info = (attr(IFLA_INFO_KIND, b"macvlan")
                + attr(IFLA_INFO_DATA, attr(IFLA_MACVLAN_MODE, _U32.pack(mode))))
        body = (IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                + attr(IFLA_IFNAME, name.encode() + b"\0")
                + attr(IFLA_LINK, _U32.pack(parent))
                + attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))))
        if parent_nsid is not None:
            body += attr(IFLA_LINK_NETNSID, _S32.pack(parent_nsid))
        body += attr(IFLA_LINKINFO, info)
        self._nl.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        """``ip link set up``: IFF_UP on, every other flag as it is."""
        self._nl.request(RTM_NEWLINK, NLM_F_ACK,
                         IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))

    def delete_link(self, index: int) -> None:
        """Delete the link ``index`` (ENODEV if it is gone)."""
        self._nl.request(RTM_DELLINK, NLM_F_ACK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    # --- addresses --------------------------------------------------------------------

    def addresses(self, family: int = socket.AF_UNSPEC, index: int = 0) -> list[Address]:
        """The addresses of ``family`` (AF_UNSPEC: both) on the link ``index`` (0: every
        link)."""
        # The kernel filters a dump by index only under strict checking; filter here.
        body = IFADDRMSG.pack(family, 0, 0, 0, 0)
        found = [decode_address(m.payload)
                 for m in self._nl.request(RTM_GETADDR, NLM_F_DUMP, body)
                 if m.type == RTM_NEWADDR]
        return [a for a in found if not index or a.index == index]

    def add_address(self, index: int, address: str, prefixlen: int, replace: bool = False,
                    valid: int | None = None, preferred: int | None = None) -> None:
        """Add ``address/prefixlen`` to the link ``index`` (EEXIST if it is there), or with
        ``replace`` add or update it. Lifetimes in seconds; one of them given means the
        other is forever, neither means both are."""
        flags = NLM_F_ACK | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
        body = _address_body(index, address, prefixlen)
        if valid is not None or preferred is not None:
            body += attr(IFA_CACHEINFO, CACHEINFO.pack(
                INFINITY_LIFE_TIME if preferred is None else preferred,
                INFINITY_LIFE_TIME if valid is None else valid, 0, 0))
        self._nl.request(RTM_NEWADDR, flags, body)

    def delete_address(self, index: int, address: str, prefixlen: int) -> None:
        """Remove ``address/prefixlen`` from the link ``index`` (EADDRNOTAVAIL if it is not
        there)."""
        self._nl.request(RTM_DELADDR, NLM_F_ACK, _address_body(index, address, prefixlen))

    # --- routes -----------------------------------------------------------------------

    def routes(self, family: int, table: int = MAIN_TABLE) -> list[Route]:
        """The routes of ``family`` in ``table``."""
        body = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        found = [decode_route(m.payload)
                 for m in self._nl.request(RTM_GETROUTE, NLM_F_DUMP, body)
                 if m.type == RTM_NEWROUTE]
        # Without strict checking the kernel dumps every table: filter here.
        return [r for r in found if r.table == table and r.family == family]

    def replace_route(self, family: int, *, dst: str | None = None, dst_len: int = 0,
                      gateway: str | None = None, oif: int | None = None,
                      proto: int = RTPROT_STATIC, priority: int | None = None,
                      table: int = MAIN_TABLE) -> None:
        """Add or replace the unicast route to ``dst/dst_len`` (default: the default route)
        with the metric ``priority`` (None: the kernel's default, 0 for IPv4, 1024 for
        IPv6). ENETUNREACH when the gateway is on no connected network."""
        body = RTMSG.pack(family, dst_len, 0, 0, _header_table(table), proto,
                          RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        body += _route_attrs(family, dst, gateway, oif, priority, table)
        self._nl.request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body)

    def delete_route(self, family: int, *, dst: str | None = None, dst_len: int = 0,
                     gateway: str | None = None, oif: int | None = None,
                     priority: int | None = None, table: int = MAIN_TABLE) -> None:
        """Delete the route to ``dst/dst_len`` in ``table`` that matches what is given (a
        missing gateway, oif or priority matches any); ESRCH if none does. Like pyroute2 and
        unlike ``ip route del``, the scope asked is "universe": an IPv4 route of scope link
        (``default dev X`` without a gateway) does not match."""
        body = RTMSG.pack(family, dst_len, 0, 0, _header_table(table), 0, RT_SCOPE_UNIVERSE,
                          0, 0)
        body += _route_attrs(family, dst, gateway, oif, priority, table)
        self._nl.request(RTM_DELROUTE, NLM_F_ACK, body)


def _header_table(table: int) -> int:
    """The rtmsg's 8-bit table field; RTA_TABLE carries the full id."""
    return RT_TABLE_COMPAT if table > 255 else table


def _address_body(index: int, address: str, prefixlen: int) -> bytes:
    family = family_of(address)
    packed = socket.inet_pton(family, address)
    body = IFADDRMSG.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += attr(IFA_ADDRESS, packed)
    if family == socket.AF_INET:
        # As `ip addr` sends it: IPv4 keys an address by IFA_LOCAL (IFA_ADDRESS is the peer
        # of a point-to-point link); IPv6 takes IFA_ADDRESS alone.
        body += attr(IFA_LOCAL, packed)
    return body


def _route_attrs(family: int, dst: str | None, gateway: str | None, oif: int | None,
                 priority: int | None, table: int) -> bytes:
    out = attr(RTA_TABLE, _U32.pack(table))
    if dst is not None:
        out += attr(RTA_DST, socket.inet_pton(family, dst))
    if gateway is not None:
        out += attr(RTA_GATEWAY, socket.inet_pton(family, gateway))
    if oif is not None:
        out += attr(RTA_OIF, _U32.pack(oif))
    if priority is not None:
        out += attr(RTA_PRIORITY, _U32.pack(priority))
    return out
