"""The reachability probe of a tcp:// DOCKER_HOST (``anchord.docker_reach.Reachability``),
and the event pump's bounded queue (``anchord.docker_events``).

Owns: a proxy whose name does not resolve, or resolves slowly, fails within PROBE_TIMEOUT
(getaddrinfo itself has no timeout, and Docker's DNS takes 10 s for a stopped container's
name), successive callers share one recent lookup but never inherit a stale one (bounded), and
a refused port fails at once.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from anchord import docker_events
from anchord.docker_events import EventPump, PumpReport
from anchord.docker_reach import (
    HEDGE,
    MAX_LOOKUPS,
    PROBE_TIMEOUT,
    DockerUnavailable,
    Reachability,
)


def test_slow_resolution_fails_within_the_probe_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(host: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        release.wait(10)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    now = [0.0]  # the lookups' clock, aged by hand below
    reach = Reachability(clock=lambda: now[0])
    try:
        # Two callers at once share one lookup, and both fail within the probe timeout.
        errors: list[BaseException] = []

        def probe() -> None:
            try:
                reach.check("tcp://docker-proxy:2375", 10.0)
            except DockerUnavailable as exc:
                errors.append(exc)

        start = time.monotonic()
        both = [threading.Thread(target=probe) for _ in range(2)]
        for t in both:
            t.start()
        for t in both:
            t.join()
        assert time.monotonic() - start < PROBE_TIMEOUT + 0.5
        assert len(errors) == 2, errors
        assert all("does not resolve" in str(e) for e in errors), errors
        assert calls == ["docker-proxy"]
        # A later caller does not inherit a lookup older than HEDGE (a proxy back
        # meanwhile must be seen at once), and the lookups in flight stay bounded.
        for _ in range(MAX_LOOKUPS + 3):
            with pytest.raises(DockerUnavailable, match="does not resolve"):
                reach.check("tcp://docker-proxy:2375", 0.05)
            now[0] += HEDGE + 0.01  # unanswered past HEDGE: the next check starts a fresh one
        assert len(calls) == MAX_LOOKUPS, len(calls)
    finally:
        release.set()


def test_a_lookup_hung_while_the_proxy_was_stopped_does_not_hold_back_its_return(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that began waiting just before the proxy came back gets the answer of a fresh
    lookup, not the probe timeout's failure of the hung one."""
    release = threading.Event()
    calls: list[str] = []

    def resolver(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        if len(calls) == 1:  # begun while the proxy was stopped: hangs as Docker's DNS does
            release.wait(10)
            raise socket.gaierror(-3, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    try:
        Reachability().check("tcp://docker-proxy:2375", 10.0, connect=False)
        assert calls == ["docker-proxy", "docker-proxy"]
    finally:
        release.set()


def test_unknown_name_and_refused_port() -> None:
    check = Reachability().check
    with pytest.raises(DockerUnavailable, match="cannot resolve"):
        check("tcp://name.invalid:2375", 10.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DockerUnavailable, match="refused"):
            check(f"tcp://127.0.0.1:{port}", 10.0)


def test_listening_port_passes() -> None:
    check = Reachability().check
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check(f"tcp://127.0.0.1:{s.getsockname()[1]}", 10.0)
        check(f"tcp://localhost:{s.getsockname()[1]}", 10.0, connect=False)


def test_the_event_queue_is_bounded_and_an_overflow_asks_for_a_re_list() -> None:
    pump = EventPump("unix:///nonexistent.sock")
    try:
        for i in range(docker_events.MAX_QUEUED + 50):
            pump._report(PumpReport("event", {"id": str(i)}))
        reports = pump.drain()
        assert len(reports) == docker_events.MAX_QUEUED + 1
        assert reports[-1] == PumpReport("subscribed")  # the consumer re-lists
        assert pump.drain() == []
    finally:
        pump.stop()


def test_a_proxy_name_is_tried_at_every_address_it_resolves_to(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """IPv6 first (as on a network with IPv6), the proxy listening on IPv4 only: reachable."""
    reach = Reachability()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        answers = [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
        reach.check(f"tcp://docker-proxy-v6first:{port}", 2.0)
        answers.pop()  # IPv6 only: refused, and said so
        with pytest.raises(DockerUnavailable, match="::1"):
            reach.check(f"tcp://docker-proxy-v6only:{port}", 2.0)
