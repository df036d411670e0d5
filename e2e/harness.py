"""Helpers of the Compose end-to-end suite: commands, polling, Compose projects.

Owns: running host commands with bounded time (``run``), polling a condition with a deadline
(``wait_until``; the suite never sleeps a fixed time), preparing the host and building the
image (``prepare_host``, ``build_image``), and ``ComposeProject``: one uniquely named Compose
project per test, driven with ``docker compose -p NAME -f FILE`` and always taken down with
its volumes and orphans. Parsing helpers for what the anchord container prints (JSON log
lines, ``supervisorctl status``) live here too, so tests read as the contract they check.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from anchord.health import pid_alive

REPO_ROOT = Path(__file__).resolve().parent.parent
E2E_DIR = REPO_ROOT / "e2e"
COMPOSE_DIR = E2E_DIR / "compose"
IMAGE = os.environ.get("ANCHORD_E2E_IMAGE", "anchord:test")
# Every project this suite creates is named PROJECT_PREFIX + "<pid of the pytest process>-...",
# so leftovers of a killed run can be told from the projects of a run still going on.
PROJECT_PREFIX = "anchord-e2e-"
LOG_KEYS = frozenset({"time", "level", "worker", "message"})

T = TypeVar("T")


class CommandError(RuntimeError):
    """A command exited non-zero; carries its output for the test report."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        cmd = shlex.join(str(a) for a in result.args)
        super().__init__(
            f"{cmd} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout.strip()}\n--- stderr\n{result.stderr.strip()}"
        )


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host command with captured text output; raise ``CommandError`` if it fails."""
    result = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandError(result)
    return result


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that (never None).

    An exception raised by the predicate counts as "not yet" (the last one is reported if the
    deadline passes). Raises ``TimeoutError`` naming ``message`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - any failure just means "not yet"
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message}: not true after {timeout:g}s (last: {last!r})")
        time.sleep(interval)


# --- host and image ----------------------------------------------------------------------------
def prepare_host(timeout: float = 900.0) -> None:
    """Run e2e/prepare-host.sh (idempotent: seconds when everything is already there)."""
    run(["bash", str(E2E_DIR / "prepare-host.sh")], timeout=timeout)


def build_image(tag: str = IMAGE, timeout: float = 900.0) -> None:
    """Build the anchord image from the working tree with e2e/build-image.sh."""
    run(["bash", str(E2E_DIR / "build-image.sh"), "-t", tag], timeout=timeout)


# Measurements tests make on the way (start and restart times...), printed after the scenario
# report (e2e/conftest.py) so that every run shows them, not only a failing one.
FIGURES: list[str] = []


def figure(text: str) -> None:
    """Record one measured figure for the end-of-run report (and print it for -s)."""
    FIGURES.append(text)
    print(text)


def ensure_bridge_nf_call_off() -> None:
    """Keep bridged frames out of iptables, for a LAN simulated on a Docker bridge (see
    e2e/prepare-host.sh for why).

    The kernel's default is 1; prepare-host sets 0 once, this re-asserts it before each project
    in case something (a restarted dockerd, a reloaded module, a real-host test) put it back.
    """
    set_bridge_nf_call(0)


def set_bridge_nf_call(value: int) -> None:
    """Set net.bridge.bridge-nf-call-ip(6)tables. The real-host topology is tested at 1, the
    value dockerd leaves on every stock host (it loads br_netfilter); only a LAN simulated on
    a Docker bridge needs 0."""
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        path = Path("/proc/sys/net/bridge") / name
        if path.exists() and path.read_text().strip() != str(value):
            path.write_text(f"{value}\n")


def bridge_nf_call() -> tuple[int, int]:
    """The current (iptables, ip6tables) values; (-1, -1) without br_netfilter."""
    values = []
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        path = Path("/proc/sys/net/bridge") / name
        values.append(int(path.read_text()) if path.exists() else -1)
    return values[0], values[1]


def stale_projects(prefix: str = PROJECT_PREFIX) -> set[str]:
    """Projects of this suite that still have containers but whose pytest process is gone."""
    out = run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            '{{.Label "com.docker.compose.project"}}',
        ],
    ).stdout
    stale = set()
    for name in set(out.split()):
        if not name.startswith(prefix):
            continue
        owner = name[len(prefix) :].split("-", 1)[0]
        if not owner.isdigit() or not pid_alive(int(owner)):
            stale.add(name)
    return stale


def remove_project(name: str) -> None:
    """Take a project down by name alone (Compose v2 finds it by its labels)."""
    run(
        ["docker", "compose", "-p", name, "--profile", "*", "down", "-v", "--remove-orphans",
         "-t", "5"],
        check=False,
        timeout=120,
    )


def leftovers(pid: int) -> list[str]:
    """Containers and networks of this run's projects, and the real-host test namespaces of
    this run, still present: a run must leave nothing behind."""
    prefix = f"{PROJECT_PREFIX}{pid}-"
    found = []
    out = run(["docker", "ps", "-a", "--format",
               '{{.Names}} {{.Label "com.docker.compose.project"}}'], check=False).stdout
    found += [f"container {line.split()[0]}" for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].startswith(prefix)]
    out = run(["docker", "network", "ls", "--format", "{{.Name}}"], check=False).stdout
    found += [f"network {name}" for name in out.split() if name.startswith(prefix)]
    out = run(["ip", "netns", "list"], check=False).stdout
    found += [f"netns {line.split()[0]}" for line in out.splitlines()
              if line.startswith(f"arh{pid}-")]
    return found


def node_failed(node: Any) -> bool:
    """Whether a test's setup or call failed (e2e/conftest.py keeps each phase's report on
    the item as ``rep_<phase>``): fixtures dump their projects' logs then."""
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


