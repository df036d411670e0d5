"""Desired-vs-applied logic of anchord.nft: no kernel, no root."""

from __future__ import annotations

import json

from anchord.nft import (
    Diff,
    counts,
    desired_from,
    diff,
    parse_table_json,
    render_diff,
    render_skeleton,
    stale_backends,
)
from bus.events import Backend, EntryCount, StaleBackend


def e(family: int, proto: str, first: int, last: int, addr: str, name: str = "c") -> Backend:
    return Backend(family, proto, first, last, addr, name)


def test_desired_normalises_and_keys_by_family_proto_ports() -> None:
    table, problems = desired_from([
        e(4, "tcp", 443, 443, "10.0.0.2"),
        e(6, "tcp", 443, 443, "FD00:0::0002"),
        e(4, "udp", 49152, 49200, "10.0.0.3"),
    ])
    assert problems == []
    assert table == {
        (4, "tcp", 443, 443): "10.0.0.2",
        (6, "tcp", 443, 443): "fd00::2",
        (4, "udp", 49152, 49200): "10.0.0.3",
    }


def test_desired_skips_bad_and_overlapping_entries_first_wins() -> None:
    table, problems = desired_from([
        e(4, "tcp", 80, 80, "10.0.0.1", "first"),
        e(4, "tcp", 80, 80, "10.0.0.9", "second"),  # same port
        e(4, "tcp", 70, 90, "10.0.0.9", "range-over-single"),
        e(4, "tcp", 100, 200, "10.0.0.1", "range"),
        e(4, "tcp", 150, 150, "10.0.0.9", "single-in-range"),
        e(4, "tcp", 200, 300, "10.0.0.9", "range-over-range"),
        e(4, "udp", 80, 80, "10.0.0.9", "other-proto-ok"),
        e(6, "tcp", 80, 80, "fd00::1", "other-family-ok"),
        e(4, "tcp", 1, 1, "fd00::1", "family-mismatch"),
        e(4, "tcp", 0, 0, "10.0.0.1", "port-zero"),
        e(4, "tcp", 9, 8, "10.0.0.1", "reversed"),
        e(4, "sctp", 9, 9, "10.0.0.1", "proto"),
        e(4, "tcp", 9, 9, "not-an-ip", "address"),
    ])
    assert table == {
        (4, "tcp", 80, 80): "10.0.0.1",
        (4, "tcp", 100, 200): "10.0.0.1",
        (4, "udp", 80, 80): "10.0.0.9",
        (6, "tcp", 80, 80): "fd00::1",
    }
    assert len(problems) == 9
    for name in ("second", "range-over-single", "single-in-range", "range-over-range",
                 "family-mismatch", "port-zero", "reversed", "proto", "address"):
        assert any(f"({name})" in p for p in problems), name


def test_diff_add_remove_change() -> None:
    applied = {(4, "tcp", 80, 80): "10.0.0.1", (4, "tcp", 81, 81): "10.0.0.1",
               (4, "udp", 1000, 2000): "10.0.0.2"}
    desired = {(4, "tcp", 80, 80): "10.0.0.1", (4, "tcp", 81, 81): "10.0.0.3",
               (4, "tcp", 82, 82): "10.0.0.4"}
    d = diff(applied, desired)
    assert d.add == {(4, "tcp", 82, 82): "10.0.0.4"}
    assert d.remove == {(4, "udp", 1000, 2000): "10.0.0.2"}
    assert d.change == {(4, "tcp", 81, 81): ("10.0.0.1", "10.0.0.3")}
    assert not diff(desired, desired)


def test_render_diff_one_transaction_deletes_first_and_splits_maps() -> None:
    d = Diff(add={(4, "tcp", 82, 82): "10.0.0.4", (6, "udp", 5000, 5010): "fd00::4"},
             remove={(4, "udp", 1000, 2000): "10.0.0.2"},
             change={(4, "tcp", 81, 81): ("10.0.0.1", "10.0.0.3")})
    lines = render_diff(d).splitlines()
    assert lines == [
        "delete element ip anchord_v4 tcp_ports { 81 }",
        "delete element ip anchord_v4 udp_ranges { 1000-2000 }",
        "add element ip anchord_v4 tcp_ports { 82 : 10.0.0.4, 81 : 10.0.0.3 }",
        "add element ip6 anchord_v6 udp_ranges { 5000-5010 : fd00::4 }",
    ]


def test_stale_backends_vanished_moved_and_shrunk() -> None:
    applied = {(4, "tcp", 80, 80): "10.0.0.1",   # moves
               (4, "tcp", 81, 81): "10.0.0.1",   # stays
               (4, "udp", 1000, 2000): "10.0.0.2",  # shrinks to 1000-1500
               (6, "tcp", 443, 443): "fd00::1"}  # vanishes
    desired = {(4, "tcp", 80, 80): "10.0.0.5", (4, "tcp", 81, 81): "10.0.0.1",
               (4, "udp", 1000, 1500): "10.0.0.2"}
    assert stale_backends(applied, desired) == [
        StaleBackend(4, "tcp", 80, 80, "10.0.0.1"),
        StaleBackend(4, "udp", 1501, 2000, "10.0.0.2"),
        StaleBackend(6, "tcp", 443, 443, "fd00::1"),
    ]


def test_stale_range_split_by_a_kept_single_port() -> None:
    applied = {(4, "tcp", 100, 200): "10.0.0.1"}
    desired = {(4, "tcp", 150, 150): "10.0.0.1"}
    assert stale_backends(applied, desired) == [
        StaleBackend(4, "tcp", 100, 149, "10.0.0.1"),
        StaleBackend(4, "tcp", 151, 200, "10.0.0.1"),
    ]


def test_counts_always_has_all_four_series() -> None:
    assert counts({(4, "tcp", 80, 80): "10.0.0.1", (4, "tcp", 90, 99): "10.0.0.1"}) == (
        EntryCount(4, "tcp", 2), EntryCount(4, "udp", 0),
        EntryCount(6, "tcp", 0), EntryCount(6, "udp", 0))


def test_parse_table_json_reads_plain_and_interval_elements() -> None:
    listing = json.dumps({"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "ip", "name": "anchord_v4", "handle": 7}},
        {"map": {"family": "ip", "name": "tcp_ports", "table": "anchord_v4", "type": "inet_service",
                 "map": "ipv4_addr", "elem": [[80, "10.0.0.1"], [443, "10.0.0.2"]]}},
        {"map": {"family": "ip", "name": "udp_ranges", "table": "anchord_v4",
                 "elem": [[{"range": [1000, 2000]}, "10.0.0.3"]]}},
        {"chain": {"family": "ip", "table": "anchord_v4", "name": "prerouting"}},
    ]})
    handle, table = parse_table_json(listing, 4)
    assert handle == 7
    assert table == {(4, "tcp", 80, 80): "10.0.0.1", (4, "tcp", 443, 443): "10.0.0.2",
                     (4, "udp", 1000, 2000): "10.0.0.3"}


def test_skeleton_never_names_an_address_and_quotes_the_interface() -> None:
    text = render_skeleton("anchord-ext", 4) + render_skeleton("anchord-ext", 6)
    assert '"anchord-ext"' in text
    assert "flush table" not in text and "flush map" not in text  # elements survive
    assert "192." not in text and "10." not in text
