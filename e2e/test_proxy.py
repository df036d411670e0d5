"""Read-only Docker API: anchord discovers through the project-scoped proxy and has no socket.

Owns the proxy scenario (e2e/compose/proxy/compose.yaml: the anchord image's own
``docker-proxy`` role, the only container with the socket, with every capability dropped):
discovery works through ``DOCKER_HOST=tcp://docker-proxy:2375``
(the labelled port is in ``anchord status``, anchord is healthy, an event reaches the table
through the proxied ``/events`` stream); the proxy refuses writes and every path discovery
does not use with 403 while reads pass; stopping the proxy keeps the last table (status and
the kernel's DNAT map) and discovery recovers when it is started again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from e2e import harness
from e2e.harness import ComposeFactory, ComposeProject, wait_until

# Seconds. The poll interval of the compose file is 10 min: anything seen within EVENT_TIMEOUT
# came through the event stream.
START_TIMEOUT = 90.0
EVENT_TIMEOUT = 20.0
OUTAGE_WATCH = 12.0

# Requests made from inside the anchord container (its python3): one line per request,
# "METHOD PATH STATUS".
SCENARIO = "F-15 proxy"  # for the scenario report (e2e/conftest.py)

PROBE = r"""
import sys, urllib.error, urllib.request
for line in sys.argv[1:]:
    method, path = line.split(" ", 1)
    data = b"{}" if method in ("POST", "PUT") else None
    req = urllib.request.Request("http://docker-proxy:2375" + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    print(method, path, code)
"""


@pytest.fixture(scope="session")
def proxy_image(anchord_image: str) -> str:
    """The proxy is a role of the anchord image (``command: [docker-proxy]``)."""
    return anchord_image


def status(project: ComposeProject) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        project.exec("anchord", "anchord", "status", "--json", timeout=30).stdout
    )
    return data


def port_address(report: dict[str, Any], port: int) -> str | None:
    """The backend address ``anchord status`` shows for tcp/``port`` (IPv4), if any."""
    for entry in report.get("ports", []):
        if entry["proto"] == "tcp" and entry["first"] == port and entry["family"] == 4:
            return str(entry["address"])
    return None


def docker_detail(report: dict[str, Any]) -> str:
    """Detail of discovery's ``docker`` condition ("connected", "reconnecting: ...")."""
    for cond in report.get("workers", {}).get("discovery", {}).get("conditions", []):
        if cond["key"] == "docker":
            return str(cond["detail"])
    return ""


def transit_address(project: ComposeProject, service: str) -> str:
    nets = project.inspect(service)["NetworkSettings"]["Networks"]
    return str(nets[f"{project.name}_transit"]["IPAddress"])


def dnat_map(project: ComposeProject) -> str:
    """The IPv4 nftables table the nat-writer keeps (its DNAT maps)."""
    return project.exec("anchord", "nft", "list", "table", "ip", "anchord_v4").stdout


def start(compose: ComposeFactory, proxy_image: str) -> ComposeProject:
    """Up, and wait until status shows web-anchor's tcp/8080 and anchord is healthy."""
    project = compose("proxy", ANCHORD_PROXY_IMAGE=proxy_image)
    project.up()
    web = transit_address(project, "web-anchor")
    wait_until(
        lambda: port_address(status(project), 8080) == web,
        START_TIMEOUT,
        interval=1.0,
        message=f"anchord status shows tcp/8080 -> web-anchor {web}",
    )
    wait_until(
        lambda: project.state("anchord").get("Health", {}).get("Status") == "healthy",
        START_TIMEOUT,
        interval=1.0,
        message="anchord healthy",
    )
    return project


def start_late_anchor(project: ComposeProject) -> str:
    """Start the second labelled service-anchor (tcp/8081); returns its transit address."""
    project.compose(
        "--profile", "late", "up", "-d", "--no-build", "--pull", "never", "late-anchor",
        timeout=120,
    )
    return transit_address(project, "late-anchor")


def test_discovery_works_through_the_proxy(compose: ComposeFactory, proxy_image: str) -> None:
    project = start(compose, proxy_image)
    # No socket in anchord: everything it knows came through the proxy. (Read stdout: this
    # `docker compose exec -T` returns 0 whatever the command's exit code.)
    socket_check = "test -e /var/run/docker.sock && echo present || echo absent"
    assert project.exec("anchord", "sh", "-c", socket_check).stdout.strip() == "absent"
    assert project.inspect("anchord")["Config"]["Env"].count(
        "DOCKER_HOST=tcp://docker-proxy:2375"
    ) == 1
    report = status(project)
    assert docker_detail(report) == "connected", report["workers"].get("discovery")
    assert report["ready"] is True, report["unmet"]
    wait_until(
        lambda: project.state("web-anchor").get("Health", {}).get("Status") == "healthy",
        START_TIMEOUT,
        interval=1.0,
        message="web-anchor healthy (its default route via anchord)",
    )
    # A change only the proxied /events stream can deliver this fast (polls are 10 min apart).
    late = start_late_anchor(project)
    started = time.monotonic()
    wait_until(
        lambda: port_address(status(project), 8081) == late,
        EVENT_TIMEOUT,
        interval=0.5,
        message=f"tcp/8081 -> late-anchor {late} through the event stream",
    )
    print(f"late-anchor in status {time.monotonic() - started:.1f}s after compose up returned")


def test_writes_and_other_paths_are_refused(compose: ComposeFactory, proxy_image: str) -> None:
    project = start(compose, proxy_image)
    web_id = project.container_id("web-anchor")
    requests = [
        "POST /containers/create",
        "POST /v1.41/containers/create",
        f"POST /containers/{web_id}/stop",
        f"DELETE /v1.41/containers/{web_id}",
        "PUT /v1.41/containers/x/archive",
        "GET /secrets",
        "GET /v1.41/images/json",
        f"GET /v1.41/containers/{web_id}/logs",
        f"GET /containers/{web_id}/../../secrets",
        "GET /v1.41/info",
        "GET /v1.41/networks",
        f"POST /v1.41/containers/{web_id}/exec",
        "GET /version",
        "HEAD /_ping",
        "GET /v1.41/containers/json",
        f"GET /v1.41/containers/{web_id}/json",
    ]
    out = project.exec("anchord", "python3", "-c", PROBE, *requests).stdout
    codes = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}
    assert set(codes) == set(requests), out
    for req in requests[:12]:
        assert codes[req] == 403, f"{req} -> {codes[req]}, expected 403"
    for req in requests[12:]:
        assert codes[req] == 200, f"{req} -> {codes[req]}, expected 200"
    # A container of another project: as if it did not exist.
    stranger = harness.run(["docker", "run", "-d", "--rm", "--label",
                            f"com.docker.compose.project={project.name}-other",
                            "--network", "none", "debian:bookworm-slim", "sleep", "60"]
                           ).stdout.strip()
    try:
        out = project.exec("anchord", "python3", "-c", PROBE,
                           f"GET /v1.41/containers/{stranger}/json").stdout
        assert out.strip().endswith(" 404"), out
    finally:
        harness.run(["docker", "rm", "-f", stranger], check=False)
    # The refused writes did nothing: web-anchor still runs, nothing was created.
    assert project.state("web-anchor")["Running"] is True
    assert sorted(row["Service"] for row in project.ps()) == [
        "anchord", "docker-proxy", "web-anchor"
    ]


