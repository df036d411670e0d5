"""Lease lifetime against ISC Kea (short leases), conflicts, and a parent that goes away."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dhcp_servers import LAN_V4, Dnsmasq, Kea4, Lan, Worker, lan
from tests.netns import wait_until


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def _transition_times(worker: Worker, pattern: str) -> list[float]:
    """Monotonic-ish times (seconds since worker start) of log lines matching ``pattern``."""
    out = []
    for line in worker.log_text().splitlines():
        if re.search(pattern, line):
            stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
            millis = int(line[20:23])
            out.append(time.mktime(stamp) + millis / 1000)
    return out


def test_kea_renews_at_t1_with_hostname(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    kea = Kea4(bed, server, "kea", valid=20, renew=6, rebind=15)
    worker = Worker(bed).start()
    first = worker.wait_lease(4)["lease"]
    assert first["t1"] == 6
    assert first["t2"] == 15
    assert first["lease_time"] == 20
    assert first["gateway"] == f"{LAN_V4}.1"
    wait_until(lambda: "proj-one" in kea.leases.read_text(), 5, what="hostname in kea leases")
    # At T1 a unicast REQUEST renews it: same address, a later expiry.
    renewed = worker.wait_lease(4, timeout=12,
                                pred=lambda e: e["lease"]["expiry"] > first["expiry"] + 3)
    assert renewed["lease"]["address"] == first["address"]
    bound = _transition_times(worker, r"-> bound")
    renewing = _transition_times(worker, r"bound -> renewing")
    assert len(bound) >= 2
    assert renewing
    assert 5.0 <= renewing[0] - bound[0] <= 7.5, (bound, renewing)
    assert worker.addresses(4) == [first["address"]]


def test_rebind_to_second_server_then_expiry_removes_address(bed: Lan) -> None:
    a_ns = bed.server_ns("srva", 1)
    kea_a = Kea4(bed, a_ns, "kea-a", valid=20, renew=6, rebind=12)
    worker = Worker(bed).start()
    first = worker.wait_lease(4)["lease"]
    kea_a.stop()
    b_ns = bed.server_ns("srvb", 2)
    kea_b = Kea4(bed, b_ns, "kea-b", valid=20, renew=6, rebind=12, authoritative=True)
    # T1 (6 s): unicast renew to A goes unanswered; T2 (12 s): broadcast rebind, B answers.
    rebound = worker.wait_lease(4, timeout=16,
                                pred=lambda e: e["lease"]["server"] == f"{LAN_V4}.2")
    assert rebound["lease"]["address"] == first["address"]
    assert "renewing -> rebinding" in worker.log_text()
    t_rebound = time.time()
    assert 11.0 <= t_rebound - (first["expiry"] - 20) <= 15.0
    assert "proj-one" in kea_b.leases.read_text()
    # Now nobody answers: the address stays until the lease really expires (F-6a) ...
    kea_b.stop()
    expiry = rebound["lease"]["expiry"]
    wait_until(lambda: time.time() >= expiry - 1.5, 25, what="just before expiry")
    assert worker.addresses(4) == [first["address"]]
    # ... and goes at expiry, with LeaseLost on the bus.
    wait_until(lambda: not worker.addresses(4), 4, what="address removed at expiry")
    assert time.time() - expiry < 2.5
    wait_until(lambda: worker.lease(4) is None, 2, what="LeaseLost published")
    assert "lease expired" in worker.log_text()


def test_arp_conflict_declines_and_takes_another_address(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    kea = Kea4(bed, server, "kea", valid=60, pool=f"{LAN_V4}.160 - {LAN_V4}.161")
    squatter = bed.topo.netns("sq")
    bed.plug(squatter, "eth0", f"{LAN_V4}.160/24")  # someone already uses .160 statically
    worker = Worker(bed).start()
    lease = worker.wait_lease(4, timeout=25)["lease"]
    assert lease["address"] == f"{LAN_V4}.161/24"
    assert "address conflict" in worker.log_text()
    assert "DHCPDECLINE" in kea.lines() or "DHCP4_DECLINE" in kea.lines()


def test_parent_down_up_and_deleted_recreated(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Kea4(bed, server, "kea", valid=120)
    worker = Worker(bed).start()
    address = worker.wait_lease(4)["lease"]["address"]

    def link_up(up: bool) -> bool:
        links = [e for e in worker.published() if e["topic"] == "LinkChanged/"]
        return bool(links) and links[-1]["data"]["up"] is up

    bed.anchor.run("ip", "link", "set", "eth0", "down")
    wait_until(lambda: link_up(False), 5, what="link down published")
    assert worker.addresses(4) == [address]  # parent down is no reason to drop the lease
    bed.anchor.run("ip", "link", "set", "eth0", "up")
    wait_until(lambda: link_up(True), 5, what="link up published")
    wait_until(lambda: worker.log_text().count("rebooting -> bound") >= 1, 10,
               what="lease confirmed after link up")

    bed.anchor.run("ip", "link", "del", "eth0")  # the child goes with its parent
    wait_until(lambda: link_up(False), 5, what="link gone published")
    bed.plug(bed.anchor, "eth0")
    t0 = time.monotonic()
    wait_until(lambda: worker.addresses(4) == [address], 10, what="child and address back")
    assert time.monotonic() - t0 < 6
    wait_until(lambda: link_up(True), 5, what="link up published again")
    assert worker.proc is not None
    assert worker.proc.poll() is None


def test_lease_rotation_moves_to_the_new_address_without_restart(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    timers = ("--dhcp-option=option:T1,4s", "--dhcp-option=option:T2,10s",
              f"--dhcp-option=3,{LAN_V4}.1")
    dns = Dnsmasq(bed, server, "dnsmasq", *timers, first=160, last=160)
    worker = Worker(bed).start()
    first = worker.wait_lease(4)["lease"]
    assert first["address"] == f"{LAN_V4}.160/24"
    assert first["t1"] == 4
    # The server is reconfigured: the old address is no longer in its range.
    dns.stop()
    Dnsmasq(bed, server, "dnsmasq2", *timers, "--dhcp-authoritative", first=180, last=180)
    moved = worker.wait_lease(4, timeout=20,
                              pred=lambda e: e["lease"]["address"] == f"{LAN_V4}.180/24")
    assert "renewing -> init" in worker.log_text()  # NAK at T1, no restart
    assert moved["lease"]["gateway"] == f"{LAN_V4}.1"
    assert worker.addresses(4) == [f"{LAN_V4}.180/24"]
    assert f"default via {LAN_V4}.1 dev anchord-ext" in bed.anchor.run("ip", "-4", "route")
    lost = [e["data"] for e in worker.published() if e["topic"] == "LeaseLost/"]
    assert lost  # for the conntrack flusher
    assert lost[-1]["address"] == first["address"]
    assert worker.proc is not None
    assert worker.proc.poll() is None
    server.run("ping", "-c1", "-W2", f"{LAN_V4}.180")
