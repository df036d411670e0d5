"""The child's IPv6 addresses as the kernel holds them, read through pyroute2.

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

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

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


def addresses(ipr: IPRoute, index: int) -> list[Addr6]:
    """Every IPv6 address of interface ``index`` ([] if it has none or is gone)."""
    if not index:
        return []
    try:
        found = ipr.get_addr(index=index, family=socket.AF_INET6)
    except NetlinkError:
        return []
    out = []
    for a in found:
        # IFA_FLAGS carries the 32-bit flags; the header's 8-bit field is the fallback.
        flags = a.get_attr("IFA_FLAGS")
        flags = int(a["flags"] if flags is None else flags)
        info = a.get_attr("IFA_CACHEINFO") or {}
        out.append(Addr6(str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]), flags,
                         int(a["scope"]), int(info.get("ifa_valid", 0)),
                         int(info.get("ifa_preferred", 0))))
    return out


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
