"""The bus codec: round trips, the wire bytes, and every rejection with its reason and path.

The wire bytes are pinned twice: literally for a few events (golden bytes), and for
every catalogue event against an encoder written here in plain Python (struct fields
as a JSON object in field order, ``NamedTuple`` records such as ``BackendGroup`` as
arrays, ``json.dumps`` without spaces and with UTF-8 as is). Rejections include a bad
value deep inside a 10 000-entry table, reported by its path in field names.
"""

from __future__ import annotations

import json
import random
import typing
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.codec import MAX_MESSAGE_BYTES, DecodeError, _field_message, decode, encode
from bus.events import (
    CATALOGUE,
    Backend,
    BackendGroup,
    BackendsDesired,
    Condition,
    EntryCount,
    Event,
    Hello,
    Lease,
    LeaseChanged,
    NatApplied,
    PortSpan,
    Rejection,
    WorkerStatus,
    _Strict,
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
        ([b"Hello/", b"[" * 100000], "envelope"),  # an array: refused at its first byte
        ([b"Hello/", b'{"v":1,"x":' + b"[" * 100000], "json"),  # nested too deep
        ([b"Hello/", b'{"v":1,"ts":NaN}'], "json"),  # not JSON (Python's json took it)
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
        ({"data": None}, "field"),
        ({"schema": 2, "data": {"other": "shape"}}, "version"),  # the schema before fields
        ({"v": True}, "version"),
        ({"extra": {"ignored": [1]}}, None),  # unknown envelope keys are room for additions
    ],
)
def test_rejects_bad_envelopes(change: dict[str, object], reason: str | None) -> None:
    body = good_envelope() | change
    if reason is None:
        assert decode(frames_of(body)).event == Hello(worker="dhcp", pid=1)
        return
    with pytest.raises(DecodeError) as err:
        decode(frames_of(body))
    assert err.value.reason == reason


def test_missing_data_is_a_field_error() -> None:
    body = good_envelope()
    del body["data"]
    with pytest.raises(DecodeError) as err:
        decode(frames_of(body))
    assert (err.value.reason, str(err.value)) == ("field", "Hello: missing")


def test_rejects_nested_wrong_types() -> None:
    frames = encode(SAMPLES[2], "t", 1)
    body = json.loads(frames[1])
    body["data"]["groups"][0][5][0] = "25"
    with pytest.raises(DecodeError) as err:
        decode([frames[0], json.dumps(body).encode()])
    assert err.value.reason == "field"
    assert str(err.value) == "BackendsDesired.groups[0].ports[0]: expected `int`, got `str`"


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


# --- wire bytes, big tables, paths ---------------------------------------------

BIG = 10_000
DEEP = 98  # a group far from the start (of 100)
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


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python, without msgspec: structs as objects in field order,
    records (``NamedTuple``) and tuples as arrays."""
    if isinstance(value, _Strict):
        return {name: plain(getattr(value, name)) for name in type(value).__struct_fields__}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def reference_encode(event: Event, source: str, seq: int, ts: float) -> list[bytes]:
    """The wire format to keep, written independently of the codec."""
    envelope = {"v": 1, "type": type(event).__name__, "schema": type(event).VERSION, "ts": ts,
                "source": source, "seq": seq, "data": plain(event)}
    body = json.dumps(envelope, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode()
    return [type(event).TOPIC.encode(), body]


def sample_value(hint: Any, i: int) -> Any:
    """A valid value of a schema type (bus.events), different for different ``i``."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(sample_value(item, i + k) for k in range(2))
    if origin is not None:  # X | None
        return sample_value(next(a for a in typing.get_args(hint) if a is not type(None)), i)
    if isinstance(hint, type) and issubclass(hint, _Strict):
        return sample_of(hint, i)
    if isinstance(hint, type) and issubclass(hint, tuple):  # a NamedTuple record
        hints = typing.get_type_hints(hint)
        return hint(*(sample_value(hints[name], i + k)
                      for k, name in enumerate(hint._fields)))  # type: ignore[attr-defined]
    return {bool: i % 2 == 0, int: i, float: i + 0.5, str: f"s\u00e9{i}"}[hint]


