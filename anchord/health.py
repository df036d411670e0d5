"""The readiness file: how the image's HEALTHCHECK works without the metrics listener.

The process that judges readiness (the metrics worker of a network-anchor, the
service-anchor process) writes ``<run_dir>/health.json`` whenever readiness
changes and on every heartbeat; ``anchord healthcheck`` reads it. Format:
``{"ready": bool, "unmet": {"key": "detail", ...}, "pid": int, "time": unix}``, plus, from the
network-anchor's metrics worker, ``"restarts": {"worker": int, ...}`` (what ``anchord status``
shows; the same counts as ``anchord_worker_restarts_total``). The entry process removes the
file at a container start (``clear``): a file of a previous start, whose pid a new process may
well have, must not pass for the current one.

Beside it, ``<run_dir>/ready`` holds the writer's pid while, and only while, the last write
said ready; every write that says ready renews it. The image's HEALTHCHECK
(``anchord/healthcheck.sh``) reads it in sh, without starting Python, when things are well:
Docker runs the check every 5 s in every anchord container, and a Python start is about a
third of the host CPU each run costs (docs/benchmarks.md). The script's freshness limit is
``STALE_AFTER`` (tests/integration/test_healthcheck_script.py holds the two together); in any
other case the script runs ``check`` below, which says why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

HEALTH_FILE = "health.json"
READY_MARKER = "ready"
FILE_MODE = 0o644
# Older than this and the writer is presumed hung: its heartbeat is a few seconds.
STALE_AFTER = 30.0


def write(
    run_dir: Path,
    ready: bool,
    unmet: Mapping[str, str],
    restarts: Mapping[str, int] | None = None,
) -> None:
    """Atomically replace the readiness file."""
    path = run_dir / HEALTH_FILE
    tmp = path.with_name(f".{HEALTH_FILE}.{os.getpid()}")
    body: dict[str, object] = {
        "ready": ready,
        "unmet": dict(unmet),
        "pid": os.getpid(),
        "time": time.time(),
    }
    if restarts is not None:
        body["restarts"] = dict(restarts)
    if not ready:  # first: the marker never outlives a "not ready" on disk
        mark(run_dir, False)
    # 0644 whatever the umask: in the network-anchor the metrics worker (user anchord) writes
    # it and `anchord healthcheck` (root without CAP_DAC_OVERRIDE) reads it as "other"; the
    # run directory keeps everyone else out (see bus.broker).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), FILE_MODE)
        out.write(json.dumps(body) + "\n")
    os.replace(tmp, path)
    if ready:
        mark(run_dir, True)


def mark(run_dir: Path, ready: bool) -> None:
    """Renew (ready: our pid, written atomically) or remove the HEALTHCHECK's ready marker."""
    path = run_dir / READY_MARKER
    if not ready:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{READY_MARKER}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), FILE_MODE)
        out.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def clear(run_dir: Path) -> None:
    """Remove the readiness file (at a container start)."""
    mark(run_dir, False)
    (run_dir / HEALTH_FILE).unlink(missing_ok=True)


def read_restarts(run_dir: Path) -> dict[str, int] | None:
    """The worker restart counts in the readiness file; None if it has none (yet)."""
    try:
        restarts = json.loads((run_dir / HEALTH_FILE).read_text())["restarts"]
        return {str(name): int(n) for name, n in restarts.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check(run_dir: Path, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line for a person) from the readiness file."""
    path = run_dir / HEALTH_FILE
    try:
        body = json.loads(path.read_text())
        ready, unmet, pid, written = body["ready"], body["unmet"], body["pid"], body["time"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"not ready: no readable {path} yet"
    if not pid_alive(int(pid)):
        return False, f"not ready: the process that wrote {path} (pid {pid}) is gone"
    age = (time.time() if now is None else now) - float(written)
    if age > STALE_AFTER:
        return False, f"not ready: readiness not updated for {age:.0f}s"
    if not ready:
        return False, "not ready: " + "; ".join(f"{k}: {v}" for k, v in sorted(unmet.items()))
    return True, "ready"


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
