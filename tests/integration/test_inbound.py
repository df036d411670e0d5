"""Inbound path on a real kernel: DNAT maps, real sources, ranges, v6 off, hairpin, filter.

Every test builds its own LAN / anchor / backend namespaces (inbound_topo) and
drives anchord.nft.NatTables inside the anchor namespace, exactly as the
nat-writer does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from anchord.nft import NatTables
from bus.events import Backend as Entry
from tests.integration import inbound_topo as it
from tests.netns import wait_until


@pytest.fixture
def tables(net: it.Inbound) -> Iterator[NatTables]:
    with it.inside(net.anchor):
        t = NatTables(it.EXT)
        t.adopt()
    yield t
    t.close()


def apply(net: it.Inbound, t: NatTables, entries: list[Entry]) -> None:
    with it.inside(net.anchor):
        result = t.apply(entries)
    assert result.ok, result.error


def both(proto: str, first: int, last: int, b: it.Backend, v6: bool = True) -> list[Entry]:
    out = [Entry(4, proto, first, last, b.v4, b.name)]
    if v6:
        out.append(Entry(6, proto, first, last, b.v6, b.name))
    return out


def test_backend_sees_client_source_tcp_udp_v4_v6(net: it.Inbound, tables: NatTables) -> None:
    b1 = net.backends[0]
    it.serve(b1, tcp=[8080], udp=[5353])
    apply(net, tables, both("tcp", 8080, 8080, b1) + both("udp", 5353, 5353, b1))
    for project, client in ((it.PROJECT4, it.CLIENT4), (it.PROJECT6, it.CLIENT6)):
        assert it.ask(net.lan, project, "tcp", 8080) == f"b1 {client} 8080"
        assert it.ask(net.lan, project, "udp", 5353) == f"b1 {client} 5353"


def test_ranges_reach_their_backend(net: it.Inbound, tables: NatTables) -> None:
    b1, b2 = net.backends
    it.serve(b1, tcp=[8080])
    it.serve(b2, tcp=[7000, 7001, 7002, 7003], udp=[7100, 7101])
    apply(net, tables, both("tcp", 8080, 8080, b1) + both("tcp", 7000, 7002, b2)
          + both("udp", 7100, 7101, b2))
    for port in (7000, 7001, 7002):
        assert it.ask(net.lan, it.PROJECT4, "tcp", port) == f"b2 {it.CLIENT4} {port}"
        assert it.ask(net.lan, it.PROJECT6, "tcp", port) == f"b2 {it.CLIENT6} {port}"
    for port in (7100, 7101):
        assert it.ask(net.lan, it.PROJECT4, "udp", port) == f"b2 {it.CLIENT4} {port}"
    # One past the range is not exposed: answered like a closed port by the anchor.
    assert it.ask(net.lan, it.PROJECT4, "tcp", 7003) == "ERROR ConnectionRefusedError"
    # Shrinking the range in place takes effect at once.
    apply(net, tables, both("tcp", 8080, 8080, b1) + both("tcp", 7000, 7001, b2))
    assert it.ask(net.lan, it.PROJECT4, "tcp", 7001) == f"b2 {it.CLIENT4} 7001"
    assert it.ask(net.lan, it.PROJECT4, "tcp", 7002) == "ERROR ConnectionRefusedError"


def test_v6_off_is_not_reachable_on_v6(net: it.Inbound, tables: NatTables) -> None:
    b1 = net.backends[0]
    it.serve(b1, tcp=[8080, 8443])
    # 8080 mirrored, 8443 with anchord.expose.v6: off (discovery emits no family-6 entry)
    apply(net, tables, both("tcp", 8080, 8080, b1) + both("tcp", 8443, 8443, b1, v6=False))
    assert it.ask(net.lan, it.PROJECT4, "tcp", 8443) == f"b1 {it.CLIENT4} 8443"
    assert it.ask(net.lan, it.PROJECT6, "tcp", 8080) == f"b1 {it.CLIENT6} 8080"
    assert it.ask(net.lan, it.PROJECT6, "tcp", 8443) == "ERROR ConnectionRefusedError"


def test_hairpin_from_backends_to_project_address(net: it.Inbound, tables: NatTables) -> None:
    b1, b2 = net.backends
    it.serve(b1, tcp=[8080], udp=[5353])
    apply(net, tables, both("tcp", 8080, 8080, b1) + both("udp", 5353, 5353, b1))
    # Another container and the backend itself: both reach the service through the
    # project address; the reply must come back through the anchor (masqueraded).
    for caller in (b2, b1):
        assert it.ask(caller.ns, it.PROJECT4, "tcp", 8080) == f"b1 {it.TRANSIT4} 8080"
        assert it.ask(caller.ns, it.PROJECT6, "tcp", 8080) == f"b1 {it.TRANSIT6} 8080"
        assert it.ask(caller.ns, it.PROJECT4, "udp", 5353) == f"b1 {it.TRANSIT4} 5353"
    # The anchor's own transit address is not the project address: no DNAT there.
    assert it.ask(b2.ns, it.TRANSIT4, "tcp", 8080) == "ERROR ConnectionRefusedError"


def test_switch_backend_under_tight_loop_loses_nothing(
    net: it.Inbound, tables: NatTables
) -> None:
    b1, b2 = net.backends
    it.serve(b1, tcp=[8080])
    it.serve(b2, tcp=[8080])
    apply(net, tables, both("tcp", 8080, 8080, b1))
    loop = it.tcp_loop(net.lan, it.PROJECT4, 8080)
    try:
        wait_until(lambda: sum("ok b1" in line for line in loop.lines) >= 50, 20, what="b1 answers")
        for target, other in ((b2, "b2"), (b1, "b1"), (b2, "b2")):
            apply(net, tables, both("tcp", 8080, 8080, target))
            mark = len(loop.lines)
            wait_until(lambda o=other, m=mark: sum(  # type: ignore[misc]
                f"ok {o}" in line for line in loop.lines[m:]) >= 50,
                20, what=f"{other} answers after the switch")
    finally:
        lines = loop.stop()
    fails = [line for line in lines if " fail " in line]
    assert not fails, fails[:5]
    assert len(lines) >= 200


def test_filter_lan_reaches_only_dnated_ports(net: it.Inbound) -> None:
    b1 = net.backends[0]
    it.serve(b1, tcp=[8080, 9000], udp=[9001])
    anchor_listener = it.Backend(net.anchor, "anchor", it.TRANSIT4, it.TRANSIT6)
    it.serve(anchor_listener, tcp=[9090])
    net.lan.run("ip", "route", "add", "172.31.0.0/24", "via", it.PROJECT4)
    net.lan.run("ip", "-6", "route", "add", "fd00:31::/64", "via", it.PROJECT6)
    # Control, before the tables exist: routing through the anchor reaches everything,
    # so what follows is the filter's doing.
    assert it.ask(net.lan, b1.v4, "tcp", 9000) == f"b1 {it.CLIENT4} 9000"
    assert it.ask(net.lan, it.PROJECT4, "tcp", 9090) == f"anchor {it.CLIENT4} 9090"

    with it.inside(net.anchor):
        t = NatTables(it.EXT)
        t.adopt()
    try:
        apply(net, t, both("tcp", 8080, 8080, b1))
        assert it.ask(net.lan, it.PROJECT4, "tcp", 8080) == f"b1 {it.CLIENT4} 8080"
        # A backend's other ports: closed, as on a real server.
        assert it.ask(net.lan, it.PROJECT4, "tcp", 9000) == "ERROR ConnectionRefusedError"
        assert it.ask(net.lan, it.PROJECT6, "tcp", 9000) == "ERROR ConnectionRefusedError"
        assert it.ask(net.lan, it.PROJECT4, "udp", 9001) == "ERROR ConnectionRefusedError"
        # The anchor's own listener: closed from the LAN, open from inside.
        assert it.ask(net.lan, it.PROJECT4, "tcp", 9090) == "ERROR ConnectionRefusedError"
        assert it.ask(net.lan, it.PROJECT6, "tcp", 9090) == "ERROR ConnectionRefusedError"
        assert it.ask(net.anchor, "127.0.0.1", "tcp", 9090) == "anchor 127.0.0.1 9090"
        # ... nor through its transit address routed via the project address.
        assert it.ask(net.lan, it.TRANSIT4, "tcp", 9090) == "ERROR ConnectionRefusedError"
        # The transit network routed via the project address: dropped, even on the
        # exposed port (only DNATed flows are forwarded).
        t0 = time.monotonic()
        for addr in (b1.v4, b1.v6):
            assert it.ask(net.lan, addr, "tcp", 9000, timeout=1) == "ERROR TimeoutError"
            assert it.ask(net.lan, addr, "tcp", 8080, timeout=1) == "ERROR TimeoutError"
        assert time.monotonic() - t0 >= 4
        # Egress replies still come back in (established), DHCP/ICMP allowed.
        assert it.ask(b1.ns, it.CLIENT4, "tcp", 9) == "ERROR ConnectionRefusedError"
        net.lan.run("ping", "-c1", "-W2", it.PROJECT4)
        net.lan.run("ping", "-c1", "-W2", it.PROJECT6)
    finally:
        t.close()
