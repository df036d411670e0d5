"""The ``anchord`` command's entry point: the paths that run all the time, without click.

Three invocations run for the whole life of a container or every few seconds: ``anchord
worker NAME`` (six times per network-anchor, by supervisord), ``anchord service-anchor`` (once
per exposed service) and ``anchord healthcheck`` (Docker's HEALTHCHECK, every interval, for
every anchord container). Each of them here costs neither click's import time nor its memory
in every process. Everything else — status, release, docker-proxy, help, errors in the
arguments — goes to the click command group in ``anchord.cli``, which calls the same
functions below for these three.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anchord.config import Config

log = logging.getLogger("anchord")

EXIT_CONFIG = 2


def select_mode(argument: str | None, env: Mapping[str, str]) -> str:
    """The mode from the first argument, else ``ANCHORD_MODE``, else network-anchor.

    Both given and different is an error: a role is never switched silently.
    """
    from anchord import config as configmod

    from_env = env.get("ANCHORD_MODE", "").strip()
    if from_env:
        configmod.parse_mode(from_env)
    if argument and from_env and argument != from_env:
        raise configmod.ConfigError(
            "ANCHORD_MODE", from_env, f"the same mode as the command argument ({argument}) "
            "or unset")
    return argument or from_env or "network-anchor"


def load_config(mode: str) -> Config:
    """Config of ``mode`` from the environment, or exit 2 with one clear line."""
    from anchord import config as configmod
    from anchord import logsetup

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


def run_service_anchor() -> int:
    """``anchord service-anchor``: the exit code of the service-anchor."""
    from anchord import config as configmod

    cfg = load_config("service-anchor")
    assert isinstance(cfg, configmod.ServiceAnchorConfig)  # select_mode refused any other
    from workers import service_anchor as sa

    return sa.main(cfg)


def run_worker(name: str) -> int:
    """``anchord worker NAME`` for a known NAME: the worker's exit code."""
    from anchord import config as configmod
    from anchord import logsetup, runner

    try:
        return runner.run_worker(name, dict(os.environ))
    except configmod.ConfigError as exc:
        logsetup.configure(name)
        log.error(str(exc))
        return EXIT_CONFIG


def run_healthcheck() -> int:
    """``anchord healthcheck``: 0 when healthy; prints the reason either way. Imports only
    what reading the health file needs: Docker runs it every few seconds in every container."""
    from anchord import health

    run_dir = Path(os.environ.get("ANCHORD_RUN_DIR", "/run/anchord"))
    ok, message = health.check(run_dir)
    print(message, flush=True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    env_mode = os.environ.get("ANCHORD_MODE", "").strip()
    if args == ["healthcheck"]:
        sys.exit(run_healthcheck())
    if len(args) == 2 and args[0] == "worker":
        from anchord.runner import PROGRAMS

        if args[1] in PROGRAMS:
            sys.exit(run_worker(args[1]))
    if args == ["service-anchor"] or (not args and env_mode == "service-anchor"):
        sys.exit(run_service_anchor())
    from anchord.cli import main as cli_main

    cli_main(args)
