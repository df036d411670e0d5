"""The one HTTP listener of a process: ``/metrics``, ``/healthz`` and ``/readyz`` (SPEC F-18).

This module owns the socket, the request threads and the three answers; what is measured and
what "ready" means belong to the caller (a prometheus-client registry and a callable listing
the unmet conditions). A listener that cannot bind is a warning, never a crash: metrics are
not worth losing the data path for.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from anchord.config import MetricsAddr

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], list[str]]
# A client that sends nothing for this long is dropped: one that trickles (a slowloris from
# the transit network) cannot hold a handler thread.
REQUEST_TIMEOUT = 5.0
# Handler threads at most; beyond that a new connection is closed at once, so a flood costs
# bounded memory and /healthz answers again as soon as the flood's connections time out.
MAX_HANDLERS = 16


class Listener:
    """A running listener; :meth:`close` stops it and frees the port."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


def serve(addr: MetricsAddr, registry: CollectorRegistry, ready: ReadyCheck) -> Listener | None:
    """Start serving on ``addr`` in a daemon thread; None (and a warning) if it cannot bind.

    ``ready()`` returns the unmet conditions as ``key: value`` lines; empty means ready.
    Port 0 picks a free port (see :attr:`Listener.port`).
    """
    try:
        family, sockaddr = _resolve(addr)
        server = _make_server(family, sockaddr, _handler(registry, ready))
    except OSError as exc:
        log.warning("metrics listener disabled: cannot listen on %s: %s", addr, exc,
                    extra={"fields": {"addr": str(addr)}})
        return None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="http-listener", daemon=True)
    thread.start()
    log.info("serving /metrics, /healthz and /readyz on %s", addr,
             extra={"fields": {"addr": str(addr)}})
    return Listener(server, thread)


def _resolve(addr: MetricsAddr) -> tuple[int, tuple[str, int]]:
    infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return int(family), (str(sockaddr[0]), int(sockaddr[1]))


def _make_server(
    family: int, sockaddr: tuple[str, int], handler: type[BaseHTTPRequestHandler]
) -> ThreadingHTTPServer:
    class Server(ThreadingHTTPServer):
        address_family = socket.AddressFamily(family)
        daemon_threads = True
        # A restarted process must get its port back while old connections sit in TIME_WAIT.
        allow_reuse_address = True
        slots = threading.BoundedSemaphore(MAX_HANDLERS)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)  # full: refuse rather than queue
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

        def server_bind(self) -> None:
            if family == socket.AF_INET6 and sockaddr[0] == "::":
                # ":9090" means every address: accept IPv4 too on the same socket.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    return Server(sockaddr, handler)


def _handler(registry: CollectorRegistry, ready: ReadyCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep answers small and the connection short: scrapers and probes reconnect anyway.
        protocol_version = "HTTP/1.0"
        timeout = REQUEST_TIMEOUT

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._answer(200, b"ok\n")
            elif path == "/readyz":
                try:
                    unmet = ready()
                except Exception:
                    # The detail goes to the log, not to whoever asks over the network.
                    log.exception("readiness check failed")
                    unmet = ["readiness_check: failed (see the log)"]
                if unmet:
                    self._answer(503, "".join(f"{line}\n" for line in unmet).encode())
                else:
                    self._answer(200, b"ready\n")
            else:
                self._answer(404, b"not found\n")

        def _answer(self, code: int, body: bytes,
                    ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit this every few seconds: keep them out of the default log level.
            log.debug("http %s", format % args)

    return Handler
