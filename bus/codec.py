"""The wire format of the bus: pack and unpack one two-frame message, and validate it.

A message is ``[topic, envelope]`` where the topic is the event's ``TOPIC`` and
the envelope is JSON ``{"v", "type", "ts", "source", "seq", "data"}``. Decoding
checks every frame, the envelope, the schema version and every field type of the
dataclass named by the topic; anything else raises ``DecodeError`` with a short
machine-readable ``reason`` (used as a counter key) and a message for the log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from bus.events import CATALOGUE, Event

ENVELOPE_VERSION = 1
# Large enough for a 10 000-entry BackendsDesired (~1.6 MB), small enough that a
# runaway sender cannot make every receiver allocate without bound.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class DecodeError(ValueError):
    """A message that is dropped: ``reason`` is a bounded label, ``str()`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Envelope:
    """A decoded message: the event and who sent it when."""

    event: Event
    source: str
    seq: int
    ts: float


def encode(event: Event, source: str, seq: int, ts: float | None = None) -> list[bytes]:
    """The two frames of ``event``: the topic and the JSON envelope."""
    envelope = {
        "v": ENVELOPE_VERSION,
        "type": type(event).__name__,
        "schema": type(event).VERSION,
        "ts": time.time() if ts is None else ts,
        "source": source,
        "seq": seq,
        "data": dataclasses.asdict(event),
    }
    body = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{type(event).__name__} is {len(body)} bytes, over the bus limit")
    return [type(event).TOPIC.encode(), body]


def decode(frames: list[bytes]) -> Envelope:
    """Validate and unpack a received message; raise DecodeError on anything wrong."""
    if len(frames) != 2:
        raise DecodeError("frames", f"expected 2 frames, got {len(frames)}")
    topic_raw, body = frames
    if len(body) > MAX_MESSAGE_BYTES:
        raise DecodeError("size", f"message of {len(body)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        topic = topic_raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("topic", "topic frame is not ASCII") from None
    cls = CATALOGUE.get(topic)
    if cls is None:
        raise DecodeError("type", f"unknown topic {topic[:64]!r}")
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("json", f"envelope is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise DecodeError("envelope", "envelope is not an object")
    if envelope.get("v") != ENVELOPE_VERSION:
        raise DecodeError("version", f"envelope version {envelope.get('v')!r} is not supported")
    if envelope.get("type") != cls.__name__:
        raise DecodeError("type", f"type {envelope.get('type')!r} does not match topic {topic}")
    if envelope.get("schema") != cls.VERSION:
        raise DecodeError(
            "version", f"{cls.__name__} schema {envelope.get('schema')!r}, expected {cls.VERSION}"
        )
    ts, source, seq = envelope.get("ts"), envelope.get("source"), envelope.get("seq")
    if not isinstance(ts, int | float) or not _is_number(ts) or not isinstance(source, str) \
            or not isinstance(seq, int) or isinstance(seq, bool):
        raise DecodeError("envelope", "envelope ts/source/seq missing or of the wrong type")
    data = envelope.get("data")
    try:
        event = _build(cls, data, cls.__name__)
    except _FieldError as exc:
        raise DecodeError("field", str(exc)) from None
    return Envelope(event=typing.cast(Event, event), source=source, seq=seq, ts=float(ts))


class _FieldError(ValueError):
    pass


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))  # type: ignore[arg-type]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: object, where: str) -> object:
    if not isinstance(data, dict):
        raise _FieldError(f"{where}: expected an object")
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _FieldError(f"{where}.{f.name}: missing")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise _FieldError(f"{where}: unknown field(s) {sorted(unknown)[:5]}")
    return cls(**kwargs)


def _convert(hint: Any, value: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except _FieldError:
                continue
        raise _FieldError(f"{where}: {type(value).__name__} matches none of {hint}")
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise _FieldError(f"{where}: expected a list")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(f"{where}: expected a boolean")
        return value
    if hint is int:
        if not _is_int(value):
            raise _FieldError(f"{where}: expected an integer")
        return value
    if hint is float:
        if not _is_number(value):
            raise _FieldError(f"{where}: expected a number")
        return float(value)  # type: ignore[arg-type]
    if hint is str:
        if not isinstance(value, str):
            raise _FieldError(f"{where}: expected a string")
        return value
    raise _FieldError(f"{where}: unsupported schema type {hint}")
