"""One worker's connection to the bus: publish, subscribe, Hello, heartbeat, reconnect.

Every piece of state on the bus is level-triggered: a worker registers the
events it owns with ``set_state`` and the client republishes all of them on a
``Hello`` from any other worker, on every heartbeat and whenever the worker calls
``state_changed``. ZeroMQ reconnects ipc sockets by itself when the broker
restarts; the client notices the reconnection (socket monitor) and says
``Hello`` again so that it converges at once instead of at the next heartbeat.

A ``Hello`` is resent until it comes back through the broker: that round trip
proves both our PUB and SUB paths are connected, which is the honest answer to
the ZeroMQ slow-joiner problem (a fixed sleep is not).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

import zmq

from anchord.backoff import Backoff
from bus.codec import MAX_MESSAGE_BYTES, DecodeError, decode, encode
from bus.events import CATALOGUE, Condition, Event, Hello, WorkerStatus
from bus.rundir import endpoints

log = logging.getLogger(__name__)

HEARTBEAT = 5.0
_HELLO_RETRY = 0.1  # first resend of an unanswered Hello; doubles up to _HELLO_RETRY_MAX
_HELLO_RETRY_MAX = 1.0


class BusClient:
    """A worker's PUB and SUB sockets to the broker in ``run_dir``."""

    def __init__(
        self,
        worker: str,
        run_dir: Path,
        subscribe: Iterable[type[Event]] = (),
        heartbeat: float = HEARTBEAT,
        subscribe_all: bool = False,
    ) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self.started = time.time()
        self.heartbeat = heartbeat
        self._topics = {cls.TOPIC for cls in subscribe}
        self._subscribe_all = subscribe_all
        self._run_dir = run_dir
        # Per topic, from 1 at this process's start: a subscriber of some topics only sees
        # consecutive numbers unless messages were lost (see ``gaps``).
        self._seq: Counter[str] = Counter()
        # (source, topic) -> the last seq received; a lower one is a restarted publisher.
        self._last_seq: dict[tuple[str, str], int] = {}
        self.gaps: Counter[str] = Counter()  # messages missed, by source
        self._on_gap: Callable[[str, str], None] = lambda source, topic: None
        self._state: Callable[[], Sequence[Event]] = lambda: ()
        self._conditions: Callable[[], Sequence[Condition]] = lambda: ()
        self._summary: Callable[[], str] = lambda: ""
        self._watched: set[int] = set()
        # A signal wake-up pipe (anchord.lifecycle): poll returns when a signal came.
        self._wakeup: tuple[int, Callable[[], None]] | None = None
        self.ready_fds: set[int] = set()
        self.received: Counter[str] = Counter()  # by topic
        self.decode_errors: Counter[str] = Counter()  # by reason
        self.hello_acked = False
        # Connections to the broker made so far: each one after the first is a restarted broker.
        self.connects = 0
        self._hello_next = 0.0
        self._hello_backoff = Backoff(initial=_HELLO_RETRY, cap=_HELLO_RETRY_MAX)
        self._heartbeat_next = 0.0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None

    # --- lifecycle -------------------------------------------------------

    def __enter__(self) -> BusClient:
        self.open()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        pub_ep, sub_ep = endpoints(self._run_dir)
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._sub = self._ctx.socket(zmq.SUB)
        for sock in (self._pub, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._sub.setsockopt(zmq.RCVHWM, 10_000)
        # Size capped before receive: no frame is read into memory beyond the codec's limit.
        self._sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self._subscribe_all:
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            for topic in sorted(self._topics | {Hello.TOPIC}):
                self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._monitor = self._sub.get_monitor_socket(zmq.EVENT_CONNECTED)
        self._pub.connect(pub_ep)
        self._sub.connect(sub_ep)
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        for fd in self._watched:
            self._poller.register(fd, zmq.POLLIN)
        if self._wakeup is not None:
            self._poller.register(self._wakeup[0], zmq.POLLIN)
        self._say_hello()
        self._heartbeat_next = time.monotonic() + self.heartbeat

    def close(self) -> None:
        if self._ctx is None:
            return
        self._sub.disable_monitor()
        for sock in (self._monitor, self._pub, self._sub):
            sock.close(linger=0)
        self._ctx.term()
        self._ctx = None

    # --- what the worker owns ------------------------------------------

    def set_state(self, provider: Callable[[], Sequence[Event]]) -> None:
        """The full snapshots this worker owns, republished on Hello/heartbeat/change."""
        self._state = provider

    def set_conditions(self, provider: Callable[[], Sequence[Condition]]) -> None:
        """This worker's readiness conditions, carried by its WorkerStatus heartbeat."""
        self._conditions = provider

    def set_summary(self, provider: Callable[[], str]) -> None:
        self._summary = provider

    def state_changed(self) -> None:
        """Publish the owned state (and status) now."""
        for event in self._state():
            self.publish(event)
        self.publish(self.status())

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            worker=self.worker,
            pid=self.pid,
            started=self.started,
            conditions=tuple(self._conditions()),
            received=sum(self.received.values()),
            decode_errors=sum(self.decode_errors.values()),
            summary=self._summary(),
        )

    # --- I/O ------------------------------------------------------------

    def on_gap(self, handler: Callable[[str, str], None]) -> None:
        """Call ``handler(source, topic)`` when messages of a received topic were lost (a gap
        in that publisher's sequence numbers): a worker that keeps derived state can then
        rebuild it from the current state instead of trusting the one-off messages."""
        self._on_gap = handler

    def publish(self, event: Event) -> None:
        self._seq[event.TOPIC] += 1
        try:
            self._pub.send_multipart(encode(event, self.worker, self._seq[event.TOPIC]),
                                     zmq.NOBLOCK)
        except zmq.Again:
            # PUB never blocks for a slow broker; what is lost here the next
            # heartbeat republishes, because all state is level-triggered.
            log.debug("bus send dropped", extra={"fields": {"topic": event.TOPIC}})

    def watch(self, fd: int) -> None:
        """Also wake ``poll`` when ``fd`` is readable (see ``ready_fds``)."""
        self._watched.add(fd)
        if self._ctx is not None:
            self._poller.register(fd, zmq.POLLIN)

    def wake_on_signals(self, fd: int, drain: Callable[[], None]) -> None:
        """Return from ``poll`` as soon as ``fd`` (a signal wake-up pipe) is readable, after
        ``drain`` has emptied it: the worker then sees its stop flag without waiting out the
        poll's timeout."""
        self._wakeup = (fd, drain)
        if self._ctx is not None:
            self._poller.register(fd, zmq.POLLIN)

    def unwatch(self, fd: int) -> None:
        self._watched.discard(fd)
        if self._ctx is not None:
            self._poller.unregister(fd)

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` s; return the subscribed events that arrived.

        Returns early when an event arrived or a watched fd became readable.
        """
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        self.ready_fds = set()
        while True:
            now = time.monotonic()
            self._timers(now)
            wake = min(deadline, self._heartbeat_next)
            if not self.hello_acked:
                wake = min(wake, self._hello_next)
            ready = dict(self._poller.poll(int(max(0.0, wake - now) * 1000)))
            if self._monitor in ready:
                self._on_monitor()
            if self._sub in ready:
                events.extend(self._drain())
            self.ready_fds = {fd for fd in self._watched if fd in ready}
            signalled = self._wakeup is not None and self._wakeup[0] in ready
            if signalled:
                assert self._wakeup is not None
                self._wakeup[1]()
            if events or self.ready_fds or signalled or time.monotonic() >= deadline:
                return events

    # --- internals -------------------------------------------------------

    def _check_sequence(self, source: str, topic: str, seq: int) -> None:
        key = (source, topic)
        last = self._last_seq.get(key)
        self._last_seq[key] = seq
        if last is None or seq <= last:
            return  # the first one heard, or a restarted publisher counting from 1 again
        missed = seq - last - 1
        if missed <= 0:
            return
        self.gaps[source] += missed
        log.warning("bus messages lost", extra={"fields": {
            "source": source, "topic": topic, "missed": missed}})
        self._on_gap(source, topic)


    def _timers(self, now: float) -> None:
        if not self.hello_acked and now >= self._hello_next:
            self.publish(Hello(worker=self.worker, pid=self.pid))
            self._hello_next = now + self._hello_backoff.next()
        if now >= self._heartbeat_next:
            self._heartbeat_next = now + self.heartbeat
            self.state_changed()

    def _say_hello(self) -> None:
        self.hello_acked = False
        self._hello_backoff.reset()
        self._hello_next = 0.0

    def _on_monitor(self) -> None:
        try:
            frames = self._monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        # libzmq's monitor message: a 16-bit event id and a 32-bit value (native byte order),
        # then the endpoint. Read here rather than with zmq.utils.monitor, which imports
        # zmq.asyncio and with it asyncio: ~9 MB in every worker.
        event = struct.unpack("=H", frames[0][:2])[0] if frames and len(frames[0]) >= 2 else 0
        if event == zmq.EVENT_CONNECTED:
            # (Re)connected to the broker, maybe a restarted one that lost
            # every message in flight: ask the owners for their state again.
            log.debug("bus connected")
            self.connects += 1
            self._say_hello()

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        republish = False
        for _ in range(10_000):
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                envelope = decode(frames)
            except DecodeError as exc:
                self.decode_errors[exc.reason] += 1
                log.warning(
                    "dropped a bad bus message",
                    extra={"fields": {"reason": exc.reason, "error": str(exc)[:200]}},
                )
                continue
            event = envelope.event
            self.received[event.TOPIC] += 1
            self._check_sequence(envelope.source, event.TOPIC, envelope.seq)
            if isinstance(event, Hello):
                if event.worker == self.worker and event.pid == self.pid:
                    self.hello_acked = True
                else:
                    republish = True
            if self._subscribe_all or event.TOPIC in self._topics:
                events.append(event)
        if republish:
            self.state_changed()
        return events


def all_event_types() -> tuple[type[Event], ...]:
    return tuple(CATALOGUE.values())
