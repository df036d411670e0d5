"""IPv6 of the dhcp worker: SLAAC (radvd), stateful DHCPv6 (dnsmasq), v4 and v6 independent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dhcp_servers import LAN_V4, LAN_V6, Dnsmasq, Kea6, Lan, Radvd, Worker, lan
from tests.netns import wait_until

SLAAC_ADDRESS = f"{LAN_V6}42:aaff:febb:cc01/64"  # EUI-64 of 02:42:aa:bb:cc:01: stable as the MAC


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def test_v6_only_slaac_does_not_wait_for_v4(bed: Lan) -> None:
    router = bed.server_ns("rtr", 1)
    Radvd(bed, router, "radvd")
    worker = Worker(bed).start()
    lease = worker.wait_lease(6, timeout=15)["lease"]
    assert lease["source"] == "slaac"
    assert lease["address"] == SLAAC_ADDRESS
    assert lease["gateway"].startswith("fe80:")
    assert worker.lease(4) is None  # no DHCPv4 server: v4 keeps selecting, v6 is not blocked
    assert "selecting" in worker.log_text()
    router.run("ping", "-6", "-c1", "-W2", SLAAC_ADDRESS.split("/")[0])


def test_both_families_dnsmasq_v4_and_radvd_slaac(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    Radvd(bed, server, "radvd")
    worker = Worker(bed).start()
    v4 = worker.wait_lease(4)["lease"]
    v6 = worker.wait_lease(6)["lease"]
    assert v4["address"].startswith(f"{LAN_V4}.")
    assert v6["address"] == SLAAC_ADDRESS


def test_stateful_dhcpv6_dnsmasq_renew_restart_stop_release(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    dns = Dnsmasq(bed, server, "dnsmasq", f"--dhcp-range={LAN_V6}100,{LAN_V6}1ff,64,2m",
                  "--enable-ra", "--ra-param=eth0,3,1800")
    worker = Worker(bed).start()
    v6 = worker.wait_lease(6, timeout=20, pred=lambda e: e["lease"]["source"] == "dhcpv6")
    lease = v6["lease"]
    address = lease["address"].split("/")[0]
    assert lease["address"].endswith("/128")
    assert address.startswith(LAN_V6)
    assert int(address.rsplit(":", 1)[1], 16) in range(0x100, 0x200)
    assert f"{address}/128" in worker.addresses(6)
    worker.wait_lease(4)  # both families from the same server, independently
    wait_until(lambda: "proj-one" in dns.leases.read_text(), 5, what="v6 hostname at server")
    assert "00:03:00:01:02:42:aa:bb:cc:01" in dns.leases.read_text()  # DUID-LL from the MAC
    # A restarted worker keeps the address and confirms it with a Renew, not a new Solicit.
    worker.stop()
    solicits = dns.lines().count("DHCPSOLICIT")
    worker.start()
    worker.wait_lease(6, timeout=15, pred=lambda e: e["lease"]["address"] == lease["address"]
                      and e["lease"]["source"] == "dhcpv6")
    wait_until(lambda: "confirming -> bound" in worker.log_text(), 10, what="renew confirmed")
    assert dns.lines().count("DHCPSOLICIT") == solicits
    assert "DHCPRENEW" in dns.lines()
    # A container stop keeps the lease: the next start (a new child) gets the same address
    # back with no new Solicit (F-6, F-6b).
    worker.stop(shutdown=True)
    assert "anchord-ext" not in bed.anchor.run("ip", "link", "show")
    assert "DHCPRELEASE" not in dns.lines()
    worker.start()
    worker.wait_lease(6, timeout=15, pred=lambda e: e["lease"]["address"] == lease["address"]
                      and e["lease"]["source"] == "dhcpv6")
    wait_until(lambda: f"{address}/128" in worker.addresses(6), 10,
               what="the kept address on the new child")
    assert dns.lines().count("DHCPSOLICIT") == solicits
    # Asked to release: Release seen by the server, the address and the child gone.
    worker.stop(shutdown=True, release=True)
    wait_until(lambda: "DHCPRELEASE(eth0) 00:03:00:01:02:42:aa:bb:cc:01" in dns.lines(), 5,
               what="v6 release at server")
    assert "anchord-ext" not in bed.anchor.run("ip", "link", "show")


def test_stateful_dhcpv6_kea_renews_at_t1_and_releases(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Radvd(bed, server, "radvd", managed=True)
    kea = Kea6(bed, server, "kea6", valid=30, preferred=20, renew=6, rebind=14)
    worker = Worker(bed).start()
    first = worker.wait_lease(6, timeout=20, pred=lambda e: e["lease"]["source"] == "dhcpv6")
    lease = first["lease"]
    address = lease["address"].split("/")[0]
    assert int(address.rsplit(":", 1)[1], 16) in range(0x200, 0x300)
    assert (lease["t1"], lease["t2"], lease["lease_time"]) == (6, 14, 30)
    assert worker.lease(4) is None  # no DHCPv4 server on this LAN: v6 did not wait for it
    wait_until(lambda: address in kea.leases.read_text(), 5, what="lease in kea's file")
    assert "proj-one." in kea.leases.read_text()  # the FQDN option reached the server
    renewed = worker.wait_lease(6, timeout=10,
                                pred=lambda e: e["lease"]["expiry"] > lease["expiry"] + 3)
    assert renewed["lease"]["address"] == lease["address"]
    assert "bound -> renewing" in worker.log_text()
    worker.stop(shutdown=True, release=True)
    wait_until(lambda: "DHCP6_RELEASE_NA" in kea.lines(), 5,
               what="release at kea")
