"""DHCPv6 and SLAAC of the dhcp worker against real Kea6, dnsmasq and radvd, clause by clause.

Each test builds its own LAN (tests/integration/dhcp_servers.py) in namespaces it creates and
watches the worker's published events, its log, the servers' logs and, where the claim is
about the wire, tcpdump on the LAN bridge.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dhcp_servers import (
    LAN_V6,
    MAC,
    REPO,
    Capture,
    Dnsmasq,
    Kea6Server,
    Lan,
    Radvd,
    RadvdPrefixes,
    Worker,
    lan,
)
from tests.netns import wait_until

CLIENT_DUID = "00:03:00:01:" + MAC
EUI64 = "42:aaff:febb:cc01"


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def dhcpv6(worker: Worker, timeout: float = 20, **want: Any) -> dict[str, Any]:
    """The next published DHCPv6 lease whose fields match ``want``."""
    def pred(e: dict[str, Any]) -> bool:
        lease = e["lease"]
        return lease["source"] == "dhcpv6" and all(
            (lease["address"].split("/")[0] if k == "address" else lease[k]) == v
            for k, v in want.items())
    return worker.wait_lease(6, timeout=timeout, pred=pred)


def published_v6(worker: Worker) -> list[str]:
    return [e["data"]["lease"]["address"].split("/")[0] for e in worker.published()
            if e["topic"] == "LeaseChanged/" and e["data"]["lease"]["family"] == 6]


def log_times(worker: Worker, text: str) -> list[float]:
    """Unix times of the worker's log lines containing ``text``."""
    import datetime
    out = []
    for line in worker.log_text().splitlines():
        if text in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def test_kea_renew_at_t1_then_rebind_to_another_server(bed: Lan) -> None:
    server_a = bed.server_ns("srva", 1)
    server_b = bed.server_ns("srvb", 2)
    Radvd(bed, server_a, "radvd", managed=True)
    kea_a = Kea6Server(bed, server_a, "kea-a", valid=40, preferred=30, renew=5, rebind=12)
    worker = Worker(bed).start()
    first = dhcpv6(worker, server=kea_a.duid_hex)["lease"]
    address = first["address"].split("/")[0]
    # Renew at T1 (5 s), to the granting server, which extends the lease.
    dhcpv6(worker, timeout=10, server=kea_a.duid_hex, address=address,
           expiry=pytest.approx(first["expiry"] + 5, abs=2.5))
    # T1 runs from the Reply (the move to DAD), not from the end of DAD.
    replied_at = log_times(worker, "requesting -> dad")[0]
    renew_at = log_times(worker, "bound -> renewing (T1 reached)")[0]
    assert 4.5 <= renew_at - replied_at <= 5.5
    assert "DHCP6_LEASE_RENEW" in kea_a.lines() or "RENEW" in kea_a.lines()
    # Server A goes away for good; server B (another DUID, no binding for us) answers the
    # Rebind at T2 with the same address.
    kea_a.stop()
    kea_b = Kea6Server(bed, server_b, "kea-b", server_mac="02000000000b", valid=40,
                       preferred=30, renew=5, rebind=12)
    rebound = dhcpv6(worker, timeout=30, server=kea_b.duid_hex)["lease"]
    assert rebound["address"] == first["address"]
    log = worker.log_text()
    assert "renewing -> rebinding (T2 reached)" in log
    assert re.search(r"rebinding -> (bound|requesting)", log)
    assert f"{address}/128" in worker.addresses(6)
    assert address not in [a for a in published_v6(worker) if a != address]



def test_nobinding_after_server_restart_without_its_leases_requests_same_address(
        bed: Lan) -> None:
    """dnsmasq restarted without its lease file answers the Renew with NoBinding (Kea would
    allocate instead, which RFC 8415 allows); the worker's restart renews at once."""
    server = bed.server_ns("srv", 1)
    args = (f"--dhcp-range={LAN_V6}100,{LAN_V6}1ff,64,2m", "--enable-ra",
            "--ra-param=eth0,3,1800", "--dhcp-duid=9999,0a0b0c0d")  # a server DUID that stays
    dns = Dnsmasq(bed, server, "dnsmasq", *args)
    worker = Worker(bed).start()
    first = dhcpv6(worker)["lease"]
    address = first["address"].split("/")[0]
    worker.stop()
    dns.stop()
    dns2 = Dnsmasq(bed, server, "dnsmasq-fresh", *args)  # a new, empty lease file
    worker.start()
    # The Renew finds no binding; the client asks for the same address with a Request and
    # keeps it meanwhile; no Solicit.
    wait_until(lambda: "requesting -> bound" in worker.log_text(), 15, what="reinstated")
    log = worker.log_text()
    assert "confirming -> requesting (NoBinding" in log, log[-3000:]
    assert "-> soliciting" not in log.split("dhcp worker started")[-1]
    lines = dns2.lines()
    assert "no binding found" in lines
    assert "DHCPSOLICIT" not in lines
    assert f"DHCPREQUEST(eth0) {CLIENT_DUID}" in lines
    assert all(a == address for a in published_v6(worker))
    assert f"{address}/128" in worker.addresses(6)
    assert address in dns2.leases.read_text()