# --- parsing what anchord prints ---------------------------------------------------------------
def json_log_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` that is a JSON object with time, level, worker and message."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # e.g. the first line of a `supervisorctl tail`, cut mid-object
        if isinstance(obj, dict) and obj.keys() >= LOG_KEYS:
            found.append(obj)
    return found


_STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\b\s*(?P<detail>.*)$")


def parse_supervisor_status(text: str) -> dict[str, str]:
    """``supervisorctl status`` output as {program: state}."""
    states = {}
    for line in text.splitlines():
        m = _STATUS_LINE.match(line.strip())
        if m:
            states[m["name"]] = m["state"]
    return states


def supervisor_pid(text: str, program: str) -> int | None:
    """The pid ``supervisorctl status`` shows for ``program`` (None if not running)."""
    for line in text.splitlines():
        m = _STATUS_LINE.match(line.strip())
        if m and m["name"] == program:
            pid = re.search(r"\bpid (\d+)", m["detail"])
            return int(pid.group(1)) if pid else None
    return None


# --- Compose projects --------------------------------------------------------------------------
def unique_project_name(hint: str) -> str:
    """``anchord-e2e-<pid>-<hint>-<random>``, valid as a Compose project name."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:30].strip("-") or "test"
    return f"{PROJECT_PREFIX}{os.getpid()}-{slug}-{uuid.uuid4().hex[:6]}"


@dataclass
class ComposeProject:
    """One Compose project of one test: ``docker compose -p NAME -f FILE ...``.

    ``env`` is given to Compose for variable interpolation in the file (the image tag as
    ``ANCHORD_IMAGE`` is always there). ``bridge_nf_call`` is the host's
    bridge-nf-call-ip(6)tables while the project runs: 0 for a LAN simulated on a Docker
    bridge, 1 (a stock Docker host) for the real-host topology. Call ``down`` in teardown (the
    fixture does).
    """

    compose_file: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)
    bridge_nf_call: int = 0

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("ANCHORD_IMAGE", IMAGE)
        # The network-anchor must name the project it belongs to: the unique test project.
        env["ANCHORD_PROJECT"] = self.name
        env.update(self.env)
        return env

    def compose(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return run(
            ["docker", "compose", "-p", self.name, "-f", str(self.compose_file), *args],
            check=check,
            timeout=timeout,
            env=self._env(),
            cwd=self.compose_file.parent,
        )

    def up(self, *services: str, timeout: float = 180.0) -> None:
        """Create and start (detached). Networks are created before any container starts."""
        set_bridge_nf_call(self.bridge_nf_call)
        self.compose("up", "-d", "--no-build", "--pull", "never", *services, timeout=timeout)

    def down(self, timeout: float = 120.0) -> None:
        """Remove everything of the project: containers, networks, volumes, orphans."""
        # Every profile: `down` alone leaves the containers of services in a profile that
        # was not given (the late-anchor of e2e/test_proxy.py).
        self.compose("--profile", "*", "down", "-v", "--remove-orphans", check=False,
                     timeout=timeout)

    def stop(self, *services: str, timeout: float = 60.0) -> float:
        """``compose stop``; returns how many seconds it took."""
        start = time.monotonic()
        self.compose("stop", *services, timeout=timeout)
        return time.monotonic() - start

    def exec(
        self, service: str, *cmd: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the running ``service`` container (no TTY, no stdin)."""
        return self.compose("exec", "-T", service, *cmd, check=check, timeout=timeout)

    def logs(self, *services: str) -> str:
        """Everything the containers printed, without Compose's prefixes."""
        result = self.compose("logs", "--no-color", "--no-log-prefix", *services, check=False)
        return result.stdout + result.stderr

    def container_id(self, service: str) -> str:
        """Id of the service's (only) container, running or not."""
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        if len(ids) != 1:
            raise LookupError(f"{service}: expected one container, found {ids}")
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        """``docker inspect`` of the service's container."""
        out = run(["docker", "inspect", self.container_id(service)]).stdout
        data: list[dict[str, Any]] = json.loads(out)
        return data[0]

    def state(self, service: str) -> dict[str, Any]:
        """``State`` of the service's container (Status, Running, ExitCode, Health, ...)."""
        state: dict[str, Any] = self.inspect(service)["State"]
        return state

    def ps(self) -> list[dict[str, Any]]:
        """``compose ps -a`` as a list of objects (one per container)."""
        out = self.compose("ps", "-a", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):  # older Compose: one JSON array
            rows: list[dict[str, Any]] = json.loads(out)
            return rows
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def supervisor_status(self, service: str = "anchord") -> str:
        """Output of ``supervisorctl status`` in ``service`` (its exit code says little)."""
        return self.exec(service, "supervisorctl", "status", check=False).stdout

    def dump(self, services: Iterable[str] = ()) -> str:
        """State and logs of the project, for a failed test's report."""
        parts = [f"=== compose project {self.name} ({self.compose_file})"]
        try:
            for row in self.ps():
                parts.append(
                    f"--- {row.get('Service')}: {row.get('State')} {row.get('Status', '')}"
                )
        except (CommandError, ValueError, subprocess.TimeoutExpired) as exc:
            parts.append(f"(ps failed: {exc})")
        parts.append(self.logs(*services))
        return "\n".join(parts)


# What the ``compose`` fixture (e2e/conftest.py) gives a test: ``compose("smoke", VAR="x")``.
ComposeFactory = Callable[..., ComposeProject]
