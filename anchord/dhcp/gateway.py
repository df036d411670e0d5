"""The anchord container's routing outside its macvlan child, through pyroute2.

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

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTN_UNICAST = 1


def drop_foreign_defaults(ipr: IPRoute, child_index: int) -> list[str]:
    """Delete the main table's default routes that do not leave through the child; returns
    what was deleted (``via <gateway> oif <index>``) for the log."""
    dropped = []
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            routes = ipr.get_routes(family=family, table=MAIN_TABLE)
        except NetlinkError:
            continue
        for route in routes:
            if route["dst_len"] != 0 or route["type"] != RTN_UNICAST:
                continue
            oif = route.get_attr("RTA_OIF")
            gateway = route.get_attr("RTA_GATEWAY")
            if oif == child_index and child_index:
                continue
            if oif is None and gateway is None:
                continue  # multipath or otherwise unusual: not Docker's, not ours to judge
            spec: dict[str, object] = {
                "family": family, "dst_len": 0, "table": MAIN_TABLE,
                "priority": route.get_attr("RTA_PRIORITY") or 0}
            if oif is not None:
                spec["oif"] = oif
            if gateway is not None:
                spec["gateway"] = gateway
            try:
                ipr.route("del", **spec)
            except NetlinkError as exc:
                log.warning("could not delete a default route", extra={"fields": {
                    "gateway": gateway, "oif": oif, "error": str(exc)}})
                continue
            dropped.append(f"via {gateway} oif {oif}")
    return dropped


def claim_gateways(ipr: IPRoute, claims: Iterable[tuple[str, str]], child: str) -> list[str]:
    """Put each ``(mac, gateway)`` gateway on the interface with that MAC (not the child);
    returns the gateways newly added."""
    wanted = {mac.lower(): gateway for mac, gateway in claims if gateway}
    if not wanted:
        return []
    added = []
    try:
        links = ipr.get_links()
    except NetlinkError:
        return []
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        mac = str(link.get_attr("IFLA_ADDRESS") or "").lower()
        if name in (child, "lo") or mac not in wanted:
            continue
        gateway = wanted[mac]
        index = int(link["index"])
        try:
            present = any(a.get_attr("IFA_ADDRESS") == gateway
                          for a in ipr.get_addr(index=index, family=socket.AF_INET))
            if present:
                continue
            ipr.addr("add", index=index, address=gateway, prefixlen=32)
        except NetlinkError as exc:
            log.warning("could not take the transit network's gateway", extra={"fields": {
                "gateway": gateway, "iface": name, "error": str(exc)}})
            continue
        added.append(f"{gateway} on {name}")
    return added


def strip_parent(ipr: IPRoute, parent: str) -> list[str]:
    """Remove every address (v4 and v6) of the local interface ``parent``; returns them."""
    found = ipr.link_lookup(ifname=parent)
    if not found:
        return []
    index = int(found[0])
    removed = []
    try:
        addrs = list(ipr.get_addr(index=index))
    except NetlinkError:
        return []
    for addr in addrs:
        address = str(addr.get_attr("IFA_ADDRESS"))
        try:
            ipr.addr("del", index=index, address=address, prefixlen=int(addr["prefixlen"]))
        except NetlinkError as exc:
            log.warning("could not remove an address of the VLAN parent", extra={"fields": {
                "iface": parent, "address": address, "error": str(exc)}})
            continue
        removed.append(f"{address}/{addr['prefixlen']}")
    return removed
