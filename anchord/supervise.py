"""The network-anchor entry process: runs supervisord and owns the shutdown decision.

It prepares the run directory (shared with the unprivileged account's group where that
exists: see ``bus.broker`` and ``anchord.privileges``), removes a stale shutdown marker,
readiness file and bus sockets, starts supervisord in the foreground with
the workers' console pointed at its own stdout, and on SIGTERM/SIGINT writes the
shutdown marker *before* passing the signal on, so every worker knows this is a
container stop (tear down, release) and not a ``supervisorctl restart``. A hard
deadline bounds the stop so it always fits in Docker's grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from anchord import health, privileges, supervisorrpc
from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import clear_shutdown, mark_shutdown
from anchord.logsetup import CONSOLE_ENV
from bus.rundir import PUB_SOCKET, SUB_SOCKET, RunDirError, prepare_run_dir

log = logging.getLogger(__name__)

DEFAULT_CONF = Path("/etc/anchord/supervisord.conf")
# Longer than the sum of supervisord's stopwaitsecs for the slowest program, shorter
# than the stop_grace_period the README asks for (30 s).
STOP_DEADLINE = 25.0
# Stopped by supervisord in its own order, after the others: the nat-writer (its tables filter
# the LAN until the child is gone) and the bus.
LAST_TO_STOP_ORDER = ("nat-writer", "bus")
LAST_TO_STOP = frozenset(LAST_TO_STOP_ORDER)
# supervisor.xmlrpc.Faults.SHUTDOWN_STATE: what every RPC answers while supervisord stops.
_SHUTDOWN_STATE_FAULT = 6


def supervisord_conf(env: Mapping[str, str]) -> Path:
    value = env.get("ANCHORD_SUPERVISORD_CONF", "")
    if value:
        return Path(value)
    if DEFAULT_CONF.exists():
        return DEFAULT_CONF
    # Running from a source tree (tests, development).
    return Path(__file__).resolve().parent.parent / "supervisord.conf"


def run(config: NetworkAnchorConfig, env: Mapping[str, str]) -> int:
    group = privileges.shared_group()
    missing = privileges.missing_for_switch() if group is not None else []
    if missing:
        # The workers could not switch (they would not run as root instead) and supervisord
        # could not stop them: say it once, before anything starts.
        log.error("the container lacks %s: add cap_add: [NET_ADMIN, NET_RAW, SETUID, SETGID, "
                  "KILL] (bus, discovery and metrics run as user %r; see the README)",
                  ", ".join("CAP_" + m for m in missing), privileges.ACCOUNT,
                  extra={"fields": {"missing": missing}})
        return 2
    try:
        prepare_run_dir(config.run_dir, group)
    except RunDirError as exc:
        log.error(str(exc), extra={"fields": {"variable": "ANCHORD_RUN_DIR",
                                              "value": str(config.run_dir)}})
        return 2
    if group is None:
        log.warning("no user %r here (the image has one): every program keeps root and the "
                    "run directory is root's alone", privileges.ACCOUNT)
    else:
        log.info("bus, discovery and metrics run as %r; the run directory is shared with its "
                 "group", privileges.ACCOUNT, extra={"fields": {
                     "run_dir": str(config.run_dir), "gid": group}})
    clear_shutdown(config.run_dir)
    # Sockets of a broker killed with the container: the next one (not root) could not
    # remove root's, nor anyone's but its own in the sticky directory.
    for name in (PUB_SOCKET, SUB_SOCKET):
        (config.run_dir / name).unlink(missing_ok=True)
    # A readiness file of a previous start would pass for this one (see anchord.health).
    health.clear(config.run_dir)
    Path("/var/log/anchord").mkdir(parents=True, exist_ok=True)
    conf = supervisord_conf(env)
    child_env = dict(env)
    child_env[CONSOLE_ENV] = f"/proc/{os.getpid()}/fd/1"
    supervisord = shutil.which("supervisord") or sys.executable
    argv = [supervisord] if supervisord != sys.executable else [
        sys.executable, "-m", "supervisor.supervisord"]
    proc = subprocess.Popen([*argv, "-n", "-c", str(conf)], env=child_env)
    log.info("supervisord started", extra={"fields": {"pid": proc.pid, "conf": str(conf)}})
    _wake_at_start(config.run_dir, proc)

    stopping: list[float] = []
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            received.append(signal.Signals(signum).name)
            mark_shutdown(config.run_dir, received[0])
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # After the fan-out: the programs found then (pid -> name), and those signalled since.
    fanned_out: dict[int, str] | None = None
    signalled: set[str] = set()
    # Asleep until supervisord exits or a signal comes: Popen.wait(timeout) would poll
    # waitpid every few ms (0.7 % of a core at idle, measured), a pidfd says it at once.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except OSError:
        pidfd = None  # a kernel before 5.3: look every half second instead
    watched = [wake_r] if pidfd is None else [wake_r, pidfd]
    while True:
        select.select(watched, [], [], 0.05 if stopping else (0.5 if pidfd is None else None))
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 512)
        code = proc.poll()
        if code is not None:
            break
        if received and received[0] != "logged":
            # The Go anchord's line (scripts and alerts of its users look for it).
            log.info("signal received, shutting down", extra={"fields": {
                "signal": received[0]}})
            received[0] = "logged"
        if stopping and fanned_out is None:
            fanned_out = _stop_workers_together(config.run_dir, proc.pid)
        elif fanned_out:
            _stop_the_rest_in_order(fanned_out, signalled)
            if any(_zombie(pid) for pid in fanned_out):
                _poke(config.run_dir)
        if stopping and time.monotonic() - stopping[0] > STOP_DEADLINE:
            log.error("supervisord did not stop in time; killing it")
            proc.kill()
    signal.set_wakeup_fd(-1)
    for fd in (wake_r, wake_w) if pidfd is None else (wake_r, wake_w, pidfd):
        os.close(fd)
    if stopping:
        log.info("anchord stopped", extra={"fields": {
            "supervisord_exit": code, "seconds": round(time.monotonic() - stopping[0], 2)}})
        return 0 if code == 0 else 1
    log.error("supervisord exited unexpectedly", extra={"fields": {"code": code}})
    return code or 1


def _stop_the_rest_in_order(workers: dict[int, str], signalled: set[str]) -> None:
    """The nat-writer once every other worker (the dhcp worker above all) has exited, the bus
    once the nat-writer has: supervisord would do the same, but one program per turn of its
    one-second loop; done here, the whole stop takes as long as the teardowns themselves."""
    alive = {name for pid, name in workers.items() if _running(pid)}
    for name in LAST_TO_STOP_ORDER:
        if name not in alive or name in signalled:
            continue
        if alive - {name, *LAST_TO_STOP_ORDER[LAST_TO_STOP_ORDER.index(name) + 1:]}:
            return  # something that must go first is still there
        for pid, worker in workers.items():
            if worker == name:
                # gone, or not ours to signal: supervisord's own stop remains
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
        signalled.add(name)
        return


def _state(pid: int) -> str | None:
    """The process state letter of /proc/<pid>/stat (``Z``: exited, not reaped), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for supervisord to reap it."""
    return _state(pid) not in (None, "Z")


def _zombie(pid: int) -> bool:
    return _state(pid) == "Z"


def _poke(run_dir: Path) -> None:
    """Make supervisord's main loop turn now.

    supervisord acts (spawns, reaps an exited program, notices that everything has stopped)
    only after its poll returns, which without I/O takes its full second: a signal does not
    cut it short (Python retries the poll). Any request on its socket does. At a start that
    second comes before the first program is spawned; at a stop, after each exit.
    """
    # a fault (SHUTDOWN_STATE while stopping) is an answer: the loop turned
    with contextlib.suppress(OSError, supervisorrpc.Fault):
        supervisorrpc.get_state(run_dir / "supervisor.sock")


def _wake_at_start(run_dir: Path, proc: subprocess.Popen[bytes], limit: float = 5.0) -> None:
    """Poke supervisord as soon as its socket exists, so that the programs are spawned then
    and not a second later (see ``_poke``)."""
    sock = run_dir / "supervisor.sock"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if sock.exists():
            _poke(run_dir)
            return
        time.sleep(0.01)  # polling for the socket file; supervisord makes it within ~0.1 s


def _stop_workers_together(run_dir: Path, supervisord_pid: int) -> dict[int, str] | None:
    """Send SIGTERM to the workers at once, once supervisord is shutting down.

    supervisord stops programs one after another, each waiting for the last: teardown
    (release the lease, delete the tables) would take the sum of every worker's exit time.
    The workers' teardowns are independent, so they run in parallel — except the nat-writer's:
    its tables are the LAN filter, so they must outlive the child (F-9), and it is left to
    supervisord, which stops it after the dhcp worker has exited (lower priority), and the bus
    last. Only once supervisord is shutting down, or it would restart a worker that exits: in
    that state it answers every RPC with the fault SHUTDOWN_STATE, which is the proof. The
    workers are found as supervisord's children running ``anchord worker <name>``.
    Returns the programs found (pid -> name; empty when nothing is left to do), or None
    while supervisord is not stopping yet.
    """
    try:
        if supervisorrpc.get_state(run_dir / "supervisor.sock") != "SHUTDOWN":
            return None
    except supervisorrpc.Fault as fault:
        if fault.code != _SHUTDOWN_STATE_FAULT:
            return {}
    except OSError:
        # supervisord is gone or not answering: its own sequential stop is all there is.
        return {}
    signalled = []
    workers = _workers_of(supervisord_pid)
    for pid, name in workers.items():
        if name in LAST_TO_STOP:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(name)
        except (ProcessLookupError, PermissionError):
            pass
    log.info("stopping workers together", extra={"fields": {
        "supervisord": supervisord_pid, "workers": sorted(signalled)}})
    return workers


def _workers_of(supervisord_pid: int) -> dict[int, str]:
    """pid -> program name of supervisord's children that run ``anchord worker <name>``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != supervisord_pid:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "worker" in words and words.index("worker") + 1 < len(words):
            found[int(entry.name)] = words[words.index("worker") + 1]
    return found
