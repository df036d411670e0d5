"""CLI mode selection and the config-error exit, without starting anything."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from anchord import cli
from anchord.config import ConfigError


@pytest.mark.parametrize(("argument", "env", "mode"), [
    (None, {}, "network-anchor"),
    (None, {"ANCHORD_MODE": "service-anchor"}, "service-anchor"),
    ("service-anchor", {}, "service-anchor"),
    ("network-anchor", {"ANCHORD_MODE": "network-anchor"}, "network-anchor"),
])
def test_select_mode(argument: str | None, env: dict[str, str], mode: str) -> None:
    assert cli.select_mode(argument, env) == mode


def test_conflicting_modes_are_an_error() -> None:
    with pytest.raises(ConfigError, match="same mode as the command argument"):
        cli.select_mode("service-anchor", {"ANCHORD_MODE": "network-anchor"})


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ConfigError, match="ANCHORD_MODE='router'"):
        cli.select_mode(None, {"ANCHORD_MODE": "router"})


def _run(args: list[str], env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    result = CliRunner().invoke(cli.main, args, env=env)
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, lines


@pytest.mark.parametrize("args", [[], ["network-anchor"]])
def test_bad_value_exits_2_with_one_line(args: list[str]) -> None:
    code, lines = _run(args, {"ANCHORD_PROJECT": "p", "ANCHORD_VLAN_PARENT": "eth0",
                              "ANCHORD_POLL_INTERVAL": "0", "ANCHORD_MODE": ""})
    assert code == 2
    assert len(lines) == 1
    assert lines[0]["level"] == "error"
    assert "ANCHORD_POLL_INTERVAL='0'" in str(lines[0]["message"])


def test_missing_vlan_parent_never_switches_role() -> None:
    code, lines = _run(["network-anchor"], {"ANCHORD_PROJECT": "p", "ANCHORD_MODE": ""})
    assert code == 2
    assert "ANCHORD_VLAN_PARENT" in str(lines[0]["message"])


def test_service_anchor_argument_against_env_mode() -> None:
    code, lines = _run(["service-anchor"], {"ANCHORD_MODE": "network-anchor"})
    assert code == 2
    assert "ANCHORD_MODE" in str(lines[0]["message"])


def test_unknown_worker_is_refused() -> None:
    result = CliRunner().invoke(cli.main, ["worker", "nope"])
    assert result.exit_code == 2
    assert "known:" in result.output


def test_help_is_useful() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for word in ("network-anchor", "service-anchor", "status", "worker"):
        assert word in result.output