def test_address_change_on_renew_moves_to_the_new_address(bed: Lan) -> None:
    """F-4 for v6: the server reserves another address for us; its Reply to the Renew carries
    the old address with lifetime 0 and the new one. The new one goes through DAD, is
    announced and published with the old one as previous; the old one leaves the child."""
    server = bed.server_ns("srv", 1)
    Radvd(bed, server, "radvd", managed=True)
    kea = Kea6Server(bed, server, "kea", valid=60, preferred=40, renew=5, rebind=40)
    worker = Worker(bed).start()
    first = dhcpv6(worker)["lease"]["address"].split("/")[0]
    capture = Capture(bed, "na", "icmp6 and ip6[40] == 136")
    kea.stop()
    kea.start(reservations=[(CLIENT_DUID, f"{LAN_V6}3a0")])
    moved = dhcpv6(worker, timeout=15, address=f"{LAN_V6}3a0")
    assert moved["previous"] == f"{first}/128"
    wait_until(lambda: f"{first}/128" not in worker.addresses(6), 5, what="old address gone")
    assert f"{LAN_V6}3a0/128" in worker.addresses(6)
    assert "renewing -> dad" in worker.log_text()
    # Announced on the wire once DAD passed: an unsolicited NA, override set, to all nodes.
    wait_until(lambda: any(f"{LAN_V6}3a0 > ff02::1" in line and "neighbor advertisement"
                           in line for _, line in capture.frames()), 5, what="NA on the wire")
    when, na = next((t, line) for t, line in capture.frames()
                    if f"{LAN_V6}3a0 > ff02::1" in line)
    assert f" {MAC} > 33:33:00:00:00:01" in na
    assert "Flags [override]" in na
    # Not before DAD passed (the log's clock has millisecond resolution).
    assert when >= log_times(worker, f"dad -> bound ({LAN_V6}3a0")[0] - 0.01


def test_dad_failure_declines_the_address_and_takes_another(bed: Lan) -> None:
    """Another host on the LAN already has the first pool address: the kernel's DAD fails
    (IFA_F_DADFAILED), the worker sends a Decline, never reports that address, and binds the
    next one."""
    server = bed.server_ns("srv", 1)
    squatter = bed.topo.netns("squat")
    bed.plug(squatter, "eth0", address6=f"{LAN_V6}200/64")
    Radvd(bed, server, "radvd", managed=True)
    kea = Kea6Server(bed, server, "kea", pool=f"{LAN_V6}200-{LAN_V6}201")
    worker = Worker(bed).start()
    lease = dhcpv6(worker, timeout=30, address=f"{LAN_V6}201")["lease"]
    assert lease["address"] == f"{LAN_V6}201/128"
    log = worker.log_text()
    assert "dad -> declining" in log
    assert f"{LAN_V6}200" not in published_v6(worker)
    assert "DHCP6_DECLINE" in kea.lines()
    assert f"{LAN_V6}200/128" not in worker.addresses(6)


def test_renumbering_new_prefix_becomes_the_project_address_within_one_ra(bed: Lan) -> None:
    router = bed.server_ns("rtr", 1)
    radvd = RadvdPrefixes(bed, router, "radvd", [(f"{LAN_V6}/64", 1800, 3600)])
    worker = Worker(bed).start()
    old = f"{LAN_V6}{EUI64}"
    worker.wait_lease(6, timeout=15, pred=lambda e: e["lease"]["address"] == f"{old}/64")
    capture = Capture(bed, "ra", "icmp6 and ip6[40] == 134")
    announced_at = time.time()
    radvd.announce([(f"{LAN_V6}/64", 0, 3600), ("fd88::/64", 1800, 3600)])
    new = f"fd88::{EUI64}"
    moved = worker.wait_lease(6, timeout=15,
                              pred=lambda e: e["lease"]["address"] == f"{new}/64")
    assert moved["previous"] == f"{old}/64"
    assert moved["lease"]["source"] == "slaac"
    # Within one RA: published before the RA after the first one that carried the new prefix.
    ras = [t for t, line in capture.frames() if "router advertisement" in line]
    first_ra = next(t for t in ras if t >= announced_at)  # the first with the new prefix
    published_at = next(e["t"] for e in worker.published()
                        if e["topic"] == "LeaseChanged/"
                        and e["data"]["lease"]["address"] == f"{new}/64")
    print(f"renumbering: published {published_at - first_ra:.2f} s after the first RA")
    assert published_at - first_ra < 4.0, (ras, published_at)  # MaxRtrAdvInterval
    # Never without an address in between (the deprecated one is kept until the new is ready).
    assert '"topic": "LeaseLost/"' not in worker.events.read_text()


