"""The Docker event stream, kept alive in a thread of its own.

Owns the one subscription discovery holds: an event stream ends *quietly* (plain
StopIteration) when the daemon or a socket proxy ends it, and with an ``ApiError`` when the
connection breaks, so ``EventPump`` treats any end of the stream as the API being lost, reports
it, and subscribes again with backoff. Every
subscription asks the daemon to replay from a second before it was made (``since``): Docker
flushes the response headers before it registers the subscriber, so without the replay an event
in between would be lost. The consumer re-lists after each ``subscribed`` report; events are only
ever a hint of which container to re-read (``anchord.docker_inspect.relevant_container``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from anchord.backoff import Backoff
from anchord.docker_api import connect
from anchord.docker_reach import DockerUnavailable, Reachability
from anchord.dockerhttp import ApiError, DockerHttp, EventStream

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # event reports waiting for the consumer, at most


@dataclass(frozen=True)
class PumpReport:
    """What the event thread tells the main loop."""

    kind: str  # "subscribed", "event" or "lost"
    event: Mapping[str, Any] | None = None
    error: str = ""


class EventPump:
    """A thread that keeps one Docker event subscription alive and queues what it reads.

    The main loop waits on ``fileno()`` (a pipe written once per report) and calls
    ``drain()``. The thread has its own API client: clients are not shared across threads.
    """

    def __init__(self, docker_host: str, backoff_min: float = 0.5, backoff_max: float = 0.5):
        self.docker_host = docker_host
        self._backoff = Backoff(initial=backoff_min, cap=backoff_max)  # between subscriptions
        self._reach = Reachability()
        # Bounded: a flood of events (or a stalled consumer) costs at most this many; past
        # it, events are dropped and the consumer is told to re-list (events are only hints).
        self._queue: queue.Queue[PumpReport] = queue.Queue(maxsize=MAX_QUEUED)
        self._overflow = threading.Event()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._stop = threading.Event()
        self._stream: EventStream | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)

    def fileno(self) -> int:
        return self._rfd

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        started = self._thread.ident is not None
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()  # wakes the thread's blocked read
        if started:
            self._thread.join(timeout)
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def drain(self) -> list[PumpReport]:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        reports: list[PumpReport] = []
        while True:
            try:
                reports.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if self._overflow.is_set():
            self._overflow.clear()
            log.warning("docker events dropped (more than %d waiting): re-listing", MAX_QUEUED)
            reports.append(PumpReport("subscribed"))
        return reports

    def _report(self, report: PumpReport) -> None:
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self._overflow.set()
        # the pipe is full (the reader is behind) or closed (stopping): fine
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wfd, b"x")

    def _run(self) -> None:
        since = time.time()
        while not self._stop.is_set():
            api: DockerHttp | None = None
            try:
                api = connect(self.docker_host, self._reach)
                # Replay from a second before: Docker registers the subscriber only after it
                # sent the headers, so an event in between would otherwise be lost. No read
                # timeout: Docker sends nothing while nothing happens.
                stream = api.events(since=int(since) - 1,
                                    filters={"type": ["container", "network"]})
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():
                    break
                self._report(PumpReport("subscribed"))
                self._backoff.reset()
                for ev in stream:
                    since = time.time()
                    self._report(PumpReport("event", event=ev))
                error = "the event stream ended (daemon or proxy gone)"
            except DockerUnavailable as exc:
                error = str(exc)
            except ApiError as exc:
                error = f"event stream failed: {exc}"
            except Exception as exc:  # noqa: BLE001 - any failure of the stream is the API lost
                error = f"event stream failed: {exc!r}"
            finally:
                with self._lock:
                    held, self._stream = self._stream, None
                if held is not None:
                    held.close()
                if api is not None:
                    api.close()
            if self._stop.is_set():
                break
            self._report(PumpReport("lost", error=error))
            since = time.time()
            self._stop.wait(self._backoff.next())
