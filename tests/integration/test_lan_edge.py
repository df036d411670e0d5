"""The LAN edge with the VLAN parent inside the anchor's namespace (SPEC F-9, F-10).

The simulated-LAN mode (the demo, Compose tests): the parent is an interface of the anchord
container with an address of its own from Docker. Topology, all made here::

    lan ns  eth0 192.0.2.10, 2001:db8:1::10
      |
    anchor ns  par0 192.0.2.2, 2001:db8:1::2 (the parent, Docker's address on it)
               anchord-ext: macvlan on par0, 192.0.2.50, 2001:db8:1::50 (the project)
               transit 172.31.0.1 ── sw ns: br0 ── b1 172.31.0.11 (serves tcp/8080, tcp/9999)

The tables come from ``anchord.nft.NatTables`` with par0 LAN-facing, as the nat-writer makes
them once the dhcp worker reports the parent; the parent's addresses are removed with
``anchord.dhcp.gateway.strip_parent``, as the dhcp worker does. Checked: a LAN host reaches
the exposed port with its own address and nothing else, whether it routes the transit subnet
via the parent's address or via the child, or sends to the project address at the parent's
MAC (no masqueraded way in); anchord's own listeners are closed from the LAN on both
interfaces; the project's egress to a LAN-local host leaves by the child with the project
address, and before the parent is stripped it is dropped rather than leaked by the parent.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from anchord.dhcp import gateway
from anchord.nft import NatTables
from bus.events import Backend as Entry
from tests.integration import inbound_topo as it
from tests.netns import Netns, topology

PARENT = "par0"
PARENT4, PARENT6 = "192.0.2.2", "2001:db8:1::2"


@dataclass
class Edge:
    lan: Netns
    anchor: Netns
    b1: it.Backend
    tables: NatTables


@pytest.fixture
def edge() -> Iterator[Edge]:
    with topology("le") as topo:
        lan, anchor, switch = topo.netns("lan"), topo.netns("anc"), topo.netns("sw")
        for ns in (lan, anchor):
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        anchor.sysctl("net.ipv4.ip_forward", "1")
        anchor.sysctl("net.ipv6.conf.all.forwarding", "1")
        # What the README's Compose sets: each interface answers ARP only for its own
        # addresses (else the parent answers for the project address too, racing the child).
        anchor.sysctl("net.ipv4.conf.all.arp_ignore", "1")
        anchor.sysctl("net.ipv4.conf.all.arp_announce", "2")
        topo.veth(lan, "eth0", anchor, PARENT)
        lan.run("ip", "addr", "add", f"{it.CLIENT4}/24", "dev", "eth0")
        lan.run("ip", "-6", "addr", "add", f"{it.CLIENT6}/64", "dev", "eth0", "nodad")
        anchor.run("ip", "addr", "add", f"{PARENT4}/24", "dev", PARENT)
        anchor.run("ip", "-6", "addr", "add", f"{PARENT6}/64", "dev", PARENT, "nodad")
        anchor.run("ip", "link", "add", it.EXT, "link", PARENT, "type", "macvlan", "mode",
                   "bridge")
        anchor.run("ip", "link", "set", it.EXT, "up")
        anchor.run("ip", "addr", "add", f"{it.PROJECT4}/24", "dev", it.EXT)
        anchor.run("ip", "-6", "addr", "add", f"{it.PROJECT6}/64", "dev", it.EXT, "nodad")
        switch.run("ip", "link", "add", "br0", "type", "bridge")
        switch.run("ip", "link", "set", "br0", "up")
        topo.veth(anchor, "transit", switch, "up0")
        switch.run("ip", "link", "set", "up0", "master", "br0")
        anchor.run("ip", "addr", "add", f"{it.TRANSIT4}/24", "dev", "transit")
        anchor.run("ip", "-6", "addr", "add", f"{it.TRANSIT6}/64", "dev", "transit", "nodad")
        ns = topo.netns("b1")
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
        topo.veth(ns, "eth0", switch, "tb1")
        switch.run("ip", "link", "set", "tb1", "master", "br0")
        ns.run("ip", "addr", "add", "172.31.0.11/24", "dev", "eth0")
        ns.run("ip", "-6", "addr", "add", "fd00:31::b/64", "dev", "eth0", "nodad")
        ns.run("ip", "route", "add", "default", "via", it.TRANSIT4)
        ns.run("ip", "-6", "route", "add", "default", "via", it.TRANSIT6)
        b1 = it.Backend(ns, "b1", "172.31.0.11", "fd00:31::b")
        with it.inside(anchor):
            tables = NatTables(it.EXT, lan_ifaces=(PARENT,))
            tables.adopt()
            result = tables.apply([Entry(4, "tcp", 8080, 8080, b1.v4, "b1"),
                                   Entry(6, "tcp", 8080, 8080, b1.v6, "b1")])
        assert result.ok, result.error
        it.serve(b1, tcp=[8080, 9999])
        try:
            yield Edge(lan, anchor, b1, tables)
        finally:
            tables.close()
            it.stop_all()


def _answered_by_b1(answer: str) -> bool:
    return answer.startswith("b1 ")


def test_exposed_port_reaches_the_backend_with_the_lan_source(edge: Edge) -> None:
    assert it.ask(edge.lan, it.PROJECT4, "tcp", 8080) == f"b1 {it.CLIENT4} 8080"
    assert it.ask(edge.lan, it.PROJECT6, "tcp", 8080) == f"b1 {it.CLIENT6} 8080"


@pytest.mark.parametrize("via", ["parent", "child"])
def test_no_route_into_the_transit_network(edge: Edge, via: str) -> None:
    """A LAN host routing the transit subnet via anchord reaches no container at all."""
    hop4, hop6 = (PARENT4, PARENT6) if via == "parent" else (it.PROJECT4, it.PROJECT6)
    edge.lan.run("ip", "route", "replace", "172.31.0.0/24", "via", hop4)
    edge.lan.run("ip", "-6", "route", "replace", "fd00:31::/64", "via", hop6)
    for address in (edge.b1.v4, edge.b1.v6):
        for port in (8080, 9999):
            answer = it.ask(edge.lan, address, "tcp", port, timeout=1.0)
            assert answer.startswith("ERROR"), (via, address, port, answer)


def test_project_address_at_the_parents_mac_is_no_way_in(edge: Edge) -> None:
    """Sent to the parent's MAC, the project address must not be hairpinned (and masqueraded)
    into the project: only the child is the project's door."""
    parent_mac = json.loads(edge.anchor.run("ip", "-j", "link", "show", PARENT))[0]["address"]
    edge.lan.run("ip", "neigh", "replace", it.PROJECT4, "lladdr", parent_mac, "dev", "eth0",
                 "nud", "permanent")
    answer = it.ask(edge.lan, it.PROJECT4, "tcp", 8080, timeout=1.0)
    assert not _answered_by_b1(answer), answer


