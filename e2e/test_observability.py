"""Observability and readiness under Compose (issue 5): what a Prometheus, Compose's
``service_healthy`` and an operator see.

Proves, on e2e/compose/observe/compose.yaml (see there for the topology and how its
service-anchor is made slow to become ready):

- an app gated on ``depends_on: {<anchor>: {condition: service_healthy}}`` starts only once
  the anchor's default route via anchord exists: its first instant already sees the route,
  while an app in the same namespace without the gating started before anchord did, without it;
- metrics scraped from another container on the transit network with
  ``ANCHORD_METRICS_ADDR=:9090`` (the network-anchor's and a service-anchor's own listener):
  the SPEC F-19 families with sane values, /healthz and /readyz;
- ``anchord status`` and ``--json`` show each program's restarts after
  ``supervisorctl restart nat-writer``;
- the series on /metrics are the same set after 100 labelled containers came and went;
- with the default ``ANCHORD_METRICS_ADDR`` (127.0.0.1:9090) the listener is not reachable from
  another container (last: it recreates anchord).

All traffic stays on the project's two ``internal: true`` bridges.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import harness, stack_support
from e2e.harness import ComposeProject, wait_until
from e2e.lifecycle_support import started_at, transit_addresses
from e2e.stack_support import LAN_IMAGE, Stack

SCENARIO = "F-18..20 observe"  # for the scenario report (e2e/conftest.py)
OBSERVE_FILE = harness.COMPOSE_DIR / "observe" / "compose.yaml"
WORKERS = ("discovery", "dhcp", "nat-writer", "conntrack-flusher")  # bus clients of metrics
PROGRAMS = ("bus", *WORKERS, "metrics")
# One GET from the scraper container: {"status", "body"} or {"error": "<exception name>"}.
SCRAPE = """
import json, sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=3)
    print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
except OSError as e:
    print(json.dumps({"error": type(getattr(e, "reason", e)).__name__}))
