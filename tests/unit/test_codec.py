"""The bus codec: round trips and every rejection, on both validation paths.

The codec validates the canonical shape its own encoder writes on a fast path
and anything else on the exact (slow) path; the tests here feed both, including
a bad value deep inside a 10 000-entry table, and pin the wire bytes to what
``dataclasses.asdict`` + ``json.dumps`` write (records, ``NamedTuple`` rows such as
``BackendGroup``, are JSON arrays that way too).
"""

from __future__ import annotations

import dataclasses
import json
import random
import typing
from dataclasses import dataclass
from typing import Any

import pytest

from bus.codec import MAX_MESSAGE_BYTES, DecodeError, _compiled, _Mismatch, decode, encode
from bus.events import (
    CATALOGUE,
    Backend,
    BackendGroup,
    BackendsDesired,
    Condition,
    Event,
    Hello,
    Lease,
    LeaseChanged,
    PortSpan,
    Rejection,
    WorkerStatus,
)

SAMPLES = [
    Hello(worker="dhcp", pid=42),
    WorkerStatus(worker="nat-writer", pid=7, started=1.5,
                 conditions=(Condition("nat_tables", True, "installed"),), received=3),
    BackendsDesired.of(
        generation=3, cause="event", event_time=1700000000.25,
        entries=(Backend(4, "tcp", 25, 25, "172.20.0.5", "mail"),
                 Backend(6, "udp", 49152, 49200, "fd00::5", "mail")),
        rejections=(Rejection("web", "bad token 'tcp/0'"),),
    ),
    LeaseChanged(lease=Lease(family=4, address="192.0.2.10/24", gateway="192.0.2.1",
                             lease_time=600.0, expiry=1700000600.0), previous="192.0.2.9/24"),
]


def frames_of(body: dict[str, object], topic: bytes = b"Hello/") -> list[bytes]:
    return [topic, json.dumps(body).encode()]


def good_envelope() -> dict[str, object]:
    return {"v": 1, "type": "Hello", "schema": 1, "ts": 1.0, "source": "x", "seq": 1,
            "data": {"worker": "dhcp", "pid": 1}}


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    frames = encode(event, "tester", 9, ts=123.5)
    assert frames[0] == type(event).TOPIC.encode()
    env = decode(frames)
    assert env.event == event
    assert (env.source, env.seq, env.ts) == ("tester", 9, 123.5)


def test_every_catalogue_topic_ends_with_delimiter() -> None:
    topics = list(CATALOGUE)
    assert all(t.endswith("/") for t in topics)
    # No topic is a prefix of another: prefix subscriptions never collide.
    assert not any(a != b and b.startswith(a) for a in topics for b in topics)


def test_good_envelope_decodes() -> None:
    assert decode(frames_of(good_envelope())).event == Hello(worker="dhcp", pid=1)


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"Hello/"], "frames"),
        ([b"Hello/", b"{}", b"x"], "frames"),
        ([b"\xff\xfe", b"{}"], "topic"),
        ([b"Nope/", b"{}"], "type"),
        ([b"Hello/", b"\x00garbage"], "json"),
        ([b"Hello/", b"[1,2]"], "envelope"),
        ([b"Hello/", b"[" * 100000], "json"),
    ],
)
def test_rejects_bad_frames(frames: list[bytes], reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(frames)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 2}, "version"),
        ({"schema": 99}, "version"),
        ({"type": "WorkerStatus"}, "type"),
        ({"seq": "1"}, "envelope"),
        ({"ts": None}, "envelope"),
        ({"source": 5}, "envelope"),
        ({"data": {"worker": "dhcp"}}, "field"),
        ({"data": {"worker": 5, "pid": 1}}, "field"),
        ({"data": {"worker": "dhcp", "pid": True}}, "field"),
        ({"data": {"worker": "dhcp", "pid": 1.5}}, "field"),
        ({"data": {"worker": "dhcp", "pid": 1, "extra": 1}}, "field"),
        ({"data": "nope"}, "field"),
    ],
)
def test_rejects_bad_envelopes(change: dict[str, object], reason: str) -> None:
    body = good_envelope() | change
    with pytest.raises(DecodeError) as err:
        decode(frames_of(body))
    assert err.value.reason == reason


