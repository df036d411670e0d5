"""Starting one worker process: config, logging, signals, bus client, then the worker.

``anchord worker NAME`` lands here. The worker registry below is the one list of
programs of the network-anchor; supervisord.conf runs each of them and the
metrics worker expects a heartbeat from each for readiness.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from anchord import config as configmod
from anchord import logsetup, privileges
from anchord.lifecycle import Lifecycle

log = logging.getLogger(__name__)

# program name -> module with SUBSCRIBE and run(config, bus, life)
WORKERS: dict[str, str] = {
    "discovery": "workers.discovery",
    "dhcp": "workers.dhcp",
    "nat-writer": "workers.natwriter",
    "conntrack-flusher": "workers.conntrack_flusher",
    "metrics": "workers.metrics",
}
PROGRAMS = ("bus", *WORKERS)


def run_worker(name: str, env: Mapping[str, str]) -> int:
    """Run worker ``name`` until it stops; the return value is the exit code."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown worker {name!r}; known: {', '.join(PROGRAMS)}")
    config = configmod.load(env, mode="network-anchor")
    assert isinstance(config, configmod.NetworkAnchorConfig)
    logsetup.configure(name, config.log_level)
    # Before anything reads Docker, the bus or the LAN; after the console is open (see
    # anchord.privileges). A switch that fails stops the program: it never runs as root instead.
    try:
        privileges_now = privileges.apply(name, config.docker_host)
    except (OSError, privileges.PrivilegeError) as exc:
        log.error("could not set this program's privileges", extra={"fields": {
            "error": str(exc)}})
        return 1
    log.info("privileges set", extra={"fields": {"privileges": privileges_now}})
    life = Lifecycle(config.run_dir)
    life.install_signal_handlers()
    try:
        if name == "bus":
            from bus import broker  # the broker needs zmq only, not the codec and events

            wakeup = None if life.wakeup_fd is None else (life.wakeup_fd, life.drain_wakeup)
            broker.serve(config.run_dir, lambda: life.stop_requested, wakeup)
            return 0
        from bus.client import BusClient

        module = importlib.import_module(WORKERS[name])
        with BusClient(
            name,
            config.run_dir,
            subscribe=getattr(module, "SUBSCRIBE", ()),
            subscribe_all=getattr(module, "SUBSCRIBE_ALL", False),
        ) as bus:
            if life.wakeup_fd is not None:
                bus.wake_on_signals(life.wakeup_fd, life.drain_wakeup)
            log.info("worker started")
            code: int = module.run(config, bus, life)
    except Exception:
        # Exit non-zero so supervisord restarts us; the traceback goes to both logs.
        log.exception("worker failed")
        return 1
    log.info("worker stopped", extra={"fields": {
        "exit_code": code, "shutdown": life.shutting_down()}})
    return code
