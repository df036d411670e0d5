"""Desired-vs-applied logic of anchord.nft: no kernel, no root."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from anchord import nft as nft_module
from anchord.nft import (
    Diff,
    NatTables,
    NftError,
    counts,
    desired_from,
    diff,
    parse_table_json,
    render_diff,
    render_skeleton,
    stale_backends,
)
from bus.events import Backend, BackendGroup, EntryCount, StaleBackend, group_entries


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
        "delete element ip anchord_v4 dnat_tcp { 81 }",
        "delete element ip anchord_v4 udp_ranges { 1000-2000 }",
        "add element ip anchord_v4 dnat_tcp { 82 : 10.0.0.4, 81 : 10.0.0.3 }",
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
        {"map": {"family": "ip", "name": "dnat_tcp", "table": "anchord_v4", "type": "inet_service",
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
    assert "flush table" not in text  # elements survive
    assert "flush map" not in text
    assert "192." not in text
    assert "10." not in text


class _RecordingNft:
    """Stands for libnftables: keeps every buffer, commits nothing."""

    def __init__(self) -> None:
        self.buffers: list[str] = []

    def run(self, commands: str, json_output: bool = False) -> str:
        self.buffers.append(commands)
        return ""

    def close(self) -> None:
        pass


def ops(buffer: str) -> list[tuple[str, frozenset[str]]]:
    """A transaction's lines as (command, its elements): element order does not matter."""
    out = []
    for line in buffer.splitlines():
        head, _, elements = line.partition("{")
        out.append((head, frozenset(e.strip() for e in elements.rstrip(" }").split(","))))
    return out


def recording_tables() -> tuple[NatTables, _RecordingNft]:
    nft = _RecordingNft()
    tables = NatTables("ext", nft=nft)  # type: ignore[arg-type]
    tables.installed = True
    return tables, nft


