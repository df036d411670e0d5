"""A small Docker Engine API client on the standard library: the HTTP side of talking to Docker.

Owns connecting to ``DOCKER_HOST`` (a ``unix://`` socket, or ``tcp://`` whose name is tried at
every address it resolves to, in order, as ``socket.create_connection`` does), one kept-alive
connection for the GETs with a timeout on each, the API version prefix, query parameters (the
``filters`` one JSON-encoded, as Docker wants it), JSON decoding, Docker's error answers as
``HttpStatusError`` / ``NotFound``, and the event stream (chunked, one JSON object a line) that
another thread can close. Every failure (no connection, timeout, error status, a broken stream,
malformed JSON) is an ``ApiError``, so callers catch one type. Which calls to make and what the
answers mean are the callers' business (``anchord.docker_api``, ``anchord.docker_events``,
``anchord.selfproject``).

It replaces docker-py, whose import (with requests, urllib3, idna, charset_normalizer) cost the
discovery worker 8.5 MiB of RSS and 65 ms at start for four GET calls and the event stream.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_TCP_PORT = 2375
MAX_EVENT_LINE = 1 << 20  # an event is a few kB; a "line" past this is not an event stream
MAX_ERROR_BODY = 64 << 10  # of an error answer, what is read for its message


class ApiError(Exception):
    """The Docker API did not answer, or not with what was asked."""


class MalformedAnswer(ApiError):
    """Docker answered, but not with the JSON asked for."""


class HttpStatusError(ApiError):
    """Docker answered with an error status (its ``message`` is in ``explanation``)."""

    def __init__(self, status: int, reason: str, target: str, explanation: str) -> None:
        super().__init__(f"{status} {reason} for GET {target}: {explanation}")
        self.status = status
        self.explanation = explanation


class NotFound(HttpStatusError):
    """404: no such container, network... (Docker's answer, not a missing endpoint)."""


def path(template: str, *args: str) -> str:
    """``template`` with ``args`` quoted into its ``{}``s (ids and names are path segments)."""
    return template.format(*(quote(a, safe="") for a in args))


def encode_query(params: Mapping[str, Any] | None) -> str:
    """``?a=1&filters=...`` of ``params``: None dropped, booleans as 1/0, ``filters`` (a dict of
    lists) as JSON; "" without any."""
    if not params:
        return ""
    fields: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            fields[key] = "1" if value else "0"
        elif isinstance(value, (dict, list)):
            fields[key] = json.dumps(value, separators=(",", ":"))
        else:
            fields[key] = str(value)
    return "?" + urlencode(fields) if fields else ""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket; the socket is closed when the connect fails."""

    def __init__(self, socket_path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def connection(docker_host: str, timeout: float | None) -> http.client.HTTPConnection:
    """An unconnected HTTP connection to ``docker_host`` (``unix://``, ``tcp://``, ``http://``).

    A name is resolved when it connects; every address it resolves to is tried in order (with
    IPv6 on a proxy's network the first answer is its IPv6 address, which a proxy listening on
    IPv4 only refuses), each within ``timeout``.
    """
    if docker_host.startswith("unix://"):
        return _UnixConnection(docker_host[len("unix://"):], timeout)
    parts = urlsplit(docker_host.replace("tcp://", "http://", 1))
    try:
        port = parts.port
    except ValueError as exc:
        raise ApiError(f"DOCKER_HOST {docker_host!r}: {exc}") from exc
    if parts.scheme != "http" or not parts.hostname:
        raise ApiError(f"DOCKER_HOST {docker_host!r} is neither unix:// nor tcp://")
    return http.client.HTTPConnection(parts.hostname, port or DEFAULT_TCP_PORT, timeout=timeout)


def _failed(exc: BaseException, target: str) -> ApiError:
    detail = str(exc) or type(exc).__name__
    return ApiError(f"GET {target}: {detail}")


def _status_error(status: int, reason: str, target: str, body: bytes) -> HttpStatusError:
    try:
        doc = json.loads(body)
        explanation = str(doc["message"]) if isinstance(doc, dict) and "message" in doc else ""
    except ValueError:
        explanation = ""
    explanation = explanation or body.decode("utf-8", "replace").strip()[:200] or reason
    kind = NotFound if status == 404 else HttpStatusError
    return kind(status, reason, target, explanation)


def _idle_connection_dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept-alive connection was closed by the other end (or sent something unasked:
    either way unusable). An idle connection that is readable is one of those."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class DockerHttp:
    """GETs of one ``DOCKER_HOST`` over one kept-alive connection, and event streams.

    ``version`` ("1.41"), when set, prefixes every versioned path (``/v1.41/...``). Not for
    sharing between threads: each thread that talks to Docker has its own.
    """

    def __init__(self, docker_host: str, version: str = "", timeout: float = 10.0) -> None:
        self.docker_host = docker_host
        self.version = version
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def url(self, route: str, params: Mapping[str, Any] | None = None,
            versioned: bool = True) -> str:
        prefix = f"/v{self.version}" if versioned and self.version else ""
        return f"{prefix}{route}{encode_query(params)}"

    def get(self, route: str, params: Mapping[str, Any] | None = None,
            versioned: bool = True) -> Any:
        """The decoded JSON answer of ``GET route``; ApiError (NotFound on 404) otherwise."""
        target = self.url(route, params, versioned)
        status, reason, body = self._request(target)
        if not 200 <= status < 300:
            raise _status_error(status, reason, target, body)
        try:
            return json.loads(body)
        except ValueError as exc:  # UnicodeDecodeError is one too
            raise MalformedAnswer(f"GET {target}: not JSON: {exc}") from exc

    def _request(self, target: str) -> tuple[int, str, bytes]:
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is not None and _idle_connection_dropped(self._conn):
                self._drop()
                reused = False
            if self._conn is None:
                self._conn = connection(self.docker_host, self.timeout)
            try:
                self._conn.request("GET", target, headers={"Accept": "application/json"})
                response = self._conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # The other end closed the kept-alive connection just as we used it: a GET
                # can be asked again, once, on a fresh one.
                self._drop()
                if reused and attempt == 1:
                    continue
                raise _failed(exc, target) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise _failed(exc, target) from exc
            if response.will_close:
                self._drop()
            return response.status, response.reason, body
        raise AssertionError("unreachable")  # pragma: no cover

    def events(self, since: int | None = None, until: int | None = None,
               filters: Mapping[str, list[str]] | None = None,
               read_timeout: float | None = None) -> EventStream:
        """``GET /events`` on a connection of its own: connected and answered within
        ``timeout``; then each event within ``read_timeout`` (None: wait as long as it takes,
        Docker sends nothing while nothing happens)."""
        params: dict[str, Any] = {"since": since, "until": until,
                                  "filters": dict(filters) if filters else None}
        target = self.url("/events", params)
        conn = connection(self.docker_host, self.timeout)
        try:
            conn.connect()
            sock = conn.sock
            assert sock is not None
            conn.request("GET", target, headers={"Accept": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                body = response.read(MAX_ERROR_BODY)
                raise _status_error(response.status, response.reason, target, body)
            sock.settimeout(read_timeout)
        except ApiError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _failed(exc, target) from exc
        return EventStream(conn, response, sock, target)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> DockerHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream:
    """The events of one ``GET /events``, decoded, as they arrive.

    Iterating ends (StopIteration) when Docker ends the stream or ``close()`` was called;
    a connection that breaks, a read that times out, a line that is not a JSON object raise
    ApiError. ``close()`` may be called from another thread: it wakes a blocked read.
    """

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 sock: socket.socket, target: str) -> None:
        self._conn = conn
        self._response = response
        self._sock = sock
        self._target = target
        self._pending = b""
        self._lines: list[bytes] = []
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._lines:
            chunk = self._read()
            if not chunk:
                if self._pending.strip() and not self._closed:
                    raise MalformedAnswer(f"GET {self._target}: the stream ended inside an "
                                          f"event: {self._pending[:200]!r}")
                raise StopIteration
            self._pending += chunk
            *complete, self._pending = self._pending.split(b"\n")
            self._lines.extend(line for line in complete if line.strip())
            if len(self._pending) > MAX_EVENT_LINE:
                raise MalformedAnswer(f"GET {self._target}: an event longer than "
                                      f"{MAX_EVENT_LINE} bytes")
        line = self._lines.pop(0)
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise MalformedAnswer(f"GET {self._target}: an event that is not JSON: "
                                  f"{line[:200]!r}") from exc
        if not isinstance(event, dict):
            raise MalformedAnswer(f"GET {self._target}: an event that is not an object: "
                                  f"{line[:200]!r}")
        return event

    def _read(self) -> bytes:
        try:
            return self._response.read1(65536)
        except Exception as exc:
            if self._closed:
                # Closed under us by another thread: the read fails in whatever way the
                # response's state at that instant makes it (OSError, ValueError of a closed
                # file, AttributeError of a file already let go of): that is the end.
                return b""
            if isinstance(exc, (OSError, ValueError, http.client.HTTPException)):
                raise _failed(exc, self._target) from exc
            raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # shutdown() first: it wakes a read blocked in another thread, which close() alone
        # does not.
        # not connected any more: nothing to wake
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        for close in (self._response.close, self._conn.close, self._sock.close):
            # closing what broke may fail; it is closed either way
            with contextlib.suppress(OSError, ValueError):
                close()