def test_anchords_own_listener_is_closed_from_the_lan(edge: Edge) -> None:
    me = it.Backend(edge.anchor, "anchor", it.TRANSIT4, it.TRANSIT6)
    it.serve(me, tcp=[9090])
    assert it.ask(edge.anchor, "127.0.0.1", "tcp", 9090).startswith("anchor ")
    for address in (PARENT4, PARENT6, it.PROJECT4, it.PROJECT6):
        answer = it.ask(edge.lan, address, "tcp", 9090, timeout=1.0)
        assert answer.startswith("ERROR"), (address, answer)


def test_egress_to_the_lan_leaves_by_the_child_with_the_project_address(edge: Edge) -> None:
    lan_host = it.Backend(edge.lan, "lan", it.CLIENT4, it.CLIENT6)
    it.serve(lan_host, tcp=[7000])
    # The parent's connected routes win over the child's: egress would leave by the parent
    # (unmasqueraded, from a transit address); the filter drops it instead.
    for target in (it.CLIENT4, it.CLIENT6):
        answer = it.ask(edge.b1.ns, target, "tcp", 7000, timeout=1.0)
        assert answer.startswith("ERROR"), (target, answer)
    with it.inside(edge.anchor):
        from anchord.rtnl import Rtnl

        with Rtnl() as rt:
            removed = gateway.strip_parent(rt, PARENT)
    assert f"{PARENT4}/24" in removed, removed
    assert f"{PARENT6}/64" in removed, removed
    assert it.ask(edge.b1.ns, it.CLIENT4, "tcp", 7000) == f"lan {it.PROJECT4} 7000"
    assert it.ask(edge.b1.ns, it.CLIENT6, "tcp", 7000) == f"lan {it.PROJECT6} 7000"


def test_no_arp_answer_for_the_containers_internal_addresses(edge: Edge) -> None:
    """A LAN host asking (ARP) for the anchor's transit address on the LAN gets no answer."""
    edge.lan.run("ip", "route", "replace", f"{it.TRANSIT4}/32", "dev", "eth0")
    edge.lan.run("ping", "-c", "2", "-W", "1", it.TRANSIT4, check=False)
    neigh = edge.lan.run("ip", "neigh", "show", it.TRANSIT4, "dev", "eth0")
    assert "lladdr" not in neigh, neigh
    # The project address itself is answered, by the child.
    edge.lan.run("ping", "-c", "1", "-W", "1", it.PROJECT4)
    child_mac = json.loads(edge.anchor.run("ip", "-j", "link", "show", it.EXT))[0]["address"]
    assert child_mac in edge.lan.run("ip", "neigh", "show", it.PROJECT4, "dev", "eth0")


UNICAST_ACK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.connect((sys.argv[1], int(sys.argv[3])))
s.settimeout(1.0)
s.send(b"x" * 300)
try:
    s.recv(100)
    print("answer")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("silent")
"""


def test_a_unicast_dhcp_reply_draws_no_port_unreachable(edge: Edge) -> None:
    """A server's unicast ACK (from 67 to 68) is for the packet socket: the child must not
    answer it with ICMP port unreachable; another UDP port still is refused like a closed
    port on a real server."""
    def outcome(sport: int, dport: int) -> str:
        return edge.lan.run(sys.executable, "-c", UNICAST_ACK, it.PROJECT4, str(sport),
                            str(dport)).strip()

    assert outcome(67, 68) == "silent"
    assert outcome(5067, 69) == "refused"