def test_rejects_nested_wrong_types() -> None:
    frames = encode(SAMPLES[2], "t", 1)
    body = json.loads(frames[1])
    body["data"]["groups"][0][5][0] = "25"
    with pytest.raises(DecodeError) as err:
        decode([frames[0], json.dumps(body).encode()])
    assert err.value.reason == "field"
    assert "groups[0].ports[0]" in str(err.value)


def test_rejects_oversized_payload() -> None:
    body = b'{"v":1,' + b" " * MAX_MESSAGE_BYTES + b"}"
    with pytest.raises(DecodeError) as err:
        decode([b"Hello/", body])
    assert err.value.reason == "size"


def test_encode_refuses_oversized_event() -> None:
    huge = BackendsDesired(generation=1, cause="event", event_time=0,
                           rejections=(Rejection("x", "y" * MAX_MESSAGE_BYTES),))
    with pytest.raises(ValueError, match="over the bus limit"):
        encode(huge, "t", 1)


# --- the compiled codec: wire bytes, big tables, both validation paths -------

BIG = 10_000
DEEP = 98  # a group far from the start (of 100): the fast path has done most of the work
DEEP_PORT = 76


def big_table(n: int = BIG) -> BackendsDesired:
    """``n`` entries in groups of 100: 99 single ports and one range each."""
    groups = []
    for g in range(max(1, n // 100)):
        base = 10_000 + g * 200
        groups.append(BackendGroup(
            4 if g % 2 else 6, "udp" if g % 3 else "tcp", f"10.{g >> 8 & 255}.{g & 255}.1",
            f"proj-svc{g}-1", f"svc{g}", tuple(range(base, base + min(n, 100) - 1)),
            (PortSpan(base + 150, base + 160 + g % 3),)))
    return BackendsDesired(
        generation=7, cause="event", event_time=1700000000.125, groups=tuple(groups),
        rejections=tuple(Rejection(f"c{i}", "bad token", "label") for i in range(n // 100)),
        transit_network="proj_transit", transit_v4="172.20.0.2", transit_v6="fd00::2")


def reference_encode(event: Event, source: str, seq: int, ts: float) -> list[bytes]:
    """The encoder as it was before compilation: the wire format to keep."""
    envelope = {"v": 1, "type": type(event).__name__, "schema": type(event).VERSION, "ts": ts,
                "source": source, "seq": seq, "data": dataclasses.asdict(event)}
    body = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()
    return [type(event).TOPIC.encode(), body]


def sample_value(hint: Any, i: int) -> Any:
    """A valid value of a schema type (bus.events), different for different ``i``."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(sample_value(item, i + k) for k in range(2))
    if origin is not None:  # X | None
        return sample_value(next(a for a in typing.get_args(hint) if a is not type(None)), i)
    if dataclasses.is_dataclass(hint):
        return sample_of(typing.cast(type, hint), i)
    if isinstance(hint, type) and issubclass(hint, tuple):  # a NamedTuple record
        hints = typing.get_type_hints(hint)
        return hint(*(sample_value(hints[name], i + k)
                      for k, name in enumerate(hint._fields)))  # type: ignore[attr-defined]
    return {bool: i % 2 == 0, int: i, float: i + 0.5, str: f"s\u00e9{i}"}[hint]


def sample_of(cls: type, i: int = 1) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: sample_value(hints[f.name], i + k)
                  for k, f in enumerate(dataclasses.fields(cls))})


def body_of(frames: list[bytes]) -> dict[str, Any]:
    return dict(json.loads(frames[1]))


def decode_body(body: dict[str, Any], topic: bytes = b"BackendsDesired/") -> Any:
    return decode([topic, json.dumps(body).encode()]).event


@pytest.mark.parametrize("cls", list(CATALOGUE.values()), ids=lambda c: c.__name__)
def test_every_catalogue_event_round_trips_with_the_old_wire_bytes(cls: type[Event]) -> None:
    event = sample_of(cls)
    frames = encode(event, "tester", 3, ts=5.25)
    assert frames == reference_encode(event, "tester", 3, 5.25)
    decoded = decode(frames).event
    assert decoded == event
    assert hash(decoded) == hash(event)
    assert encode(decoded, "tester", 3, ts=5.25) == frames


def test_big_table_wire_bytes_and_round_trip() -> None:
    event = big_table()
    frames = encode(event, "discovery", 11, ts=1.5)
    assert frames == reference_encode(event, "discovery", 11, 1.5)
    decoded = decode(frames).event
    assert decoded == event
    assert isinstance(decoded, BackendsDesired)
    assert decoded.size == len(decoded.entries) == BIG
    assert all(type(g) is BackendGroup for g in decoded.groups)
    assert all(type(s) is PortSpan for g in decoded.groups for s in g.ranges)
    assert type(decoded.groups) is tuple and type(decoded.groups[0].ports) is tuple
    assert type(decoded.event_time) is float
    # The wire form: one array per group, its single ports a plain array of integers.
    row = body_of(frames)["data"]["groups"][0]
    assert row[:5] == [6, "tcp", "10.0.0.1", "proj-svc0-1", "svc0"]
    assert row[5][:2] == [10_000, 10_001] and row[6] == [[10_150, 10_160]]


def test_big_table_takes_the_fast_path() -> None:
    data = body_of(encode(big_table(), "t", 1))["data"]
    assert _compiled(BackendsDesired).fast(data) == big_table()


def test_decoded_events_are_real_frozen_dataclasses_and_records() -> None:
    decoded = decode(encode(big_table(300), "t", 1)).event
    assert isinstance(decoded, BackendsDesired)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.generation = 1  # type: ignore[misc]
    group = decoded.groups[1]
    with pytest.raises(AttributeError):
        group.address = "x"  # type: ignore[misc]
    assert group._replace(address="x").address == "x"
    entry = decoded.entries[1]
    assert type(entry) is Backend and entry._asdict()["address"] == entry.address


def test_entries_expand_the_groups_in_table_order() -> None:
    entries = [Backend(4, "udp", 53, 53, "10.0.0.3", "dns"),
               Backend(4, "tcp", 443, 443, "10.0.0.2", "web", "web"),
               Backend(4, "tcp", 80, 80, "10.0.0.2", "web", "web"),
               Backend(6, "tcp", 80, 80, "fd00::2", "web", "web"),
               Backend(4, "udp", 5000, 5010, "10.0.0.3", "dns")]
    event = BackendsDesired.of(generation=1, cause="poll", event_time=0, entries=entries)
    assert event.groups == (
        BackendGroup(4, "udp", "10.0.0.3", "dns", "", (53,), (PortSpan(5000, 5010),)),
        BackendGroup(4, "tcp", "10.0.0.2", "web", "web", (443, 80)),
        BackendGroup(6, "tcp", "fd00::2", "web", "web", (80,)),
    )
    assert event.entries == tuple(sorted(entries)) and event.size == 5


def test_non_ascii_strings_are_escaped_as_before() -> None:
    event = Hello(worker="d\u00e9couverte \u2603 \"q\" \\ \n", pid=1)
    frames = encode(event, "s\u00e9", 1, ts=1.0)
    assert frames == reference_encode(event, "s\u00e9", 1, 1.0)
    assert frames[1].isascii()
    assert decode(frames).event == event


def test_encode_ignores_extra_instance_attributes_and_rejects_foreign_objects() -> None:
    entry = Backend(4, "tcp", 1, 1, "10.0.0.1", "c")
    event = BackendsDesired.of(generation=1, cause="poll", event_time=0, entries=(entry,))
    assert event.entries == (entry,)  # cached in the instance dict
    object.__setattr__(event, "_cache", {"not": "a field"})
    frames = encode(event, "t", 1, ts=1.0)
    assert b"_cache" not in frames[1] and b"entries" not in frames[1]
    assert frames == reference_encode(
        BackendsDesired.of(generation=1, cause="poll", event_time=0,
                           entries=(Backend(4, "tcp", 1, 1, "10.0.0.1", "c"),)), "t", 1, 1.0)
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode(Hello(worker={1, 2}, pid=1), "t", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # allow_nan=False, as before
        encode(WorkerStatus(worker="w", pid=1, started=float("nan")), "t", 1)


@pytest.mark.parametrize(
    ("change", "path", "why"),
    [
        (lambda g: g[5].__setitem__(DEEP_PORT, "25"), f"ports[{DEEP_PORT}]",
         "expected an integer"),
        (lambda g: g[5].__setitem__(DEEP_PORT, True), f"ports[{DEEP_PORT}]",
         "expected an integer"),
        (lambda g: g.__setitem__(0, 4.0), "family", "expected an integer"),
        (lambda g: g.__setitem__(1, None), "proto", "expected a string"),
        (lambda g: g.__setitem__(2, ["10.0.0.1"]), "address", "expected a string"),
        (lambda g: g.__setitem__(5, None), "ports", "expected a list"),
        (lambda g: g.__setitem__(6, [[1]]), "ranges[0]", "expected 2..2 items, got 1"),
        (lambda g: g.__setitem__(6, [[1, "2"]]), "ranges[0].last", "expected an integer"),
        (lambda g: g.__setitem__(6, [{"first": 1, "last": 2}]), "ranges[0]",
         "expected an array"),
        (lambda g: g.__delitem__(slice(3, None)), "", "expected 4..7 items, got 3"),
        (lambda g: g.append(1), "", "expected 4..7 items, got 8"),
    ],
)
def test_a_wrong_group_deep_in_a_big_table_is_rejected_by_path(
    change: Any, path: str, why: str
) -> None:
    body = body_of(encode(big_table(), "t", 1))
    change(body["data"]["groups"][DEEP])
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    assert err.value.reason == "field"
    where = f"BackendsDesired.groups[{DEEP}]" + (f".{path}" if path else "")
    assert str(err.value) == f"{where}: {why}"


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ("not an array", f"BackendsDesired.groups[{DEEP}]: expected an array"),
        (None, f"BackendsDesired.groups[{DEEP}]: expected an array"),
        ({"family": 4}, f"BackendsDesired.groups[{DEEP}]: expected an array"),
    ],
)
def test_a_group_that_is_not_an_array_is_rejected(replacement: Any, message: str) -> None:
    body = body_of(encode(big_table(), "t", 1))
    body["data"]["groups"][DEEP] = replacement
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    assert (err.value.reason, str(err.value)) == ("field", message)


def test_the_first_bad_field_is_the_one_reported() -> None:
    body = body_of(encode(big_table(), "t", 1))
    body["data"]["groups"][DEEP][5][DEEP_PORT] = "y"
    body["data"]["groups"][DEEP][2] = 5
    body["data"]["rejections"][0]["reason"] = 5
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    # Field order, groups before rejections.
    assert str(err.value) == f"BackendsDesired.groups[{DEEP}].address: expected a string"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"groups": {"0": {}}}, "BackendsDesired.groups: expected a list"),
        ({"groups": None}, "BackendsDesired.groups: expected a list"),
        ({"event_time": "now"}, "BackendsDesired.event_time: expected a number"),
        ({"event_time": True}, "BackendsDesired.event_time: expected a number"),
        ({"event_time": 10 ** 400}, "BackendsDesired.event_time: expected a number"),
        ({"generation": 1.0}, "BackendsDesired.generation: expected an integer"),
        ({"transit_v4": 4}, "BackendsDesired.transit_v4: expected a string"),
    ],
)
def test_top_level_fields_of_a_big_table(change: dict[str, Any], message: str) -> None:
    body = body_of(encode(big_table(), "t", 1))
    body["data"].update(change)
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    assert (err.value.reason, str(err.value)) == ("field", message)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_rejected(literal: bytes) -> None:
    frames = encode(big_table(10), "t", 1, ts=2.5)
    bad_field = frames[1].replace(b'"event_time":1700000000.125', b'"event_time":' + literal)
    with pytest.raises(DecodeError) as err:
        decode([frames[0], bad_field])
    assert (err.value.reason, str(err.value)) == (
        "field", "BackendsDesired.event_time: expected a number")
    bad_ts = frames[1].replace(b'"ts":2.5', b'"ts":' + literal)
    with pytest.raises(DecodeError) as err:
        decode([frames[0], bad_ts])
    assert err.value.reason == "envelope"


def test_integers_too_big_for_a_float_or_for_python_are_decode_errors() -> None:
    # These used to escape decode() as OverflowError / ValueError and kill the worker.
    frames = encode(WorkerStatus(worker="w", pid=1, started=1.0), "t", 1, ts=2.5)
    huge = str(10 ** 400).encode()
    with pytest.raises(DecodeError) as err:
        decode([frames[0], frames[1].replace(b'"ts":2.5', b'"ts":' + huge)])
    assert err.value.reason == "envelope"
    with pytest.raises(DecodeError) as err:
        decode([frames[0], frames[1].replace(b'"started":1.0', b'"started":' + huge)])
    assert (err.value.reason, str(err.value)) == (
        "field", "WorkerStatus.started: expected a number")
    with pytest.raises(DecodeError) as err:
        decode([frames[0], frames[1].replace(b'"pid":1', b'"pid":' + b"9" * 5000)])
    assert err.value.reason == "json"


def test_valid_but_not_canonical_big_table_decodes_exactly() -> None:
    """Another key order, omitted defaults and ints for floats take the exact path."""
    event = big_table()
    body = body_of(encode(event, "t", 1))
    rng = random.Random(5)
    rejections = body["data"]["rejections"]
    rejections[0] = dict(sorted(rejections[0].items(), key=lambda _: rng.random()))
    del body["data"]["groups"][DEEP][4:]  # service, ports and ranges take their defaults
    del body["data"]["transit_v6"]
    body["data"]["event_time"] = 1700000000
    decoded = decode_body(body)
    short = event.groups[DEEP]._replace(service="", ports=(), ranges=())
    expected = dataclasses.replace(
        event, event_time=1700000000.0, transit_v6="",
        groups=(*event.groups[:DEEP], short, *event.groups[DEEP + 1:]))
    assert decoded == expected
    assert type(decoded.event_time) is float
    # Re-encoding writes field order again, whatever order the sender used.
    assert encode(decoded, "t", 1, ts=1.0) == reference_encode(expected, "t", 1, 1.0)


def test_ints_for_floats_in_a_nested_event() -> None:
    body = body_of(encode(SAMPLES[3], "t", 1))
    body["data"]["lease"]["lease_time"] = 600
    decoded = decode_body(body, LeaseChanged.TOPIC.encode())
    assert decoded == SAMPLES[3]
    assert type(decoded.lease.lease_time) is float


# Schema shapes the catalogue does not use yet but bus.events allows.


@dataclass(frozen=True)
class _Inner:
    n: int


@dataclass(frozen=True)
class _Shapes:
    maybe: str | None
    numbers: tuple[int, ...]
    maybe_inner: _Inner | None = None
    choice: int | str = 0


@dataclass(frozen=True)
class _Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")


def convert(cls: type, data: Any) -> Any:
    """What decode does for ``data``: fast path, else the exact one."""
    compiled = _compiled(cls)
    try:
        return compiled.fast(data)
    except _Mismatch:
        return compiled.slow(data, cls.__name__)


def test_optional_union_and_tuple_of_ints() -> None:
    good: dict[str, Any] = {"maybe": None, "numbers": [1, 2], "maybe_inner": {"n": 3},
                            "choice": "x"}
    assert convert(_Shapes, good) == _Shapes(None, (1, 2), _Inner(3), "x")
    assert convert(_Shapes, good | {"maybe": "y", "maybe_inner": None, "choice": 4}) \
        == _Shapes("y", (1, 2), None, 4)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"maybe": 1}, "_Shapes.maybe: int matches none of str | None"),
        ({"numbers": [1, True]}, "_Shapes.numbers[1]: expected an integer"),
        ({"numbers": [1, "2"]}, "_Shapes.numbers[1]: expected an integer"),
        ({"maybe_inner": {"n": "3"}}, "_Shapes.maybe_inner: dict matches none of "
                                      f"{__name__}._Inner | None"),
        ({"choice": 1.5}, "_Shapes.choice: float matches none of int | str"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError) as err:
            convert(_Shapes, good | bad)
        assert str(err.value) == message


def test_a_dataclass_with_post_init_still_runs_it() -> None:
    assert convert(_Checked, {"n": 1}) == _Checked(1)
    with pytest.raises(ValueError) as err:
        convert(_Checked, {"n": -1})
    assert type(err.value).__name__ == "_FieldError"  # becomes DecodeError("field")
    assert str(err.value) == "_Checked: negative"