def test_router_solicitations_back_off_on_the_wire(bed: Lan) -> None:
    # The kernel solicits too (its own RFC 7559 backoff, when accept_ra works); in a container
    # whose sysctls cannot be set it does not, and the worker's are the only ones. Keep the
    # kernel's off the wire here so that the worker's are the ones measured.
    bed.anchor.sysctl("net.ipv6.conf.default.router_solicitations", "0")
    capture = Capture(bed, "rs", "icmp6 and ip6[40] == 133")
    Worker(bed).start()  # no router on this LAN

    def solicitations() -> list[float]:
        return [t for t, line in capture.frames()
                if line.split(" ")[1] == MAC and "router solicitation" in line]
    wait_until(lambda: len(solicitations()) >= 4, 40, what="four router solicitations")
    gaps = [b - a for a, b in itertools.pairwise(solicitations())]
    # RFC 7559: 4 s, then doubling (+-10 %); not every 4 s.
    assert 3.6 <= gaps[0] <= 4.4, gaps
    assert 7.2 <= gaps[1] <= 8.8, gaps
    assert 14.4 <= gaps[2] <= 17.6, gaps


class ReadOnlySysctlWorker(Worker):
    """The worker as in a container: /proc/sys read-only, so the child keeps the IPv6
    sysctls it inherits (here disable_ipv6=1: the kernel refuses every IPv6 address)."""

    def start(self) -> Worker:
        self.events.write_text("")
        inner = ("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
                 f"exec {shlex.quote(sys.executable)} -m tests.integration.dhcp_servers worker "
                 f"{shlex.quote(json.dumps(self.spec))}")
        self.proc = self.bed.start(
            self.bed.anchor, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              inner], self.log, {"PYTHONPATH": str(REPO)})
        return self


def test_ipv6_off_on_the_child_is_never_reported_bound(bed: Lan) -> None:
    """disable_ipv6=1 on the child (a container whose Compose file does not enable IPv6): no
    link-local address, so no DHCPv6 message leaves, and nothing is reported bound, although
    the server could reach us (a static neighbour entry stands in for ND, which the child does
    not answer). v4 is not held up."""
    server = bed.server_ns("srv", 1)
    Radvd(bed, server, "radvd", managed=True)
    Dnsmasq(bed, server, "dnsmasq")
    kea = Kea6Server(bed, server, "kea")
    server.run("ip", "-6", "neigh", "replace", f"fe80::{EUI64}", "lladdr", MAC, "dev", "eth0",
               "nud", "permanent")
    bed.anchor.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    worker = ReadOnlySysctlWorker(bed).start()
    worker.wait_lease(4, timeout=20)
    wait_until(lambda: "router advertisement seen" in worker.log_text(), 15, what="an RA")
    wait_until(lambda: "idle -> soliciting" in worker.log_text(), 5, what="M flag acted on")
    deadline = time.monotonic() + 6  # several Solicit retransmissions' worth
    while time.monotonic() < deadline:
        assert worker.lease(6) is None
        time.sleep(0.2)
    log = worker.log_text()
    assert not [line for line in log.splitlines() if "dhcpv6" in line and "-> bound" in line]
    assert "dhcpv6 soliciting -> requesting" not in log
    assert "dhcpv6 requesting" not in log
    assert "DHCP6_PACKET_RECEIVED" not in kea.lines() or CLIENT_DUID not in kea.lines()
    assert worker.addresses(6) == []


def test_the_kernel_refuses_an_ipv6_address_when_ipv6_is_off(bed: Lan) -> None:
    """What the V6Host reports to the machine: False (EACCES) from the real kernel."""
    from anchord.dhcp import kernel
    from anchord.rtnl import Rtnl
    from tests.integration.inbound_topo import inside
    bed.anchor.run("ip", "link", "add", "dummy6", "type", "veth", "peer", "name", "dummy6p")
    bed.anchor.sysctl("net.ipv6.conf.dummy6.disable_ipv6", "1")
    with inside(bed.anchor):
        rt = Rtnl()  # its socket stays in the anchor's namespace
    try:
        index = rt.lookup("dummy6")
        assert index
        assert not kernel.apply_address(rt, index, f"{LAN_V6}99", 128, 60, 30)
        bed.anchor.sysctl("net.ipv6.conf.dummy6.disable_ipv6", "0")
        assert kernel.apply_address(rt, index, f"{LAN_V6}99", 128, 60, 30)
    finally:
        rt.close()
