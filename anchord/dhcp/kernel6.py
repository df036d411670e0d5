"""The child's IPv6 addresses as the kernel holds them, read through ``anchord.rtnl``.

Owns the reading side of IPv6 on the child: every address with its scope,
flags (tentative, DAD failed, deprecated, temporary, permanent) and remaining
lifetimes, so that the DHCPv6 client takes its link-local source address and
the outcome of Duplicate Address Detection from the kernel, and the SLAAC
choice sees what the kernel made of the last Router Advertisement. Never
raises on a netlink error: the link may vanish at any moment.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from anchord.netlink import NetlinkError
from anchord.rtnl import Rtnl

# linux/if_addr.h
IFA_F_TEMPORARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_HOMEADDRESS = 0x10
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253


@dataclass(frozen=True)
class Addr6:
    address: str
    prefixlen: int
    flags: int
    scope: int
    valid: int  # seconds left; 0xFFFFFFFF is forever
    preferred: int

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dad_failed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)

    @property
    def usable(self) -> bool:
        """DAD is over and passed: the address may be a source."""
        return not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def addresses(rt: Rtnl, index: int) -> list[Addr6]:
    """Every IPv6 address of interface ``index`` ([] if it has none or is gone)."""
    if not index:
        return []
    try:
        found = rt.addresses(socket.AF_INET6, index)
    except NetlinkError:
        return []
    # The flags are the 32-bit IFA_FLAGS, the header's 8 bits without it (anchord.rtnl).
    return [Addr6(a.address, a.prefixlen, a.flags, a.scope, a.valid, a.preferred)
            for a in found]


def link_local(found: list[Addr6], tentative_ok: bool = False) -> str:
    """The interface's link-local address once DAD has passed ("" until then); with
    ``tentative_ok`` also one still in DAD (never one whose DAD failed)."""
    for a in found:
        if a.scope == RT_SCOPE_LINK and a.address.startswith("fe80:") and not a.dad_failed \
                and (a.usable or tentative_ok):
            return a.address
    return ""


def find(found: list[Addr6], address: str) -> Addr6 | None:
    for a in found:
        if a.address == address:
            return a
    return None
