"""Configuration: built once from the environment, validated, frozen.

This module owns every ``ANCHORD_*`` variable: its default, its parsing and the
one-line error a bad value produces. Nothing else in anchord reads the
environment for configuration. Tests build the dataclasses directly.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("network-anchor", "service-anchor")
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "error": logging.ERROR}

# Every variable anchord reads, for the typo warning and the reference docs.
KNOWN_VARIABLES = (
    "ANCHORD_MODE",
    "ANCHORD_LOG_LEVEL",
    "ANCHORD_METRICS_ADDR",
    "ANCHORD_PROJECT",
    "ANCHORD_VLAN_PARENT",
    "ANCHORD_DHCP_HOSTNAME",
    "ANCHORD_EXT_MAC",
    "ANCHORD_EXT_IFACE",
    "ANCHORD_POLL_INTERVAL",
    "ANCHORD_DHCP_BACKOFF_MAX",
    "ANCHORD_GATEWAY_HOSTNAME",
    "ANCHORD_GATEWAY_RESOLVE_INTERVAL",
    "ANCHORD_RUN_DIR",
    "ANCHORD_STATE_DIR",
    "ANCHORD_RELEASE_ON_STOP",
    "ANCHORD_PROXY_PORT",
    # Internal: set by anchord itself or by tests, not meant for users.
    "ANCHORD_SUPERVISORD_CONF",
    "ANCHORD_CONSOLE",
)

_DURATION = re.compile(r"^\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}$")
_HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A bad value: names the variable, the value and what is expected."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r} is invalid: expected {expected}")


@dataclass(frozen=True)
class MetricsAddr:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class CommonConfig:
    mode: str = "network-anchor"
    # Python logging level number (ANCHORD_LOG_LEVEL debug/info/warn/error).
    log_level: int = logging.INFO
    # None disables the metrics/health listener (ANCHORD_METRICS_ADDR empty).
    metrics_addr: MetricsAddr | None = MetricsAddr("127.0.0.1", 9090)
    # Where the bus sockets, the shutdown marker and supervisord's socket live: root's and the
    # anchord group's alone (1770; 0700 where no anchord user exists): see bus.broker.
    run_dir: Path = Path("/run/anchord")


@dataclass(frozen=True)
class NetworkAnchorConfig(CommonConfig):
    # Compose project whose labelled containers we expose.
    project: str = ""
    # Parent of the macvlan child: an interface name or the Compose network's name.
    vlan_parent: str = ""
    # DHCP option 12/81 hostname; defaults to the project.
    dhcp_hostname: str = ""
    # Stable MAC of the external interface: 02:42 + sha256(project)[:4] by default.
    ext_mac: str = ""
    ext_iface: str = "anchord-ext"
    # Safety-net Docker poll, seconds.
    poll_interval: float = 30.0
    # Cap of the DHCP retry backoff, seconds.
    dhcp_backoff_max: float = 300.0
    docker_host: str = "unix:///var/run/docker.sock"
    # Lease file directory: survives worker restarts (and container restarts if a volume).
    state_dir: Path = Path("/var/lib/anchord")
    # Give the leases back (DHCPRELEASE / Release) at every container stop. Off: a stop keeps
    # them, and the next start asks for the same address (F-6); `anchord release` asks once.
    release_on_stop: bool = False


@dataclass(frozen=True)
class ServiceAnchorConfig(CommonConfig):
    gateway_hostname: str = "anchord"
    gateway_resolve_interval: float = 5.0


Config = NetworkAnchorConfig | ServiceAnchorConfig


def parse_duration(variable: str, value: str, minimum: float = 0.1,
                   maximum: float = 86400.0) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or a bare number of seconds, within bounds (a
    nanosecond poll would spin a worker, a year-long one is a typo)."""
    m = _DURATION.match(value)
    if not m:
        raise ConfigError(variable, value, "a duration such as 30s, 5m, 1h or a number of seconds")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(variable, value, "a duration greater than zero")
    if not minimum <= seconds <= maximum:
        raise ConfigError(variable, value,
                          f"a duration from {_human(minimum)} to {_human(maximum)}")
    return seconds