def sample_of(cls: type, i: int = 1) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: sample_value(hints[f.name], i + k)
                  for k, f in enumerate(msgspec.structs.fields(cls))})


def body_of(frames: list[bytes]) -> dict[str, Any]:
    return dict(json.loads(frames[1]))


def decode_body(body: dict[str, Any], topic: bytes = b"BackendsDesired/") -> Any:
    return decode([topic, json.dumps(body).encode()]).event


# Golden bytes: what every worker of this version writes and reads. A change here is a
# change of the wire format (bump ENVELOPE_VERSION or the event's VERSION if old
# readers would misread it).
GOLDEN = [
    (Hello(worker="dhcp", pid=42), "dhcp", 1, 1700000000.5,
     b'{"v":1,"type":"Hello","schema":1,"ts":1700000000.5,"source":"dhcp","seq":1,'
     b'"data":{"worker":"dhcp","pid":42}}'),
    (BackendsDesired.of(
        generation=3, cause="event", event_time=1700000000.25,
        entries=(Backend(4, "tcp", 25, 25, "172.20.0.5", "mail", "mail"),
                 Backend(4, "tcp", 587, 587, "172.20.0.5", "mail", "mail"),
                 Backend(6, "udp", 49152, 49200, "fd00::5", "m\u00e9l")),
        rejections=(Rejection("web", "bad token 'tcp/0'"),), transit_v4="172.20.0.2"),
     "discovery", 7, 2.0,
     b'{"v":1,"type":"BackendsDesired","schema":2,"ts":2.0,"source":"discovery","seq":7,'
     b'"data":{"generation":3,"cause":"event","event_time":1700000000.25,"groups":['
     b'[4,"tcp","172.20.0.5","mail","mail",[25,587],[]],'
     b'[6,"udp","fd00::5","m\xc3\xa9l","",[],[[49152,49200]]]],'
     b'"rejections":[{"container":"web","reason":"bad token \'tcp/0\'","kind":"label"}],'
     b'"transit_network":"","transit_v4":"172.20.0.2","transit_v6":""}}'),
    (NatApplied(generation=3, ok=True, duration=0.0125, event_time=0,
                counts=(EntryCount(4, "tcp", 2),), stale=()), "nat-writer", 9, 3.25,
     b'{"v":1,"type":"NatApplied","schema":1,"ts":3.25,"source":"nat-writer","seq":9,'
     b'"data":{"generation":3,"ok":true,"duration":0.0125,"event_time":0,"added":0,'
     b'"removed":0,"changed":0,"counts":[{"family":4,"proto":"tcp","count":2}],"stale":[],'
     b'"error":"","tables":true}}'),
]


@pytest.mark.parametrize(("event", "source", "seq", "ts", "body"), GOLDEN,
                         ids=lambda v: type(v).__name__ if isinstance(v, Event) else "")
def test_golden_wire_bytes(event: Event, source: str, seq: int, ts: float, body: bytes) -> None:
    frames = encode(event, source, seq, ts=ts)
    assert frames == [type(event).TOPIC.encode(), body]
    assert decode(frames).event == event
    assert frames == reference_encode(event, source, seq, ts)


@pytest.mark.parametrize("cls", list(CATALOGUE.values()), ids=lambda c: c.__name__)
def test_every_catalogue_event_round_trips_with_the_reference_wire_bytes(
    cls: type[Event],
) -> None:
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
    assert type(decoded.groups) is tuple
    assert type(decoded.groups[0].ports) is tuple
    assert type(decoded.event_time) is float
    # The wire form: one array per group, its single ports a plain array of integers.
    row = body_of(frames)["data"]["groups"][0]
    assert row[:5] == [6, "tcp", "10.0.0.1", "proj-svc0-1", "svc0"]
    assert row[5][:2] == [10_000, 10_001]
    assert row[6] == [[10_150, 10_160]]


