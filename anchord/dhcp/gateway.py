"""The anchord container's routing outside its macvlan child, through ``anchord.rtnl``.

Owns two things the dhcp worker converges on at every link check (both idempotent, so a
restarted worker adopts what the last one did):

- Docker's default routes. Docker gives a container on a non-internal network a default route
  via that network's gateway. In anchord's namespace such a route would carry the project's
  egress past the child (unmasqueraded, or into the host's NAT) until a lease replaced it, and
  the IPv6 one is never replaced (the LAN's RA route sits beside it with the same metric). Every
  default route of the main table that does not leave through the child is deleted: the
  child's leases bring the only ones.
- The transit network's gateway. On a transit network whose bridge carries no address of the
  host's (``com.docker.network.bridge.inhibit_ipv4``), the gateway that Docker gives every
  container as its default route belongs to nobody. anchord adds it (as a /32) to its own
  interface on that network, so every container there routes through anchord from its first
  packet, before any service-anchor has replaced its route; while anchord is gone, nothing
  answers for it and the project has no way out at all (it fails closed).

- A VLAN parent inside the container (a LAN simulated on a Docker network): Docker gave it an
  address and a connected route to the LAN subnet, which the kernel prefers over the child's,
  so the project's traffic to LAN-local hosts would leave through it unmasqueraded, and LAN
  hosts could route into the project via it. Its addresses are removed: it is only the
  child's lower device.

Never raises on a netlink error: interfaces come and go, and the caller converges again on its
next tick.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

from anchord.netlink import NetlinkError
from anchord.rtnl import MAIN_TABLE, RTN_UNICAST, Rtnl

log = logging.getLogger(__name__)


def drop_foreign_defaults(rt: Rtnl, child_index: int) -> list[str]:
    """Delete the main table's default routes that do not leave through the child; returns
    what was deleted (``via <gateway> oif <index>``) for the log."""
    dropped = []
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            routes = rt.routes(family, MAIN_TABLE)
        except NetlinkError:
            continue
        for route in routes:
            if route.dst_len != 0 or route.type != RTN_UNICAST:
                continue
            oif, gateway = route.oif, route.gateway
            if oif == child_index and child_index:
                continue
            if oif is None and gateway is None:
                continue  # multipath or otherwise unusual: not Docker's, not ours to judge
            try:
                # Matched on its metric too (a missing one is IPv4's 0, which matches any).
                rt.delete_route(family, gateway=gateway, oif=oif, priority=route.priority,
                                table=MAIN_TABLE)
            except NetlinkError as exc:
                log.warning("could not delete a default route", extra={"fields": {
                    "gateway": gateway, "oif": oif, "error": str(exc)}})
                continue
            dropped.append(f"via {gateway} oif {oif}")
    return dropped


def claim_gateways(rt: Rtnl, claims: Iterable[tuple[str, str]], child: str) -> list[str]:
    """Put each ``(mac, gateway)`` gateway on the interface with that MAC (not the child);
    returns the gateways newly added."""
    wanted = {mac.lower(): gateway for mac, gateway in claims if gateway}
    if not wanted:
        return []
    added = []
    try:
        links = rt.links()
    except NetlinkError:
        return []
    for link in links:
        name = link.name
        if name in (child, "lo") or link.address not in wanted:
            continue
        gateway = wanted[link.address]
        index = link.index
        try:
            present = any(a.address == gateway
                          for a in rt.addresses(socket.AF_INET, index))
            if present:
                continue
            rt.add_address(index, gateway, 32)
        except NetlinkError as exc:
            log.warning("could not take the transit network's gateway", extra={"fields": {
                "gateway": gateway, "iface": name, "error": str(exc)}})
            continue
        added.append(f"{gateway} on {name}")
    return added


def strip_parent(rt: Rtnl, parent: str) -> list[str]:
    """Remove every address (v4 and v6) of the local interface ``parent``; returns them."""
    index = rt.lookup(parent)
    if not index:
        return []
    removed = []
    try:
        addrs = rt.addresses(index=index)
    except NetlinkError:
        return []
    for addr in addrs:
        address = addr.address
        try:
            rt.delete_address(index, address, addr.prefixlen)
        except NetlinkError as exc:
            log.warning("could not remove an address of the VLAN parent", extra={"fields": {
                "iface": parent, "address": address, "error": str(exc)}})
            continue
        removed.append(f"{address}/{addr.prefixlen}")
    return removed
