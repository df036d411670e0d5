"""The project-scoped Docker API proxy (``anchord docker-proxy``, F-22) against the real dockerd.

The proxy runs here as a process of the host (the same code as in the image, where
e2e/test_proxy.py runs it under Compose) holding the Docker socket, scoped to project A. Two
projects' containers exist (``docker run`` with Compose's project label; A's with a secret in
its environment and a bind mount). Checked: the listing has A's containers only and no mounts;
an inspect of B's container is refused as not found; A's inspect carries its labels and
networks but no environment and no mounts; writes, exec, ``/info`` are refused; the event
stream carries A's container events and none of B's; discovery's own client (``DockerApi``)
lists the project through it. Nothing here sends traffic beyond the loopback and the socket.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from anchord.docker_api import DockerApi
from e2e import harness

SCENARIO = "F-22"
SECRET = "s3cr3t-api-key"


@dataclass
class Proxied:
    port: int
    project: str
    mine: str
    other: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _run(project: str, name: str) -> str:
    return harness.run([
        "docker", "run", "-d", "--name", name, "--label",
        f"com.docker.compose.project={project}", "-e", f"API_KEY={SECRET}",
        "-v", "/etc/hostname:/host-hostname:ro", "--network", "none",
        "debian:bookworm-slim", "sleep", "600"]).stdout.strip()


@pytest.fixture(scope="module")
def proxied(anchord_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    tag = uuid.uuid4().hex[:6]
    project = harness.unique_project_name(f"apiproxy-a{tag}")
    other = harness.unique_project_name(f"apiproxy-b{tag}")
    names = [f"{project}-app", f"{other}-app"]
    port = _free_port()
    run_dir = tmp_path_factory.mktemp("proxy-run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "anchord", "docker-proxy"],
        env={**os.environ, "ANCHORD_PROJECT": project, "ANCHORD_PROXY_PORT": str(port),
             "ANCHORD_RUN_DIR": str(run_dir), "PYTHONPATH": str(harness.REPO_ROOT),
             "DOCKER_HOST": "unix:///var/run/docker.sock"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        mine = _run(project, names[0])
        theirs = _run(other, names[1])
        harness.wait_until(lambda: _get(port, "/_ping") == (200, b"OK"), 15,
                           message="the proxy answering /_ping")
        yield Proxied(port, project, mine, theirs)
    finally:
        proc.terminate()
        proc.wait(10)
        harness.run(["docker", "rm", "-f", *names], check=False)


def test_listing_has_the_project_only_and_no_mounts(proxied: Proxied) -> None:
    status, body = _get(proxied.port, "/v1.41/containers/json?all=1")
    assert status == 200, body
    listed = json.loads(body)
    assert [c["Id"] for c in listed] == [proxied.mine], listed
    assert all("Mounts" not in c for c in listed)
    # A client asking for another project's label still gets its own project only.
    filters = json.dumps({"label": [f"com.docker.compose.project={proxied.project}x"]})
    status, body = _get(proxied.port, f"/containers/json?all=1&filters={quote(filters)}")
    assert [c["Id"] for c in json.loads(body)] == [proxied.mine]


def test_inspect_of_another_project_is_not_found(proxied: Proxied) -> None:
    for ref in (proxied.other, proxied.other[:12], f"{proxied.project}-app-x"):
        status, body = _get(proxied.port, f"/containers/{ref}/json")
        assert status == 404, (ref, body)
        assert SECRET.encode() not in body


def test_inspect_of_the_project_has_no_environment_and_no_mounts(proxied: Proxied) -> None:
    status, body = _get(proxied.port, f"/v1.41/containers/{proxied.mine}/json")
    assert status == 200, body
    assert SECRET.encode() not in body
    assert b"/host-hostname" not in body
    doc = json.loads(body)
    assert "Env" not in doc["Config"]
    assert "Mounts" not in doc
    assert doc["Config"]["Labels"]["com.docker.compose.project"] == proxied.project
    assert "NetworkSettings" in doc
    assert "State" in doc


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/containers/{mine}/stop"), ("DELETE", "/containers/{mine}"),
    ("POST", "/containers/{mine}/exec"), ("GET", "/containers/{mine}/logs"),
    ("GET", "/info"), ("GET", "/images/json"), ("POST", "/containers/create"),
    ("GET", "/containers/{mine}/archive?path=/etc"), ("GET", "/secrets"),
])
def test_writes_exec_and_other_calls_are_refused(proxied: Proxied, method: str,
                                                 path: str) -> None:
    status, _ = _get(proxied.port, path.format(mine=proxied.mine), method)
    assert status == 403, (method, path)
    assert harness.run(["docker", "inspect", "-f", "{{.State.Running}}",
                        proxied.mine]).stdout.strip() == "true"


def test_events_carry_the_project_only(proxied: Proxied) -> None:
    since = int(time.time()) - 1
    conn = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=20)
    conn.request("GET", f"/events?since={since}")
    resp = conn.getresponse()
    assert resp.status == 200
    for ref in (proxied.other, proxied.mine):
        harness.run(["docker", "kill", "-s", "USR1", ref], check=False)
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            line = resp.readline()
            if line.strip().isdigit() or not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # chunk framing
            seen.append(event)
            if event.get("id") == proxied.mine and event.get("Action") == "kill":
                break
    finally:
        conn.close()
    ids = {e.get("id") for e in seen}
    assert proxied.mine in ids, seen
    assert proxied.other not in ids, seen


def test_discoverys_client_lists_the_project_through_it(proxied: Proxied) -> None:
    api = DockerApi(f"tcp://127.0.0.1:{proxied.port}", proxied.project)
    try:
        found = api.list_project()
        assert list(found) == [proxied.mine]
        assert api.inspect(proxied.other) is None
    finally:
        api.close()
