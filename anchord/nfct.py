"""ctnetlink messages: the requests ``anchord.conntrack`` sends and the entries a dump returns.

Owns the conntrack part of netfilter netlink (``linux/netfilter/nfnetlink_conntrack.h``), and
only as much of it as anchord uses:

- requests: a dump (``IPCTNL_MSG_CT_GET`` with ``NLM_F_DUMP``), optionally filtered by the
  kernel on one direction's tuple (``CTA_TUPLE_ORIG``/``CTA_TUPLE_REPLY`` plus ``CTA_FILTER``,
  kernel >= 5.8), and the deletion of one entry by its original tuple;
- answers: each dumped entry's two tuples (``CTA_TUPLE_IP``: IPv4/IPv6 source and destination;
  ``CTA_TUPLE_PROTO``: protocol number and ports). The rest of an entry (status, counters,
  timeouts, NAT details, zone, mark) is framed-checked and skipped: nothing here needs it.

Strict: a decoded entry is either whole or a :class:`anchord.netlink.NetlinkError` with
``EBADMSG`` (an attribute that overruns its parent, an address or port of the wrong size, a
tuple without addresses or protocol, an entry without both tuples, a message of another type or
family). The socket, the framing of messages and the answer loop are ``anchord.netlink``'s.

No pyroute2: the conntrack-flusher imports this, and pyroute2's package import alone (ndb,
ipdb, asyncio) cost its process 11 MB RSS and ~80 ms per start; its message classes also
decoded a dumped entry in ~0.35 ms, this in ~15 µs (docs/nat.md).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from anchord.netlink import Message, NetlinkError, attr, attrs

# linux/netlink.h, linux/netfilter/nfnetlink.h
NETLINK_NETFILTER = 12
NLA_F_NESTED = 0x8000
NFNETLINK_V0 = 0
NFNL_SUBSYS_CTNETLINK = 1

# linux/netfilter/nfnetlink_conntrack.h
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_FILTER = 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
# Which fields of the filter tuple the kernel compares (CTA_FILTER_FLAG_*).
FILTER_IP_SRC, FILTER_IP_DST = 1 << 0, 1 << 1
FILTER_PROTO_NUM, FILTER_PROTO_SRC_PORT, FILTER_PROTO_DST_PORT = 1 << 3, 1 << 4, 1 << 5

_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian; always 0 here)
_U8 = struct.Struct("=B")
_U16_BE = struct.Struct("!H")
_U32 = struct.Struct("=I")
# family -> (source attribute, destination attribute, address size)
_ADDRESS: dict[int, tuple[int, int, int]] = {
    socket.AF_INET: (CTA_IP_V4_SRC, CTA_IP_V4_DST, 4),
    socket.AF_INET6: (CTA_IP_V6_SRC, CTA_IP_V6_DST, 16),
}
_ENTRY_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
DIRECTIONS = {"orig": CTA_TUPLE_ORIG, "reply": CTA_TUPLE_REPLY}


def _malformed(detail: str) -> NetlinkError:
    return NetlinkError(errno.EBADMSG, f"malformed ctnetlink entry: {detail}")


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a flow; ``None`` is "not given" (in a filter: any)."""

    saddr: str | None = None
    daddr: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None

    def encode(self, family: int) -> bytes:
        """The contents of a ``CTA_TUPLE_*`` attribute: the fields given, nothing else."""
        src, dst, _ = _ADDRESS[family]
        ip = b""
        if self.saddr is not None:
            ip += attr(src, socket.inet_pton(family, self.saddr))
        if self.daddr is not None:
            ip += attr(dst, socket.inet_pton(family, self.daddr))
        proto = b""
        if self.proto is not None:
            proto += attr(CTA_PROTO_NUM, _U8.pack(self.proto))
        if self.sport is not None:
            proto += attr(CTA_PROTO_SRC_PORT, _U16_BE.pack(self.sport))
        if self.dport is not None:
            proto += attr(CTA_PROTO_DST_PORT, _U16_BE.pack(self.dport))
        return ((attr(CTA_TUPLE_IP, ip) if ip else b"")
                + (attr(CTA_TUPLE_PROTO, proto) if proto else b""))

    def filter_flags(self) -> int:
        """``CTA_FILTER_*_FLAGS`` for this tuple: the kernel compares exactly the fields given."""
        flags = 0
        for value, flag in ((self.saddr, FILTER_IP_SRC), (self.daddr, FILTER_IP_DST),
                            (self.proto, FILTER_PROTO_NUM), (self.sport, FILTER_PROTO_SRC_PORT),
                            (self.dport, FILTER_PROTO_DST_PORT)):
            if value is not None:
                flags |= flag
        return flags

    def matches(self, other: Tuple) -> bool:
        """Every field given here equals ``other``'s (the kernel's filter, in userspace)."""
        return all(mine is None or mine == theirs for mine, theirs in (
            (self.saddr, other.saddr), (self.daddr, other.daddr), (self.proto, other.proto),
            (self.sport, other.sport), (self.dport, other.dport)))