def test_incremental_apply_matches_the_full_rules_step_by_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Random changes (moves, new/removed ports, ranges, conflicts, bad addresses): after
    every apply the maps, the changes and the stale backends are what the full rebuild
    gives, and most applies did not rebuild."""
    rebuilds = []
    full = nft_module._build

    def counting_build(entries: Any) -> Any:
        rebuilds.append(1)
        return full(entries)

    rng = random.Random(7)
    # container -> (address, single ports, ranges): each has its own block of ports, and
    # now and then takes a port of a neighbour's block (a conflict) or gives it back.
    state = {f"c{i}": (f"10.0.0.{i + 2}", set(rng.sample(range(1000 + 100 * i, 1100 + 100 * i),
                                                         30)), [(2000 + 40 * i, 2010 + 40 * i)])
             for i in range(8)}
    tables, nft = recording_tables()
    previous: dict[tuple[int, str, int, int], str] = {}
    undo: tuple[str, tuple[str, set[int], list[tuple[int, int]]]] | None = None
    for step in range(400):
        if undo is not None:  # a conflict or a bad address lasts one step
            state[undo[0]], undo = undo[1], None
        i = rng.randrange(8)
        name = f"c{i}"
        addr, ports, spans = state[name]
        action = rng.random()
        if action < 0.4:
            addr = f"10.0.{rng.randrange(2)}.{rng.randrange(2, 40)}"  # a restart
        elif action < 0.7:
            ports.symmetric_difference_update({rng.randrange(1000 + 100 * i, 1100 + 100 * i)})
        elif action < 0.75:
            undo = (name, (addr, set(ports), spans))
            ports.add(rng.randrange(1000, 1800))  # maybe a neighbour's: a conflict
        elif action < 0.8:
            undo = (name, (addr, ports, spans))
            spans = [(a + 35, b + 35) for a, b in spans]  # overlaps a neighbour's range
        elif action < 0.82:
            undo = (name, (addr, ports, spans))
            addr = "not-an-address"
        state[name] = (addr, ports, spans)
        entries = [Backend(4, "tcp", p, p, a, n) for n, (a, ps, _) in state.items()
                   for p in sorted(ps)]
        entries += [Backend(4, "udp", f, la, a, n) for n, (a, _, ss) in state.items()
                    for f, la in ss]
        rng.shuffle(entries)
        monkeypatch.setattr(nft_module, "_build", counting_build)
        result = tables.apply(entries)
        monkeypatch.setattr(nft_module, "_build", full)
        expected, problems = desired_from(
            e for g in group_entries(entries) for e in g.backends())
        assert result.ok, result.error
        assert tables.applied == expected, f"step {step}"
        d = diff(previous, expected)
        assert (result.added, result.removed, result.changed) == (
            len(d.add), len(d.remove), len(d.change)), f"step {step}"
        assert set(result.stale) == set(stale_backends(previous, expected))
        assert result.counts == counts(expected)
        assert len(result.skipped) == len(problems)
        if d:
            assert ops(nft.buffers[-1]) == ops(render_diff(d))
        previous = expected
    # Rebuilt only while a conflict or a bad address is in the table, and after it.
    assert 0 < len(rebuilds) < 300, len(rebuilds)


def test_incremental_apply_of_one_moved_backend_touches_one_key() -> None:
    tables, nft = recording_tables()
    big = BackendGroup(4, "tcp", "10.0.0.2", "filler", "", tuple(range(10_000, 20_000)))
    moving = BackendGroup(4, "tcp", "10.0.0.3", "web", "", (80,))
    assert tables.apply_groups((big, moving)).added == 10_001
    result = tables.apply_groups((big, moving._replace(address="10.0.0.4")))
    assert (result.added, result.removed, result.changed) == (0, 0, 1)
    assert nft.buffers[-1] == ("delete element ip anchord_v4 dnat_tcp { 80 }\n"
                               "add element ip anchord_v4 dnat_tcp { 80 : 10.0.0.4 }\n")
    assert result.stale == (StaleBackend(4, "tcp", 80, 80, "10.0.0.3"),)
    assert result.counts[0] == EntryCount(4, "tcp", 10_001)


class _RefusingNft(_RecordingNft):
    """libnftables that refuses any transaction naming ``bad``."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    def run(self, commands: str, json_output: bool = False) -> str:
        if self.bad in commands:
            raise NftError(f"Could not process rule: {self.bad}")
        return super().run(commands, json_output)


def test_one_element_the_kernel_refuses_does_not_block_the_others() -> None:
    nft = _RefusingNft("10.0.0.66")
    tables = NatTables("ext", nft=nft)  # type: ignore[arg-type]
    tables.installed = True
    good = [Backend(4, "tcp", p, p, "10.0.0.5", "web") for p in (80, 443)]
    result = tables.apply([*good, Backend(4, "udp", 53, 53, "10.0.0.66", "dns")])
    assert result.ok
    assert tables.installed
    assert set(tables.applied) == {(4, "tcp", 80, 80), (4, "tcp", 443, 443)}
    assert any("refused by nft" in s and "udp/53-53" in s for s in result.skipped)
    # The next change still goes in.
    nft.bad = "never-matches"
    again = tables.apply([*good, Backend(4, "tcp", 8080, 8080, "10.0.0.5", "web")])
    assert again.ok
    assert (4, "tcp", 8080, 8080) in tables.applied
    assert (4, "udp", 53, 53) not in tables.applied


def test_a_refused_batch_of_only_bad_changes_re_lists_the_tables() -> None:
    nft = _RefusingNft("dnat_tcp")  # as if the tables were gone: everything refused
    tables = NatTables("ext", nft=nft)  # type: ignore[arg-type]
    tables.installed = True
    result = tables.apply([Backend(4, "tcp", p, p, "10.0.0.5", "web") for p in (80, 443)])
    assert not result.ok
    assert not tables.installed
    assert tables.applied == {}
