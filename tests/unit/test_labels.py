"""Unit tests of anchord.labels: the label grammar, conflicts and the desired table."""

from __future__ import annotations

import pytest

from anchord.labels import (
    EXPOSE_LABEL,
    EXPOSE_V6_LABEL,
    ContainerView,
    LabelError,
    PortRange,
    build_table,
    parse_expose,
    parse_v6,
)
from bus.events import Backend


def view(name: str, expose: str | None, created: str = "2026-01-01T00:00:00.000000001Z",
         v4: str = "10.0.0.2", v6: str = "", running: bool = True, healthy: bool = True,
         expose_v6: str | None = None, owner: str = "") -> ContainerView:
    labels: list[tuple[str, str]] = []
    if expose is not None:
        labels.append((EXPOSE_LABEL, expose))
    if expose_v6 is not None:
        labels.append((EXPOSE_V6_LABEL, expose_v6))
    return ContainerView(id=name + "-id", name=name, created=created, labels=tuple(labels),
                         service=name, running=running, healthy=healthy, transit_v4=v4,
                         transit_v6=v6, network_owner=owner)


# --- grammar ---------------------------------------------------------------------------------


def test_single_ports_ranges_and_spaces() -> None:
    assert parse_expose("tcp/25,tcp/465, udp/4500 ,udp/49152-49200") == (
        PortRange("tcp", 25, 25), PortRange("tcp", 465, 465), PortRange("udp", 4500, 4500),
        PortRange("udp", 49152, 49200))
    assert parse_expose("  TCP / 80 - 81 ") == (PortRange("tcp", 80, 81),)
    assert parse_expose("tcp/1,tcp/65535") == (PortRange("tcp", 1, 1),
                                               PortRange("tcp", 65535, 65535))
    assert parse_expose("udp/7-7") == (PortRange("udp", 7, 7),)