"""
# Gauges whose value must come back after the churn (counters may grow, lease time shrinks).
SETTLED_GAUGES = (
    "anchord_dnat_entries",
    "anchord_label_rejections",
    "anchord_worker_up",
    "anchord_ready",
)
CHURN = 100
CHURN_LABEL = "anchord-e2e.churn"
ROUND = 25


@pytest.fixture(scope="module")
def stack(anchord_image: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    stack_support.build_lan_image()
    project = ComposeProject(
        compose_file=OBSERVE_FILE,
        name=harness.unique_project_name("observe"),
        env={
            "ANCHORD_IMAGE": anchord_image,
            "ANCHORD_LAN_IMAGE": LAN_IMAGE,
            "ANCHORD_METRICS_ADDR": ":9090",
            "LAN6_DOCKER_SUBNET": stack_support.random_ula64(),
            "TRANSIT6_DOCKER_SUBNET": stack_support.random_ula64(),
        },
    )
    failed_before = request.session.testsfailed
    try:
        # Returns once "gated" started, i.e. once gated-anchor was healthy.
        project.up(timeout=300)
        yield Stack(project)
    finally:
        if request.session.testsfailed != failed_before:
            print(project.dump())
        # Compose does not know the churn containers (no service label): remove any left.
        left = harness.run(
            [
                "docker",
                "ps",
                "-aq",
                "--filter",
                f"label={CHURN_LABEL}",
                "--filter",
                f"label=com.docker.compose.project={project.name}",
            ]
        )
        if left.stdout.split():
            harness.run(["docker", "rm", "-f", *left.stdout.split()], check=False, timeout=180)
        project.down()


def get(stack: Stack, url: str, via: str = "scraper") -> dict[str, Any]:
    python = "python3" if via == "scraper" else "/opt/anchord/bin/python"
    out = stack.exec(via, python, "-c", SCRAPE, url)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# {(sample name, sorted labels): value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def answered(stack: Stack, url: str, via: str = "scraper") -> dict[str, Any] | None:
    """``get`` once the listener answers (any HTTP status), else None."""
    result = get(stack, url, via)
    return result if "status" in result else None


def healthz_from_scraper(stack: Stack, host: str) -> dict[str, Any]:
    """``host``:9090/healthz as the scraper gets it, once the listener answers."""
    return wait_until(
        lambda: answered(stack, f"http://{host}:9090/healthz") or {},
        60,
        interval=0.5,
        message=f"{host}:9090/healthz answering the scraper",
    )


def samples(text: str) -> Samples:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(stack: Stack, host: str = "anchord") -> Samples:
    result = get(stack, f"http://{host}:9090/metrics")
    assert result.get("status") == 200, result
    return samples(result["body"])


def settled(found: Samples) -> Samples | None:
    """``found`` once the IPv4 lease came and web-anchor (healthy) got its DNAT entries."""
    lease = ("anchord_dhcp_lease_remaining_seconds", (("family", "ipv4"),)) in found
    web = found.get(("anchord_dnat_entries", (("family", "ipv4"), ("proto", "tcp")))) == 1.0
    return found if lease and web else None


@dataclass(frozen=True)
class Record:
    """What an app wrote at its first instant: the time and its default routes."""

    at: float
    routes: str


def record(stack: Stack, app: str) -> Record:
    at, _, routes = stack.exec(app, "cat", f"/records/{app}").strip().partition(" ")
    return Record(float(at), routes)


def test_gated_app_starts_only_after_the_route_exists(stack: Stack) -> None:
    """An app gated on service_healthy sees the route via anchord at its first instant."""
    anchord_v4, _ = transit_addresses(stack.project, "anchord")
    anchord_start = started_at(stack.project, "anchord")
    control, gated = record(stack, "control"), record(stack, "gated")
    print(
        f"control app at {control.at:.2f}, anchord started at {anchord_start:.2f}, "
        f"gated app at {gated.at:.2f} (+{gated.at - anchord_start:.2f}s)"
    )
    # Without the gating, an app starts before the anchor can have its route: at its start the
    # default route is at most Docker's own (via the bridge, which an internal network gives
    # on Docker 20.10 and which leads nowhere), not via anchord.
    assert control.at < anchord_start, (control, anchord_start)
    assert f"via {anchord_v4} " not in control.routes, (control, anchord_v4)
    # With it, the app's very first instant already has the default route via anchord.
    assert gated.at > anchord_start, (gated, anchord_start)
    assert f"default via {anchord_v4} " in gated.routes, (gated, anchord_v4)


def test_metrics_health_and_readiness_scraped_from_another_container(stack: Stack) -> None:
    """anchord:9090 from another container: /healthz, /readyz, F-19 families, sane values."""
    # `compose up` returned once the gated app started: anchord's workers may still be starting.
    assert healthz_from_scraper(stack, "anchord") == {"status": 200, "body": "ok\n"}
    wait_until(
        lambda: get(stack, "http://anchord:9090/readyz") == {"status": 200, "body": "ready\n"},
        60,
        interval=0.5,
        message="/readyz 200 from scraper",
    )
    found = wait_until(
        lambda: settled(scrape(stack)),
        60,
        interval=0.5,
        message="an ipv4 lease and web-anchor's DNAT entries in the scraped metrics",
    )
    info = [labels for (name, labels) in found if name == "anchord_build_info"]
    assert len(info) == 1, info
    assert dict(info[0])["role"] == "network-anchor", info
    assert value(found, "anchord_ready") == 1.0
    for worker in WORKERS:
        assert value(found, "anchord_worker_up", worker=worker) == 1.0, worker
    # web-anchor's label tcp/8080, udp/8080, mirrored on IPv6: one entry per family/proto.
    for family in ("ipv4", "ipv6"):
        for proto in ("tcp", "udp"):
            assert value(found, "anchord_dnat_entries", family=family, proto=proto) == 1.0
    lease = value(found, "anchord_dhcp_lease_remaining_seconds", family="ipv4")
    assert 0 < lease <= 600, lease
    assert value(found, "anchord_reconcile_total", result="ok") >= 1
    assert value(found, "anchord_reconcile_duration_seconds_count") >= 1
    # A counter is never negative: what can fail is the series missing.
    assert ("anchord_docker_events_total", (("source", "poll"),)) in found, sorted(found)
    assert value(found, "anchord_dhcp_acquired_total", family="ipv4", outcome="ok") >= 1
    for outcome in ("label", "conflict", "no-transit"):
        assert value(found, "anchord_label_rejections", outcome=outcome) == 0.0
    # Bounded labels: never a container, an address or a port.
    anchord_v4, _ = transit_addresses(stack.project, "anchord")
    forbidden = (stack.project.name, "web-anchor", "8080", anchord_v4)
    for _, labels in found:
        assert not any(f in label for _, label in labels for f in forbidden), labels


def test_deploy_rules_and_dashboard_query_only_exported_metrics(stack: Stack) -> None:
    """deploy/ (alert rules, Grafana dashboard): every series they name is in a real scrape."""
    from tests.integration.test_deploy import deploy_metric_names

    exported = {name for name, _ in scrape(stack)}
    # A histogram is queried by its _bucket/_sum/_count series, a counter by _total.
    missing = sorted(deploy_metric_names() - exported)
    assert missing == [], f"deploy/ names series anchord does not export: {missing}"


def test_service_anchor_listener_scraped_from_another_container(stack: Stack) -> None:
    """A service-anchor's own :9090 from another container: ready, route present, counts."""
    assert healthz_from_scraper(stack, "web-anchor") == {"status": 200, "body": "ok\n"}
    assert get(stack, "http://web-anchor:9090/readyz") == {"status": 200, "body": "ready\n"}
    found = scrape(stack, "web-anchor")
    info = [dict(labels) for (name, labels) in found if name == "anchord_build_info"]
    assert [i["role"] for i in info] == ["service-anchor"], info
    assert value(found, "anchord_default_route_present", family="ipv4") == 1.0
    assert value(found, "anchord_gateway_resolve_total", family="ipv4", outcome="ok") >= 1
    assert value(found, "anchord_gateway_route_replaces_total", family="ipv4") >= 1
    assert value(found, "anchord_gateway_route_errors_total", family="ipv4") == 0


