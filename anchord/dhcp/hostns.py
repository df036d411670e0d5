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

from anchord.netlink import NLM_F_ACK, NLM_F_DUMP, Message, NetlinkSocket, attr, attrs

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWNSID, RTM_GETNSID = 88, 90
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


def netnsid(path: str) -> int:
    """Our id for the namespace at ``path``; asks the kernel to assign one if there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with NetlinkSocket(socket.NETLINK_ROUTE) as nl:
            body = struct.pack("=Bxxx", socket.AF_UNSPEC) + attr(NETNSA_FD, struct.pack("=I", fd))
            nsid = _get_nsid(nl.request(RTM_GETNSID, 0, body))
            if nsid < 0:
                nl.request(RTM_NEWNSID, NLM_F_ACK, struct.pack("=Bxxx", socket.AF_UNSPEC)
                           + attr(NETNSA_NSID, struct.pack("=i", -1))
                           + attr(NETNSA_FD, struct.pack("=I", fd)))
                nsid = _get_nsid(nl.request(RTM_GETNSID, 0, body))
            if nsid < 0:
                raise OSError(f"no namespace id for {path}")
            return nsid
    finally:
        os.close(fd)


def _get_nsid(replies: list[Message]) -> int:
    for kind, _flags, payload in replies:
        if kind == RTM_NEWNSID:
            value = attrs(payload[4:]).get(NETNSA_NSID)
            if value is not None and len(value) >= 4:
                return int(struct.unpack("=i", value[:4])[0])
    return -1


def foreign_links(nsid: int) -> list[ForeignLink]:
    """The links of the namespace our namespace knows as ``nsid``."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr(
        IFLA_TARGET_NETNSID, struct.pack("=i", nsid))
    out = []
    with NetlinkSocket(socket.NETLINK_ROUTE) as nl:
        for kind, _flags, payload in nl.request(RTM_GETLINK, NLM_F_DUMP, body):
            if kind != RTM_NEWLINK or len(payload) < 16:
                continue
            _family, _type, index, flags, _change = struct.unpack("=BxHiII", payload[:16])
            name = attrs(payload[16:]).get(IFLA_IFNAME, b"").rstrip(b"\x00").decode(
                "utf-8", "replace")
            out.append(ForeignLink(index, name, flags))
    return out