@dataclass(frozen=True, slots=True)
class Entry:
    """One dumped conntrack entry."""

    family: int
    orig: Tuple
    reply: Tuple
    # The kernel's own CTA_TUPLE_ORIG contents: sent back as is, it names exactly this entry
    # (ICMP ids, other protocols' fields, a directional zone included) for a deletion.
    orig_raw: bytes


def _header(family: int) -> bytes:
    return _NFGENMSG.pack(family, NFNETLINK_V0, 0)


def dump_request(family: int, direction: str, match: Tuple) -> bytes:
    """The body of a dump of ``family``'s entries, filtered by the kernel when ``match`` gives
    any field: entries whose ``direction`` ("orig" or "reply") tuple has those fields."""
    body = _header(family)
    if match.filter_flags():
        flags_attr = CTA_FILTER_ORIG_FLAGS if direction == "orig" else CTA_FILTER_REPLY_FLAGS
        body += attr(DIRECTIONS[direction], match.encode(family))
        body += attr(CTA_FILTER | NLA_F_NESTED,
                     attr(flags_attr, _U32.pack(match.filter_flags())))
    return body


def delete_request(entry: Entry) -> bytes:
    """The body of a deletion of ``entry``, by its original tuple as the kernel gave it."""
    return _header(entry.family) + attr(CTA_TUPLE_ORIG, entry.orig_raw)


def message_type(msg_type: int) -> int:
    """The netlink message type of a ctnetlink request type (``IPCTNL_MSG_CT_*``)."""
    return (NFNL_SUBSYS_CTNETLINK << 8) | msg_type


def decode_entry(msg: Message, family: int) -> Entry:
    """The entry in one message of a dump of ``family``; NetlinkError(EBADMSG) if malformed."""
    if msg.type != _ENTRY_TYPE:
        raise _malformed(f"message type {msg.type:#x}, not a conntrack entry")
    if len(msg.payload) < _NFGENMSG.size:
        raise _malformed(f"{len(msg.payload)} bytes, shorter than its header")
    got = msg.payload[0]
    if got != family:
        raise _malformed(f"family {got} in a dump of family {family}")
    top = attrs(msg.payload[_NFGENMSG.size:])
    orig_raw = top.get(CTA_TUPLE_ORIG)
    reply_raw = top.get(CTA_TUPLE_REPLY)
    if orig_raw is None or reply_raw is None:
        raise _malformed("an entry without both tuples")
    return Entry(family, decode_tuple(orig_raw, family), decode_tuple(reply_raw, family),
                 orig_raw)


def decode_tuple(data: bytes, family: int) -> Tuple:
    """A ``CTA_TUPLE_*`` attribute's contents (addresses and protocol required, ports not)."""
    found = attrs(data)
    ip, proto = found.get(CTA_TUPLE_IP), found.get(CTA_TUPLE_PROTO)
    if ip is None or proto is None:
        raise _malformed("a tuple without addresses or protocol")
    src, dst, size = _ADDRESS[family]
    addresses = attrs(ip)
    saddr, daddr = addresses.get(src), addresses.get(dst)
    if saddr is None or daddr is None or len(saddr) != size or len(daddr) != size:
        raise _malformed(f"a tuple without two {size}-byte addresses")
    fields = attrs(proto)
    num = fields.get(CTA_PROTO_NUM)
    if num is None or len(num) != _U8.size:
        raise _malformed("a tuple without its protocol number")
    return Tuple(socket.inet_ntop(family, saddr), socket.inet_ntop(family, daddr), num[0],
                 _port(fields.get(CTA_PROTO_SRC_PORT)), _port(fields.get(CTA_PROTO_DST_PORT)))


def _port(value: bytes | None) -> int | None:
    if value is None:
        return None  # a protocol without ports (ICMP, GRE)
    if len(value) != _U16_BE.size:
        raise _malformed(f"a port of {len(value)} bytes")
    return int(_U16_BE.unpack(value)[0])
