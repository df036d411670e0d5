"""The ``anchord`` command: mode selection, workers, status and the image healthcheck.

The click layer only parses arguments, builds the config and hands over; the
work lives in the modules it calls. A configuration error is one JSON log line
naming the variable, the value and what is expected, and exit code 2, before
any process starts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import click

from anchord import __version__, logsetup
from anchord import config as configmod
from anchord.entry import (
    EXIT_CONFIG,
    SELF_PROJECT_TIMEOUT,
    given_project,
    run_healthcheck,
    run_network_anchor,
    run_service_anchor,
    run_worker,
)
from anchord.entry import select_mode as select_mode

log = logging.getLogger("anchord")

# How long a start without ANCHORD_PROJECT waits for Docker (or its proxy) to name the project.

@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="anchord")
@click.pass_context
def main(ctx: click.Context) -> None:
    """anchord gives one Docker Compose project one LAN identity.

    With no command, runs the role named by ANCHORD_MODE (default network-anchor).
    In Compose, `command: [service-anchor]` selects the role explicitly.
    """
    if ctx.invoked_subcommand is None:
        env_mode = os.environ.get("ANCHORD_MODE", "").strip() or "network-anchor"
        ctx.invoke(network_anchor if env_mode == "network-anchor" else service_anchor)


@main.command("network-anchor")
def network_anchor() -> None:
    """Run the network-anchor: supervisord with the bus, dhcp, discovery, nat-writer,
    conntrack-flusher and metrics workers. One per project."""
    sys.exit(run_network_anchor())


@main.command("service-anchor")
def service_anchor() -> None:
    """Run a service-anchor: keep this namespace's default route pointed at the
    network-anchor (ANCHORD_GATEWAY_HOSTNAME). One per exposed service."""
    sys.exit(run_service_anchor())


@main.command("worker")
@click.argument("name")
def worker(name: str) -> None:
    """Run one worker of the network-anchor (what supervisord starts): bus, metrics,
    discovery, nat-writer, conntrack-flusher or dhcp."""
    from anchord import runner

    if name not in runner.PROGRAMS:
        raise click.BadParameter(f"{name!r}; known: {', '.join(runner.PROGRAMS)}",
                                 param_hint="NAME")
    sys.exit(run_worker(name))


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", default=1.5, show_default=True, help="Seconds to gather bus state.")
def status(as_json: bool, timeout: float) -> None:
    """Show what anchord is doing: workers, readiness and what each last reported."""
    from anchord import status as statusmod

    env = dict(os.environ)
    run_dir = Path(env.get("ANCHORD_RUN_DIR", "/run/anchord"))
    report = statusmod.gather(run_dir, timeout)
    click.echo(statusmod.render_json(report) if as_json else statusmod.render_text(report))
    sys.exit(0 if report.reachable else 1)


@main.command("docker-proxy")
def docker_proxy() -> None:
    """Serve a read-only Docker API scoped to this Compose project (for the network-anchor's
    DOCKER_HOST=tcp://docker-proxy:2375). Holds the Docker socket; see anchord/apiproxy.py."""
    import signal
    import threading

    from anchord import noopenssl

    noopenssl.block()  # it lives as long as its container: no OpenSSL (anchord/noopenssl.py)
    from anchord import apiproxy, selfproject

    logsetup.configure("docker-proxy")
    env = os.environ
    upstream = env.get("DOCKER_HOST", "").strip() or configmod.DEFAULT_DOCKER_HOST
    if not upstream.startswith("unix:///"):
        log.error("DOCKER_HOST=%r is invalid: expected the Docker socket "
                  "(unix:///var/run/docker.sock) for the proxy to hold", upstream)
        sys.exit(EXIT_CONFIG)
    try:
        port = int(env.get("ANCHORD_PROXY_PORT", "2375"))
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        log.error("ANCHORD_PROXY_PORT=%r is invalid: expected a port 1-65535",
                  env.get("ANCHORD_PROXY_PORT"))
        sys.exit(EXIT_CONFIG)
    given = given_project(env)
    if given is None:
        try:
            project = selfproject.wait_for_project(upstream, socket.gethostname(),
                                                   time.monotonic() + SELF_PROJECT_TIMEOUT)
        except selfproject.SelfUnknown as exc:
            log.error("ANCHORD_PROJECT is not set and Docker did not say which Compose "
                      "project this container belongs to: %s", exc)
            sys.exit(EXIT_CONFIG)
    else:
        project = given[1]
    run_dir = Path(env.get("ANCHORD_RUN_DIR", "/run/anchord"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    apiproxy.serve(project, upstream[len("unix://"):], port, run_dir, stop)


@main.command("release")
def release() -> None:
    """Give the project's leases back at the next container stop (run it before
    `docker compose down`). Without it a stop keeps them, so that the next start gets the same
    address; ANCHORD_RELEASE_ON_STOP=true releases at every stop."""
    from anchord.lifecycle import request_release

    run_dir = Path(os.environ.get("ANCHORD_RUN_DIR", "/run/anchord"))
    if not run_dir.is_dir():
        click.echo(f"{run_dir} does not exist: is this the network-anchor container?", err=True)
        sys.exit(1)
    request_release(run_dir)
    click.echo("the leases will be released when this container stops "
               "(`docker compose down` next)")


@main.command("healthcheck")
def healthcheck() -> None:
    """Exit 0 when this container is healthy (the image's HEALTHCHECK). Works with the
    metrics listener disabled: it reads the readiness file in the run directory."""
    sys.exit(run_healthcheck())


if __name__ == "__main__":
    main()
