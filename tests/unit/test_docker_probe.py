"""The reachability probe of a tcp:// DOCKER_HOST (``anchord.docker_state._reachable``).

Owns: a proxy whose name does not resolve, or resolves slowly, fails within PROBE_TIMEOUT
(getaddrinfo itself has no timeout, and Docker's DNS takes 10 s for a stopped container's
name), concurrent callers share one lookup but a later caller does not inherit a stale one
(bounded), and a refused port fails at once.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from anchord import docker_state
from anchord.docker_state import PROBE_TIMEOUT, DockerUnavailable, _reachable


def test_slow_resolution_fails_within_the_probe_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(host: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        release.wait(10)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    try:
        # Two callers at once share one lookup.
        errors: list[BaseException] = []

        def probe() -> None:
            try:
                _reachable("tcp://docker-proxy:2375", 10.0)
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        start = time.monotonic()
        both = [threading.Thread(target=probe) for _ in range(2)]
        for t in both:
            t.start()
        for t in both:
            t.join()
        assert time.monotonic() - start < PROBE_TIMEOUT + 0.5
        assert [type(e) for e in errors] == [DockerUnavailable] * 2, errors
        assert calls == ["docker-proxy"]
        # A later caller does not inherit a lookup older than the probe's timeout (a proxy
        # back meanwhile must be seen at once), and the lookups in flight stay bounded.
        for _ in range(docker_state._MAX_LOOKUPS + 3):
            with pytest.raises(DockerUnavailable, match="does not resolve"):
                _reachable("tcp://docker-proxy:2375", 0.05)
            time.sleep(0.06)
        assert len(calls) == docker_state._MAX_LOOKUPS, len(calls)
    finally:
        release.set()


def test_unknown_name_and_refused_port() -> None:
    with pytest.raises(DockerUnavailable, match="cannot resolve"):
        _reachable("tcp://name.invalid:2375", 10.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DockerUnavailable, match="refused"):
            _reachable(f"tcp://127.0.0.1:{port}", 10.0)


def test_listening_port_passes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        _reachable(f"tcp://127.0.0.1:{s.getsockname()[1]}", 10.0)
        _reachable(f"tcp://localhost:{s.getsockname()[1]}", 10.0, connect=False)


def test_the_event_queue_is_bounded_and_an_overflow_asks_for_a_re_list() -> None:
    from anchord import docker_state
    from anchord.docker_state import EventPump, PumpReport

    pump = EventPump("unix:///nonexistent.sock")
    try:
        for i in range(docker_state.MAX_QUEUED + 50):
            pump._report(PumpReport("event", {"id": str(i)}))
        reports = pump.drain()
        assert len(reports) == docker_state.MAX_QUEUED + 1
        assert reports[-1] == PumpReport("subscribed")  # the consumer re-lists
        assert pump.drain() == []
    finally:
        pump.stop()


def test_a_proxy_name_is_tried_at_every_address_it_resolves_to(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """IPv6 first (as on a network with IPv6), the proxy listening on IPv4 only: reachable."""
    import socket

    from anchord import docker_state

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        answers = [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
        docker_state._tcp_reachable(f"tcp://docker-proxy-v6first:{port}", 2.0, True)
        answers.pop()  # IPv6 only: refused, and said so
        with pytest.raises(docker_state.DockerUnavailable, match="::1"):
            docker_state._tcp_reachable(f"tcp://docker-proxy-v6only:{port}", 2.0, True)
