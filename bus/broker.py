"""The broker: the one process every worker's bus sockets connect to.

Publishers connect PUB to the XSUB socket, subscribers SUB to the XPUB socket;
the broker forwards messages one way and subscriptions the other, and never
interprets a message. Both sockets are ipc endpoints in the run directory, which
only root and the ``anchord`` group may enter: nothing listens on TCP.

The run directory, its modes and the sockets' names are ``bus.rundir``'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import zmq

from bus.limits import MAX_MESSAGE_BYTES
from bus.rundir import (
    PUB_SOCKET,
    SOCKET_MODE_PRIVATE,
    SOCKET_MODE_SHARED,
    SUB_SOCKET,
    endpoints,
    prepare_run_dir,
)

log = logging.getLogger(__name__)

def serve(run_dir: Path, should_stop: Callable[[], bool],
          wakeup: tuple[int, Callable[[], None]] | None = None) -> int:
    """Forward until ``should_stop()``; returns the number of messages forwarded.

    ``wakeup`` (a signal wake-up pipe and what empties it) ends a wait at once, so that a
    stop is seen then and not at the end of the wait.
    """
    if not run_dir.is_dir():
        # Started alone (tests). Under the entry process it exists with the modes above,
        # which the broker (not its owner in the image) leaves as they are.
        prepare_run_dir(run_dir)
    shared = run_dir.stat().st_mode & 0o070 != 0
    pub_ep, sub_ep = endpoints(run_dir)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    forwarded = 0
    try:
        for sock in (xsub, xpub):
            sock.setsockopt(zmq.LINGER, 0)
            # A slow subscriber must not make the broker buffer without bound.
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.setsockopt(zmq.RCVHWM, 10_000)
        # A frame larger than any real event is refused by ZeroMQ before it is read into
        # memory (the peer is disconnected); the codec's limit then checks what passed.
        xsub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        for name in (PUB_SOCKET, SUB_SOCKET):
            # A broker killed with -9 leaves its socket files behind.
            (run_dir / name).unlink(missing_ok=True)
        xsub.bind(pub_ep)
        xpub.bind(sub_ep)
        for name in (PUB_SOCKET, SUB_SOCKET):
            os.chmod(run_dir / name, SOCKET_MODE_SHARED if shared else SOCKET_MODE_PRIVATE)
        log.info("broker listening", extra={"fields": {"publish": pub_ep, "subscribe": sub_ep}})
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        if wakeup is not None:
            poller.register(wakeup[0], zmq.POLLIN)
        while not should_stop():
            ready = dict(poller.poll(500))
            if wakeup is not None and wakeup[0] in ready:
                wakeup[1]()
            if xsub in ready:
                # Drain in bursts so one busy publisher cannot starve subscriptions.
                for _ in range(1000):
                    try:
                        xpub.send_multipart(xsub.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    forwarded += 1
            if xpub in ready:
                for _ in range(1000):
                    try:
                        xsub.send_multipart(xpub.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
    finally:
        xsub.close(linger=0)
        xpub.close(linger=0)
    log.info("broker stopped", extra={"fields": {"forwarded": forwarded}})
    return forwarded
