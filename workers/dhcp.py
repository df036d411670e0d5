"""The dhcp worker: the external identity of the project on the LAN.

Owns the macvlan child, the DHCPv4 and DHCPv6 clients, SLAAC observation, the
addresses and default routes on the child, and the lease file; publishes
``LinkChanged`` and ``LeaseChanged``/``LeaseLost`` as owned state. One loop, no
threads: the raw sockets are watched by the bus client's poll, and the
protocol state machines say when they next need a tick. IPv4 and IPv6 are
separate machines, so neither ever waits for the other.

A stop is a restart unless the container is shutting down: then (and only
then) the leases are released and the child removed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol

from anchord.config import NetworkAnchorConfig
from anchord.dhcp import gateway, kernel, kernel6
from anchord.dhcp.leasefile import LeaseFile, StoredLease
from anchord.dhcp.link import ChildLink, LinkStatus, resolve_parent
from anchord.dhcp.rawio import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Insn, RawSocket, arp_filter
from anchord.dhcp.timers import Backoff
from anchord.dhcp.v4 import Dhcp4Client
from anchord.dhcp.v6 import V6Client
from anchord.lifecycle import release_requested
from anchord.rtnl import Rtnl
from bus.events import (
    Condition,
    Count,
    DhcpCounters,
    Event,
    Lease,
    LeaseChanged,
    LeaseLost,
    LinkChanged,
    NetworkMap,
    WorkerStatus,
)

log = logging.getLogger(__name__)

SUBSCRIBE: tuple[type[Event], ...] = (NetworkMap, WorkerStatus)
# The worker whose `nat_tables` condition says the LAN filter is in place (F-9: no address on
# the child before that).
FILTER_OWNER = "nat-writer"
LINK_CHECK = 1.0  # seconds between link checks while all is well
LINK_BACKOFF_MAX = 2.0  # a returning parent gets its child back within seconds (F-5)
MAX_WAIT = 0.5


class Bus(Protocol):
    ready_fds: set[int]

    def publish(self, event: Event) -> None: ...
    def set_state(self, provider: object) -> None: ...
    def state_changed(self) -> None: ...
    def set_conditions(self, provider: object) -> None: ...
    def poll(self, timeout: float) -> list[Event]: ...
    def watch(self, fd: int) -> None: ...
    def unwatch(self, fd: int) -> None: ...


class Life(Protocol):
    stop_requested: bool

    def shutting_down(self) -> bool: ...


def to_bus_lease(lease: StoredLease, hostname: str, source: str) -> Lease:
    return Lease(
        family=lease.family, address=f"{lease.address}/{lease.prefixlen}", gateway=lease.router,
        server=lease.server, lease_time=lease.lease_time, t1=lease.t1, t2=lease.t2,
        expiry=lease.expiry, source=source, hostname=hostname)


class DhcpWorker:
    """The worker's state and loop; ``run`` below is the entry point."""

    def __init__(self, config: NetworkAnchorConfig, bus: Bus, life: Life) -> None:
        self.config = config
        self.bus = bus
        self.life = life
        self.rt = Rtnl()
        self.child = ChildLink(self.rt, config.ext_iface, config.ext_mac)
        self.leasefile = LeaseFile(config.state_dir, config.ext_iface, config.ext_mac)
        self.network_map: NetworkMap | None = None
        self.status = LinkStatus(parent="", problem="not checked yet")
        self.link_backoff = Backoff(initial=0.25, cap=LINK_BACKOFF_MAX, jitter=0.1)
        self.link_next = 0.0
        self.sockets: dict[int, RawSocket] = {}  # by ethertype
        self.arp_watching: tuple[str, bool] | None = None  # what the ARP socket's filter names
        self.started = False
        self.filter_ready = False  # the nat-writer reported its tables (the LAN filter) in place
        self.stored = self.leasefile.load()
        self.v4 = Dhcp4Client(self, config.ext_mac, config.dhcp_hostname,
                              config.dhcp_backoff_max, time.monotonic, time.time)
        self.v6 = V6Client(self, config.ext_mac, config.dhcp_hostname,
                           config.dhcp_backoff_max, time.monotonic, time.time,
                           random.Random())
        # What the bus gets: the current lease per family, or the last loss.
        self.previous: dict[int, str] = {}
        self.lost: dict[int, LeaseLost] = {}

    # --- V4Host / V6Host ------------------------------------------------------

    def send(self, frame: bytes) -> None:
        sock = self.sockets.get(ETH_P_IP)
        if sock is not None and self.status.up:
            sock.send(frame)

    def apply(self, lease: StoredLease, remaining: float) -> None:
        if self.status.index:
            preferred = remaining if lease.family == 4 else max(
                0.0, lease.preferred - (time.time() - lease.acquired))
            kernel.apply_address(self.rt, self.status.index, lease.address, lease.prefixlen,
                                 remaining, preferred, lease.router)

    def apply6(self, lease: StoredLease, valid: float, preferred: float) -> bool:
        """V6Host: False when the kernel refuses the address (EACCES with IPv6 off)."""
        if not self.status.index:
            return False
        return kernel.apply_address(self.rt, self.status.index, lease.address,
                                    lease.prefixlen, valid, preferred)

    def addresses6(self) -> list[kernel6.Addr6]:
        return kernel6.addresses(self.rt, self.status.index)

    def remove(self, lease: StoredLease) -> None:
        if self.status.index:
            kernel.remove_address(self.rt, self.status.index, lease.address, lease.prefixlen,
                                  lease.router)

    def changed(self, lease: StoredLease | None, previous: StoredLease | None,
                reason: str) -> None:
        family = lease.family if lease is not None else (previous.family if previous else 4)
        if lease is not None:
            self.lost.pop(family, None)
            if previous is not None and previous.address != lease.address:
                self.previous[family] = f"{previous.address}/{previous.prefixlen}"
            elif previous is None:
                self.previous.pop(family, None)
        elif previous is not None:
            self.previous.pop(family, None)
            self.lost[family] = LeaseLost(family=family,
                                          address=f"{previous.address}/{previous.prefixlen}",
                                          reason=reason)
        self._save()
        self.bus.state_changed()

    def _save(self) -> None:
        leases: dict[int, StoredLease] = {}
        if self.v4.lease is not None:
            leases[4] = self.v4.lease
        if self.v6.lease is not None:
            leases[6] = self.v6.lease
        try:
            self.leasefile.save(leases)
        except OSError as exc:
            log.warning("could not write the lease file", extra={"fields": {
                "path": str(self.leasefile.path), "error": str(exc)}})

    # --- bus ------------------------------------------------------------------

    def owned_state(self) -> Sequence[Event]:
        events: list[Event] = [LinkChanged(interface=self.config.ext_iface,
                                           mac=self.config.ext_mac, up=self.status.up,
                                           parent=self.status.parent)]
        hostname = self.config.dhcp_hostname
        if self.v4.lease is not None:
            events.append(LeaseChanged(lease=to_bus_lease(self.v4.lease, hostname, "dhcp"),
                                       previous=self.previous.get(4, "")))
        elif 4 in self.lost:
            events.append(self.lost[4])
        v6 = self.v6.current()
        if v6 is not None:
            lease, source = v6
            events.append(LeaseChanged(lease=to_bus_lease(lease, hostname, source),
                                       previous=self.previous.get(6, "")))
        elif 6 in self.lost:
            events.append(self.lost[6])
        for family, client in ((4, self.v4), (6, self.v6)):
            events.append(DhcpCounters(
                family=family,
                acquisitions=tuple(Count(k, v) for k, v in sorted(client.acquisitions.items())),
                dropped=sum(client.dropped.values())))
        return events

    def conditions(self) -> Sequence[Condition]:
        # Informational: a missing lease never blocks readiness (F-18), so ok is
        # always True and the detail says what the client is doing.
        out = []
        for family, lease, state in ((4, self.v4.lease, self.v4.state.value),
                                     (6, self.v6.lease, self.v6.describe())):
            if family == 6:
                current = self.v6.current()
                lease = current[0] if current else None
            if lease is not None:
                left = max(0.0, lease.expiry - time.time())
                detail = f"{lease.address}/{lease.prefixlen}, {left:.0f} s left ({state})"
            else:
                detail = f"none yet ({state})"
            out.append(Condition(key=f"lease_v{family}", ok=True, detail=detail))
        return out

    # --- link -----------------------------------------------------------------

    def _check_link(self, now: float) -> None:
        parent = resolve_parent(self.rt, self.config.vlan_parent, self.config.ext_iface,
                                self.network_map)
        old = self.status
        status = self.child.ensure(parent, bring_up=self.filter_ready)
        self.status = status
        self._converge_routing(status.index, status.parent)
        if status.index and (status.created or status.index != old.index or not self.sockets):
            self._open_sockets()
        elif not status.index and self.sockets:
            self._close_sockets()
        if status.up:
            self.link_backoff.reset()
            self.link_next = now + LINK_CHECK
        else:
            self.link_next = now + self.link_backoff.next()
        changed = (status.index, status.up, status.parent) != (old.index, old.up, old.parent)
        if changed:
            level = logging.INFO if status.up else logging.WARNING
            log.log(level, "link %s", "up" if status.up else status.problem,
                    extra={"fields": {"iface": self.config.ext_iface, "parent": status.parent,
                                      "up": status.up, "problem": status.problem}})
        if status.up and not self.started:
            self.started = True
            self.v4.start(self.stored.get(4))
            self.v6.start(self.stored.get(6))
        elif status.up and (status.created or not old.up):
            # New child or carrier back: the addresses may be gone and the LAN
            # may have changed while we were away; confirm the leases.
            why = "link re-created" if status.created else "link up again"
            self.v4.restart(why)
            self.v6.restart(why)
        if changed:
            self.bus.state_changed()

    def _converge_routing(self, child_index: int, parent: str) -> None:
        """Only the child routes out of this namespace (anchord.dhcp.gateway says why)."""
        if parent and ":" not in parent and "/" not in parent:
            removed = gateway.strip_parent(self.rt, parent)
            if removed:
                log.info("removed the VLAN parent's own addresses: it is only the child's "
                         "lower device", extra={"fields": {"iface": parent,
                                                           "addresses": removed}})
        for route in gateway.drop_foreign_defaults(self.rt, child_index):
            log.info("removed a default route that bypasses the child", extra={"fields": {
                "route": route}})
        claims = [(a.mac, a.gateway) for a in self.network_map.networks] \
            if self.network_map is not None else []
        for added in gateway.claim_gateways(self.rt, claims, self.config.ext_iface):
            log.info("took the transit network's gateway: its containers route through anchord",
                     extra={"fields": {"gateway": added}})

    def _open_sockets(self) -> None:
        self._close_sockets()
        try:
            for ethertype in (ETH_P_IP, ETH_P_IPV6):
                self._open(ethertype)
        except OSError as exc:
            log.warning("could not open raw sockets", extra={"fields": {"error": str(exc)}})
            self._close_sockets()

    def _open(self, ethertype: int, program: tuple[Insn, ...] | None = None) -> None:
        sock = RawSocket(self.config.ext_iface, ethertype, program)
        self.sockets[ethertype] = sock
        self.bus.watch(sock.fileno())

    def _sync_arp(self) -> None:
        """The ARP socket exists only while an IPv4 address is probed or held (RFC 5227 2.1
        and 2.4), its kernel filter naming that address: the LAN's other ARP traffic never
        wakes this worker."""
        want = self.v4.arp_watch() if ETH_P_IP in self.sockets else None
        if want == self.arp_watching and (want is None) == (ETH_P_ARP not in self.sockets):
            return
        sock = self.sockets.pop(ETH_P_ARP, None)
        if sock is not None:
            self.bus.unwatch(sock.fileno())
            sock.close()
        self.arp_watching = None
        if want is not None:
            try:
                self._open(ETH_P_ARP, arp_filter(*want))
                self.arp_watching = want
            except OSError as exc:
                log.warning("could not open the ARP socket", extra={"fields": {
                    "error": str(exc)}})

    def _close_sockets(self) -> None:
        for sock in self.sockets.values():
            self.bus.unwatch(sock.fileno())
            sock.close()
        self.sockets.clear()
        self.arp_watching = None

    # --- loop -----------------------------------------------------------------

    def _receive(self, ready: set[int]) -> None:
        for ethertype, sock in list(self.sockets.items()):
            if sock.fileno() not in ready:
                continue
            for frame in sock.receive():
                if ethertype == ETH_P_IP:
                    if _is_dhcp4_reply(frame):
                        self.v4.on_frame(frame)
                elif ethertype == ETH_P_ARP:
                    self.v4.on_arp(frame)
                else:
                    self.v6.on_frame(frame)

    def step(self) -> None:
        now = time.monotonic()
        if now >= self.link_next:
            self._check_link(now)
        if self.started:
            self.v4.tick()
            self.v6.tick()
            self.v6.observe()
            self._sync_arp()
        wakeups = [self.link_next]
        if self.started:
            wakeups += [self.v4.wakeup, self.v6.wakeup]
        timeout = min(MAX_WAIT, max(0.0, min(wakeups) - time.monotonic()))
        for event in self.bus.poll(timeout):
            if isinstance(event, NetworkMap):
                if event != self.network_map:
                    self.network_map = event
                    self.link_next = 0.0
            elif isinstance(event, WorkerStatus) and event.worker == FILTER_OWNER:
                ready = any(c.key == "nat_tables" and c.ok for c in event.conditions)
                if ready and not self.filter_ready:
                    # Once in place the child may come up; a later loss of the tables is the
                    # nat-writer's to repair (it re-adopts), not a reason to drop traffic here.
                    self.filter_ready = True
                    log.info("LAN filter in place: the child may come up")
                    self.link_next = 0.0
        if self.bus.ready_fds:
            self._receive(self.bus.ready_fds)
            self._sync_arp()  # a reply may have started the probe

    def run(self) -> int:
        self.bus.set_state(self.owned_state)
        self.bus.set_conditions(self.conditions)
        log.info("dhcp worker started", extra={"fields": {
            "iface": self.config.ext_iface, "parent": self.config.vlan_parent,
            "mac": self.config.ext_mac, "hostname": self.config.dhcp_hostname,
            "stored": sorted(self.stored)}})
        try:
            while not self.life.stop_requested:
                self.step()
            log.info("dhcp worker stopping", extra={"fields": {
                "dropped_v4": dict(self.v4.dropped), "dropped_v6": dict(self.v6.dropped),
                "acquisitions_v4": dict(self.v4.acquisitions),
                "acquisitions_v6": dict(self.v6.acquisitions)}})
            if self.life.shutting_down():
                self.shutdown()
            else:
                log.info("dhcp worker stopping for a restart: child, address and lease kept")
        finally:
            self._close_sockets()
            self.rt.close()
        return 0

    def shutdown(self) -> None:
        """Container shutdown: remove the child. The leases (and the lease file) are kept for
        the next start, as a real server keeps its address across a reboot (F-6); they are
        released only when asked (``ANCHORD_RELEASE_ON_STOP``, ``anchord release``)."""
        if self.config.release_on_stop or release_requested(self.config.run_dir):
            log.info("container shutdown: releasing the leases and removing the child",
                     extra={"fields": {"why": "ANCHORD_RELEASE_ON_STOP" if
                                       self.config.release_on_stop else "anchord release"}})
            self.v6.release()
            self.v4.release()
            self.leasefile.remove()
        else:
            log.info("container shutdown: removing the child; the leases are kept for the "
                     "next start", extra={"fields": {"file": str(self.leasefile.path)}})
            self._save()
        self.child.remove()
        self.status = LinkStatus(parent=self.status.parent, problem="removed at shutdown")
        self.bus.state_changed()


def _is_dhcp4_reply(frame: bytes) -> bool:
    # Cheap pre-filter before the strict parser: IPv4, UDP, destination port 68.
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    ihl = (frame[14] & 0x0F) * 4
    return len(frame) >= 14 + ihl + 8 and frame[14 + ihl + 2:14 + ihl + 4] == b"\x00\x44"


def run(config: NetworkAnchorConfig, bus: Bus, life: Life) -> int:
    return DhcpWorker(config, bus, life).run()
