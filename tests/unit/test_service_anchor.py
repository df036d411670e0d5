"""Unit tests of the service-anchor's pure parts: gateway choice, the route keeper's
decisions (against a fake route table), the health file and the lookup threads."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from anchord import health
from anchord.config import MetricsAddr, ServiceAnchorConfig
from anchord.health import HEALTH_FILE
from anchord.httpserve import serve
from anchord.routes import RouteError, RouteTable
from workers import service_anchor as sa

V4, V6 = socket.AF_INET, socket.AF_INET6


class FakeRoutes:
    """The default-route slot of each family, as a dict; can be told to refuse a replace."""

    def __init__(self) -> None:
        self.slot: dict[int, str | None] = {V4: None, V6: None}
        self.replaces: list[tuple[int, str]] = []
        self.refuse: str | None = None

    def gateway(self, family: int) -> str | None:
        return self.slot[family]

    def replace(self, family: int, gateway: str) -> None:
        if gateway == self.refuse:
            raise RouteError("replace", family, gateway, errno.ENETUNREACH)
        self.replaces.append((family, gateway))
        self.slot[family] = gateway

    def delete(self, family: int, gateway: str) -> bool:
        if self.slot[family] != gateway:
            return False
        self.slot[family] = None
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keeper(tmp_path: Path) -> tuple[sa.RouteKeeper, FakeRoutes, sa.Metrics, Clock]:
    config = ServiceAnchorConfig(mode="service-anchor", metrics_addr=None, run_dir=tmp_path,
                                 gateway_hostname="anchord", gateway_resolve_interval=5.0)
    routes, metrics, clock = FakeRoutes(), sa.Metrics(), Clock()
    health = sa.HealthFile(tmp_path / HEALTH_FILE, clock=clock)
    k = sa.RouteKeeper(config, cast(RouteTable, routes), metrics, health, clock=clock)
    return k, routes, metrics, clock


def ok(family: int, *addresses: str) -> sa.Resolution:
    return sa.Resolution(family, addresses, "ok")


def failed(family: int, outcome: str = "not_found") -> sa.Resolution:
    return sa.Resolution(family, (), outcome, "[Errno -2] Name or service not known")


def sample(metrics: sa.Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} missing"
    return value


# --- pure helpers ------------------------------------------------------------------------------

def test_choose_gateway_keeps_current_answer_else_lowest_address() -> None:
    assert sa.choose_gateway([], "10.0.0.1") is None
    assert sa.choose_gateway(["10.0.0.9", "10.0.0.3"], "10.0.0.9") == "10.0.0.9"
    assert sa.choose_gateway(["10.0.0.9", "10.0.0.10"], None) == "10.0.0.9"
    # numeric, not lexical order
    assert sa.choose_gateway(["10.0.0.10", "10.0.0.9"], "10.0.0.1") == "10.0.0.9"
    assert sa.choose_gateway(["fd00::10", "fd00::9"], None) == "fd00::9"


def test_usable_addresses_drops_link_local_and_duplicates() -> None:
    got = sa.usable_addresses(["fe80::1", "10.0.0.2", "10.0.0.2", "fd00::2", "0.0.0.0", "junk"])
    assert got == ("10.0.0.2", "fd00::2")


def test_outcome_of_tells_a_missing_name_from_a_resolver_failure() -> None:
    assert sa.outcome_of(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) \
        == "not_found"
    assert sa.outcome_of(socket.gaierror(socket.EAI_AGAIN, "Temporary failure")) == "error"
    assert sa.outcome_of(OSError(110, "timed out")) == "error"


# --- the keeper ----------------------------------------------------------------------------------

def test_first_answer_installs_route_and_makes_ready(keeper: Any) -> None:
    k, routes, metrics, _ = keeper
    assert k.unmet()
    assert k.unmet()[0].startswith("default_route: ")
    k.handle(ok(V4, "10.0.0.1"))
    assert routes.slot[V4] == "10.0.0.1"
    assert k.unmet() == []
    assert sample(metrics, "anchord_gateway_route_replaces_total", family="ipv4") == 1
    assert sample(metrics, "anchord_default_route_present", family="ipv4") == 1
    assert sample(metrics, "anchord_default_route_present", family="ipv6") == 0
    assert sample(metrics, "anchord_gateway_resolve_total", family="ipv4", outcome="ok") == 1


def test_same_answer_again_writes_nothing(keeper: Any) -> None:
    k, routes, metrics, _ = keeper
    k.handle(ok(V4, "10.0.0.1"))
    k.handle(ok(V4, "10.0.0.1"))
    k.handle(ok(V4, "10.0.0.1", "10.0.0.0"))  # the current one is still an answer: stay
    assert routes.replaces == [(V4, "10.0.0.1")]
    assert sample(metrics, "anchord_gateway_route_replaces_total", family="ipv4") == 1


def test_changed_answer_replaces_route(keeper: Any) -> None:
    k, routes, metrics, _ = keeper
    k.handle(ok(V6, "fd00::1"))
    k.handle(ok(V6, "fd00::3"))
    assert routes.replaces == [(V6, "fd00::1"), (V6, "fd00::3")]
    assert sample(metrics, "anchord_gateway_route_replaces_total", family="ipv6") == 2


def test_route_changed_behind_its_back_is_put_back_at_next_answer(keeper: Any) -> None:
    k, routes, _, _ = keeper
    k.handle(ok(V4, "10.0.0.1"))
    routes.slot[V4] = "10.0.0.254"
    k.refresh()
    assert k.unmet()  # no longer via the gateway: not ready
    k.handle(ok(V4, "10.0.0.1"))
    assert routes.slot[V4] == "10.0.0.1"
    assert k.unmet() == []


def test_failure_keeps_last_route_and_retries_with_backoff(keeper: Any) -> None:
    k, routes, metrics, clock = keeper
    clock.now += sa.STARTUP_RETRY  # past the start, where failures are retried at once
    k.handle(ok(V4, "10.0.0.1"))
    assert k.states[V4].due == clock.now + 5.0
    k.handle(failed(V4))
    assert routes.slot[V4] == "10.0.0.1"
    assert k.unmet() == []
    assert k.states[V4].due == clock.now + sa.BACKOFF_FIRST
    k.handle(failed(V4, "error"))
    assert k.states[V4].due == clock.now + 2 * sa.BACKOFF_FIRST
    assert sample(metrics, "anchord_gateway_resolve_total", family="ipv4", outcome="not_found") \
        == 1
    assert sample(metrics, "anchord_gateway_resolve_total", family="ipv4", outcome="error") == 1
    k.handle(ok(V4, "10.0.0.1"))  # success resets the backoff
    assert k.states[V4].due == clock.now + 5.0


def test_failures_right_after_the_start_are_retried_without_backing_off(keeper: Any) -> None:
    """At `compose up` the gateway's container may join the network after us: until
    STARTUP_RETRY, every failed lookup is retried BACKOFF_FIRST later, then the backoff
    doubles as before."""
    k, _, _, clock = keeper
    for _ in range(5):
        k.handle(failed(V4))
        assert k.states[V4].due == clock.now + sa.BACKOFF_FIRST
        clock.now += sa.BACKOFF_FIRST
    clock.now += sa.STARTUP_RETRY
    delays = []
    for _ in range(3):
        k.handle(failed(V4))
        delays.append(k.states[V4].due - clock.now)
    assert delays == [sa.BACKOFF_FIRST, 2 * sa.BACKOFF_FIRST, 4 * sa.BACKOFF_FIRST]


def test_right_after_the_start_a_success_is_announced_again_within_a_second(
        keeper: Any) -> None:
    """The first route report can reach anchord before it listens: until STARTUP_RETRY the
    next lookup (and announcement) comes STARTUP_REPEAT later, then at the resolve interval."""
    k, _, _, clock = keeper
    k.handle(ok(V4, "10.0.0.1"))
    assert k.states[V4].due == clock.now + sa.STARTUP_REPEAT
    clock.now += sa.STARTUP_RETRY
    k.handle(ok(V4, "10.0.0.1"))
    assert k.states[V4].due == clock.now + 5.0


def test_nothing_resolves_reports_why_not_ready(keeper: Any) -> None:
    k, _, _, _ = keeper
    k.handle(failed(V4))
    k.handle(failed(V6))
    (line,) = k.unmet()
    assert line.startswith("default_route: none via anchord")
    assert "ipv4: [Errno -2]" in line
    assert "ipv6: [Errno -2]" in line


def test_refused_replace_counts_error_retries_soon_and_stays_unready(keeper: Any) -> None:
    k, routes, metrics, clock = keeper
    routes.refuse = "10.9.9.9"
    k.handle(ok(V4, "10.9.9.9"))
    assert routes.slot[V4] is None
    assert k.unmet()
    assert sample(metrics, "anchord_gateway_route_errors_total", family="ipv4") == 1
    assert k.states[V4].due == clock.now + sa.BACKOFF_FIRST


def test_teardown_removes_only_routes_still_its_own(keeper: Any) -> None:
    k, routes, _, _ = keeper
    k.handle(ok(V4, "10.0.0.1"))
    k.handle(ok(V6, "fd00::1"))
    routes.slot[V6] = "fd00::99"  # somebody else's now
    k.teardown()
    assert routes.slot == {V4: None, V6: "fd00::99"}


def test_existing_route_via_the_answer_is_adopted_without_a_write(keeper: Any) -> None:
    k, routes, _, _ = keeper
    routes.slot[V4] = "10.0.0.1"  # left by a previous instance
    k.handle(ok(V4, "10.0.0.1"))
    assert routes.replaces == []
    assert k.unmet() == []
    k.teardown()
    assert routes.slot[V4] is None


# --- health file ---------------------------------------------------------------------------------

def test_health_file_follows_readiness(keeper: Any, tmp_path: Path) -> None:
    k, _, _, clock = keeper
    clock.now = time.time()  # health.check compares with the wall clock
    path = tmp_path / HEALTH_FILE
    k.refresh()
    state = json.loads(path.read_text())
    assert state["ready"] is False
    assert "default_route" in state["unmet"]
    healthy, message = health.check(tmp_path)  # what `anchord healthcheck` runs
    assert not healthy
    assert "default_route: none via anchord" in message
    assert not (tmp_path / health.READY_MARKER).exists()  # the image's sh check: not ready
    assert state["pid"] == os.getpid()
    assert state["mode"] == "service-anchor"
    k.handle(ok(V4, "10.0.0.1"))
    state = json.loads(path.read_text())
    assert state["ready"] is True
    assert state["unmet"] == {}
    assert health.check(tmp_path) == (True, "ready")
    assert state["routes"] == {"ipv4": "10.0.0.1", "ipv6": None}
    assert state["time"] > 0
    assert (tmp_path / health.READY_MARKER).read_text().strip() == str(os.getpid())
    # no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([HEALTH_FILE, health.READY_MARKER])


def test_health_file_is_refreshed_well_inside_the_healthcheck_staleness_limit() -> None:
    assert sa.HEALTH_REFRESH * 2 <= health.STALE_AFTER


def test_health_file_rewritten_on_change_or_when_due_only(tmp_path: Path) -> None:
    clock = Clock()
    hf = sa.HealthFile(tmp_path / "run" / "health.json", clock=clock)
    hf.update(True, {}, {"ipv4": "10.0.0.1"})
    first = hf.path.stat().st_mtime_ns
    hf.path.write_text("marker")
    clock.now += 1
    hf.update(True, {}, {"ipv4": "10.0.0.1"})
    assert hf.path.read_text() == "marker"  # unchanged and fresh: not rewritten
    clock.now += sa.HEALTH_REFRESH
    hf.update(True, {}, {"ipv4": "10.0.0.1"})
    assert json.loads(hf.path.read_text())["time"] == clock.now
    hf.update(False, {"default_route": "x"}, {"ipv4": None})
    assert json.loads(hf.path.read_text())["ready"] is False
    assert first > 0
    hf.remove()
    hf.remove()  # idempotent
    assert not hf.path.exists()


def test_health_file_that_cannot_be_written_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    hf = sa.HealthFile(blocker / "health.json")  # parent is a file: mkdir fails
    hf.update(True, {}, {})
    hf.update(False, {}, {})


# --- lookups -------------------------------------------------------------------------------------

def test_lookups_deliver_results_wake_the_loop_and_run_one_per_family() -> None:
    release = threading.Event()

    def resolver(host: str, family: int) -> sa.Resolution:
        release.wait(5)
        return ok(family, "10.0.0.1" if family == V4 else "fd00::1")

    r, w = os.pipe()
    try:
        lookups = sa.Lookups("anchord", w, resolver=resolver)
        assert lookups.start(V4)
        assert lookups.start(V6)
        assert not lookups.start(V4)  # still running
        assert lookups.results() == []
        release.set()
        assert os.read(r, 1) == b"r"
        got: list[sa.Resolution] = []
        while len(got) < 2:
            os.read(r, 1)  # blocks until the other thread is done too
            got += lookups.results()
        assert sorted(res.family for res in got) == [V4, V6]
        assert lookups.start(V4)  # done: a new one may start
    finally:
        release.set()
        os.close(r)
        os.close(w)


def test_listener_that_cannot_bind_is_a_warning_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind fails, nothing is sent anywhere.
    listener = serve(MetricsAddr("192.0.2.1", 9090), sa.Metrics().registry, lambda: [])
    assert listener is None
    assert "cannot listen" in caplog.text


def test_service_anchor_imports_nothing_heavy(tmp_path: Path) -> None:
    # It runs once per exposed service: scapy, docker, zmq, pyroute2 or asyncio would multiply
    # their RSS by the number of services (SPEC footprint target 40 MB; see the benchmark).
    import subprocess
    import sys

    # Nor click (the console script's own fast path) or prometheus_client and http.server (only
    # with a listener, which is off by default).
    probe = ("import sys; from anchord import entry; from workers import service_anchor; "
             "open(sys.argv[1], 'w').write(' '.join(sorted(m for m in ('scapy', 'docker', "
             "'zmq', 'pyroute2', 'asyncio', 'bus', 'click', 'prometheus_client', 'http.server')"
             " if m in sys.modules)))")
    repo = Path(__file__).resolve().parents[2]
    result = tmp_path / "heavy.txt"
    # The answer goes to a file, not stdout: two `make test` runs saw something else than the
    # probe's line on its stdout (an "r"), which no rerun reproduced.
    out = subprocess.run([sys.executable, "-c", probe, str(result)], capture_output=True,
                         text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                         check=True)
    assert result.exists(), (out.stdout, out.stderr)
    assert result.read_text() == "", (result.read_text(), out.stdout, out.stderr)