def restarts_json(stack: Stack) -> dict[str, Any]:
    return {p["name"]: p["restarts"] for p in stack.status_json()["processes"]}


def test_status_shows_restarts_after_a_worker_restart(stack: Stack) -> None:
    """After `supervisorctl restart nat-writer`, status shows it restarted once, others 0."""
    zero = dict.fromkeys(PROGRAMS, 0)
    wait_until(
        lambda: restarts_json(stack) == zero,
        30,
        interval=0.5,
        message=f"status --json restarts {zero}",
    )
    stack.exec("anchord", "supervisorctl", "restart", "nat-writer")
    want = zero | {"nat-writer": 1}
    wait_until(
        lambda: restarts_json(stack) == want,
        30,
        interval=0.5,
        message=f"status --json restarts {want}",
    )
    text = stack.status_text()
    for program in PROGRAMS:
        assert any(
            line.split()[0] == program and line.endswith(f"restarts {want[program]}")
            for line in text.splitlines()
            if line.startswith("  ")
        ), (program, text)
    found = scrape(stack)
    for program in PROGRAMS:
        assert value(found, "anchord_worker_restarts_total", worker=program) == want[program]


def expose_churn(stack: Stack, index: int) -> tuple[dict[str, str], str]:
    """Labels of the index-th churn container and how discovery must take them: ``tcp``/
    ``udp`` (exposed on IPv4), ``label`` (malformed) or ``conflict`` (web-anchor's port)."""
    port = 7000 + index
    kind = ("tcp", "udp", "tcp", "label", "udp", "conflict", "tcp", "udp")[index % 8]
    label = {
        "tcp": f"tcp/{port}",
        "udp": f"udp/{port}",
        "label": f"tcp/{port}x",
        "conflict": "tcp/8080",
    }[kind]
    labels = {
        "com.docker.compose.project": stack.project.name,
        "anchord.expose": label,
        CHURN_LABEL: "1",  # how the fixture finds any left behind
    }
    if index % 3 == 0:
        labels["anchord.expose.v6"] = "off"
    return labels, kind


