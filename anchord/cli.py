"""The ``anchord`` command: mode selection, workers, status and the image healthcheck.

The click layer only parses arguments, builds the config and hands over; the
work lives in the modules it calls. A configuration error is one JSON log line
naming the variable, the value and what is expected, and exit code 2, before
any process starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from anchord import __version__, logsetup
from anchord import config as configmod

log = logging.getLogger("anchord")

EXIT_CONFIG = 2


def select_mode(argument: str | None, env: Mapping[str, str]) -> str:
    """The mode from the first argument, else ``ANCHORD_MODE``, else network-anchor.

    Both given and different is an error: a role is never switched silently.
    """
    from_env = env.get("ANCHORD_MODE", "").strip()
    if from_env:
        configmod.parse_mode(from_env)
    if argument and from_env and argument != from_env:
        raise configmod.ConfigError(
            "ANCHORD_MODE", from_env, f"the same mode as the command argument ({argument}) "
            "or unset")
    return argument or from_env or "network-anchor"


def _load(mode: str) -> configmod.Config:
    """Config of ``mode`` from the environment, or exit 2 with one clear line."""
    env = dict(os.environ)
    logsetup.configure("anchord")
    try:
        cfg = configmod.load(env, mode=select_mode(mode, env))
    except configmod.ConfigError as exc:
        log.error(str(exc), extra={"fields": {"variable": exc.variable, "value": exc.value}})
        sys.exit(EXIT_CONFIG)
    logsetup.configure("anchord", cfg.log_level)
    for warning in configmod.unknown_variables(env):
        log.warning(warning)
    return cfg


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
    cfg = _load("network-anchor")
    if not isinstance(cfg, configmod.NetworkAnchorConfig):
        raise click.UsageError("ANCHORD_MODE says service-anchor")
    from anchord import supervise

    sys.exit(supervise.run(cfg, dict(os.environ)))


@main.command("service-anchor")
def service_anchor() -> None:
    """Run a service-anchor: keep this namespace's default route pointed at the
    network-anchor (ANCHORD_GATEWAY_HOSTNAME). One per exposed service."""
    cfg = _load("service-anchor")
    if not isinstance(cfg, configmod.ServiceAnchorConfig):
        raise click.UsageError("ANCHORD_MODE says network-anchor")
    from workers import service_anchor as sa

    sys.exit(sa.main(cfg))


@main.command("worker")
@click.argument("name")
def worker(name: str) -> None:
    """Run one worker of the network-anchor (what supervisord starts): bus, metrics,
    discovery, nat-writer, conntrack-flusher or dhcp."""
    from anchord import runner

    if name not in runner.PROGRAMS:
        raise click.BadParameter(f"{name!r}; known: {', '.join(runner.PROGRAMS)}",
                                 param_hint="NAME")
    env = dict(os.environ)
    try:
        code = runner.run_worker(name, env)
    except configmod.ConfigError as exc:
        logsetup.configure(name)
        log.error(str(exc))
        code = EXIT_CONFIG
    sys.exit(code)


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


@main.command("healthcheck")
def healthcheck() -> None:
    """Exit 0 when this container is healthy (the image's HEALTHCHECK). Works with the
    metrics listener disabled: it reads the readiness file in the run directory."""
    from anchord import health

    env = dict(os.environ)
    run_dir = Path(env.get("ANCHORD_RUN_DIR", "/run/anchord"))
    ok, message = health.check(run_dir)
    click.echo(message)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
