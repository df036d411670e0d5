"""``anchord.dockerhttp`` (and ``anchord.docker_api`` on top of it) against a fake Docker: a
unix socket server that writes exactly the bytes each test wants, for the protocol's edge cases
(kept-alive connections closed under us, error answers, malformed JSON, chunks split anywhere,
a stream that breaks, stalls or is closed from another thread, timeouts). The real dockerd is
the proof in tests/integration/test_discovery*.py; these pin what a real daemon rarely does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from anchord import docker_api
from anchord.docker_api import DockerApi
from anchord.docker_reach import DockerUnavailable, Reachability
from anchord.dockerhttp import (
    ApiError,
    DockerHttp,
    HttpStatusError,
    MalformedAnswer,
    NotFound,
    connection,
    encode_query,
)


@dataclass
class Request:
    line: str
    headers: dict[str, str]

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


# What the fake does with one request on one connection: write to the socket; return False to
# close the connection afterwards.
Responder = Callable[[Request, socket.socket], bool]


def answer(status: int, body: bytes, reason: str = "X", close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def json_answer(doc: Any, status: int = 200) -> bytes:
    return answer(status, json.dumps(doc).encode())


CHUNKED_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class FakeDocker:
    path: Path
    respond: Responder
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def host(self) -> str:
        return f"unix://{self.path}"


def _read_request(f: Any) -> Request | None:
    line = f.readline()
    if not line:
        return None
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    return Request(line.decode().strip(), headers)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Responder], FakeDocker]]:
    servers: list[tuple[socket.socket, FakeDocker]] = []
    threads: list[threading.Thread] = []
    conns: list[socket.socket] = []

    def serve_conn(state: FakeDocker, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while True:
                try:
                    req = _read_request(f)
                except OSError:
                    return
                if req is None:
                    return
                state.requests.append(req)
                try:
                    if not state.respond(req, conn):
                        return
                except OSError:
                    return

    def accept(server: socket.socket, state: FakeDocker) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            state.connections += 1
            conns.append(conn)
            t = threading.Thread(target=serve_conn, args=(state, conn), daemon=True)
            threads.append(t)
            t.start()

    def make(respond: Responder) -> FakeDocker:
        path = tmp_path / f"docker{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        state = FakeDocker(path, respond)
        servers.append((server, state))
        t = threading.Thread(target=accept, args=(server, state), daemon=True)
        threads.append(t)
        t.start()
        return state

    yield make
    for server, state in servers:
        state.release.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join(5)


def send(data: bytes, keep: bool = True) -> Responder:
    def respond(req: Request, conn: socket.socket) -> bool:
        conn.sendall(data)
        return keep
    return respond


# --- requests and answers ------------------------------------------------------------------


def test_query_encoding() -> None:
    assert encode_query(None) == ""
    assert encode_query({"since": None}) == ""
    q = encode_query({"all": True, "size": False, "since": 12,
                      "filters": {"label": ["com.docker.compose.project=p"]}})
    assert q == ("?all=1&size=0&since=12&filters=%7B%22label%22%3A%5B%22com.docker.compose."
                 "project%3Dp%22%5D%7D")


def test_a_get_is_versioned_filtered_and_decoded(fake: Callable[[Responder], FakeDocker]
                                                 ) -> None:
    docker = fake(send(json_answer([{"Id": "a"}])))
    with DockerHttp(docker.host, version="1.41") as api:
        got = api.get("/containers/json", {"all": True, "filters": {"label": ["x=y"]}})
        assert got == [{"Id": "a"}]
        api.get("/version", versioned=False)
    assert docker.requests[0].line.startswith("GET /v1.41/containers/json?all=1&filters=")
    assert json.loads(unquote(docker.requests[0].target.split("filters=")[1])) == {
        "label": ["x=y"]}
    assert docker.requests[1].target == "/version"
    assert docker.requests[0].headers["accept"] == "application/json"


def test_one_connection_is_kept_alive_for_successive_gets(
        fake: Callable[[Responder], FakeDocker]) -> None:
    docker = fake(send(json_answer({})))
    with DockerHttp(docker.host) as api:
        for _ in range(5):
            assert api.get("/x") == {}
    assert docker.connections == 1


def test_a_kept_alive_connection_closed_by_docker_is_replaced(
        fake: Callable[[Responder], FakeDocker]) -> None:
    # Docker closes the connection after each answer (while idle, as an idle timeout does).
    docker = fake(send(json_answer({"n": 1}), keep=False))
    with DockerHttp(docker.host) as api:
        for _ in range(3):
            assert api.get("/x") == {"n": 1}
    assert docker.connections == 3


def test_a_kept_alive_connection_closed_as_it_is_used_is_asked_again_once(
        fake: Callable[[Responder], FakeDocker]) -> None:
    def respond(req: Request, conn: socket.socket) -> bool:
        if len(docker.requests) == 2:
            return False  # the second request: closed without an answer
        conn.sendall(json_answer({"n": len(docker.requests)}))
        return True

    docker = fake(respond)
    with DockerHttp(docker.host) as api:
        assert api.get("/x") == {"n": 1}
        assert api.get("/x") == {"n": 3}  # asked again on a fresh connection
    assert docker.connections == 2

    # A fresh connection closed without an answer is not asked again: the daemon is broken.
    broken = fake(lambda req, conn: False)
    with DockerHttp(broken.host) as api, pytest.raises(ApiError, match="GET /x"):
        api.get("/x")
    assert broken.connections == 1


def test_not_found_and_other_errors_carry_dockers_message(
        fake: Callable[[Responder], FakeDocker]) -> None:
    def respond(req: Request, conn: socket.socket) -> bool:
        if "missing" in req.target:
            conn.sendall(json_answer({"message": "No such container: missing"}, 404))
        elif "text" in req.target:
            conn.sendall(answer(502, b"Bad Gateway from the proxy\n", "Bad Gateway"))
        else:
            conn.sendall(json_answer({"message": "daemon is confused"}, 500))
        return True

    docker = fake(respond)
    with DockerHttp(docker.host, version="1.41") as api:
        with pytest.raises(NotFound) as nf:
            api.get("/containers/missing/json")
        assert nf.value.status == 404
        assert nf.value.explanation == "No such container: missing"
        with pytest.raises(HttpStatusError) as err:
            api.get("/info")
        assert not isinstance(err.value, NotFound)
        assert err.value.status == 500
        assert "daemon is confused" in str(err.value)
        with pytest.raises(HttpStatusError, match=r"502 Bad Gateway .*from the proxy"):
            api.get("/text")
    assert docker.connections == 1  # error answers keep the connection


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_a_malformed_answer(fake: Callable[[Responder], FakeDocker],
                                              body: bytes) -> None:
    docker = fake(send(answer(200, body)))
    with DockerHttp(docker.host) as api, pytest.raises(MalformedAnswer):
        api.get("/version")


def test_an_answer_that_never_comes_times_out(fake: Callable[[Responder], FakeDocker]) -> None:
    def hang(req: Request, conn: socket.socket) -> bool:
        docker.release.wait(10)
        return False

    docker = fake(hang)
    with DockerHttp(docker.host, timeout=0.3) as api:
        start = time.monotonic()
        with pytest.raises(ApiError, match="timed out"):
            api.get("/version")
        assert time.monotonic() - start < 2


def test_an_answer_cut_short_is_an_error(fake: Callable[[Responder], FakeDocker]) -> None:
    docker = fake(send(answer(200, b'{"ApiVersion": "1.41"}')[:-5], keep=False))
    with DockerHttp(docker.host) as api, pytest.raises(ApiError):
        api.get("/version")


def test_no_daemon_and_bad_hosts(tmp_path: Path) -> None:
    with DockerHttp(f"unix://{tmp_path}/absent.sock") as api, \
            pytest.raises(ApiError, match="No such file"):
        api.get("/version")
    for bad in ("ssh://host", "tcp://", "tcp://host:port"):
        with pytest.raises(ApiError, match="DOCKER_HOST"):
            connection(bad, 1.0)


def test_tcp_tries_every_address_the_name_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """IPv6 first (as on a proxy's network with IPv6), the proxy listening on IPv4 only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn, conn.makefile("rb") as f:
                _read_request(f)
                conn.sendall(json_answer({"ApiVersion": "1.41"}))

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        answers = [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        asked: list[str] = []

        def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
            asked.append(host)
            return answers

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        with DockerHttp(f"tcp://docker-proxy:{port}", timeout=2) as api:
            assert api.get("/version", versioned=False) == {"ApiVersion": "1.41"}
        t.join(5)
        assert asked == ["docker-proxy"]


# --- the event stream ----------------------------------------------------------------------


def _events(*data: bytes, end: bool = True) -> Responder:
    def respond(req: Request, conn: socket.socket) -> bool:
        conn.sendall(CHUNKED_HEAD)
        for d in data:
            conn.sendall(d)  # the client reads at most one chunk at a time
        if end:
            conn.sendall(b"0\r\n\r\n")
        return False
    return respond


def test_events_split_anywhere_are_put_together(fake: Callable[[Responder], FakeDocker]
                                                 ) -> None:
    e1 = json.dumps({"Type": "container", "Action": "start", "id": "a"}).encode() + b"\n"
    e2 = json.dumps({"Type": "network", "Action": "connect"}).encode() + b"\n"
    e3 = json.dumps({"Type": "container", "Action": "die"}).encode() + b"\n"
    # Blank lines between events are skipped.
    docker = fake(_events(chunk(e1[:7]), chunk(e1[7:] + e2 + b"\n" + e3[:3]), chunk(e3[3:5]),
                          chunk(e3[5:])))
    with DockerHttp(docker.host, version="1.41") as api:
        stream = api.events(since=100, filters={"type": ["container", "network"]})
        got = list(stream)
        stream.close()
    assert [e.get("Action") for e in got] == ["start", "connect", "die"]
    target = docker.requests[0].target
    assert target.startswith("/v1.41/events?since=100&filters=")
    assert "until" not in target


def test_an_event_stream_that_breaks_is_an_error(fake: Callable[[Responder], FakeDocker]
                                                  ) -> None:
    e1 = b'{"Type": "container", "Action": "start"}\n'
    # The connection goes away in the middle of a chunk.
    docker = fake(_events(chunk(e1), b"40\r\n{\"Type\": ", end=False))
    with DockerHttp(docker.host) as api:
        stream = api.events()
        assert next(stream)["Action"] == "start"
        with pytest.raises(ApiError):
            next(stream)
        stream.close()


@pytest.mark.parametrize("line", [b"{not json}\n", b"[1, 2]\n", b'"start"\n'])
def test_an_event_that_is_not_a_json_object_is_an_error(
        fake: Callable[[Responder], FakeDocker], line: bytes) -> None:
    docker = fake(_events(chunk(line)))
    with DockerHttp(docker.host) as api:
        stream = api.events()
        with pytest.raises(MalformedAnswer):
            next(stream)
        stream.close()


def test_a_stream_ending_inside_an_event_is_an_error(
        fake: Callable[[Responder], FakeDocker]) -> None:
    docker = fake(_events(chunk(b'{"Type": "cont')))
    with DockerHttp(docker.host) as api:
        stream = api.events()
        with pytest.raises(MalformedAnswer, match="ended inside an event"):
            next(stream)
        stream.close()


def test_an_endless_line_is_an_error(fake: Callable[[Responder], FakeDocker],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anchord.dockerhttp.MAX_EVENT_LINE", 1000)
    docker = fake(_events(*[chunk(b"x" * 300)] * 5, end=False))
    with DockerHttp(docker.host) as api:
        stream = api.events()
        with pytest.raises(MalformedAnswer, match="longer than 1000"):
            next(stream)
        stream.close()


def test_an_event_stream_refused_is_an_http_error(
        fake: Callable[[Responder], FakeDocker]) -> None:
    docker = fake(send(json_answer({"message": "forbidden by the proxy"}, 403)))
    with DockerHttp(docker.host) as api, \
            pytest.raises(HttpStatusError, match="forbidden by the proxy"):
        api.events()


def test_event_stream_headers_that_never_come_time_out(
        fake: Callable[[Responder], FakeDocker]) -> None:
    def hang(req: Request, conn: socket.socket) -> bool:
        docker.release.wait(10)
        return False

    docker = fake(hang)
    with DockerHttp(docker.host, timeout=0.3) as api:
        start = time.monotonic()
        with pytest.raises(ApiError, match="timed out"):
            api.events()
        assert time.monotonic() - start < 2


def _idle_stream(docker_release: Callable[[], threading.Event]) -> Responder:
    def respond(req: Request, conn: socket.socket) -> bool:
        conn.sendall(CHUNKED_HEAD + chunk(b'{"Action": "start"}\n'))
        docker_release().wait(10)  # then nothing happens, for a long time
        return False
    return respond


def test_an_idle_stream_waits_without_a_read_timeout_and_closes_from_another_thread(
        fake: Callable[[Responder], FakeDocker]) -> None:
    holder: list[FakeDocker] = []
    docker = fake(_idle_stream(lambda: holder[0].release))
    holder.append(docker)
    # The API timeout bounds the connect and the headers, not the wait for the next event.
    with DockerHttp(docker.host, timeout=0.2) as api:
        stream = api.events()
        got: list[dict[str, Any]] = []
        ended = threading.Event()
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                got.extend(stream)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            ended.set()

        t = threading.Thread(target=consume)
        t.start()
        assert not ended.wait(0.6)  # three API timeouts: still waiting for events
        assert got == [{"Action": "start"}]
        start = time.monotonic()
        stream.close()
        assert ended.wait(2), "close() did not wake the blocked read"
        assert time.monotonic() - start < 1
        t.join(2)
        assert errors == []  # closed: the iteration just ends


def test_an_event_read_timeout_when_asked_for(fake: Callable[[Responder], FakeDocker]) -> None:
    holder: list[FakeDocker] = []
    docker = fake(_idle_stream(lambda: holder[0].release))
    holder.append(docker)
    with DockerHttp(docker.host, timeout=5) as api:
        stream = api.events(read_timeout=0.3)
        assert next(stream) == {"Action": "start"}
        start = time.monotonic()
        with pytest.raises(ApiError, match="timed out"):
            next(stream)
        assert time.monotonic() - start < 2
        stream.close()


def test_close_before_reading_and_twice(fake: Callable[[Responder], FakeDocker]) -> None:
    holder: list[FakeDocker] = []
    docker = fake(_idle_stream(lambda: holder[0].release))
    holder.append(docker)
    with DockerHttp(docker.host) as api:
        stream = api.events()
        stream.close()
        stream.close()
        assert list(stream) == []


# --- docker_api on top ---------------------------------------------------------------------


def _daemon(version: str | None, containers: dict[str, Any]) -> Responder:
    def respond(req: Request, conn: socket.socket) -> bool:
        target = req.target
        if target == "/version":
            conn.sendall(json_answer({"ApiVersion": version} if version else {}))
        elif target.split("?")[0].endswith("/containers/json"):
            conn.sendall(json_answer([{"Id": cid} for cid in containers]))
        elif target.endswith("/json"):
            cid = target.split("/")[-2]
            doc = containers.get(cid)
            conn.sendall(json_answer(doc if doc is not None else {"message": "gone"},
                                     200 if doc is not None else 404))
        else:
            conn.sendall(json_answer({"message": "no"}, 404))
        return True
    return respond


@pytest.mark.parametrize(("server", "spoken"), [("1.41", "1.41"), ("1.45", "1.44"),
                                                 ("1.9", "1.9")])
def test_the_api_version_is_negotiated(fake: Callable[[Responder], FakeDocker], server: str,
                                       spoken: str) -> None:
    docker = fake(_daemon(server, {}))
    with docker_api.connect(docker.host, Reachability()) as api:
        assert api.version == spoken
        api.get("/containers/json")
    assert docker.requests[-1].target.startswith(f"/v{spoken}/containers/json")


def test_a_version_answer_without_a_version_is_unavailable(
        fake: Callable[[Responder], FakeDocker]) -> None:
    docker = fake(_daemon(None, {}))
    with pytest.raises(DockerUnavailable, match="ApiVersion"):
        docker_api.connect(docker.host, Reachability())


def test_list_skips_a_container_removed_between_list_and_inspect(
        fake: Callable[[Responder], FakeDocker]) -> None:
    containers: dict[str, Any] = {"aaa": {"Id": "aaa"}, "bbb": None}
    docker = fake(_daemon("1.41", containers))
    api = DockerApi(docker.host, "proj")
    try:
        assert api.list_project() == {"aaa": {"Id": "aaa"}}
        assert api.inspect("bbb") is None
        assert api.network_facts("nnn") is None
        listing = next(r.target for r in docker.requests if "/containers/json" in r.target)
        assert "com.docker.compose.project%3Dproj" in listing
        assert "all=1" in listing
    finally:
        api.close()


def test_api_failures_are_unavailable_and_drop_the_client(
        fake: Callable[[Responder], FakeDocker]) -> None:
    answers = [json_answer({"ApiVersion": "1.41"}), json_answer({"message": "boom"}, 500),
               json_answer({"ApiVersion": "1.41"}), answer(200, b"[{\"Id\": 1}]"),
               json_answer({"ApiVersion": "1.41"}), answer(200, b"{}"),
               json_answer({"ApiVersion": "1.41"}), answer(200, b"[]")]

    def respond(req: Request, conn: socket.socket) -> bool:
        conn.sendall(answers.pop(0))
        return True

    docker = fake(respond)
    api = DockerApi(docker.host, "proj")
    try:
        with pytest.raises(DockerUnavailable, match="boom"):
            api.list_project()
        with pytest.raises(DockerUnavailable, match="without an id"):
            api.list_project()
        with pytest.raises(DockerUnavailable, match="not a JSON array"):
            api.list_project()
        assert api.list_project() == {}
        # Each failure dropped the client: the version was asked again every time.
        assert [r.target for r in docker.requests].count("/version") == 4
    finally:
        api.close()