def churn_round(stack: Stack, first: int, count: int, base: dict[str, float]) -> None:
    """Start ``count`` labelled containers, see them exposed (or rejected), remove them, see
    everything back to ``base``."""
    network = f"{stack.project.name}_transit"
    churn = [expose_churn(stack, index) for index in range(first, first + count)]
    kinds = Counter(kind for _, kind in churn)

    def create(labels: dict[str, str]) -> str:
        args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        cmd = ["docker", "create", *args, "--network", network, LAN_IMAGE, "sleep", "infinity"]
        return harness.run(cmd).stdout.strip()

    # A few at a time: a `docker create` is mostly waiting for dockerd.
    with ThreadPoolExecutor(max_workers=5) as pool:
        ids = list(pool.map(create, (labels for labels, _ in churn)))
    try:
        harness.run(["docker", "start", *ids])
        want = {
            "tcp": base["tcp"] + kinds["tcp"],
            "udp": base["udp"] + kinds["udp"],
            "label": kinds["label"],
            "conflict": kinds["conflict"],
        }
        wait_until(
            lambda: churn_view(stack) == want,
            60,
            interval=0.5,
            message=f"containers {first}..{first + count - 1} exposed/rejected: {want}",
        )
    finally:
        harness.run(["docker", "rm", "-f", *ids], timeout=180)
    wait_until(
        lambda: churn_view(stack) == base,
        60,
        interval=0.5,
        message=f"containers {first}..{first + count - 1} gone: {base}",
    )


def churn_view(stack: Stack) -> dict[str, float]:
    found = scrape(stack)
    return {
        "tcp": value(found, "anchord_dnat_entries", family="ipv4", proto="tcp"),
        "udp": value(found, "anchord_dnat_entries", family="ipv4", proto="udp"),
        "label": value(found, "anchord_label_rejections", outcome="label"),
        "conflict": value(found, "anchord_label_rejections", outcome="conflict"),
    }


def gauges_back(stack: Stack, settled: Samples) -> Samples | None:
    """A scrape whose gauges have the ``settled`` values, else None."""
    found = scrape(stack)
    return found if all(found.get(key) == v for key, v in settled.items()) else None


def test_series_unchanged_after_100_containers_came_and_went(stack: Stack) -> None:
    """The same series on /metrics after 100 labelled containers came and went."""
    base = {"tcp": 1.0, "udp": 1.0, "label": 0.0, "conflict": 0.0}
    wait_until(lambda: churn_view(stack) == base, 30, interval=0.5, message=f"base {base}")
    before = scrape(stack)
    started = time.monotonic()
    for first in range(0, CHURN, ROUND):
        churn_round(stack, first, ROUND, base)
    took = time.monotonic() - started
    settled = {key: v for key, v in before.items() if key[0] in SETTLED_GAUGES}
    back: Samples | None = None
    # the assertions below say what differs
    with contextlib.suppress(TimeoutError):
        back = wait_until(
            lambda: gauges_back(stack, settled),
            30,
            interval=0.5,
            message="the gauges back at their values before",
        )
    after = back if back is not None else scrape(stack)
    per_name = {name: n for name, n in Counter(name for name, _ in before).items()}
    print(
        f"{CHURN} containers came and went in {took:.1f}s; {len(before)} series before, "
        f"{len(after)} after; per metric: {per_name}"
    )
    assert Counter(name for name, _ in after) == Counter(name for name, _ in before)
    assert set(after) == set(before), sorted(set(after) ^ set(before))
    assert {key: after[key] for key in settled} == settled


def test_default_metrics_addr_is_not_reachable_from_another_container(stack: Stack) -> None:
    """With the default ANCHORD_METRICS_ADDR another container is refused."""
    project = replace(
        stack.project,
        env={k: v for k, v in stack.project.env.items() if k != "ANCHORD_METRICS_ADDR"},
    )
    project.compose("up", "-d", "--no-deps", "--force-recreate", "anchord", timeout=180)
    fresh = Stack(project)
    env = fresh.project.inspect("anchord")["Config"]["Env"]
    assert not any(e.startswith("ANCHORD_METRICS_ADDR=") for e in env), env
    # Listening on 127.0.0.1:9090 in its own namespace ...
    inside = wait_until(
        lambda: answered(fresh, "http://127.0.0.1:9090/healthz", via="anchord"),
        60,
        interval=0.5,
        message="the default listener inside anchord",
    )
    assert inside == {"status": 200, "body": "ok\n"}
    # ... and refused from the scraper (the name resolves: the container is there).
    assert get(fresh, "http://anchord:9090/metrics") == {"error": "ConnectionRefusedError"}
    assert get(fresh, "http://anchord:9090/healthz") == {"error": "ConnectionRefusedError"}