def test_decoded_events_are_immutable_structs_and_records() -> None:
    decoded = decode(encode(big_table(300), "t", 1)).event
    assert isinstance(decoded, BackendsDesired)
    with pytest.raises(AttributeError):
        decoded.generation = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        decoded.rejections[0].reason = "x"  # type: ignore[misc]
    group = decoded.groups[1]
    with pytest.raises(AttributeError):
        group.address = "x"  # type: ignore[misc]
    assert group._replace(address="x").address == "x"
    entry = decoded.entries[1]
    assert type(entry) is Backend
    assert entry._asdict()["address"] == entry.address
    assert msgspec.structs.replace(decoded, generation=8).generation == 8
    again = decode(encode(big_table(300), "t", 1)).event
    assert hash(again) == hash(decoded)  # hashable
    assert again in {decoded}


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
    assert event.entries == tuple(sorted(entries))
    assert event.size == 5


def test_non_ascii_is_utf8_on_the_wire() -> None:
    """UTF-8 as is (the encoder before msgspec wrote \\u escapes); any JSON reader reads both."""
    event = Hello(worker="d\u00e9couverte \u2603 \"q\" \\ \n \x01", pid=1)
    frames = encode(event, "s\u00e9", 1, ts=1.0)
    assert frames == reference_encode(event, "s\u00e9", 1, 1.0)
    assert "d\u00e9couverte \u2603".encode() in frames[1]
    assert b'\\"q\\" \\\\ \\n \\u0001' in frames[1]  # JSON's own escapes stay
    assert json.loads(frames[1])["data"]["worker"] == event.worker
    assert decode(frames).event == event
    escaped = [frames[0], json.dumps(json.loads(frames[1]), ensure_ascii=True).encode()]
    assert decode(escaped).event == event


def test_encode_leaves_the_cached_entries_out_and_refuses_what_no_one_could_read() -> None:
    entry = Backend(4, "tcp", 1, 1, "10.0.0.1", "c")
    event = BackendsDesired.of(generation=1, cause="poll", event_time=0, entries=(entry,))
    assert event.entries == (entry,)  # cached in the instance dict
    frames = encode(event, "t", 1, ts=1.0)
    assert b"entries" not in frames[1]
    assert frames == reference_encode(
        BackendsDesired.of(generation=1, cause="poll", event_time=0,
                           entries=(Backend(4, "tcp", 1, 1, "10.0.0.1", "c"),)), "t", 1, 1.0)
    with pytest.raises(TypeError, match="unsupported"):
        encode(Hello(worker=object(), pid=1), "t", 1)  # type: ignore[arg-type]
    for bad in (float("nan"), float("inf")):  # msgspec would write null: refused here
        with pytest.raises(ValueError, match="cannot be sent") as err:
            encode(WorkerStatus(worker="w", pid=1, started=bad), "t", 1)
        assert str(err.value) == ("WorkerStatus cannot be sent: "
                                  "WorkerStatus.started: expected `float`, got `null`")
    # "null" inside a string is fine.
    frames = encode(Hello(worker="null", pid=1), "t", 1)
    assert decode(frames).event == Hello(worker="null", pid=1)


