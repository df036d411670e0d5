"""Configuration from the environment: defaults, overrides and every error message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from anchord.config import (
    ConfigError,
    MetricsAddr,
    NetworkAnchorConfig,
    ServiceAnchorConfig,
    derive_mac,
    load,
    parse_duration,
    unknown_variables,
)

BASE = {"ANCHORD_PROJECT": "mail", "ANCHORD_VLAN_PARENT": "eth0.42"}


def test_network_anchor_defaults() -> None:
    cfg = load(BASE)
    assert isinstance(cfg, NetworkAnchorConfig)
    assert cfg.mode == "network-anchor"
    assert cfg.log_level == logging.INFO
    assert cfg.metrics_addr == MetricsAddr("127.0.0.1", 9090)
    assert cfg.project == "mail"
    assert cfg.vlan_parent == "eth0.42"
    assert cfg.dhcp_hostname == "mail"
    assert cfg.ext_mac == derive_mac("mail")
    assert cfg.ext_mac.startswith("02:42:")
    assert cfg.ext_iface == "anchord-ext"
    assert cfg.poll_interval == 30.0
    assert cfg.dhcp_backoff_max == 300.0
    assert cfg.docker_host == "unix:///var/run/docker.sock"
    assert cfg.run_dir == Path("/run/anchord")


def test_derived_mac_is_stable_and_distinct() -> None:
    # Pinned, not compared with itself: a change would give every user's project a new MAC,
    # so a new DHCP lease and address (02:42 + the first 4 bytes of sha256("mail")).
    assert derive_mac("mail") == "02:42:00:d8:d3:f1"
    assert derive_mac("mail") != derive_mac("cloud")
    first = int(derive_mac("mail")[:2], 16)
    assert first & 2  # locally administered, unicast
    assert not first & 1


def test_service_anchor_defaults() -> None:
    cfg = load({"ANCHORD_MODE": "service-anchor"})
    assert isinstance(cfg, ServiceAnchorConfig)
    assert cfg.gateway_hostname == "anchord"
    assert cfg.gateway_resolve_interval == 5.0


def test_overrides() -> None:
    cfg = load(BASE | {
        "ANCHORD_LOG_LEVEL": "debug", "ANCHORD_METRICS_ADDR": "[::1]:9100",
        "ANCHORD_DHCP_HOSTNAME": "MX1.example.org", "ANCHORD_EXT_MAC": "02-AA-bb-cc-dd-ee",
        "ANCHORD_EXT_IFACE": "lan0", "ANCHORD_POLL_INTERVAL": "1m",
        "ANCHORD_DHCP_BACKOFF_MAX": "90", "DOCKER_HOST": "tcp://docker-proxy:2375",
    })
    assert isinstance(cfg, NetworkAnchorConfig)
    assert cfg.log_level == logging.DEBUG
    assert cfg.metrics_addr == MetricsAddr("::1", 9100)
    assert cfg.dhcp_hostname == "mx1.example.org"
    assert cfg.ext_mac == "02:aa:bb:cc:dd:ee"
    assert cfg.ext_iface == "lan0"
    assert cfg.poll_interval == 60.0
    assert cfg.dhcp_backoff_max == 90.0
    assert cfg.docker_host == "tcp://docker-proxy:2375"


def test_project_falls_back_to_compose_project_name() -> None:
    cfg = load({"COMPOSE_PROJECT_NAME": "cloud_1", "ANCHORD_VLAN_PARENT": "lan"})
    assert isinstance(cfg, NetworkAnchorConfig)
    assert cfg.project == "cloud_1"
    assert cfg.dhcp_hostname == "cloud-1"  # '_' is not valid in a hostname


def test_metrics_addr_forms() -> None:
    assert load(BASE | {"ANCHORD_METRICS_ADDR": ""}).metrics_addr is None
    wildcard = load(BASE | {"ANCHORD_METRICS_ADDR": ":9090"}).metrics_addr
    assert wildcard is not None
    assert wildcard.port == 9090
    assert wildcard.host in ("::", "0.0.0.0")


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("45", 45), ("250ms", 0.25), (" 2m ", 120)])
def test_durations(value: str, seconds: float) -> None:
    assert parse_duration("X", value) == seconds


@pytest.mark.parametrize(("env", "variable", "expected"), [
    ({"ANCHORD_POLL_INTERVAL": "0"}, "ANCHORD_POLL_INTERVAL", "greater than zero"),
    ({"ANCHORD_POLL_INTERVAL": "soon"}, "ANCHORD_POLL_INTERVAL", "30s, 5m, 1h"),
    ({"ANCHORD_DHCP_BACKOFF_MAX": "-5"}, "ANCHORD_DHCP_BACKOFF_MAX", "duration"),
    ({"ANCHORD_EXT_MAC": "02:42:zz:00:00:00"}, "ANCHORD_EXT_MAC", "MAC"),
    ({"ANCHORD_EXT_MAC": "01:00:5e:00:00:01"}, "ANCHORD_EXT_MAC", "unicast"),
    ({"ANCHORD_MODE": "router"}, "ANCHORD_MODE", "network-anchor or service-anchor"),
    ({"ANCHORD_LOG_LEVEL": "loud"}, "ANCHORD_LOG_LEVEL", "debug, info, warn, error"),
    ({"ANCHORD_METRICS_ADDR": "9090"}, "ANCHORD_METRICS_ADDR", "host:port"),
    ({"ANCHORD_METRICS_ADDR": ":99999"}, "ANCHORD_METRICS_ADDR", "1-65535"),
    ({"ANCHORD_PROJECT": ""}, "ANCHORD_PROJECT", "Compose project name"),
    ({"ANCHORD_PROJECT": "Mail Server"}, "ANCHORD_PROJECT", "lowercase"),
    ({"ANCHORD_VLAN_PARENT": ""}, "ANCHORD_VLAN_PARENT", "eth0.42"),
    ({"ANCHORD_EXT_IFACE": "a-very-long-interface-name"}, "ANCHORD_EXT_IFACE", "1-15"),
    ({"ANCHORD_DHCP_HOSTNAME": "bad_host!"}, "ANCHORD_DHCP_HOSTNAME", "DNS hostname"),
    ({"ANCHORD_RUN_DIR": "relative"}, "ANCHORD_RUN_DIR", "absolute path"),
    ({"ANCHORD_RUN_DIR": "/"}, "ANCHORD_RUN_DIR", "not /, /proc"),
    ({"ANCHORD_STATE_DIR": "/proc/self"}, "ANCHORD_STATE_DIR", "not /, /proc"),
    ({"ANCHORD_STATE_DIR": "/var/../etc"}, "ANCHORD_STATE_DIR", "absolute path"),
    ({"ANCHORD_POLL_INTERVAL": "0.000001ms"}, "ANCHORD_POLL_INTERVAL", "from 1s to 1h"),
    ({"ANCHORD_POLL_INTERVAL": "inf"}, "ANCHORD_POLL_INTERVAL", "30s, 5m, 1h"),
    ({"ANCHORD_DHCP_BACKOFF_MAX": "99999h"}, "ANCHORD_DHCP_BACKOFF_MAX", "from 1s to 24h"),
    ({"DOCKER_HOST": "ssh://host"}, "DOCKER_HOST", "tcp://host:port"),
    ({"DOCKER_HOST": "tcp://proxy"}, "DOCKER_HOST", "tcp://host:port"),
    ({"DOCKER_HOST": "unix://relative.sock"}, "DOCKER_HOST", "unix:///path"),
    ({"ANCHORD_RELEASE_ON_STOP": "maybe"}, "ANCHORD_RELEASE_ON_STOP", "true or false"),
])
def test_errors_name_variable_value_and_expectation(
    env: dict[str, str], variable: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(BASE | env)
    message = str(err.value)
    assert err.value.variable == variable
    assert message.startswith(f"{variable}=")
    assert repr(env.get(variable, "")) in message or env.get(variable, "") == ""
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(("env", "variable"), [
    ({"ANCHORD_GATEWAY_RESOLVE_INTERVAL": "0s"}, "ANCHORD_GATEWAY_RESOLVE_INTERVAL"),
    ({"ANCHORD_GATEWAY_HOSTNAME": "no spaces"}, "ANCHORD_GATEWAY_HOSTNAME"),
])
def test_service_anchor_errors(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"ANCHORD_MODE": "service-anchor"} | env)
    assert err.value.variable == variable


def test_service_anchor_needs_no_project() -> None:
    assert isinstance(load({}, mode="service-anchor"), ServiceAnchorConfig)


def test_unknown_variable_names_closest() -> None:
    lines = unknown_variables({"ANCHORD_POLL_INTERVALL": "5s", "ANCHORD_PROJECT": "x",
                               "PATH": "/bin", "ANCHORD_ZZZ_QQQ": "1"})
    assert lines == [
        "unknown variable ANCHORD_POLL_INTERVALL is ignored; did you mean ANCHORD_POLL_INTERVAL?",
        "unknown variable ANCHORD_ZZZ_QQQ is ignored",
    ]


@pytest.mark.parametrize(("value", "expected"), [
    ("", False), ("false", False), ("0", False), ("no", False), ("true", True), ("1", True),
    ("YES", True), ("on", True)])
def test_release_on_stop(value: str, expected: bool) -> None:
    cfg = load(BASE | {"ANCHORD_RELEASE_ON_STOP": value})
    assert isinstance(cfg, NetworkAnchorConfig)
    assert cfg.release_on_stop is expected


def test_docker_host_forms() -> None:
    for value in ("unix:///var/run/docker.sock", "tcp://docker-proxy:2375",
                  "tcp://[fd00::1]:2375", "tcp://10.0.0.2:2375/"):
        cfg = load(BASE | {"DOCKER_HOST": value})
        assert isinstance(cfg, NetworkAnchorConfig)
        assert cfg.docker_host == value


def test_service_anchor_listens_on_nothing_by_default() -> None:
    """F-21: the service-anchor shares the app's namespace; :9090 is the app's to take."""
    cfg = load({}, mode="service-anchor")
    assert isinstance(cfg, ServiceAnchorConfig)
    assert cfg.metrics_addr is None
    asked = load({"ANCHORD_METRICS_ADDR": ":9090"}, mode="service-anchor")
    assert asked.metrics_addr is not None
    assert asked.metrics_addr.port == 9090
    anchor = load(BASE)
    assert anchor.metrics_addr == MetricsAddr("127.0.0.1", 9090)