def _human(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_bool(variable: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(variable, value, "true or false (also 1/0, yes/no, on/off)")


def parse_docker_host(value: str) -> str:
    """``unix:///absolute/path`` or ``tcp://host:port`` (what ``anchord.dockerhttp``
    speaks)."""
    variable = "DOCKER_HOST"
    expected = "unix:///path/to/docker.sock or tcp://host:port"
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/") or "\x00" in path:
            raise ConfigError(variable, value, expected)
        return value
    m = re.match(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?$", value)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ConfigError(variable, value, expected)
    return value


def parse_metrics_addr(value: str) -> MetricsAddr | None:
    """``host:port``, ``:port`` (all addresses), ``[v6]:port``; empty disables."""
    variable = "ANCHORD_METRICS_ADDR"
    value = value.strip()
    if not value:
        return None
    expected = "host:port, :port or [ipv6]:port with a port 1-65535, or empty to disable"
    m = re.match(r"^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})$", value)
    if not m:
        raise ConfigError(variable, value, expected)
    host = m.group(1) or m.group(2) or ""
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise ConfigError(variable, value, expected)
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9.-]+$", host):
                raise ConfigError(variable, value, expected) from None
    else:
        host = "::" if _has_ipv6() else "0.0.0.0"
    return MetricsAddr(host, port)


def _has_ipv6() -> bool:
    return Path("/proc/net/if_inet6").exists()


DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def derive_mac(project: str) -> str:
    """02:42 (locally administered, unicast) + the first 4 bytes of sha256(project)."""
    try:
        # CPython's own SHA-256: hashlib's would load OpenSSL (libcrypto) into every process
        # that reads its config, for this one digest (3.12 renamed the module).
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from hashlib import sha256
    digest = sha256(project.encode()).digest()[:4]
    return "02:42:" + ":".join(f"{b:02x}" for b in digest)


def parse_mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    expected = "a MAC such as 02:42:0a:0b:0c:0d (unicast: lowest bit of the first byte 0)"
    if not _MAC.match(mac) or int(mac[:2], 16) & 1:
        raise ConfigError("ANCHORD_EXT_MAC", value, expected)
    return mac


def parse_hostname(variable: str, value: str) -> str:
    name = value.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ConfigError(variable, value, "a DNS hostname (letters, digits, '-', dots)")
    return name


def _project_hostname(project: str) -> str:
    # Compose allows '_' in project names; DHCP hostnames do not.
    return re.sub(r"[^a-z0-9-]", "-", project.lower()).strip("-")[:63] or "anchord"


def parse_level(value: str) -> int:
    level = LOG_LEVELS.get(value.strip().lower())
    if level is None:
        raise ConfigError("ANCHORD_LOG_LEVEL", value, "one of debug, info, warn, error")
    return level


def parse_mode(value: str) -> str:
    mode = value.strip()
    if mode not in MODES:
        raise ConfigError("ANCHORD_MODE", value, "network-anchor or service-anchor")
    return mode


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning line per ``ANCHORD_*`` variable we do not know, naming the closest one."""
    import difflib  # only here: a typo in a variable name is rare, its import is not free

    lines = []
    for name in sorted(env):
        if name.startswith("ANCHORD_") and name not in KNOWN_VARIABLES:
            # Compare without the shared prefix, which would make everything look close.
            suffixes = [known.removeprefix("ANCHORD_") for known in KNOWN_VARIABLES]
            close = difflib.get_close_matches(name.removeprefix("ANCHORD_"), suffixes, n=1,
                                              cutoff=0.6)
            hint = f"; did you mean ANCHORD_{close[0]}?" if close else ""
            lines.append(f"unknown variable {name} is ignored{hint}")
    return lines


def load(env: Mapping[str, str], mode: str | None = None) -> Config:
    """Build the config of ``mode`` (default: ANCHORD_MODE) from ``env``.

    Raises ConfigError on the first bad value.
    """
    mode = parse_mode(mode if mode is not None else env.get("ANCHORD_MODE", "network-anchor"))
    common = {
        "mode": mode,
        "log_level": parse_level(env.get("ANCHORD_LOG_LEVEL", "info")),
        # A service-anchor lives in the app's namespace: by default it listens on nothing there
        # (an app may want :9090); its healthcheck reads the health file (F-21).
        "metrics_addr": parse_metrics_addr(env.get(
            "ANCHORD_METRICS_ADDR", "" if mode == "service-anchor" else "127.0.0.1:9090")),
        "run_dir": _path("ANCHORD_RUN_DIR", env.get("ANCHORD_RUN_DIR", "/run/anchord")),
    }
    if mode == "service-anchor":
        return ServiceAnchorConfig(
            **common,  # type: ignore[arg-type]
            gateway_hostname=parse_hostname(
                "ANCHORD_GATEWAY_HOSTNAME", env.get("ANCHORD_GATEWAY_HOSTNAME", "anchord")
            ),
            gateway_resolve_interval=parse_duration(
                "ANCHORD_GATEWAY_RESOLVE_INTERVAL",
                env.get("ANCHORD_GATEWAY_RESOLVE_INTERVAL", "5s"), 0.1, 3600.0,
            ),
        )

    project = env.get("ANCHORD_PROJECT", "").strip() or env.get("COMPOSE_PROJECT_NAME", "").strip()
    if not project:
        raise ConfigError("ANCHORD_PROJECT", "", "the Compose project name (or set "
                          "COMPOSE_PROJECT_NAME)")
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", project):
        raise ConfigError("ANCHORD_PROJECT", project,
                          "a Compose project name: lowercase letters, digits, '_' and '-'")
    parent = env.get("ANCHORD_VLAN_PARENT", "").strip()
    if not parent:
        raise ConfigError("ANCHORD_VLAN_PARENT", "", "the LAN parent: an interface such as "
                          "eth0.42, or the name of a Compose network of this container")
    ext_iface = env.get("ANCHORD_EXT_IFACE", "anchord-ext").strip()
    if not _IFNAME.match(ext_iface):
        raise ConfigError("ANCHORD_EXT_IFACE", ext_iface, "an interface name of 1-15 characters")
    mac_value = env.get("ANCHORD_EXT_MAC", "")
    return NetworkAnchorConfig(
        **common,  # type: ignore[arg-type]
        project=project,
        vlan_parent=parent,
        dhcp_hostname=parse_hostname(
            "ANCHORD_DHCP_HOSTNAME",
            env.get("ANCHORD_DHCP_HOSTNAME", "") or _project_hostname(project),
        ),
        ext_mac=parse_mac(mac_value) if mac_value.strip() else derive_mac(project),
        ext_iface=ext_iface,
        poll_interval=parse_duration(
            "ANCHORD_POLL_INTERVAL", env.get("ANCHORD_POLL_INTERVAL", "30s"), 1.0, 3600.0
        ),
        dhcp_backoff_max=parse_duration(
            "ANCHORD_DHCP_BACKOFF_MAX", env.get("ANCHORD_DHCP_BACKOFF_MAX", "5m"), 1.0, 86400.0
        ),
        docker_host=parse_docker_host(env.get("DOCKER_HOST", "").strip() or DEFAULT_DOCKER_HOST),
        state_dir=_path("ANCHORD_STATE_DIR", env.get("ANCHORD_STATE_DIR", "/var/lib/anchord")),
        release_on_stop=parse_bool("ANCHORD_RELEASE_ON_STOP",
                                   env.get("ANCHORD_RELEASE_ON_STOP", "")),
    )


def _path(variable: str, value: str) -> Path:
    # anchord makes these directories its own (the run directory gets its group and mode):
    # never the root or a kernel filesystem.
    expected = "an absolute path of a directory of its own (not /, /proc, /sys or /dev)"
    if not value.startswith("/") or "\x00" in value:
        raise ConfigError(variable, value, expected)
    path = Path(value)
    parts = path.parts
    if len(parts) < 2 or ".." in parts or parts[1] in ("proc", "sys", "dev"):
        raise ConfigError(variable, value, expected)
    return path