@pytest.mark.parametrize(
    ("change", "path", "why"),
    [
        (lambda g: g[5].__setitem__(DEEP_PORT, "25"), f"ports[{DEEP_PORT}]",
         "expected `int`, got `str`"),
        (lambda g: g[5].__setitem__(DEEP_PORT, True), f"ports[{DEEP_PORT}]",
         "expected `int`, got `bool`"),
        (lambda g: g.__setitem__(0, 4.0), "family", "expected `int`, got `float`"),
        (lambda g: g.__setitem__(1, None), "proto", "expected `str`, got `null`"),
        (lambda g: g.__setitem__(2, ["10.0.0.1"]), "address", "expected `str`, got `array`"),
        (lambda g: g.__setitem__(5, None), "ports", "expected `array`, got `null`"),
        (lambda g: g.__setitem__(6, [[1]]), "ranges[0]", "expected `array` of length 2"),
        (lambda g: g.__setitem__(6, [[1, "2"]]), "ranges[0].last", "expected `int`, got `str`"),
        (lambda g: g.__setitem__(6, [{"first": 1, "last": 2}]), "ranges[0]",
         "expected `array`, got `object`"),
        (lambda g: g.__delitem__(slice(3, None)), "", "expected `array` of length 4 to 7"),
        (lambda g: g.append(1), "", "expected `array` of length 4 to 7"),
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
    ("replacement", "got"),
    [("not an array", "str"), (None, "null"), ({"family": 4}, "object")],
)
def test_a_group_that_is_not_an_array_is_rejected(replacement: Any, got: str) -> None:
    body = body_of(encode(big_table(), "t", 1))
    body["data"]["groups"][DEEP] = replacement
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    assert (err.value.reason, str(err.value)) == (
        "field", f"BackendsDesired.groups[{DEEP}]: expected `array`, got `{got}`")


def test_the_first_bad_field_is_the_one_reported() -> None:
    body = body_of(encode(big_table(), "t", 1))
    body["data"]["groups"][DEEP][5][DEEP_PORT] = "y"
    body["data"]["groups"][DEEP][2] = 5
    body["data"]["rejections"][0]["reason"] = 5
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    # Wire order: groups before rejections, a group's address before its ports.
    assert str(err.value) == f"BackendsDesired.groups[{DEEP}].address: expected `str`, got `int`"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"groups": {"0": {}}}, "BackendsDesired.groups: expected `array`, got `object`"),
        ({"groups": None}, "BackendsDesired.groups: expected `array`, got `null`"),
        ({"event_time": "now"}, "BackendsDesired.event_time: expected `float`, got `str`"),
        ({"event_time": True}, "BackendsDesired.event_time: expected `float`, got `bool`"),
        ({"event_time": 10 ** 400}, "BackendsDesired.event_time: number out of range"),
        ({"generation": 1.0}, "BackendsDesired.generation: expected `int`, got `float`"),
        ({"transit_v4": 4}, "BackendsDesired.transit_v4: expected `str`, got `int`"),
        ({"entries": []}, "BackendsDesired: object contains unknown field `entries`"),
    ],
)
def test_top_level_fields_of_a_big_table(change: dict[str, Any], message: str) -> None:
    body = body_of(encode(big_table(), "t", 1))
    body["data"].update(change)
    with pytest.raises(DecodeError) as err:
        decode_body(body)
    assert (err.value.reason, str(err.value)) == ("field", message)


def test_missing_and_unknown_fields_of_nested_structs() -> None:
    body = body_of(encode(SAMPLES[3], "t", 1))
    del body["data"]["lease"]["address"]
    with pytest.raises(DecodeError) as err:
        decode_body(body, LeaseChanged.TOPIC.encode())
    assert (err.value.reason, str(err.value)) == (
        "field", "LeaseChanged.lease: object missing required field `address`")
    body = body_of(encode(SAMPLES[1], "t", 1))
    body["data"]["conditions"][0]["since"] = 1.0
    with pytest.raises(DecodeError) as err:
        decode_body(body, WorkerStatus.TOPIC.encode())
    assert str(err.value) == "WorkerStatus.conditions[0]: object contains unknown field `since`"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_literals_are_not_json(literal: bytes) -> None:
    frames = encode(big_table(10), "t", 1, ts=2.5)
    bad_field = frames[1].replace(b'"event_time":1700000000.125', b'"event_time":' + literal)
    with pytest.raises(DecodeError) as err:
        decode([frames[0], bad_field])
    assert err.value.reason == "json"


