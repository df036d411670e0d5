"""Whether the Docker API's endpoint is there, answered fast.

Owns the check made before a client connects (``anchord.docker_api.connect``) and before each
call on a connected one: a ``tcp://`` host name (a socket proxy) must resolve within
PROBE_TIMEOUT and, before connecting, accept a TCP connection within it (the HTTP client would
block up to its 10 s timeout on either, and Docker's DNS takes 10 s to give up on the name of a
stopped proxy on an internal network; discovery's loop must not block that long). A ``unix://``
socket must accept a connection before a client is made (cheap, and the error names the
socket plainly); a connected client finds a socket gone at its next call, unchecked.

``getaddrinfo`` has no timeout, so a lookup runs in a thread that the caller stops waiting for.
Each :class:`Reachability` keeps its own lookups in flight: a caller joins a lookup started
less than HEDGE ago instead of starting another. A lookup unanswered for HEDGE gets a fresh one
beside it, and the caller takes the first answer of any it joined: while the proxy is stopped
every lookup of its name hangs (10 s), and without the fresh ones a caller that began waiting
just before the proxy came back would wait out the whole probe timeout on a lookup that can
only fail. One per thread that talks to Docker (discovery's loop, the event thread); nothing
is shared between them.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

# A tcp:// DOCKER_HOST is checked within this many seconds (see the module docstring).
PROBE_TIMEOUT = 1.0
HEDGE = 0.2  # a lookup unanswered this long gets a fresh one beside it (see the docstring)
# Name lookups in flight per name: a stopped proxy's name hangs each for 10 s, and a caller
# starts one every HEDGE, so this many keep fresh ones coming through an outage of any length.
MAX_LOOKUPS = 64


class DockerUnavailable(Exception):
    """The Docker API did not answer (daemon down, proxy stopped, timeout)."""


class Reachability:
    """Checks of one ``DOCKER_HOST``'s endpoint; lookups in flight are shared between calls."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # ages the lookups in flight (a test passes its own)
        # (host, port) -> lookups in flight, newest last: the thread, the list it appends its
        # one result to, and its monotonic start
        self._lookups: dict[tuple[str, int], list[tuple[threading.Thread, list[Any], float]]] = {}
        # Guards the lookups; a lookup thread notifies it when it has its result.
        self._done = threading.Condition()

    def check(self, docker_host: str, timeout: float, connect: bool = True) -> None:
        """Raise DockerUnavailable unless the endpoint is there (with ``connect``: accepts a
        connection; without: for ``tcp://``, the name resolves, and ``unix://`` is not
        checked)."""
        if docker_host.startswith(("tcp://", "http://")):
            self._tcp(docker_host, min(timeout, PROBE_TIMEOUT), connect)
            return
        if not docker_host.startswith("unix://") or not connect:
            return
        path = docker_host[len("unix://"):]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(path)
            except OSError as exc:
                raise DockerUnavailable(f"{docker_host}: {exc}") from exc

    def _tcp(self, docker_host: str, timeout: float, connect: bool) -> None:
        rest = docker_host.split("://", 1)[1].split("/", 1)[0]
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "2375")
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            return  # the client reports a malformed DOCKER_HOST
        answers = self._resolve(host, port, timeout)
        if answers is None:
            raise DockerUnavailable(f"{docker_host}: {host} does not resolve within {timeout:g}s")
        if isinstance(answers, OSError):
            raise DockerUnavailable(f"{docker_host}: cannot resolve {host}: {answers}")
        if not connect:
            return
        self._connect(docker_host, answers, timeout)

    @staticmethod
    def _connect(docker_host: str, answers: list[Any], timeout: float) -> None:
        """Return once a TCP connection to one of ``answers`` is accepted; raise
        DockerUnavailable when none is within ``timeout``.

        Every address, in turn: with IPv6 on the proxy's network the first answer is its IPv6
        address, which a proxy listening on IPv4 only refuses (an address not tried yet is
        tried at once after a failure). Then a fresh connection every HEDGE, beside those in
        flight, and the first accepted wins: while the proxy's container comes up its first
        SYNs are lost (the kernel would retransmit after 1 s, the whole probe timeout) or
        refused (not listening yet).
        """
        pending: dict[socket.socket, str] = {}
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        next_start = 0.0
        started = 0
        try:
            while (now := time.monotonic()) < deadline:
                if now >= next_start:
                    family, kind, proto, _, address = answers[started % len(answers)]
                    started += 1
                    next_start = now if started < len(answers) else now + HEDGE
                    s = socket.socket(family, kind, proto)
                    s.setblocking(False)
                    code = s.connect_ex(address)
                    if code == 0:
                        s.close()
                        return
                    if code != errno.EINPROGRESS:
                        s.close()
                        errors.append(f"{address[0]}: {os.strerror(code)}")
                        continue
                    pending[s] = address[0]
                    next_start = max(next_start, now + HEDGE)
                until = min(deadline, next_start)
                _, done, _ = select.select([], list(pending), [], max(0.0, until - now))
                for s in done:
                    code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        return
                    errors.append(f"{pending.pop(s)}: {os.strerror(code)}")
                    s.close()
                    if started < len(answers):
                        next_start = time.monotonic()  # the next address at once
            errors += [f"{a}: timed out" for a in pending.values()]
        finally:
            for s in pending:
                s.close()
        host_port = docker_host.split("://", 1)[1].split("/", 1)[0]
        raise DockerUnavailable(f"{docker_host}: {host_port}: "
                                f"{'; '.join(dict.fromkeys(errors))}")

    def _resolve(self, host: str, port: int, timeout: float) -> Any:
        """getaddrinfo's answers, the OSError it raised, or None if none comes within
        ``timeout``: the first answer of the lookups this call joined (see the module
        docstring). At most ``MAX_LOOKUPS`` per name are in flight; then the newest is
        joined."""
        key = (host, port)
        joined: list[list[Any]] = []  # the result lists of the lookups this call waits on
        waited = 0.0
        with self._done:
            while True:
                lookups = self._lookups.setdefault(key, [])
                now = self._clock()
                if lookups and (now - lookups[-1][2] < HEDGE or len(lookups) >= MAX_LOOKUPS):
                    newest = lookups[-1][1]
                    if not any(newest is r for r in joined):
                        joined.append(newest)
                else:
                    joined.append(self._start_lookup(key, now))
                for result in joined:
                    if result:
                        return result[0]
                step = min(HEDGE, timeout - waited)
                if step <= 0:
                    return None
                began = time.monotonic()
                self._done.wait(step)
                waited += time.monotonic() - began
                for result in joined:
                    if result:
                        return result[0]

    def _start_lookup(self, key: tuple[str, int], now: float) -> list[Any]:
        """A lookup of ``key`` in a thread of its own (called with the condition held); the
        list it appends its one result to."""
        result: list[Any] = []
        host, port = key

        def lookup() -> None:
            try:
                answer: Any = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                answer = exc
            with self._done:
                result.append(answer)
                mine = self._lookups.get(key, [])
                mine[:] = [p for p in mine if p[1] is not result]
                if not mine:
                    self._lookups.pop(key, None)
                self._done.notify_all()

        thread = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
        self._lookups.setdefault(key, []).append((thread, result, now))
        thread.start()
        return result