@pytest.mark.parametrize(
    ("value", "token", "problem"),
    [
        ("sctp/80", "sctp/80", "not tcp or udp"),
        ("tcp/80,icmp/1", "icmp/1", "not tcp or udp"),
        ("tcp/0", "tcp/0", "outside 1-65535"),
        ("tcp/65536", "tcp/65536", "outside 1-65535"),
        ("udp/100-70000", "udp/100-70000", "outside 1-65535"),
        ("tcp/90-80", "tcp/90-80", "reversed"),
        ("tcp/http", "tcp/http", "expected proto/port"),
        ("80", "80", "expected proto/port"),
        ("tcp/80/90", "tcp/80/90", "expected proto/port"),
        ("tcp/-5", "tcp/-5", "expected proto/port"),
        ("tcp/80,,tcp/81", "", "empty entry"),
        ("tcp/80,", "", "empty entry"),
        ("", "", "empty"),
        ("   ", "   ", "empty"),
        ("tcp/80-90,tcp/85", "tcp/85", "overlaps tcp/80-90"),
    ],
)
def test_every_bad_token_is_named(value: str, token: str, problem: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_expose(value)
    assert info.value.token == token
    assert problem in str(info.value)


def test_same_port_on_two_protos_is_no_overlap() -> None:
    assert len(parse_expose("tcp/53,udp/53")) == 2


def test_v6_values() -> None:
    assert parse_v6(None) is True
    assert parse_v6("") is True
    assert parse_v6(" Auto ") is True
    assert parse_v6("off") is False
    with pytest.raises(LabelError, match="auto or off"):
        parse_v6("yes")


# --- table -----------------------------------------------------------------------------------


def test_table_mirrors_v6_unless_off() -> None:
    t = build_table([
        view("a", "tcp/443", v6="fd00::2"),
        view("b", "udp/53", v4="10.0.0.3", v6="fd00::3", expose_v6="off"),
        view("c", "tcp/80", v4="10.0.0.4"),  # no v6 address: v4 only, no error
    ], "p_transit")
    assert t.rejections == ()
    assert t.entries == (
        Backend(4, "tcp", 80, 80, "10.0.0.4", "c", "c"),
        Backend(4, "tcp", 443, 443, "10.0.0.2", "a", "a"),
        Backend(4, "udp", 53, 53, "10.0.0.3", "b", "b"),
        Backend(6, "tcp", 443, 443, "fd00::2", "a", "a"),
    )


def test_bad_label_rejects_that_container_only() -> None:
    t = build_table([view("good", "tcp/80"), view("bad", "tcp/81,tcp/0", v4="10.0.0.9")], "t")
    assert [e.container for e in t.entries] == ["good"]
    (r,) = t.rejections
    assert r.kind == "label"
    assert r.container == "bad"
    assert "bad" in r.reason
    assert "'tcp/0'" in r.reason
    assert EXPOSE_LABEL in r.reason


def test_bad_v6_label_is_named() -> None:
    t = build_table([view("x", "tcp/80", expose_v6="sometimes")], "t")
    assert t.entries == ()
    assert EXPOSE_V6_LABEL in t.rejections[0].reason
    assert "'sometimes'" in t.rejections[0].reason


def test_bad_label_reported_even_when_stopped() -> None:
    t = build_table([view("x", "tcp/99999", running=False)], "t")
    assert [r.kind for r in t.rejections] == ["label"]


def test_unlabelled_and_stopped_containers_are_silent() -> None:
    t = build_table([view("plain", None), view("stopped", "tcp/80", running=False, v4="")], "t")
    assert t == build_table([], "t")
    assert t.entries == ()
    assert t.rejections == ()


def test_no_transit_address_is_reported_with_owner() -> None:
    t = build_table([view("app", "tcp/80", v4="", owner="web-anchor")], "proj_transit")
    assert t.entries == ()
    (r,) = t.rejections
    assert r.kind == "no-transit"
    assert "proj_transit" in r.reason
    assert "belongs on the namespace owner" in r.reason
    assert "web-anchor" in r.reason


def test_conflict_first_created_wins_whatever_the_input_order() -> None:
    old = view("zeta", "tcp/80,tcp/443", created="2026-01-01T00:00:01.5Z", v4="10.0.0.2")
    new = view("alpha", "tcp/443,tcp/8080", created="2026-01-01T00:00:01.25Z", v4="10.0.0.3")
    # "alpha" was created 250 ms earlier; its shorter fraction must not fool the ordering.
    for order in ([old, new], [new, old]):
        t = build_table(order, "t")
        assert {(e.first, e.container) for e in t.entries} == {
            (80, "zeta"), (443, "alpha"), (8080, "alpha")}
        (r,) = t.rejections
        assert r.kind == "conflict"
        assert r.container == "zeta"
        assert "tcp/443" in r.reason
        assert "alpha" in r.reason


def test_conflict_tie_on_created_goes_by_name() -> None:
    t = build_table([view("b", "udp/500", v4="10.0.0.3"), view("a", "udp/500")], "t")
    assert [e.container for e in t.entries] == ["a"]
    assert [r.container for r in t.rejections] == ["b"]


def test_range_overlap_rejects_the_later_entry_whole() -> None:
    first = view("first", "udp/1000-2000", created="2026-01-01T00:00:00Z")
    second = view("second", "udp/1990-2010,udp/3000,tcp/1500", v4="10.0.0.3",
                  created="2026-01-01T00:00:01Z")
    t = build_table([first, second], "t")
    assert {(e.proto, e.first, e.last, e.container) for e in t.entries} == {
        ("udp", 1000, 2000, "first"), ("udp", 3000, 3000, "second"),
        ("tcp", 1500, 1500, "second")}
    (r,) = t.rejections
    assert "udp/1990-2010" in r.reason
    assert "udp/1000-2000" in r.reason


def test_stopped_first_container_holds_no_claim() -> None:
    first = view("first", "tcp/80", running=False, v4="", created="2026-01-01T00:00:00Z")
    second = view("second", "tcp/80", v4="10.0.0.3", created="2026-01-01T00:00:01Z")
    t = build_table([first, second], "t")
    assert [e.container for e in t.entries] == ["second"]
    assert t.rejections == ()


def test_unhealthy_winner_keeps_claim_but_has_no_backend() -> None:
    first = view("first", "tcp/80", healthy=False, created="2026-01-01T00:00:00Z")
    second = view("second", "tcp/80,tcp/81", v4="10.0.0.3", created="2026-01-01T00:00:01Z")
    t = build_table([first, second], "t")
    assert [(e.first, e.container) for e in t.entries] == [(81, "second")]
    assert [r.kind for r in t.rejections] == ["conflict"]


def test_table_is_deterministic() -> None:
    cs = [view(f"c{i}", f"tcp/{1000 + i}", v4=f"10.0.1.{i}", v6=f"fd00::{i}") for i in range(20)]
    assert build_table(cs, "t") == build_table(list(reversed(cs)), "t")


def test_thousands_of_ports_conflicts_name_the_earliest_holder() -> None:
    """Labels of many single ports are checked against an index, not pairwise: the
    conflicts and their reasons are those of the pairwise rule."""
    a = view("a", ",".join(f"tcp/{p}" for p in range(1000, 2000)),
             created="2026-01-01T00:00:01Z", v4="10.0.0.1")
    b = view("b", "tcp/1500-1600, tcp/3000", created="2026-01-01T00:00:02Z", v4="10.0.0.2")
    c = view("c", "tcp/3000,tcp/4000-4010", created="2026-01-01T00:00:03Z", v4="10.0.0.3")
    d = view("d", "tcp/4005,udp/1500", created="2026-01-01T00:00:04Z", v4="10.0.0.4")
    t = build_table([d, c, b, a], "t")
    assert len(t.entries) == 1000 + 1 + 1 + 1
    assert {(e.proto, e.first, e.last, e.container) for e in t.entries
            if e.container != "a"} == {("tcp", 3000, 3000, "b"), ("tcp", 4000, 4010, "c"),
                                       ("udp", 1500, 1500, "d")}
    assert [r.reason for r in t.rejections] == [
        "tcp/1500-1600 of container b conflicts with tcp/1500 of container a, created "
        "earlier, which keeps it",
        "tcp/3000 of container c conflicts with tcp/3000 of container b, created earlier, "
        "which keeps it",
        "tcp/4005 of container d conflicts with tcp/4000-4010 of container c, created "
        "earlier, which keeps it",
    ]


def test_an_unchanged_container_keeps_the_same_group_objects() -> None:
    """What lets discovery and the nat-writer compare tables cheaply (by identity first)."""
    big = view("big", ",".join(f"udp/{p}" for p in range(20000, 25000)), v4="10.0.0.9")
    first = build_table([big, view("web", "tcp/80", v4="10.0.0.2")], "t")
    second = build_table([big, view("web", "tcp/80", v4="10.0.0.3")], "t")
    (big_1,) = (g for g in first.groups if g.container == "big")
    (big_2,) = (g for g in second.groups if g.container == "big")
    assert big_1 is big_2
    assert len(big_1.ports) == 5000
    assert [g.address for g in second.groups if g.container == "web"] == ["10.0.0.3"]


def test_thousands_of_ranges_conflicts_name_the_earliest_holder() -> None:
    a = view("a", ",".join(f"udp/{p}-{p + 1}" for p in range(10000, 16000, 3)),
             created="2026-01-01T00:00:01Z", v4="10.0.0.1")
    b = view("b", "udp/12001,udp/20000-20010,udp/15990-16100", created="2026-01-01T00:00:02Z",
             v4="10.0.0.2")
    t = build_table([b, a], "t")
    assert len(t.entries) == 2000 + 1
    assert [r.reason for r in t.rejections] == [
        "udp/12001 of container b conflicts with udp/12001-12002 of container a, created "
        "earlier, which keeps it",
        "udp/15990-16100 of container b conflicts with udp/15991-15992 of container a, created "
        "earlier, which keeps it",
    ]


def test_ipv4_does_not_wait_for_health_where_the_route_leads_to_anchord() -> None:
    """Docker's first healthcheck comes an interval after the start; where the transit
    gateway is anchord's, IPv4 replies route through anchord from the first instant."""
    import dataclasses

    starting = view("web", "tcp/80,udp/53", v6="fd00::2", healthy=False)
    assert build_table([starting], "transit").entries == ()
    early = dataclasses.replace(starting, route_v4=True)
    assert {(e.family, e.proto) for e in build_table([early], "transit").entries} == {
        (4, "tcp"), (4, "udp")}  # IPv6 still waits for health (its route is Docker's)
    healthy = dataclasses.replace(early, healthy=True)
    assert {e.family for e in build_table([healthy], "transit").entries} == {4, 6}
    # A conflict loser stays a loser whatever its route.
    loser = dataclasses.replace(view("late", "tcp/80", created="2026-02-01T00:00:00Z"),
                                healthy=False, route_v4=True)
    table = build_table([early, loser], "transit")
    assert {e.container for e in table.entries} == {"web"}
    assert [r.kind for r in table.rejections] == ["conflict"]


def test_a_family_whose_route_was_reported_does_not_wait_for_health() -> None:
    """The service-anchor's route report (anchord.routesignal) exposes that family at once,
    the other still waits; a report of a family the container has no address of is void."""
    import dataclasses

    starting = view("web", "tcp/80", v6="fd00::2", healthy=False)
    v6_only = dataclasses.replace(starting, routes_ready=frozenset({6}))
    assert {(e.family, e.address) for e in build_table([v6_only], "transit").entries} == {
        (6, "fd00::2")}
    both = dataclasses.replace(starting, routes_ready=frozenset({4, 6}))
    assert {e.family for e in build_table([both], "transit").entries} == {4, 6}
    no_v6 = dataclasses.replace(view("web", "tcp/80", healthy=False),
                                routes_ready=frozenset({6}))
    assert build_table([no_v6], "transit").entries == ()
    # A partial conflict winner too: only its won ranges, only the reported family.
    first = view("first", "tcp/80", created="2026-01-01T00:00:00Z")
    later = dataclasses.replace(
        view("later", "tcp/80,tcp/81", v6="fd00::3", created="2026-02-01T00:00:00Z",
             healthy=False), routes_ready=frozenset({6}))
    entries = build_table([first, later], "transit").entries
    assert {(e.container, e.family, e.first) for e in entries} == {
        ("first", 4, 80), ("later", 6, 81)}
