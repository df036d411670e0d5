"""The wire format of the bus: pack and unpack one two-frame message, and validate it.

A message is ``[topic, envelope]`` where the topic is the event's ``TOPIC`` and
the envelope is JSON ``{"v", "type", "schema", "ts", "source", "seq", "data"}``.
Decoding checks every frame, the envelope, the schema version and every field
type of the dataclass named by the topic; anything else raises ``DecodeError``
with a short machine-readable ``reason`` (used as a counter key) and a message
for the log.

This module owns the codec and its speed. A 10 000-entry ``BackendsDesired`` sits
on the path from a Docker event to the nftables commit (60 KB in its grouped form
of version 2 from ten containers, 0.6 MB in the worst case of one container per
entry), so nothing here walks the schema per message: the type hints of each dataclass are
compiled once into a pair of validators (cached per class, see ``_Compiled``):

* a *fast* one for the canonical shape our own encoder writes (exactly the
  declared keys, exactly the declared JSON types); it carries no error context
  and bails out with ``_Mismatch`` on anything else, and
* a *slow* one with the exact semantics (defaults, int for float, unions) and
  the path of the offending field in its error, used when the fast one bails.

Encoding likewise compiles one attribute getter per class and lets the C JSON
encoder walk the tree through its ``default`` hook, instead of the deep copies
of ``dataclasses.asdict``.

Records (``NamedTuple`` classes, see ``bus.events``) are JSON arrays in field
order. The encoder writes them in C without calling back into Python, and a
``tuple[Record, ...]`` of flat fields is validated in bulk: one C pass collects
the distinct per-row type signatures, which must all be the declared one, and the
rows become records through a C constructor. A 10 000-row table thus costs no
Python call per row in either direction; anything else (a wrong type, a short
row) falls to the slow path, which names the offending row and field.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import operator
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.events import CATALOGUE, Event

ENVELOPE_VERSION = 1
# Large enough for a BackendsDesired of 100 000 entries even in its worst shape (one
# container per entry, ~0.6 MB per 10 000), small enough that a runaway sender cannot
# make every receiver allocate without bound.
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


# --- encoding ----------------------------------------------------------------


def _default(obj: object) -> object:
    """The JSON encoder's hook for what it cannot write itself: our dataclasses.

    Returns the fields one level deep: the JSON encoder comes back here for a
    nested dataclass, and writes tuples as lists by itself.
    """
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    fields = getattr(obj, "__dict__", None)
    # The instance dict of a frozen dataclass holds exactly its fields, in
    # field order, as __init__ (or decode) stored them: hand it over as is
    # instead of copying. Anything else in it (a cached attribute, another
    # order) and we build the dict, so the bytes never depend on it.
    if fields is not None and tuple(fields) == names:
        return fields
    return {name: getattr(obj, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
# Built once: json.dumps would build an encoder per call, which is most of the
# cost of a small event. No check_circular: frozen dataclasses cannot form a
# cycle, and a dataclass that somehow did still ends in RecursionError.
_JSON = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, check_circular=False, default=_default
)


def encode(event: Event, source: str, seq: int, ts: float | None = None) -> list[bytes]:
    """The two frames of ``event``: the topic and the JSON envelope."""
    cls = type(event)
    envelope = {
        "v": ENVELOPE_VERSION,
        "type": cls.__name__,
        "schema": cls.VERSION,
        "ts": time.time() if ts is None else ts,
        "source": source,
        "seq": seq,
        "data": event,  # written by _default
    }
    body = _JSON.encode(envelope).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{cls.__name__} is {len(body)} bytes, over the bus limit")
    return [cls.TOPIC.encode(), body]


# --- decoding ----------------------------------------------------------------


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
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError, and also an
        # integer literal over Python's 4300-digit limit, which is no JSON error.
        raise DecodeError("json", f"envelope is not JSON: {str(exc)[:200]}") from None
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
    if not _is_number(ts) or not isinstance(source, str) or not _is_int(seq):
        raise DecodeError("envelope", "envelope ts/source/seq missing or of the wrong type")
    compiled = _compiled(cls)
    data = envelope.get("data")
    try:
        try:
            event = compiled.fast(data)
        except _Mismatch:
            # Not the canonical shape (or invalid): the exact rules decide, and
            # name the field if it is invalid.
            event = compiled.slow(data, cls.__name__)
    except _FieldError as exc:
        raise DecodeError("field", str(exc)) from None
    return Envelope(
        event=typing.cast(Event, event),
        source=source,
        seq=typing.cast(int, seq),
        ts=float(typing.cast(float, ts)),
    )


class _FieldError(ValueError):
    """A field is invalid; the message names it by its path in the event."""


class _Mismatch(Exception):
    """The fast path gives up: not the canonical shape. Carries nothing.

    Raised as a new instance every time: a shared instance would pile up the
    tracebacks (and the frames holding the message) of every bail-out.
    """

# Converters: ``fast(value)`` returns the Python value or raises _Mismatch;
# ``slow(value, where)`` returns it or raises _FieldError naming ``where``.
_Fast = Callable[[Any], object]
_Slow = Callable[[Any, str], object]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if not _is_int(value):
        return False
    try:
        float(typing.cast(int, value))
    except OverflowError:  # an integer beyond the range of a float
        return False
    return True


@dataclass(frozen=True)
class _Compiled:
    """The two converters of one type hint."""

    fast: _Fast
    slow: _Slow


_CACHE: dict[object, _Compiled] = {}


def _compiled(hint: object) -> _Compiled:
    """The converters of ``hint``, compiled on first use and cached."""
    done = _CACHE.get(hint)
    if done is None:
        done = _CACHE[hint] = _compile(hint)
    return done


def _compile(hint: Any) -> _Compiled:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _compile_union(hint)
    if origin is tuple:
        return _compile_tuple(hint)
    if _is_record(hint):
        return _compile_record(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _compile_dataclass(hint)
    if hint in (bool, int, str):
        return _compile_exact(hint)
    if hint is float:
        return _compile_float()
    # Not a schema type (see bus.events): reject the field at run time, as a
    # value that cannot be valid, rather than fail every decode of the event.
    def unsupported(value: object, where: str) -> object:
        raise _FieldError(f"{where}: unsupported schema type {hint}")

    return _Compiled(fast=_bail, slow=unsupported)


def _bail(value: object) -> object:
    raise _Mismatch


def _compile_exact(hint: type) -> _Compiled:
    # JSON gives exact types, so ``type() is`` suffices, and it is what keeps
    # True out of an int field (bool is a subclass of int).
    what = {bool: "a boolean", int: "an integer", str: "a string"}[hint]

    def fast(value: object) -> object:
        if type(value) is not hint:
            raise _Mismatch
        return value

    def slow(value: object, where: str) -> object:
        if type(value) is not hint:
            raise _FieldError(f"{where}: expected {what}")
        return value

    return _Compiled(fast=fast, slow=slow)


def _compile_float() -> _Compiled:
    isfinite = math.isfinite

    def fast(value: object) -> object:
        if type(value) is not float or not isfinite(value):
            raise _Mismatch
        return value

    def slow(value: object, where: str) -> object:
        if not _is_number(value):
            raise _FieldError(f"{where}: expected a number")
        return float(typing.cast(float, value))

    return _Compiled(fast=fast, slow=slow)


def _compile_union(hint: Any) -> _Compiled:
    args = typing.get_args(hint)
    optional = type(None) in args
    arms = [_compiled(arg) for arg in args if arg is not type(None)]

    def slow(value: object, where: str) -> object:
        if value is None and optional:
            return None
        for arm in arms:
            try:
                return arm.slow(value, where)
            except _FieldError:
                continue
        raise _FieldError(f"{where}: {type(value).__name__} matches none of {hint}")

    if optional and len(arms) == 1:
        (inner,) = arms
        inner_fast = inner.fast

        def fast(value: object) -> object:
            return None if value is None else inner_fast(value)

        return _Compiled(fast=fast, slow=slow)
    # Other unions have no schema use yet; the exact rules are fast enough.
    return _Compiled(fast=_bail, slow=slow)


def _is_record(hint: object) -> bool:
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


def _record_row(cls: type) -> tuple[tuple[type, ...], Callable[[list[Any]], object]] | None:
    """(field types, row -> record in C) if every field of ``cls`` is an exact JSON type.

    Floats are left out on purpose: they also need a finiteness check per value.
    """
    hints = typing.get_type_hints(cls)
    types_ = tuple(hints[name] for name in cls._fields)  # type: ignore[attr-defined]
    if not all(t in (bool, int, str) for t in types_):
        return None
    return types_, functools.partial(tuple.__new__, cls)


def _compile_record(cls: type) -> _Compiled:
    hints = typing.get_type_hints(cls)
    names: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    convs = [(name, _compiled(hints[name])) for name in names]
    fast_convs = [conv.fast for _, conv in convs]
    n = len(names)
    # A NamedTuple's defaults are its trailing fields: a shorter row omits them.
    required = n - len(cls._field_defaults)  # type: ignore[attr-defined]
    row = _record_row(cls)
    make = functools.partial(tuple.__new__, cls)

    def fast(value: object) -> object:
        if type(value) is not list:
            raise _Mismatch
        if row is not None:
            if tuple(map(type, value)) != row[0]:
                raise _Mismatch
            return row[1](value)
        if len(value) != n:
            raise _Mismatch
        return make([conv(v) for conv, v in zip(fast_convs, value, strict=True)])

    def slow(value: object, where: str) -> object:
        if not isinstance(value, list):
            raise _FieldError(f"{where}: expected an array")
        if not required <= len(value) <= n:
            raise _FieldError(f"{where}: expected {required}..{n} items, got {len(value)}")
        # A short row leaves the trailing fields to their defaults.
        items = [conv.slow(v, f"{where}.{name}")
                 for (name, conv), v in zip(convs, value, strict=False)]
        return cls(*items)

    return _Compiled(fast=fast, slow=slow)


def _compile_tuple(hint: Any) -> _Compiled:
    (item_hint, _ellipsis) = typing.get_args(hint)
    item = _compiled(item_hint)
    item_fast, item_slow = item.fast, item.slow
    exact = item_hint if item_hint in (bool, int, str) else None
    rows = _record_row(item_hint) if _is_record(item_hint) else None
    row_types = {rows[0]} if rows is not None else set()
    repeat_type = itertools.repeat(type)

    def fast(value: object) -> object:
        if type(value) is not list:
            raise _Mismatch
        if exact is not None:
            # One pass in C over the item types instead of a call per item.
            if not set(map(type, value)) <= {exact}:
                raise _Mismatch
            return tuple(value)
        if rows is not None:
            # Records of flat fields, all in C: every item a list, the set of the
            # rows' type signatures (which also fixes their length) the declared one.
            if not set(map(type, value)) <= {list}:
                raise _Mismatch
            if not set(map(tuple, map(map, repeat_type, value))) <= row_types:
                raise _Mismatch
            return tuple(map(rows[1], value))
        return tuple(map(item_fast, value))

    def slow(value: object, where: str) -> object:
        if not isinstance(value, list):
            raise _FieldError(f"{where}: expected a list")
        out = []
        for i, v in enumerate(value):
            # Most items of a big table are canonical even when one is not:
            # only the odd one pays for the exact rules and its path.
            try:
                out.append(item_fast(v))
            except _Mismatch:
                out.append(item_slow(v, f"{where}[{i}]"))
        return tuple(out)

    return _Compiled(fast=fast, slow=slow)


def _compile_dataclass(cls: type) -> _Compiled:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    known = frozenset(names)
    convs = [(f.name, _compiled(hints[f.name])) for f in fields]
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }

    def slow(data: object, where: str) -> object:
        if not isinstance(data, dict):
            raise _FieldError(f"{where}: expected an object")
        kwargs: dict[str, object] = {}
        for name, conv in convs:
            if name in data:
                kwargs[name] = conv.slow(data[name], f"{where}.{name}")
            elif name in required:
                raise _FieldError(f"{where}.{name}: missing")
        unknown = set(data) - known
        if unknown:
            raise _FieldError(f"{where}: unknown field(s) {sorted(unknown)[:5]}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            # A __post_init__ that refuses the values: a bad message, not a crash.
            raise _FieldError(f"{where}: {exc}") from None

    return _Compiled(fast=_fast_dataclass(cls, names, hints), slow=slow)


def _fast_dataclass(cls: type, names: tuple[str, ...], hints: dict[str, Any]) -> _Fast:
    """The canonical-shape validator of ``cls``: every field present, nothing else.

    Fields of an exact JSON type (str, int, bool, float) are checked at once by
    comparing the tuple of their types; only the other fields cost a call each.
    The instance is made without ``__init__`` (whose frozen ``__setattr__`` per
    field is most of the cost of a small dataclass) when ``__init__`` does
    nothing but assign the fields, and a class of flat fields simply adopts the
    parsed dict as its instance dict: it holds exactly the fields, with values
    of exactly the declared types, and nothing else refers to it.
    """
    n = len(names)
    flat = tuple(name for name in names if hints[name] in (str, int, bool, float))
    flat_types = tuple(hints[name] for name in flat)
    flat_get = _getter(flat)
    floats = tuple(i for i, name in enumerate(flat) if hints[name] is float)
    nested = tuple((name, _compiled(hints[name]).fast) for name in names if name not in flat)
    plain = all(f.init for f in dataclasses.fields(cls)) and not hasattr(cls, "__post_init__")
    new = object.__new__
    set_attr = object.__setattr__  # a frozen dataclass refuses its own __setattr__
    isfinite = math.isfinite

    def fast(data: Any) -> object:
        if type(data) is not dict or len(data) != n:
            raise _Mismatch
        try:
            values = flat_get(data)  # n keys in a dict of n: exactly our fields
        except KeyError:
            raise _Mismatch from None
        if tuple(map(type, values)) != flat_types:
            raise _Mismatch
        for i in floats:
            if not isfinite(typing.cast(float, values[i])):
                raise _Mismatch
        if nested:
            # A new dict, in field order: ``data`` must stay as parsed in case
            # a later field bails out and the slow path reads it again.
            try:
                fields = {name: data[name] for name in names}
            except KeyError:
                raise _Mismatch from None
            for name, conv in nested:
                fields[name] = conv(fields[name])
        else:
            fields = data
        if not plain:
            try:
                return cls(**fields)
            except (TypeError, ValueError):
                raise _Mismatch from None  # the slow path says why
        obj: object = new(cls)
        set_attr(obj, "__dict__", fields)
        return obj

    return fast


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, object]], tuple[object, ...]]:
    """``data -> tuple of data[name]`` for ``names``, in C; KeyError if one is missing."""
    if not names:
        return lambda data: ()
    if len(names) == 1:
        # itemgetter of one key returns the value, not a 1-tuple.
        (name,) = names
        return lambda data: (data[name],)
    return operator.itemgetter(*names)
