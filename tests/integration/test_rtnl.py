"""``anchord.rtnl`` against the real kernel, each operation checked with ``ip -j``.

Topology, made here and removed afterwards::

    a: p0 (veth) ─── b: q0

``Rtnl`` is opened inside ``a`` (its socket stays there); ``ip -n a -j ...`` is the witness.
Checked: the link dump, lookups and gets agree with ``ip`` (name, index, MAC, MTU, flags,
operstate, kind, parent and its namespace id); a macvlan child is made in bridge mode on a
local parent and on a parent of another namespace (by its id, as ``ANCHORD_PARENT=/path:if``
does), set up and deleted; addresses are added, replaced with lifetimes, listed and deleted in
both families; default routes are replaced with gateway, oif and protocol, listed per family
and table, and deleted by what matches; the kernel's refusals arrive as ``NetlinkError`` with
its errno.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from anchord.dhcp import hostns
from anchord.netlink import NetlinkError
from anchord.rtnl import (
    IFF_LOWER_UP,
    IFF_UP,
    INFINITY_LIFE_TIME,
    MACVLAN_MODE_BRIDGE,
    RTN_UNICAST,
    Link,
    Rtnl,
)
from tests.integration.inbound_topo import inside
from tests.netns import Netns, topology, wait_until

MAC = "02:a0:00:00:00:01"
RTPROT_DHCP = 16


@dataclass
class Bed:
    a: Netns
    b: Netns
    rt: Rtnl

    def ip(self, *argv: str) -> Any:
        return json.loads(self.a.run("ip", "-j", *argv) or "[]")

    def link(self, name: str) -> dict[str, Any]:
        rows: list[dict[str, Any]] = self.ip("-d", "link", "show", "dev", name)
        return rows[0]

    def addrs(self, name: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.ip("addr", "show", "dev", name)
        return list(rows[0]["addr_info"])


@pytest.fixture
def bed() -> Iterator[Bed]:
    with topology("rn") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.veth(a, "p0", b, "q0")
        with inside(a):
            rt = Rtnl()
        try:
            yield Bed(a, b, rt)
        finally:
            rt.close()


def test_links_agree_with_ip(bed: Bed) -> None:
    links = {link.name: link for link in bed.rt.links()}
    assert set(links) == {row["ifname"] for row in bed.ip("link", "show")}
    for name, link in links.items():
        row = bed.link(name)
        assert link.index == row["ifindex"]
        assert link.address == row["address"]
        assert link.mtu == row["mtu"]
        assert link.operstate == row["operstate"]
        assert bool(link.flags & IFF_UP) == ("UP" in row["flags"])
        assert link.kind == row.get("linkinfo", {}).get("info_kind")
    p0 = links["p0"]
    # A veth whose peer lives in another namespace: the peer's index there, and its id.
    assert p0.kind == "veth"
    assert p0.link == bed.link("p0")["link_index"]
    assert p0.link_netnsid == bed.link("p0")["link_netnsid"]
    assert p0.flags & IFF_LOWER_UP
    assert links["lo"].link is None
    assert links["lo"].link_netnsid is None
    assert bed.rt.link(p0.index) == p0
    assert bed.rt.link_by_name("p0") == p0
    assert bed.rt.lookup("p0") == p0.index


def test_a_missing_link(bed: Bed) -> None:
    assert bed.rt.lookup("nosuch") == 0
    assert bed.rt.lookup("x" * 40) == 0  # longer than IFNAMSIZ: refused, not found
    with pytest.raises(NetlinkError) as exc:
        bed.rt.link(99999)
    assert exc.value.errno == errno.ENODEV
    with pytest.raises(NetlinkError) as exc:
        bed.rt.link_by_name("nosuch")
    assert exc.value.errno == errno.ENODEV
    with pytest.raises(NetlinkError) as exc:
        bed.rt.delete_link(99999)
    assert exc.value.errno == errno.ENODEV
    with pytest.raises(NetlinkError) as exc:
        bed.rt.set_up(99999)
    assert exc.value.errno == errno.ENODEV


def test_macvlan_child_on_a_local_parent(bed: Bed) -> None:
    parent = bed.rt.lookup("p0")
    bed.rt.add_macvlan("mv0", parent, MAC.upper(), MACVLAN_MODE_BRIDGE)
    row = bed.link("mv0")
    assert row["linkinfo"]["info_kind"] == "macvlan"
    assert row["linkinfo"]["info_data"]["mode"] == "bridge"
    assert row["link"] == "p0"
    assert row["address"] == MAC
    assert "UP" not in row["flags"]  # made down: the caller decides when it comes up
    child = bed.rt.link(bed.rt.lookup("mv0"))
    assert (child.kind, child.macvlan_mode, child.link, child.link_netnsid, child.address) == (
        "macvlan", MACVLAN_MODE_BRIDGE, parent, None, MAC)
    assert not child.flags & IFF_UP

    with pytest.raises(NetlinkError) as exc:
        bed.rt.add_macvlan("mv0", parent, MAC)
    assert exc.value.errno == errno.EEXIST

    bed.rt.set_up(child.index)
    assert "UP" in bed.link("mv0")["flags"]
    # Carrier comes with the parent's (up, its peer up); operstate once linkwatch ran.
    def operstate_up() -> Link | None:
        link = bed.rt.link(child.index)
        return link if link.operstate == "UP" else None

    up = wait_until(operstate_up, 5, what="the child's operstate UP")
    assert up.flags & IFF_UP
    assert up.flags & IFF_LOWER_UP
    assert bed.link("mv0")["operstate"] == "UP"

    bed.rt.delete_link(child.index)
    assert "mv0" not in {row["ifname"] for row in bed.ip("link", "show")}
    assert bed.rt.lookup("mv0") == 0
    with pytest.raises(NetlinkError) as exc:
        bed.rt.delete_link(child.index)
    assert exc.value.errno == errno.ENODEV


def test_macvlan_child_on_a_parent_in_another_namespace(bed: Bed) -> None:
    with inside(bed.a):
        nsid = hostns.netnsid(bed.b.path)
    q0 = {link.name: link for link in bed.rt.links(target_nsid=nsid)}["q0"]
    b_row = json.loads(bed.b.run("ip", "-j", "link", "show", "dev", "q0"))[0]
    assert (q0.index, q0.address) == (b_row["ifindex"], b_row["address"])

    bed.rt.add_macvlan("mvx", q0.index, MAC, parent_nsid=nsid)
    row = bed.link("mvx")
    assert row["linkinfo"]["info_kind"] == "macvlan"
    assert row["link_netnsid"] == nsid
    assert row["link_index"] == q0.index
    child = bed.rt.link(bed.rt.lookup("mvx"))
    assert (child.link, child.link_netnsid, child.macvlan_mode) == (q0.index, nsid,
                                                                   MACVLAN_MODE_BRIDGE)
    bed.rt.delete_link(child.index)


def test_addresses_in_both_families(bed: Bed) -> None:
    index = bed.rt.lookup("p0")
    bed.rt.add_address(index, "10.77.0.2", 24)
    info = [a for a in bed.addrs("p0") if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"], a["valid_life_time"]) for a in info] == [
        ("10.77.0.2", 24, INFINITY_LIFE_TIME)]
    with pytest.raises(NetlinkError) as exc:
        bed.rt.add_address(index, "10.77.0.2", 24)
    assert exc.value.errno == errno.EEXIST

    # A replace refreshes the lifetimes in place (what a DHCP renewal does).
    bed.rt.add_address(index, "10.77.0.2", 24, replace=True, valid=100, preferred=50)
    bed.rt.add_address(index, "fd77::2", 64, replace=True, valid=200, preferred=150)
    rows = {a["local"]: a for a in bed.addrs("p0")}
    assert 95 <= rows["10.77.0.2"]["valid_life_time"] <= 100
    assert 45 <= rows["10.77.0.2"]["preferred_life_time"] <= 50
    assert 195 <= rows["fd77::2"]["valid_life_time"] <= 200

    mine = {a.address: a for a in bed.rt.addresses(index=index)}
    assert set(mine) == set(rows)
    for address, a in mine.items():
        assert (a.prefixlen, a.index) == (rows[address]["prefixlen"], index)
        assert abs(a.valid - rows[address]["valid_life_time"]) <= 2
        assert abs(a.preferred - rows[address]["preferred_life_time"]) <= 2
    assert {a.address for a in bed.rt.addresses(socket.AF_INET, index)} == {"10.77.0.2"}
    v6 = {a.address for a in bed.rt.addresses(socket.AF_INET6, index)}
    assert "fd77::2" in v6
    assert all(":" in a for a in v6)
    assert mine["fd77::2"].scope == 0
    link_local = [a for a in mine.values() if a.address.startswith("fe80:")]
    assert link_local
    assert link_local[0].scope == 253
    assert bed.rt.addresses(index=99999) == []

    bed.rt.delete_address(index, "10.77.0.2", 24)
    bed.rt.delete_address(index, "fd77::2", 64)
    assert not {"10.77.0.2", "fd77::2"} & {a["local"] for a in bed.addrs("p0")}
    with pytest.raises(NetlinkError) as exc:
        bed.rt.delete_address(index, "10.77.0.2", 24)
    assert exc.value.errno == errno.EADDRNOTAVAIL


def test_default_routes(bed: Bed) -> None:
    index = bed.rt.lookup("p0")
    bed.rt.add_address(index, "10.77.0.2", 24)
    bed.a.run("ip", "addr", "add", "fd77::2/64", "dev", "p0", "nodad")
    bed.a.run("ip", "route", "add", "10.99.0.0/16", "via", "10.77.0.9", "table", "100")

    with pytest.raises(NetlinkError) as exc:  # no connected network has this gateway
        bed.rt.replace_route(socket.AF_INET, gateway="10.88.0.1", oif=index, proto=RTPROT_DHCP)
    assert exc.value.errno == errno.ENETUNREACH

    bed.rt.replace_route(socket.AF_INET, gateway="10.77.0.1", oif=index, proto=RTPROT_DHCP)
    bed.rt.replace_route(socket.AF_INET, gateway="10.77.0.3", oif=index, proto=RTPROT_DHCP)
    bed.rt.replace_route(socket.AF_INET6, gateway="fd77::1", oif=index, proto=RTPROT_DHCP)
    rows = bed.ip("route", "show", "default")
    assert [(r["gateway"], r["dev"], r["protocol"]) for r in rows] == [
        ("10.77.0.3", "p0", "dhcp")]  # replaced, not added beside
    rows6 = bed.ip("-6", "route", "show", "default")
    assert [(r["gateway"], r["dev"], r["protocol"], r["metric"]) for r in rows6] == [
        ("fd77::1", "p0", "dhcp", 1024)]

    routes = bed.rt.routes(socket.AF_INET)
    defaults = [r for r in routes if r.dst_len == 0]
    assert [(r.gateway, r.oif, r.protocol, r.type, r.priority, r.dst) for r in defaults] == [
        ("10.77.0.3", index, RTPROT_DHCP, RTN_UNICAST, None, None)]
    assert {(r.dst, r.dst_len) for r in routes} == {(None, 0), ("10.77.0.0", 24)}  # not table 100
    assert [r.gateway for r in bed.rt.routes(socket.AF_INET, table=100)] == ["10.77.0.9"]
    defaults6 = [r for r in bed.rt.routes(socket.AF_INET6) if r.dst_len == 0]
    assert [(r.gateway, r.oif, r.priority) for r in defaults6] == [("fd77::1", index, 1024)]

    with pytest.raises(NetlinkError) as exc:  # matched on the gateway: not this one
        bed.rt.delete_route(socket.AF_INET, gateway="10.77.0.1", oif=index)
    assert exc.value.errno == errno.ESRCH
    bed.rt.delete_route(socket.AF_INET, gateway="10.77.0.3", oif=index)
    bed.rt.delete_route(socket.AF_INET6, gateway="fd77::1", oif=index, priority=1024)
    assert bed.ip("route", "show", "default") == []
    assert bed.ip("-6", "route", "show", "default") == []
    assert bed.ip("route", "show", "table", "100") != []
    with pytest.raises(NetlinkError) as exc:
        bed.rt.delete_route(socket.AF_INET6, gateway="fd77::1", oif=index)
    assert exc.value.errno == errno.ESRCH
