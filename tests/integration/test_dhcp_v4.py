"""The dhcp worker against real DHCPv4 servers (dnsmasq, ISC Kea) in namespaces."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dhcp_servers import LAN_V4, MAC, Dnsmasq, Lan, Worker, lan
from tests.netns import wait_until

ECHO_SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], 7007))
while True:
    c, _ = s.accept()
    while data := c.recv(100):
        c.sendall(data)
"""
HOLDING_CLIENT = """
import os, socket, sys, time
c = socket.create_connection((sys.argv[1], 7007), timeout=5)
c.sendall(b"a"); assert c.recv(10) == b"a"
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
c.sendall(b"b"); assert c.recv(10) == b"b"
print("ok")
"""


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def test_dnsmasq_v4_bound_with_hostname_route_and_mac(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    dns = Dnsmasq(bed, server, "dnsmasq", f"--dhcp-option=3,{LAN_V4}.1")
    worker = Worker(bed, hostname="proj-one").start()
    lease = worker.wait_lease(4)["lease"]
    address = lease["address"]
    assert address.startswith(f"{LAN_V4}.")
    assert address.endswith("/24")
    assert lease["gateway"] == f"{LAN_V4}.1"
    assert worker.addresses(4) == [address]
    route = bed.anchor.run("ip", "-4", "route", "show", "default")
    assert f"via {LAN_V4}.1 dev anchord-ext" in route
    link = bed.anchor.run("ip", "-d", "link", "show", "anchord-ext")
    assert MAC in link
    assert "macvlan mode bridge" in link
    # The server knows us by the hostname and the client id derived from the MAC.
    wait_until(lambda: "proj-one" in dns.leases.read_text(), 5, what="hostname in leases")
    assert f"01:{MAC}" in dns.leases.read_text()
    # The LAN reaches the address (and an ARP probe came before binding).
    server.run("ping", "-c1", "-W2", address.split("/")[0])
    assert worker.stop() == 0


def test_restart_and_stop_keep_the_address_release_when_asked(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    dns = Dnsmasq(bed, server, "dnsmasq")
    worker = Worker(bed).start()
    address = worker.wait_lease(4)["lease"]["address"]
    ip = address.split("/")[0]
    # A LAN client holds a TCP connection to the project address across the restart.
    flag = bed.tmp / "go"
    echo = bed.anchor.popen([sys.executable, "-c", ECHO_SERVER, ip])
    wait_until(lambda: ":7007" in bed.anchor.run("ss", "-ltn"), 10, what="echo listening")
    client = server.popen([sys.executable, "-c", HOLDING_CLIENT, ip, str(flag)],
                          stdout=subprocess.PIPE)
    wait_until(lambda: (bed.tmp / "go.ready").exists() or client.poll() is not None, 10,
               what="client connected")
    assert worker.stop() == 0  # a restart, not a shutdown: everything stays
    assert worker.addresses(4) == [address]
    discovers = dns.lines().count("DHCPDISCOVER")
    worker.start()
    worker.wait_lease(4, pred=lambda lease: lease["lease"]["address"] == address)
    wait_until(lambda: "bound" in worker.log_text() and "rebooting" in worker.log_text(), 10,
               what="init-reboot then bound")
    # INIT-REBOOT: a REQUEST and no new DISCOVER seen by the server; same address throughout.
    assert dns.lines().count("DHCPDISCOVER") == discovers
    assert worker.addresses(4) == [address]
    flag.write_text("go")
    out, _ = client.communicate(timeout=10)
    assert out.strip() == b"ok", out  # the same connection still works after the restart
    echo.kill()
    echo.wait()
    # Container stop: the child goes, the lease stays (no DHCPRELEASE, the file kept), and
    # the next start (a new child) asks for the same address by INIT-REBOOT (F-6, F-6b).
    assert worker.stop(shutdown=True) == 0
    assert "anchord-ext" not in bed.anchor.run("ip", "link", "show")
    assert (worker.state_dir / "anchord-ext.lease").exists()
    assert "DHCPRELEASE" not in dns.lines()
    worker.start()
    worker.wait_lease(4, pred=lambda lease: lease["lease"]["address"] == address)
    wait_until(lambda: worker.log_text().count("rebooting -> bound") >= 2, 10,
               what="init-reboot then bound after the stop")
    assert dns.lines().count("DHCPDISCOVER") == discovers
    # Asked to (`anchord release`): DHCPRELEASE reaches the server, the file goes.
    assert worker.stop(shutdown=True, release=True) == 0
    wait_until(lambda: f"DHCPRELEASE(eth0) {ip}" in dns.lines(), 5, what="release at server")
    assert "anchord-ext" not in bed.anchor.run("ip", "link", "show")
    assert not (worker.state_dir / "anchord-ext.lease").exists()


def test_recreated_worker_and_child_get_same_mac_and_address(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    worker = Worker(bed).start()
    address = worker.wait_lease(4)["lease"]["address"]
    worker.stop()
    # A new container: no lease file, no child; the server still knows the MAC/client id.
    bed.anchor.run("ip", "link", "del", "anchord-ext")
    (worker.state_dir / "anchord-ext.lease").unlink()
    worker.start()
    assert worker.wait_lease(4)["lease"]["address"] == address
    assert MAC in bed.anchor.run("ip", "link", "show", "anchord-ext")


def test_no_server_keeps_trying_with_backoff(bed: Lan) -> None:
    worker = Worker(bed, backoff_max=2.0).start()
    wait_until(lambda: worker.log_text().count("selecting") >= 1, 10, what="selecting")
    wait_until(lambda: any(e["topic"] == "LinkChanged/" and e["data"]["up"]
                           for e in worker.published()), 10, what="link up published")
    # A server appearing later is found without a restart, within the backoff cap.
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    worker.wait_lease(4, timeout=10)
    assert worker.proc is not None
    assert worker.proc.poll() is None


def test_parent_named_by_compose_network_resolved_by_mac(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    # The LAN-side interface has an arbitrary name; another network is on eth0.
    other = bed.topo.netns("oth")
    bed.anchor.run("ip", "link", "set", "eth0", "down")
    bed.anchor.run("ip", "link", "set", "eth0", "name", "eth3")
    bed.anchor.run("ip", "link", "set", "eth3", "up")
    bed.topo.veth(bed.anchor, "eth0", other, "eth0")

    network_map = {"networks": [
        {"network": "proj_transit", "alias": "transit", "mac": open_mac(bed, "eth0")},
        {"network": "proj_lan", "alias": "lan", "mac": open_mac(bed, "eth3").upper()},
    ]}
    worker = Worker(bed, parent="lan", network_map=network_map).start()
    worker.wait_lease(4)
    assert "@eth3" in bed.anchor.run("ip", "link", "show", "anchord-ext")
    links = [e["data"] for e in worker.published() if e["topic"] == "LinkChanged/"]
    assert links[-1]["parent"] == "eth3"
    assert links[-1]["up"]


def open_mac(bed: Lan, ifname: str) -> str:
    return bed.anchor.run("cat", f"/sys/class/net/{ifname}/address").strip()


def test_parent_in_the_host_namespace_f6d(bed: Lan) -> None:
    """A real host's interface as parent: the child lives in the anchor namespace, its
    lower device in the "host" namespace (IFLA_LINK_NETNSID), found through a handle."""
    server = bed.server_ns("srv", 1)
    dns = Dnsmasq(bed, server, "dnsmasq")
    host = bed.topo.netns("host")
    bed.plug(host, "hlan0")
    worker = Worker(bed, parent=f"{host.path}:hlan0").start()
    lease = worker.wait_lease(4)["lease"]
    link = bed.anchor.run("ip", "-d", "link", "show", "anchord-ext")
    assert f"link-netns {host.name}" in link
    assert "macvlan mode bridge" in link
    assert "hlan0" not in bed.anchor.run("ip", "link", "show")  # the parent stays on the host
    wait_until(lambda: "proj-one" in dns.leases.read_text(), 5, what="hostname in leases")
    server.run("ping", "-c1", "-W2", lease["address"].split("/")[0])
    # A restarted worker adopts the child as is (same ifindex), no re-creation.
    index = bed.anchor.run("cat", "/sys/class/net/anchord-ext/ifindex")
    worker.stop()
    before = len(worker.log_text())
    worker.start()
    wait_until(lambda: "rebooting -> bound" in worker.log_text()[before:], 10,
               what="init-reboot")
    assert bed.anchor.run("cat", "/sys/class/net/anchord-ext/ifindex") == index
    assert "macvlan child created" not in worker.log_text()[before:]
    # The host interface goes away and comes back: the child is re-created.
    host.run("ip", "link", "del", "hlan0")
    wait_until(lambda: "anchord-ext" not in bed.anchor.run("ip", "link", "show"), 5,
               what="child gone with its parent")
    bed.plug(host, "hlan0")
    wait_until(lambda: worker.addresses(4) == [lease["address"]], 10, what="child back")
