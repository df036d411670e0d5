"""10 000 map elements: applied, partly changed, entirely changed, still answering."""

from __future__ import annotations

from anchord.nft import NatTables
from bus.events import Backend as Entry
from tests.integration import inbound_topo as it

FIRST, N = 20000, 10_000
PROBES = (FIRST, FIRST + 5001, FIRST + N - 1)  # ports the backends actually listen on


def entries(net: it.Inbound, flip: set[int]) -> list[Entry]:
    """Port p goes to b1 if p is even, b2 if odd; ports in ``flip`` the other way."""
    b1, b2 = net.backends
    out = []
    for p in range(FIRST, FIRST + N):
        b = b1 if (p % 2 == 0) != (p in flip) else b2
        out.append(Entry(4, "tcp", p, p, b.v4, b.name))
    return out


def element_count(net: it.Inbound) -> int:
    listing = it.nft_json(net.anchor, "list", "map", "ip", "anchord_v4", "dnat_tcp")
    (m,) = [o["map"] for o in listing["nftables"] if "map" in o]  # type: ignore[attr-defined]
    return len(m.get("elem", []))


def answers(net: it.Inbound) -> dict[int, str]:
    return {p: it.ask(net.lan, it.PROJECT4, "tcp", p).split()[0] for p in PROBES}


def test_ten_thousand_elements_applied_and_changed(net: it.Inbound) -> None:
    for b in net.backends:
        it.serve(b, tcp=list(PROBES))
    with it.inside(net.anchor):
        t = NatTables(it.EXT)
        t.adopt()
    try:
        with it.inside(net.anchor):
            first = t.apply(entries(net, set()))
        assert first.ok, first
        assert first.added == N, first
        assert element_count(net) == N
        assert answers(net) == {FIRST: "b1", FIRST + 5001: "b2", FIRST + N - 1: "b2"}

        # 100 elements move, among them two probed ports: only they change.
        flip = set(range(FIRST, FIRST + 50)) | set(range(FIRST + 5001, FIRST + 5051))
        with it.inside(net.anchor):
            some = t.apply(entries(net, flip))
        assert some.ok, some
        assert (some.added, some.removed, some.changed) == (0, 0, 100), some
        assert len(some.stale) == 100
        assert element_count(net) == N
        assert answers(net) == {FIRST: "b2", FIRST + 5001: "b1", FIRST + N - 1: "b2"}

        # Every element moves in one transaction.
        everything = set(range(FIRST, FIRST + N)) - flip
        with it.inside(net.anchor):
            allc = t.apply(entries(net, everything))
        assert allc.ok, allc
        assert allc.changed == N, allc
        assert element_count(net) == N
        assert answers(net) == {FIRST: "b1", FIRST + 5001: "b2", FIRST + N - 1: "b1"}
    finally:
        t.close()
