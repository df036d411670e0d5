"""The macvlan child on the LAN: create it, adopt it, replace it, follow its parent.

Owns the external interface's existence and shape: a macvlan child in bridge
mode of the parent with the project's MAC, up, with the IPv6 sysctls SLAAC
needs. A child left by a previous worker is adopted as is when its shape is
right (a restart must not disturb traffic) and replaced when it is not. The
parent may be missing or down: ``ensure`` reports it and the caller retries
with backoff. Also resolves a parent given as a Compose network name through
the MACs of the ``NetworkMap`` the discovery worker publishes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from anchord.dhcp import hostns
from anchord.netlink import NetlinkError
from anchord.rtnl import IFF_LOWER_UP, IFF_UP, MACVLAN_MODE_BRIDGE, MACVLAN_MODES, Rtnl
from bus.events import NetworkMap

log = logging.getLogger(__name__)

# SLAAC on the child even when the container forwards (accept_ra=2), with the
# EUI-64 host part (addr_gen_mode=0) so the v6 address is as stable as the MAC.
V6_SYSCTLS = (("disable_ipv6", "0"), ("addr_gen_mode", "0"), ("accept_ra", "2"),
              ("autoconf", "1"), ("accept_dad", "1"))


HELD_DOWN = "held down until the LAN filter is in place (nat-writer)"


@dataclass(frozen=True)
class LinkStatus:
    """What ``ensure`` found or made."""

    parent: str  # the resolved parent interface ("" if unresolved)
    index: int = 0  # the child's ifindex, 0 if there is no child
    up: bool = False  # the child is up with carrier (the parent is up)
    created: bool = False  # the child was (re)created by this call: its addresses are gone
    problem: str = ""  # why there is no usable child, for logs and status


def resolve_parent(rt: Rtnl, name: str, child: str, network_map: NetworkMap | None) -> str:
    """The interface to use as parent: ``name`` itself if it exists, else the
    interface whose MAC the NetworkMap gives for the Compose network ``name``.
    ``/path/to/netns:ifname`` names an interface of another namespace (F-6d)."""
    if hostns.split_parent(name) is not None or rt.lookup(name):
        return name
    if network_map is None:
        return ""
    macs = {a.mac.lower() for a in network_map.networks
            if name in (a.network, a.alias) or a.network.endswith(f"_{name}")}
    if not macs:
        return ""
    for link in rt.links():
        if link.name == child or link.name == "lo":
            continue
        if link.kind == "macvlan":
            continue
        if link.address in macs:
            return link.name
    return ""


class ChildLink:
    """The macvlan child ``name`` with MAC ``mac``."""

    def __init__(self, rt: Rtnl, name: str, mac: str) -> None:
        self.rt = rt
        self.name = name
        self.mac = mac.lower()

    def _lookup(self, ifname: str) -> int:
        return self.rt.lookup(ifname)

    def _shape_problem(self, index: int, parent_index: int, parent_nsid: int | None) -> str:
        """Why the existing child is not ours as it should be ("" when it is)."""
        link = self.rt.link(index)
        if link.kind != "macvlan":
            return f"kind {link.kind}"
        if link.macvlan_mode != MACVLAN_MODE_BRIDGE:
            return f"mode {MACVLAN_MODES.get(link.macvlan_mode or 0, link.macvlan_mode)}"
        if link.link_netnsid != parent_nsid:
            return f"parent namespace id {link.link_netnsid}"
        if link.link != parent_index:
            return f"parent index {link.link}"
        if link.address != self.mac:
            return f"mac {link.address}"
        return ""

    def ensure(self, parent: str, bring_up: bool = True) -> LinkStatus:
        """Make the child exist with the right shape and be up; never raises on netlink.

        With ``bring_up`` false a child that is down stays down (a new one is made down): no
        address, no ARP, no SLAAC until the caller knows the LAN filter is in place. A child
        that is up already (adopted after a worker restart) is never taken down.
        """
        try:
            return self._ensure(parent, bring_up)
        except NetlinkError as exc:
            return LinkStatus(parent, problem=f"netlink error {exc.errno}: {exc.strerror}")
        except OSError as exc:
            return LinkStatus(parent, problem=f"{type(exc).__name__}: {exc}")

    def _ensure(self, parent: str, bring_up: bool) -> LinkStatus:
        if not parent:
            return LinkStatus(parent, problem="parent not resolved yet")
        parent_nsid: int | None = None
        foreign = hostns.split_parent(parent)
        if foreign is not None:
            # The parent lives in another namespace (a real host's interface): find
            # its index there through our id for that namespace.
            path, ifname = foreign
            try:
                parent_nsid = hostns.netnsid(path)
                found = [link for link in hostns.foreign_links(parent_nsid)
                         if link.name == ifname]
            except OSError as exc:
                return LinkStatus(parent, problem=f"host namespace {path}: {exc}")
            parent_index = found[0].index if found else 0
        else:
            parent_index = self._lookup(parent)
        if not parent_index:
            return LinkStatus(parent, problem=f"parent {parent} missing")
        created = False
        index = self._lookup(self.name)
        if index:
            problem = self._shape_problem(index, parent_index, parent_nsid)
            if problem:
                log.warning("replacing a child of the wrong shape",
                            extra={"fields": {"iface": self.name, "problem": problem}})
                self.rt.delete_link(index)
                index = 0
        if not index:
            self.rt.add_macvlan(self.name, parent_index, self.mac, MACVLAN_MODE_BRIDGE,
                                 parent_nsid=parent_nsid)
            index = self._lookup(self.name)
            if not index:
                return LinkStatus(parent, problem="child vanished after creation")
            created = True
            log.info("macvlan child created", extra={"fields": {
                "iface": self.name, "parent": parent, "mac": self.mac}})
        self._sysctls()
        link = self.rt.link(index)
        if not link.flags & IFF_UP:
            if not bring_up:
                return LinkStatus(parent, index=index, created=created,
                                  problem=HELD_DOWN)
            self.rt.set_up(index)
            link = self.rt.link(index)
        # Carrier alone is not enough: until the kernel's linkwatch has activated the
        # queueing discipline (operstate UP), frames sent are silently dropped, and a
        # lost first DISCOVER costs a whole 4 s retransmission.
        up = bool(link.flags & IFF_LOWER_UP) and link.operstate in ("UP", "UNKNOWN")
        return LinkStatus(parent, index=index, up=up, created=created,
                          problem="" if up else f"parent {parent} down")

    def _sysctls(self) -> None:
        base = Path("/proc/sys/net/ipv6/conf") / self.name
        for key, value in V6_SYSCTLS:
            path = base / key
            try:
                if path.read_text().strip() != value:
                    path.write_text(value)
            except OSError as exc:
                # /proc/sys is read-only in a container: the child then keeps the defaults it
                # inherited, which the Compose file must set (README, "sysctls"). v4 still
                # works (F-1), but say so loudly once: without them there is no IPv6 at all.
                if not path.exists():
                    log.debug("no ipv6 in this namespace", extra={"fields": {"key": key}})
                    return
                if getattr(self, "_sysctl_warned", False):
                    return
                self._sysctl_warned = True
                log.warning("cannot set an IPv6 sysctl on the external interface; set "
                            "net.ipv6.conf.default.* in the Compose file (see README)",
                            extra={"fields": {"key": key, "wanted": value,
                                              "error": str(exc)}})
                return

    def remove(self) -> None:
        index = self._lookup(self.name)
        if index:
            try:
                self.rt.delete_link(index)
                # The Go anchord's words, kept for its users' scripts.
                log.info("macvlan removed", extra={"fields": {"iface": self.name}})
            except NetlinkError as exc:
                log.warning("could not remove the child", extra={"fields": {
                    "iface": self.name, "error": str(exc)}})
