"""A read-only Docker API scoped to one Compose project: ``anchord docker-proxy``.

Owns what the network-anchor may learn from Docker (F-22). It holds the Docker socket and
anchord none; it answers only GET and HEAD of the few calls discovery makes, and only about the
project whose ``com.docker.compose.project`` label it was started with (its own container's,
unless ``ANCHORD_PROJECT`` says):

- ``/_ping``, ``/version``: passed through;
- ``/containers/json``: the project's label filter is forced into the query; ``Mounts`` removed;
- ``/containers/<id>/json``: another project's container answers 404, as if it did not exist;
  the environment (``Config.Env``: passwords, API keys), mounts and binds are removed;
- ``/networks/<id>``: only the project's networks (by label), the containers of other projects
  removed from their ``Containers``;
- ``/events``: the stream passes only container events of the project's containers and
  network events of the project's networks;
- anything else, and every other method: 403.

An optional ``/v1.NN`` prefix is accepted. It listens on both families (a name on an IPv6
network resolves to its IPv6 address first). Its readiness (listening, Docker answering) is
the health file, so the image's healthcheck works as for the other roles.

Standard library only: it runs once per project, beside the network-anchor.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from anchord import health
from anchord.selfproject import PROJECT_LABEL

log = logging.getLogger(__name__)

_VERSION_PREFIX = re.compile(r"^(/v1\.[0-9]{1,3})?(/.*)$")
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_CONTAINER = re.compile(rf"^/containers/({_ID})/json$")
_NETWORK = re.compile(rf"^/networks/({_ID})$")
# What an inspect must not carry out of the proxy: the environment, the file system.
_SCRUB_CONTAINER = (("Config", "Env"), ("Mounts",), ("HostConfig", "Binds"),
                    ("HostConfig", "Mounts"), ("Config", "Volumes"), ("GraphDriver",),
                    ("HostConfig", "Tmpfs"), ("Config", "Cmd"), ("Config", "Entrypoint"),
                    ("Args",), ("Path",))
UPSTREAM_TIMEOUT = 10.0
HEALTH_EVERY = 5.0


# --- pure rules --------------------------------------------------------------------------------


def split_path(path: str) -> tuple[str, str, dict[str, list[str]]]:
    """(version prefix, route, query) of a request target."""
    parts = urlsplit(path)
    m = _VERSION_PREFIX.match(parts.path)
    if not m:
        return "", "", {}
    return m.group(1) or "", m.group(2), parse_qs(parts.query, keep_blank_values=True)


def scoped_filters(query: Mapping[str, list[str]], project: str) -> str:
    """The ``filters`` JSON with the project's label forced in (other labels kept)."""
    raw = (query.get("filters") or ["{}"])[0]
    try:
        filters = json.loads(raw) if raw else {}
    except ValueError:
        filters = {}
    if not isinstance(filters, dict):
        filters = {}
    labels = filters.get("label") or []
    if isinstance(labels, dict):  # the older {"value": true} form
        labels = [k for k, v in labels.items() if v]
    kept = [x for x in labels if isinstance(x, str) and not x.startswith(PROJECT_LABEL)]
    filters["label"] = [*kept, f"{PROJECT_LABEL}={project}"]
    return json.dumps(filters)


def belongs(labels: Any, project: str) -> bool:
    return isinstance(labels, dict) and labels.get(PROJECT_LABEL) == project


def scrub_container(doc: dict[str, Any]) -> dict[str, Any]:
    """An inspect without what anchord must never see."""
    for path in _SCRUB_CONTAINER:
        node: Any = doc
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return doc


def event_allowed(event: Mapping[str, Any], project: str,
                  network_project: Callable[[str], str | None]) -> bool:
    """Whether one event of the stream may reach anchord."""
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {} if isinstance(actor, dict) else {}
    kind = event.get("Type")
    if kind == "container":
        return isinstance(attrs, dict) and attrs.get(PROJECT_LABEL) == project
    if kind == "network":
        network = str(actor.get("ID") or "") if isinstance(actor, dict) else ""
        return bool(network) and network_project(network) == project
    return False