def test_numbers_out_of_range_are_decode_errors() -> None:
    # These used to escape decode() as OverflowError / ValueError and kill the worker.
    frames = encode(WorkerStatus(worker="w", pid=1, started=1.0), "t", 1, ts=2.5)
    for huge in (str(10 ** 400).encode(), b"1e400", b"-1e400"):
        with pytest.raises(DecodeError) as err:
            decode([frames[0], frames[1].replace(b'"ts":2.5', b'"ts":' + huge)])
        assert err.value.reason == "envelope"
        with pytest.raises(DecodeError) as err:
            decode([frames[0], frames[1].replace(b'"started":1.0', b'"started":' + huge)])
        assert (err.value.reason, str(err.value)) == (
            "field", "WorkerStatus.started: number out of range")
    # Past Python's 4300-digit limit for int(str): a field error (it was a json one).
    with pytest.raises(DecodeError) as err:
        decode([frames[0], frames[1].replace(b'"pid":1', b'"pid":' + b"9" * 5000)])
    assert (err.value.reason, str(err.value)) == (
        "field", "WorkerStatus.pid: integer value out of range")


def test_valid_but_not_canonical_big_table_decodes_exactly() -> None:
    """Another key order, omitted defaults and ints for floats."""
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
    expected = msgspec.structs.replace(
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


# Schema shapes the catalogue does not use yet but bus.events allows: the path of an
# error still names every field.


class _Row(NamedTuple):
    a: int
    b: str = ""


class _Inner(_Strict, frozen=True):
    rows: tuple[_Row, ...] | None = None


class _Shapes(_Strict, frozen=True):
    maybe: str | None
    numbers: tuple[int, ...]
    maybe_inner: _Inner | None = None
    choice: int | str = 0


def convert(data: Any) -> Any:
    """What decode does with the data of a ``_Shapes``, errors as DecodeError words it."""
    try:
        return msgspec.json.decode(json.dumps(data), type=_Shapes)
    except msgspec.ValidationError as exc:
        raise ValueError(_field_message(_Shapes, str(exc))) from None


def test_optional_union_and_tuple_paths() -> None:
    good: dict[str, Any] = {"maybe": None, "numbers": [1, 2],
                            "maybe_inner": {"rows": [[1, "x"], [2]]}, "choice": "x"}
    assert convert(good) == _Shapes(None, (1, 2), _Inner((_Row(1, "x"), _Row(2))), "x")
    assert convert(good | {"maybe": "y", "maybe_inner": None, "choice": 4}) \
        == _Shapes("y", (1, 2), None, 4)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"maybe": 1}, "_Shapes.maybe: expected `str | null`, got `int`"),
        ({"numbers": [1, True]}, "_Shapes.numbers[1]: expected `int`, got `bool`"),
        ({"maybe_inner": {"rows": [[1], [2, 3]]}},
         "_Shapes.maybe_inner.rows[1].b: expected `str`, got `int`"),
        ({"maybe_inner": {"rows": [[1], []]}},
         "_Shapes.maybe_inner.rows[1]: expected `array` of length 1 to 2"),
        ({"choice": 1.5}, "_Shapes.choice: expected `int | str`, got `float`"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match="expected") as err:
            convert(good | bad)
        assert str(err.value) == message


# Whatever arrives, decode raises DecodeError or returns an event: nothing else escapes.

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from([*CATALOGUE, "Nope/"]).map(str.encode), body=st.binary(max_size=300))
def test_arbitrary_bytes_are_decode_errors(topic: bytes, body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode([topic, body])


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_a_mutated_field_is_a_decode_error_or_a_valid_event(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(list(CATALOGUE.values())))
    key = data.draw(st.sampled_from(cls.__struct_fields__) | st.text(max_size=12))
    value = data.draw(_JSON_VALUES)
    frames = encode(sample_of(cls), "t", 1, ts=1.0)
    body = body_of(frames)
    body["data"][key] = value
    try:
        event = decode([frames[0], json.dumps(body).encode()]).event
    except DecodeError as exc:
        assert exc.reason in ("field", "json")
        assert exc.reason == "json" or str(exc).startswith(cls.__name__)
    else:
        assert type(event) is cls
        assert json.loads(msgspec.json.encode(getattr(event, key))) == value
