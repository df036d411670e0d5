"""A VLAN parent in another network namespace (a real host's ``eth0.42``, F-6d).

Owns the two netlink questions about another namespace: the id our namespace
gives to it (RTM_GETNSID / RTM_NEWNSID on a handle of it, e.g. a read-only bind
mount of ``/proc/1/ns/net``), and the links of that namespace (``anchord.rtnl``'s
RTM_GETLINK dump with IFLA_TARGET_NETNSID). Needs CAP_NET_ADMIN only: no setns,
so no CAP_SYS_ADMIN. The macvlan child is then created in our own namespace with
IFLA_LINK = the parent's index there and IFLA_LINK_NETNSID.
"""

from __future__ import annotations

import os
import socket
import struct

from anchord.netlink import NLM_F_ACK, Message, NetlinkSocket, attr, attrs
from anchord.rtnl import Link, Rtnl

RTM_NEWNSID, RTM_GETNSID = 88, 90
NETNSA_NSID, NETNSA_FD = 1, 3


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


def foreign_links(nsid: int) -> list[Link]:
    """The links of the namespace our namespace knows as ``nsid``."""
    with Rtnl() as rt:
        return rt.links(target_nsid=nsid)
