"""A VLAN parent in another network namespace (a real host's ``eth0.42``, F-6d).

Owns the two netlink questions pyroute2 0.9's high-level API cannot ask: the
id our namespace gives to another one (RTM_GETNSID / RTM_NEWNSID on a handle of
it, e.g. a read-only bind mount of ``/proc/1/ns/net``), and the links of that
namespace (RTM_GETLINK dump with IFLA_TARGET_NETNSID). Needs CAP_NET_ADMIN only:
no setns, so no CAP_SYS_ADMIN. The macvlan child is then created in our own
namespace with IFLA_LINK = the parent's index there and IFLA_LINK_NETNSID.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NETNSA_NSID, NETNSA_FD = 1, 3
IFLA_IFNAME, IFLA_TARGET_NETNSID = 3, 46
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000


@dataclass(frozen=True)
class ForeignLink:
    index: int
    name: str
    flags: int


def split_parent(parent: str) -> tuple[str, str] | None:
    """``/path/to/netns:ifname`` -> (path, ifname); None for a plain interface name."""
    if not parent.startswith("/") or ":" not in parent:
        return None
    path, _, ifname = parent.rpartition(":")
    return (path, ifname) if path and ifname else None


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\x00" * ((4 - length % 4) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i + 4 <= len(data):
        length, kind = struct.unpack("=HH", data[i:i + 4])
        if length < 4:
            break
        out[kind & 0x3FFF] = data[i + 4:i + length]
        i += (length + 3) & ~3
    return out


class _Netlink:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.settimeout(2.0)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> _Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; the (type, payload) of every reply message until done/ack."""
        self.seq += 1
        header = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags,
                             self.seq, 0)
        self.sock.send(header + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            i = 0
            while i + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack("=IHHII", data[i:i + 16])
                if length < 16:
                    return replies
                payload = data[i + 16:i + length]
                i += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack("=i", payload[:4])
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return replies
                replies.append((kind, payload))
                if not flags & (NLM_F_DUMP | NLM_F_ACK):
                    return replies


def netnsid(path: str) -> int:
    """Our id for the namespace at ``path``; asks the kernel to assign one if there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _Netlink() as nl:
            body = struct.pack("=Bxxx", socket.AF_UNSPEC) + _attr(NETNSA_FD, struct.pack("=I", fd))
            nsid = _get_nsid(nl.request(RTM_GETNSID, 0, body))
            if nsid < 0:
                nl.request(RTM_NEWNSID, NLM_F_ACK, struct.pack("=Bxxx", socket.AF_UNSPEC)
                           + _attr(NETNSA_NSID, struct.pack("=i", -1))
                           + _attr(NETNSA_FD, struct.pack("=I", fd)))
                nsid = _get_nsid(nl.request(RTM_GETNSID, 0, body))
            if nsid < 0:
                raise OSError(f"no namespace id for {path}")
            return nsid
    finally:
        os.close(fd)


def _get_nsid(replies: list[tuple[int, bytes]]) -> int:
    for kind, payload in replies:
        if kind == RTM_NEWNSID:
            value = _attrs(payload[4:]).get(NETNSA_NSID)
            if value is not None and len(value) >= 4:
                return int(struct.unpack("=i", value[:4])[0])
    return -1


def foreign_links(nsid: int) -> list[ForeignLink]:
    """The links of the namespace our namespace knows as ``nsid``."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(
        IFLA_TARGET_NETNSID, struct.pack("=i", nsid))
    out = []
    with _Netlink() as nl:
        for kind, payload in nl.request(RTM_GETLINK, NLM_F_DUMP, body):
            if kind != RTM_NEWLINK or len(payload) < 16:
                continue
            _family, _type, index, flags, _change = struct.unpack("=BxHiII", payload[:16])
            name = _attrs(payload[16:]).get(IFLA_IFNAME, b"").rstrip(b"\x00").decode(
                "utf-8", "replace")
            out.append(ForeignLink(index, name, flags))
    return out
