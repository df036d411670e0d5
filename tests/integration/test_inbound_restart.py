"""A restarted nat-writer adopts the kernel state; only a shutdown removes it.

Library level: a second NatTables (a new process would be the same: it shares
nothing with the first but the kernel) adopts the tables while a client opens
connections in a loop: no failure, same table handles, same elements, nothing to
change. Then delete() removes both tables.
"""

from __future__ import annotations

from anchord.nft import NatTables
from bus.events import Backend as Entry
from tests.integration import inbound_topo as it
from tests.netns import wait_until


def table_handles(net: it.Inbound) -> dict[str, int]:
    """The kernel's handle of each table: the same after an adoption, new after a re-creation."""
    listing = it.nft_json(net.anchor, "list", "tables")
    return {o["table"]["name"]: o["table"]["handle"]
            for o in listing["nftables"] if "table" in o}  # type: ignore[attr-defined]


def table_names(net: it.Inbound) -> set[str]:
    listing = it.nft_json(net.anchor, "list", "tables")
    return {o["table"]["name"] for o in listing["nftables"] if "table" in o}  # type: ignore[attr-defined]


def test_restart_adopts_without_recreating_and_shutdown_deletes(net: it.Inbound) -> None:
    b1, b2 = net.backends
    it.serve(b1, tcp=[8080], udp=[5353])
    it.serve(b2, tcp=[7000, 7001])
    desired = [
        Entry(4, "tcp", 8080, 8080, b1.v4, "b1"), Entry(6, "tcp", 8080, 8080, b1.v6, "b1"),
        Entry(4, "udp", 5353, 5353, b1.v4, "b1"), Entry(4, "tcp", 7000, 7001, b2.v4, "b2"),
    ]
    with it.inside(net.anchor):
        first = NatTables(it.EXT)
        first.adopt()
        assert first.apply(desired).ok
    handles = table_handles(net)
    ruleset = net.anchor.run("nft", "list", "ruleset")

    loop = it.tcp_loop(net.lan, it.PROJECT4, 8080)
    try:
        wait_until(lambda: len(loop.lines) >= 30, 20, what="client loop running")
        first.close()  # the old worker is gone; the kernel keeps its state
        mark = len(loop.lines)
        wait_until(lambda: len(loop.lines) >= mark + 30, 20, what="loop runs without a writer")
        with it.inside(net.anchor):
            second = NatTables(it.EXT)
            adopted = second.adopt()
            again = second.apply(desired)
        mark = len(loop.lines)
        wait_until(lambda: len(loop.lines) >= mark + 30, 20, what="loop runs after adoption")
    finally:
        lines = loop.stop()
    assert not [line for line in lines if " fail " in line], lines[:5]

    assert table_handles(net) == handles, "tables were re-created instead of adopted"
    assert adopted == first.applied
    assert (again.added, again.removed, again.changed) == (0, 0, 0)
    assert net.anchor.run("nft", "list", "ruleset") == ruleset
    assert it.ask(net.lan, it.PROJECT4, "tcp", 7001) == f"b2 {it.CLIENT4} 7001"

    with it.inside(net.anchor):
        second.delete()
    assert table_names(net) == set()
    assert it.ask(net.lan, it.PROJECT4, "tcp", 8080) == "ERROR ConnectionRefusedError"
    second.close()


def test_adopt_converges_drifted_rules_and_keeps_elements(net: it.Inbound) -> None:
    b1 = net.backends[0]
    it.serve(b1, tcp=[8080])
    with it.inside(net.anchor):
        t = NatTables(it.EXT)
        t.adopt()
        assert t.apply([Entry(4, "tcp", 8080, 8080, b1.v4, "b1")]).ok
    t.close()
    canonical = net.anchor.run("nft", "list", "ruleset")
    # An older version (or a person) left a different rule set; the elements must survive.
    net.anchor.run("nft", "flush", "chain", "ip", "anchord_v4", "ext_in")
    net.anchor.run("nft", "add", "rule", "ip", "anchord_v4", "prerouting", "counter")
    assert net.anchor.run("nft", "list", "ruleset") != canonical
    with it.inside(net.anchor):
        t2 = NatTables(it.EXT)
        assert t2.adopt() == {(4, "tcp", 8080, 8080): b1.v4}
    assert net.anchor.run("nft", "list", "ruleset") == canonical
    assert it.ask(net.lan, it.PROJECT4, "tcp", 8080) == f"b1 {it.CLIENT4} 8080"
    t2.close()


def test_apply_after_tables_vanished_recovers(net: it.Inbound) -> None:
    b1 = net.backends[0]
    it.serve(b1, tcp=[8080])
    entry = [Entry(4, "tcp", 8080, 8080, b1.v4, "b1")]
    with it.inside(net.anchor):
        t = NatTables(it.EXT)
        t.adopt()
        assert t.apply(entry).ok
    net.anchor.run("nft", "delete", "table", "ip", "anchord_v4")
    moved = [Entry(4, "tcp", 8080, 8080, net.backends[1].v4, "b2")]
    with it.inside(net.anchor):
        failed = t.apply(moved)  # the in-memory state is stale: the transaction fails whole
        assert not failed.ok
        assert failed.error
        healed = t.apply(moved)  # next try re-lists, re-creates and converges
    assert healed.ok
    assert healed.added == 1
    it.serve(net.backends[1], tcp=[8080])
    assert it.ask(net.lan, it.PROJECT4, "tcp", 8080) == f"b2 {it.CLIENT4} 8080"
    t.close()
