"""Addresses and default routes on the child, through ``anchord.rtnl``.

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

from anchord.netlink import NetlinkError
from anchord.rtnl import Rtnl

log = logging.getLogger(__name__)

RTPROT_DHCP = 16
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_PERMANENT = 0x80


def _lft(seconds: float) -> int:
    return max(1, min(math.ceil(seconds), 0xFFFFFFFE))


def apply_address(rt: Rtnl, index: int, address: str, prefixlen: int, valid: float,
                  preferred: float, router: str = "") -> bool:
    """Add or refresh ``address/prefixlen`` with its lifetimes, and the default route."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        rt.add_address(index, address, prefixlen, replace=True, valid=_lft(valid),
                       preferred=_lft(min(preferred, valid)))
        if router:
            # The default route (no destination) of the main table, at the kernel's default
            # metric for the family.
            rt.replace_route(family, gateway=router, oif=index, proto=RTPROT_DHCP)
        return True
    except NetlinkError as exc:
        log.warning("could not apply the address", extra={"fields": {
            "address": address, "error": str(exc)}})
        return False


def remove_address(rt: Rtnl, index: int, address: str, prefixlen: int,
                   router: str = "") -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if router:
        # gone with the address already, or never installed
        with contextlib.suppress(NetlinkError):
            rt.delete_route(family, gateway=router, oif=index)
    with contextlib.suppress(NetlinkError):
        rt.delete_address(index, address, prefixlen)


def has_address(rt: Rtnl, index: int, address: str) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return any(a.address == address for a in rt.addresses(family, index))
    except NetlinkError:
        return False


def global_v6(rt: Rtnl, index: int) -> list[tuple[str, int, int, int, int]]:
    """Usable global IPv6 addresses: (address, prefixlen, flags, valid, preferred)."""
    try:
        addrs = rt.addresses(socket.AF_INET6, index)
    except NetlinkError:
        return []
    return [(a.address, a.prefixlen, a.flags, a.valid, a.preferred) for a in addrs
            if a.scope == 0 and not a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)]
