"""The HTTP listener under a slowloris: bounded handlers, per-connection timeouts (F-18)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from anchord import httpserve
from anchord.config import MetricsAddr


def _healthz(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
        return str(resp.read().decode())


def test_idle_connections_cannot_starve_healthz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserve, "REQUEST_TIMEOUT", 0.5)  # read when the handler is built
    listener = httpserve.serve(MetricsAddr("127.0.0.1", 0), CollectorRegistry(), lambda: [])
    assert listener is not None
    idle = []
    try:
        # Twice as many silent clients as there are handler threads.
        for _ in range(2 * httpserve.MAX_HANDLERS):
            idle.append(socket.create_connection(("127.0.0.1", listener.port), timeout=2))
        deadline = time.monotonic() + 5
        answer = ""
        while time.monotonic() < deadline and not answer:
            try:
                answer = _healthz(listener.port)
            except OSError:
                time.sleep(0.05)
        assert answer == "ok\n"
    finally:
        for s in idle:
            s.close()
        listener.close()


def test_a_broken_readiness_check_says_not_ready_without_its_error() -> None:
    def broken() -> list[str]:
        raise RuntimeError("secret internal detail")

    listener = httpserve.serve(MetricsAddr("127.0.0.1", 0), CollectorRegistry(), broken)
    assert listener is not None
    try:
        with pytest.raises(urllib.error.HTTPError) as err:  # a broken check never answers ready
            urllib.request.urlopen(f"http://127.0.0.1:{listener.port}/readyz", timeout=3)
        body = err.value.read().decode()
        assert err.value.code == 503
        assert "secret" not in body
        assert "readiness_check" in body
    finally:
        listener.close()
