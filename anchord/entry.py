"""The ``anchord`` command's entry point: the paths that run all the time, without click.

Four invocations run for the whole life of a container or every few seconds: ``anchord``
(``network-anchor``: the entry process, for the container's life), ``anchord worker NAME``
(six times per network-anchor, by supervisord), ``anchord service-anchor`` (once per exposed
service) and ``anchord healthcheck`` (when the image's HEALTHCHECK finds its writer not ready).
Each of them here costs neither click's import time nor its memory in every process.
Everything else — status, release, docker-proxy, help, errors in the arguments — goes to the
click command group in ``anchord.cli``, which calls the same functions below for these four.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anchord import noopenssl

if TYPE_CHECKING:
    from anchord.config import Config, NetworkAnchorConfig

log = logging.getLogger("anchord")

EXIT_CONFIG = 2
# How long the network-anchor waits for Docker to say which Compose project it belongs to.
SELF_PROJECT_TIMEOUT = 60.0


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


def given_project(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, value) of the variable that names the project, if one does."""
    for variable in ("ANCHORD_PROJECT", "COMPOSE_PROJECT_NAME"):
        if env.get(variable, "").strip():
            return variable, env[variable].strip()
    return None


def _learn_project() -> None:
    """No variable names the project: take it from this container's Compose label (into the
    environment the workers inherit), or exit 2 with one line."""
    from anchord import config as configmod
    from anchord import selfproject

    docker_host = os.environ.get("DOCKER_HOST", "").strip() or configmod.DEFAULT_DOCKER_HOST
    try:
        project = selfproject.wait_for_project(docker_host, socket.gethostname(),
                                               time.monotonic() + SELF_PROJECT_TIMEOUT)
    except selfproject.SelfUnknown as exc:
        log.error("ANCHORD_PROJECT is not set and Docker did not say which Compose project "
                  "this container belongs to within %g s: %s", SELF_PROJECT_TIMEOUT, exc,
                  extra={"fields": {"variable": "ANCHORD_PROJECT", "value": ""}})
        sys.exit(EXIT_CONFIG)
    os.environ["ANCHORD_PROJECT"] = project
    log.info("project %r taken from this container's Compose label", project,
             extra={"fields": {"project": project}})


def _check_project(cfg: NetworkAnchorConfig, variable: str) -> None:
    """A variable naming another project than this container's label: exit 2, one line."""
    from anchord import selfproject

    try:
        label = selfproject.own_project(cfg.docker_host, socket.gethostname())
    except selfproject.SelfUnknown as exc:
        # Checked again by discovery once Docker answers (its `self` readiness condition).
        log.debug("could not check the project against this container's label",
                  extra={"fields": {"why": str(exc)}})
        return
    if label != cfg.project:
        log.error("%s=%r is not this container's Compose project %r: nothing would be exposed; "
                  "set it to %r or remove it", variable, cfg.project, label, label,
                  extra={"fields": {"variable": variable, "value": cfg.project, "label": label}})
        sys.exit(EXIT_CONFIG)


def run_network_anchor() -> int:
    """``anchord`` / ``anchord network-anchor``: supervisord and its workers, supervised for
    the container's life (anchord.supervise); its exit code."""
    from anchord import config as configmod
    from anchord import logsetup

    logsetup.configure("anchord")
    given = given_project(os.environ)
    if given is None:
        _learn_project()
    cfg = load_config("network-anchor")
    assert isinstance(cfg, configmod.NetworkAnchorConfig)  # select_mode refused any other
    if given is not None:
        _check_project(cfg, given[0])
    from anchord import supervise

    return supervise.run(cfg, dict(os.environ))


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
    run: Callable[[], int] | None = None
    # prometheus_client's exposition module imports ssl unconditionally: the programs that
    # serve metrics keep OpenSSL (anchord/noopenssl.py).
    openssl = False
    if len(args) == 2 and args[0] == "worker":
        from anchord.runner import PROGRAMS

        if args[1] in PROGRAMS:
            run, openssl = functools.partial(run_worker, args[1]), args[1] == "metrics"
    elif args == ["service-anchor"] or (not args and env_mode == "service-anchor"):
        run, openssl = run_service_anchor, True
    elif args == ["network-anchor"] or (not args and env_mode in ("", "network-anchor")):
        run = run_network_anchor
    if run is not None:
        if not openssl:
            noopenssl.block()  # it lives as long as the container: no OpenSSL in it
        sys.exit(run())
    from anchord.cli import main as cli_main

    cli_main(args)
