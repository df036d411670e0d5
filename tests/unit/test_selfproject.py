"""anchord.selfproject against a small HTTP server on a unix socket standing in for Docker."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from anchord import selfproject
from anchord.selfproject import SelfUnknown, own_project, wait_for_project

CID = "0123456789ab" + "cd" * 26
DOCS: dict[str, dict[str, Any]] = {}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        key = self.path.removeprefix("/containers/").removesuffix("/json")
        doc = DOCS.get(key)
        body = json.dumps(doc if doc is not None else {"message": "no such container"}).encode()
        self.send_response(200 if doc is not None else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "docker.sock"
    server = _Server(str(path), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    DOCS.clear()
    try:
        yield f"unix://{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _doc(cid: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"Id": cid, "Config": {"Labels": labels}}


def test_the_label_of_the_container_named_by_the_host_name(docker: str) -> None:
    DOCS[CID[:12]] = _doc(CID, {"com.docker.compose.project": "mail"})
    assert own_project(docker, CID[:12]) == "mail"


def test_a_container_that_is_not_this_one_is_not_believed(docker: str) -> None:
    DOCS[CID[:12]] = _doc("f" * 64, {"com.docker.compose.project": "other"})
    with pytest.raises(SelfUnknown, match="is not this one"):
        own_project(docker, CID[:12])


def test_no_compose_label_says_so(docker: str) -> None:
    DOCS[CID[:12]] = _doc(CID, {})
    with pytest.raises(SelfUnknown, match="not started by Compose"):
        own_project(docker, CID[:12])


def test_a_custom_host_name_cannot_be_looked_up(docker: str) -> None:
    with pytest.raises(SelfUnknown, match="not a container id"):
        own_project(docker, "mailhost")


def test_unknown_container_and_no_daemon(docker: str, tmp_path: Path) -> None:
    with pytest.raises(SelfUnknown, match="404"):
        own_project(docker, CID[:12])
    with pytest.raises(SelfUnknown, match="no answer"):
        own_project(f"unix://{tmp_path}/absent.sock", CID[:12])


def test_wait_asks_again_until_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[str | Exception] = [SelfUnknown("proxy down"), SelfUnknown("proxy down"),
                                      "mail"]

    def fake(docker_host: str, hostname: str, timeout: float = 0.0) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(selfproject, "own_project", fake)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    assert wait_for_project("unix:///x", CID[:12], 10.0, lambda: now[0], sleep) == "mail"
    assert slept == [0.1, 0.2]
    answers[:] = [SelfUnknown("proxy down")] * 100
    with pytest.raises(SelfUnknown, match="proxy down"):
        wait_for_project("unix:///x", CID[:12], now[0] + 1.0, lambda: now[0], sleep)