# --- upstream ----------------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Upstream:
    """The Docker socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def request(self, target: str, timeout: float | None = UPSTREAM_TIMEOUT
                ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.path, timeout)
        try:
            conn.request("GET", target)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def get_json(self, target: str) -> tuple[int, Any]:
        conn, resp = self.request(target)
        try:
            body = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return 502, None


# --- the server --------------------------------------------------------------------------------


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6

    def __init__(self, address: tuple[str, int], project: str, upstream: Upstream) -> None:
        self.project = project
        self.upstream = upstream
        self._networks: dict[str, str | None] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def network_project(self, network: str) -> str | None:
        """The project label of a network (cached; None if none or gone)."""
        with self._lock:
            if network in self._networks:
                return self._networks[network]
        try:
            status, doc = self.upstream.get_json(f"/networks/{network}")
        except OSError:
            return None  # not cached: asked again next time
        project = None
        if status == 200 and isinstance(doc, dict):
            labels = doc.get("Labels")
            project = labels.get(PROJECT_LABEL) if isinstance(labels, dict) else None
        with self._lock:
            self._networks[network] = project
            if isinstance(doc, dict) and doc.get("Id"):
                self._networks[str(doc["Id"])] = project
        return project



class ProxyServer4(ProxyServer):
    """For a kernel without IPv6 at all."""

    address_family = socket.AF_INET


class _Handler(BaseHTTPRequestHandler):
    server: ProxyServer
    protocol_version = "HTTP/1.1"
    # A client that sends nothing for this long is dropped (a slow client cannot hold a
    # thread); the event stream is written by us, so it is not affected.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("request", extra={"fields": {"client": self.client_address[0],
                                               "line": format % args}})

    def _deny(self, status: int, message: str) -> None:
        self._json(status, {"message": message})  # Docker's own error shape

    def _json(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self) -> None:
        self._deny(403, "read-only Docker API: only GET and HEAD")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT = do_POST

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        version, route, query = split_path(self.path)
        project = self.server.project
        try:
            if route in ("/_ping", "/version"):
                self._pass(self.path)
            elif route == "/containers/json":
                q = {k: v[0] for k, v in query.items() if k in ("all", "limit", "size")}
                q["filters"] = scoped_filters(query, project)
                status, doc = self.server.upstream.get_json(
                    f"{version}/containers/json?{urlencode(q)}")
                if status == 200 and isinstance(doc, list):
                    doc = [{k: v for k, v in c.items() if k != "Mounts"} for c in doc
                           if isinstance(c, dict) and belongs(c.get("Labels"), project)]
                self._json(status, doc)
            elif m := _CONTAINER.match(route):
                status, doc = self.server.upstream.get_json(f"{version}/containers/{m[1]}/json")
                if status == 200 and isinstance(doc, dict) and belongs(
                        (doc.get("Config") or {}).get("Labels"), project):
                    self._json(200, scrub_container(doc))
                else:
                    self._deny(404, f"No such container: {m[1]}")
            elif m := _NETWORK.match(route):
                status, doc = self.server.upstream.get_json(f"{version}/networks/{m[1]}")
                if status == 200 and isinstance(doc, dict) and belongs(doc.get("Labels"),
                                                                        project):
                    self._json(200, doc)
                else:
                    self._deny(404, f"network {m[1]} not found")
            elif route == "/events":
                self._events(version, query)
            else:
                self._deny(403, "not a call this read-only, project-scoped API answers")
        except OSError as exc:
            self._deny(502, f"Docker API: {exc}")

    def _pass(self, target: str) -> None:
        """The upstream answer as it is (``/_ping`` is text, ``/version`` JSON)."""
        conn, resp = self.server.upstream.request(target)
        try:
            body = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.getheader("Content-Type") or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for header in ("Api-Version", "Docker-Experimental", "Ostype", "Server"):
            value = resp.getheader(header)
            if value:
                self.send_header(header, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _events(self, version: str, query: Mapping[str, list[str]]) -> None:
        q = {k: v[0] for k, v in query.items() if k in ("since", "until", "filters")}
        conn, resp = self.server.upstream.request(f"{version}/events?{urlencode(q)}",
                                                  timeout=None)
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for line in _lines(resp):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event_allowed(
                        event, self.server.project, self.server.network_project):
                    data = line + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # anchord went away: close upstream too
        finally:
            conn.close()
            self.close_connection = True


def _lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The newline-separated JSON objects of a streamed response, as they arrive."""
    pending = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line.strip()


def serve(project: str, upstream_path: str, port: int, run_dir: Path,
          stop: threading.Event) -> None:
    """Serve until ``stop`` is set; the health file says whether Docker answers."""
    upstream = Upstream(upstream_path)
    try:
        server: ProxyServer = ProxyServer(("::", port), project, upstream)
    except OSError as exc:
        log.info("no IPv6 here: listening on IPv4 only", extra={"fields": {"error": str(exc)}})
        server = ProxyServer4(("0.0.0.0", port), project, upstream)
    thread = threading.Thread(target=server.serve_forever, name="proxy", daemon=True)
    thread.start()
    log.info("docker proxy listening", extra={"fields": {
        "port": port, "project": project, "upstream": upstream_path}})
    try:
        while not stop.is_set():
            try:
                status, _ = upstream.get_json("/version")
                ok, detail = status == 200, f"Docker answered {status}"
            except OSError as exc:
                ok, detail = False, f"Docker API: {exc}"
            health.write(run_dir, ok, {} if ok else {"docker": detail})
            stop.wait(HEALTH_EVERY)
    finally:
        server.shutdown()
        server.server_close()
        log.info("docker proxy stopped")
