"""Addresses and default routes on the child, through pyroute2.

Owns what the DHCP clients put into the kernel: the leased address with its
valid/preferred lifetimes (so the kernel itself drops it at expiry even if the
worker is gone) and the default route via the leased router. Never raises on a
netlink error: the link may vanish at any moment and the caller converges on
its next tick.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

RTPROT_DHCP = 16
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_PERMANENT = 0x80


def _lft(seconds: float) -> int:
    return max(1, min(math.ceil(seconds), 0xFFFFFFFE))


def apply_address(ipr: IPRoute, index: int, address: str, prefixlen: int, valid: float,
                  preferred: float, router: str = "") -> bool:
    """Add or refresh ``address/prefixlen`` with its lifetimes, and the default route."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        ipr.addr("replace", index=index, address=address, prefixlen=prefixlen,
                 valid_lft=_lft(valid), preferred_lft=_lft(min(preferred, valid)))
        if router:
            dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
            ipr.route("replace", dst=dst, gateway=router, oif=index, proto=RTPROT_DHCP,
                      family=family)
        return True
    except NetlinkError as exc:
        log.warning("could not apply the address", extra={"fields": {
            "address": address, "error": str(exc)}})
        return False


def remove_address(ipr: IPRoute, index: int, address: str, prefixlen: int,
                   router: str = "") -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if router:
        dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
        # gone with the address already, or never installed
        with contextlib.suppress(NetlinkError):
            ipr.route("del", dst=dst, gateway=router, oif=index, family=family)
    with contextlib.suppress(NetlinkError):
        ipr.addr("del", index=index, address=address, prefixlen=prefixlen)


def has_address(ipr: IPRoute, index: int, address: str) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return any(a.get_attr("IFA_ADDRESS") == address
                   for a in ipr.get_addr(index=index, family=family))
    except NetlinkError:
        return False


def global_v6(ipr: IPRoute, index: int) -> list[tuple[str, int, int, int, int]]:
    """Usable global IPv6 addresses: (address, prefixlen, flags, valid, preferred)."""
    out = []
    try:
        addrs = ipr.get_addr(index=index, family=socket.AF_INET6)
    except NetlinkError:
        return []
    for a in addrs:
        if a["scope"] != 0:
            continue
        flags = a.get_attr("IFA_FLAGS") or a["flags"]
        if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            continue
        info = a.get_attr("IFA_CACHEINFO") or {}
        out.append((str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]), int(flags),
                    int(info.get("ifa_valid", 0)), int(info.get("ifa_preferred", 0))))
    return out