def test_proxy_stop_keeps_the_table_and_recovers(
    compose: ComposeFactory, proxy_image: str
) -> None:
    project = start(compose, proxy_image)
    web = transit_address(project, "web-anchor")
    assert web in dnat_map(project)
    proxy = project.container_id("docker-proxy")
    harness.run(["docker", "stop", proxy])

    def lost() -> dict[str, Any]:
        r = status(project)
        return r if docker_detail(r).startswith("reconnecting") else {}

    report = wait_until(
        lost,
        EVENT_TIMEOUT,
        interval=0.5,
        message="discovery reports the Docker API lost",
    )
    # While the API is gone, every status shows the last table, and the kernel keeps it.
    deadline = time.monotonic() + OUTAGE_WATCH
    seen = 0
    while True:
        assert port_address(report, 8080) == web, (report["ports"], report["workers"].keys())
        assert docker_detail(report).startswith("reconnecting"), docker_detail(report)
        seen += 1
        if time.monotonic() >= deadline:
            break
        report = status(project)
    assert web in dnat_map(project)
    print(f"{seen} status reports during the outage all showed tcp/8080")

    harness.run(["docker", "start", proxy])
    wait_until(
        lambda: docker_detail(status(project)) == "connected",
        START_TIMEOUT,
        interval=0.5,
        message="discovery connected again through the restarted proxy",
    )
    # Recovered for real: a new change flows through the new event stream.
    late = start_late_anchor(project)
    wait_until(
        lambda: port_address(status(project), 8081) == late,
        EVENT_TIMEOUT,
        interval=0.5,
        message=f"tcp/8081 -> late-anchor {late} after the proxy came back",
    )
    assert port_address(status(project), 8080) == web
    assert project.state("anchord").get("Health", {}).get("Status") == "healthy"
