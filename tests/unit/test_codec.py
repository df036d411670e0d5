"""The bus codec: round trips and every rejection."""

from __future__ import annotations

import json

import pytest

from bus.codec import MAX_MESSAGE_BYTES, DecodeError, decode, encode
from bus.events import (
    CATALOGUE,
    Backend,
    BackendsDesired,
    Condition,
    Hello,
    Lease,
    LeaseChanged,
    Rejection,
    WorkerStatus,
)

SAMPLES = [
    Hello(worker="dhcp", pid=42),
    WorkerStatus(worker="nat-writer", pid=7, started=1.5,
                 conditions=(Condition("nat_tables", True, "installed"),), received=3),
    BackendsDesired(
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
def test_round_trip(event: object) -> None:
    frames = encode(event, "tester", 9, ts=123.5)  # type: ignore[arg-type]
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
    body["data"]["entries"][0]["first"] = "25"
    with pytest.raises(DecodeError) as err:
        decode([frames[0], json.dumps(body).encode()])
    assert err.value.reason == "field"
    assert "entries[0].first" in str(err.value)


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
