"""Lifecycle of a worker: stop requests, and restart versus shutdown.

A worker stopped by ``supervisorctl restart`` must leave its kernel state for
the next instance to adopt; a worker stopped because the container is stopping
must tear it down. The entry process (``anchord network-anchor``) is the only
one that knows: on SIGTERM it writes the shutdown marker in the run directory
*before* it signals supervisord, and removes any stale marker at start. A worker
reads the marker when it decides how to exit. Signal handlers only set a flag.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

SHUTDOWN_MARKER = "shutdown"
# Written by `anchord release`: the next container stop gives the leases back.
RELEASE_MARKER = "release"


def marker_path(run_dir: Path) -> Path:
    return run_dir / SHUTDOWN_MARKER


def mark_shutdown(run_dir: Path, reason: str = "") -> None:
    """Record that the whole container is stopping (called by the entry process)."""
    path = marker_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()} {time.time():.3f} {reason}\n")
    os.replace(tmp, path)


def clear_shutdown(run_dir: Path) -> None:
    """Forget markers left by a previous run of this container (``docker restart``)."""
    marker_path(run_dir).unlink(missing_ok=True)
    (run_dir / RELEASE_MARKER).unlink(missing_ok=True)


def request_release(run_dir: Path) -> None:
    """Ask that the next container stop release the leases (``anchord release``)."""
    path = run_dir / RELEASE_MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()} {time.time():.3f}\n")
    os.replace(tmp, path)


def release_requested(run_dir: Path) -> bool:
    return (run_dir / RELEASE_MARKER).exists()


class Lifecycle:
    """Stop flag set by signals, and the restart-or-shutdown question."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stop_requested = False
        self.signal: int | None = None
        # Read end of the signal wake-up pipe (see install_signal_handlers), or None.
        self.wakeup_fd: int | None = None

    def install_signal_handlers(self) -> None:
        """Set the stop flag on SIGTERM/SIGINT, and make every signal readable on
        ``wakeup_fd``: a worker waiting in a poll must see its stop at once, not at the end of
        its poll timeout (up to a second per worker at every stop and restart)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if self.wakeup_fd is None:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self.wakeup_fd = read_end

    def drain_wakeup(self) -> None:
        """Empty the wake-up pipe (its bytes are signal numbers, already handled)."""
        if self.wakeup_fd is None:
            return
        try:
            while os.read(self.wakeup_fd, 512):
                pass
        except BlockingIOError:
            pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.signal = signum

    def shutting_down(self) -> bool:
        """True if the container is stopping; False for a restart of this worker alone."""
        return marker_path(self.run_dir).exists()
