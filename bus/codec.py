"""The wire format of the bus: pack and unpack one two-frame message, and validate it.

A message is ``[topic, envelope]`` where the topic is the event's ``TOPIC`` and
the envelope is JSON ``{"v", "type", "schema", "ts", "source", "seq", "data"}``
(UTF-8, no spaces, fields in declaration order). Decoding checks every frame, the
envelope, the schema version and every field of the event struct named by the
topic; anything else raises ``DecodeError`` with a short machine-readable
``reason`` (used as a counter key) and a message for the log that names the
offending field by its path in the event (``BackendsDesired.groups[3].ports[7]``).

This module owns the codec; msgspec does the work in C. A 10 000-entry
``BackendsDesired`` sits on the path from a Docker event to the nftables commit
(60 KB in its grouped form from ten containers, 0.6 MB in the worst case of one
container per entry). Decoding is two passes over the bytes, both in C: the
envelope first, with ``data`` kept as raw JSON, so that the version, type and
schema are checked before the event's fields (a message of another schema is a
``version`` error, not a ``field`` one); then ``data`` with the decoder of the
event's struct type (one per type, built on first use), which validates strictly
(no bool for int, no float for int, int for float allowed, no unknown field, no
missing required one, numbers within range).
"""

from __future__ import annotations

import functools
import math
import re
import time
import typing
from typing import Any

import msgspec

from bus.events import CATALOGUE, Event

ENVELOPE_VERSION = 1
# See bus/limits.py (re-exported: receivers and tests read it here).
from bus.limits import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # noqa: E402


class DecodeError(ValueError):
    """A message that is dropped: ``reason`` is a bounded label, ``str()`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class Envelope(msgspec.Struct, frozen=True):
    """A decoded message: the event and who sent it when."""

    event: Event
    source: str
    seq: int
    ts: float


# --- encoding ----------------------------------------------------------------


class _Wire(msgspec.Struct):
    """The envelope as written: msgspec writes the fields in this order."""

    v: int
    type: str
    schema: int
    ts: float
    source: str
    seq: int
    data: Event


_ENCODER = msgspec.json.Encoder()


def encode(event: Event, source: str, seq: int, ts: float | None = None) -> list[bytes]:
    """The two frames of ``event``: the topic and the JSON envelope."""
    cls = type(event)
    body = _ENCODER.encode(_Wire(
        ENVELOPE_VERSION, cls.__name__, cls.VERSION, time.time() if ts is None else ts,
        source, seq, event))
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{cls.__name__} is {len(body)} bytes, over the bus limit")
    frames = [cls.TOPIC.encode(), body]
    # msgspec writes a non-finite float as null, and no field of the schema may be null:
    # such a message would be dropped by every receiver. Refuse it here, where the bug
    # is. "null" in a string is the only other way to get those bytes, and rare: then
    # the exact check (a decode) tells which it is.
    if b"null" in body:
        try:
            decode(frames)
        except DecodeError as exc:
            raise ValueError(f"{cls.__name__} cannot be sent: {exc}") from None
    return frames


# --- decoding ----------------------------------------------------------------


_NO_DATA = msgspec.Raw()


class _Header(msgspec.Struct):
    """The envelope as read: checked field by field here, ``data`` left undecoded.

    Unknown envelope keys are ignored (room for additions that old readers skip).
    """

    v: Any = None
    type: Any = None
    schema: Any = None
    ts: Any = None
    source: Any = None
    seq: Any = None
    data: msgspec.Raw = _NO_DATA


_HEADER = msgspec.json.Decoder(_Header)


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
        header = _HEADER.decode(body)
    except msgspec.ValidationError as exc:  # not an object, or a number out of range
        raise DecodeError("envelope", f"bad envelope: {str(exc)[:200]}") from None
    except (msgspec.DecodeError, RecursionError) as exc:  # not JSON, or nested too deep
        raise DecodeError("json", f"envelope is not JSON: {str(exc)[:200]}") from None
    if not _is_int(header.v) or header.v != ENVELOPE_VERSION:
        raise DecodeError("version", f"envelope version {header.v!r} is not supported")
    if header.type != cls.__name__:
        raise DecodeError("type", f"type {header.type!r} does not match topic {topic}")
    if not _is_int(header.schema) or header.schema != cls.VERSION:
        raise DecodeError(
            "version", f"{cls.__name__} schema {header.schema!r}, expected {cls.VERSION}")
    ts, source, seq = header.ts, header.source, header.seq
    if not _is_number(ts) or type(source) is not str or not _is_int(seq):
        raise DecodeError("envelope", "envelope ts/source/seq missing or of the wrong type")
    if header.data is _NO_DATA:
        raise DecodeError("field", f"{cls.__name__}: missing")
    try:
        event = _decoder(cls).decode(header.data)
    except msgspec.ValidationError as exc:
        raise DecodeError("field", _field_message(cls, str(exc))) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise DecodeError("json", f"data is not JSON: {str(exc)[:200]}") from None
    return Envelope(event=event, source=source, seq=seq, ts=float(ts))


@functools.cache
def _decoder(cls: type[Event]) -> msgspec.json.Decoder[Event]:
    """The validating decoder of one event type, built on its first message."""
    return msgspec.json.Decoder(cls)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is not int:
        return False
    try:
        float(value)
    except OverflowError:  # an integer beyond the range of a float
        return False
    return True


# --- error messages: msgspec's path, in the event's own field names ----------

_AT = re.compile(r"(?s)(.*) - at `\$(.*)`")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|(\[.*?\])")


def _field_message(cls: type, error: str) -> str:
    """``Expected `int`, got `str` - at `$.groups[3][5][7]``` as
    ``BackendsDesired.groups[3].ports[7]: expected `int`, got `str```.

    msgspec names a record's field by its index (a record is an array on the wire);
    people and tests want its name, so the path is walked along the type hints.
    """
    match = _AT.fullmatch(error)
    what, path = (match.group(1), match.group(2)) if match else (error, "")
    where = [cls.__name__]
    hint: Any = cls
    for name, index, other in _STEP.findall(path):
        hint = _optional_arm(hint)
        if name:
            where.append(f".{name}")
            hint = _hints(hint).get(name)
        elif index and _is_record(hint) and int(index) < len(hint._fields):
            field = hint._fields[int(index)]
            where.append(f".{field}")
            hint = _hints(hint).get(field)
        elif index:
            where.append(f"[{index}]")
            args = typing.get_args(hint)
            hint = args[0] if typing.get_origin(hint) is tuple and args else None
        else:
            where.append(other)
            hint = None
    return f"{''.join(where)}: {what[:1].lower()}{what[1:200]}"


def _optional_arm(hint: Any) -> Any:
    """``X`` of ``X | None``; anything else as it is."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else hint


def _is_record(hint: object) -> bool:
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


@functools.cache
def _hints(hint: Any) -> dict[str, Any]:
    """The field types of a struct or record, by name ({} for anything else)."""
    try:
        return typing.get_type_hints(hint)
    except TypeError:
        return {}
