"""The broker: the one process every worker's bus sockets connect to.

Publishers connect PUB to the XSUB socket, subscribers SUB to the XPUB socket;
the broker forwards messages one way and subscriptions the other, and never
interprets a message. Both sockets are ipc endpoints in the run directory, which
only root and the ``anchord`` group may enter: nothing listens on TCP.

The run directory (``ANCHORD_RUN_DIR``, /run/anchord) and its modes are prepared here, by the
entry process, once, before supervisord starts:

- with the unprivileged account (the image): owner root, group ``anchord``, mode 1770. Root
  (the entry, supervisord, the dhcp/nat-writer/conntrack-flusher workers, ``docker exec``) enters
  as the owner; the bus, discovery and metrics, which run as ``anchord``, as the group — it must
  be writable for the broker's sockets and the readiness file. Nobody else enters, so what is
  inside may be open to "others" (root without CAP_DAC_OVERRIDE reaches a file of ``anchord``
  only through those bits). The sticky bit keeps the group from removing or replacing root's
  files in it (supervisord's socket and pid file, the shutdown and release markers).
- without it (the integration tests on a host): owner root, mode 0700, as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import zmq

from bus.limits import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

PUB_SOCKET = "pub.ipc"  # workers publish here (broker's XSUB)
SUB_SOCKET = "sub.ipc"  # workers subscribe here (broker's XPUB)


def endpoints(run_dir: Path) -> tuple[str, str]:
    """The (publish, subscribe) endpoints of the broker in ``run_dir``."""
    return f"ipc://{run_dir / PUB_SOCKET}", f"ipc://{run_dir / SUB_SOCKET}"


PRIVATE_MODE = 0o700
SHARED_MODE = 0o1770
# The broker's sockets: a root worker connects to them as "other" (see above); the directory
# is their guard.
SOCKET_MODE_SHARED = 0o666
SOCKET_MODE_PRIVATE = 0o600


class RunDirError(RuntimeError):
    """The run directory cannot be given the owner and mode it needs."""


def prepare_run_dir(run_dir: Path, group: int | None = None) -> None:
    """Create the run directory and set its group and mode: shared with ``group`` (mode 1770)
    or root's alone (``group`` None: mode 0700), tightening whatever it was."""
    run_dir.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
    try:
        if group is not None and run_dir.stat().st_gid != group:
            # Without CAP_CHOWN this works only if it has the group already: the image's
            # /run/anchord has; a directory mounted over it must be (tmpfs: gid=, mode=1770).
            os.chown(run_dir, -1, group)
        os.chmod(run_dir, PRIVATE_MODE if group is None else SHARED_MODE)
    except OSError as exc:
        want = "mode 0700" if group is None else f"group {group}, mode 1770"
        raise RunDirError(f"the run directory {run_dir} cannot be given {want} "
                          f"(owner {run_dir.stat().st_uid}, group {run_dir.stat().st_gid}): "
                          f"{exc.strerror}") from exc


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
