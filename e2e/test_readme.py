"""Every command of README.md, run as written, so the README cannot rot.

Owns the README's contract with a newcomer. The commands are read from README.md itself: each
line of a ``sh`` block, and each inline code span that starts with a command word (``make``,
``bash``, ``docker``, ``ip``, ``supervisorctl``, ``anchord``). ``COMMANDS`` below says how each
one is run; ``test_every_readme_command_is_run`` fails when the README gains a command this
module does not run (or loses one it does), so a new command needs a test before it lands.

The real-host example (the ``yaml`` block) is brought up under Compose as it stands, with only
the substitutions ``README_SUBSTITUTIONS`` lists, the ones a reader makes too: the parent
``eth0.42`` becomes the host veth that e2e/realhost_support.py makes (its far end a LAN
namespace with dnsmasq and a client), ``/proc/1/ns/net`` a handle of the host's namespace made
with ``ip netns attach`` (PID 1's namespace file cannot be opened on these machines), the project
name ``mail`` a unique one, and ``your/postfix`` a small app answering on the three ports with
the peer address it saw. The image is the one the README's own build command makes. Then the
"Operating it" commands run against that project from a directory holding its compose.yaml, as
a user runs them, the troubleshooting recipes (the host shim, restarting an app after its
service-anchor) are carried out and checked, and ``make demo`` runs and is taken down.

``make test`` is the one command not run here: it is the command that runs this module (CI's
``.ci/run`` calls it; checked below). All traffic stays on the veth, the LAN namespace, the
project's internal networks and, for the shim, a macvlan child of the test's own veth.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e import harness, stack_support
from e2e.realhost_support import (
    LAN_ADDRESS,
    LAN_ADDRESS6,
    LAN_PREFIX,
    LANTOOL,
    LISTEN_PORT,
    RealHostLan,
    remove_stale,
)

SCENARIO = "README"  # for the scenario report (e2e/conftest.py)

README = harness.REPO_ROOT / "README.md"
COMMAND_WORDS = ("make", "bash", "docker", "ip", "supervisorctl", "anchord")
MAIL_PORTS = (25, 465, 587)
WORKERS = ("bus", "discovery", "dhcp", "nat-writer", "conntrack-flusher", "metrics")
SHIM_ADDRESS = f"{LAN_PREFIX}.77"  # the "<spare LAN IP>": outside dnsmasq's .100-.150
REACH_TIMEOUT = 120.0
# What a reader of the example changes for this machine (see the module docstring).
APP = (
    f"image: {stack_support.LAN_IMAGE}\n"
    "    init: true\n"
    "    command: [python3, /demo/lantool.py, serve, --name, postfix,"
    " --tcp, '25', --tcp, '465', --tcp, '587']"
)


# --- reading the README ---------------------------------------------------------------------
def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


def readme_commands() -> set[str]:
    """Every command the README tells a reader to run (comments stripped)."""
    commands = set()
    for block in readme_blocks("sh"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line:
                commands.add(re.sub(r"\s+", " ", line))
    prose = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        words = span.split()
        if len(words) >= 2 and words[0] in COMMAND_WORDS:
            commands.add(span)
    return commands


def realhost_example(lan: RealHostLan, project: str) -> str:
    """The README's compose example with the substitutions of ``README_SUBSTITUTIONS``."""
    (text,) = readme_blocks("yaml")
    for old, new in readme_substitutions(lan, project).items():
        assert old in text, f"the README example no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def readme_substitutions(lan: RealHostLan, project: str) -> dict[str, str]:
    return {
        "eth0.42": lan.parent,
        "/proc/1/ns/net": lan.host_handle,
        "ANCHORD_PROJECT: mail ": f"ANCHORD_PROJECT: {project} ",
        "image: your/postfix": APP,
    }


# --- running them ---------------------------------------------------------------------------
@dataclass
class Example:
    """The README's example running as project ``name`` from ``directory``."""

    lan: RealHostLan
    name: str
    directory: Path
    address: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COMPOSE_PROJECT_NAME": self.name}

    def sh(self, command: str, timeout: float = 120.0) -> str:
        """Run one README line as written (a shell, the example's directory); its output."""
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.directory,
            env=self.env,
            text=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        # `docker compose exec` returns 0 here whatever the command returned (Compose v2
        # against this dockerd), so callers check the output; a failure to run at all shows.
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
        return result.stdout

    def lan_query(self, port: int, timeout: float = 2.0, address: str = "") -> dict[str, Any]:
        return self.lan.query("tcp", address or self.address, port, timeout)

    def address6(self) -> str:
        status = json.loads(self.sh("docker compose exec anchord anchord status --json"))
        lease = (status.get("leases") or {}).get("ipv6") or {}
        return str(lease.get("address") or "").split("/")[0]

    def app_query(self, proto: str, host: str, port: int) -> dict[str, Any]:
        out = self.sh(f"docker compose exec postfix python3 /demo/lantool.py query {proto} "
                      f"{host} {port} --timeout 5")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


def run_in_repo(command: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=harness.REPO_ROOT,
        env={**os.environ, **env},
        text=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def answered_by_postfix(result: dict[str, Any], port: int, peer: str) -> bool:
    reply = result.get("reply")
    return isinstance(reply, dict) and (reply["service"], reply["port"], reply["peer"]) == (
        "postfix",
        port,
        peer,
    )


@pytest.fixture(scope="module")
def built(anchord_image: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """The README's build command, run as written (before the example can start)."""
    return {
        cmd: run_in_repo(cmd, timeout=900)
        for cmd in ("bash e2e/build-image.sh -t anchord:latest",)
    }


@pytest.fixture(scope="module")
def example(built: dict[str, subprocess.CompletedProcess[str]]) -> Iterator[Example]:
    for cmd, result in built.items():
        assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stderr}"
    stack_support.build_lan_image()
    remove_stale()
    lan = RealHostLan().start()
    name = harness.unique_project_name("readme")
    running = Example(lan, name, Path(tempfile.mkdtemp(prefix="anchord-readme-")))
    (running.directory / "compose.yaml").write_text(realhost_example(lan, name))
    project = harness.ComposeProject(running.directory / "compose.yaml", name)
    # What dockerd leaves on every stock host: bridged frames pass the host's iptables.
    harness.set_bridge_nf_call(1)
    try:
        started = time.monotonic()
        running.sh("docker compose up -d", timeout=300)
        up_seconds = time.monotonic() - started

        def reachable() -> bool:
            mine = [x for x in lan.leases() if x.family == 4 and x.hostname == name]
            running.address = mine[0].address if len(mine) == 1 else ""
            # A short try: a SYN lost before the address is up is retried only after 1 s.
            return bool(running.address) and "reply" in running.lan_query(25, 0.3)

        harness.wait_until(
            reachable,
            REACH_TIMEOUT,
            interval=0.1,
            message="the README example's lease and tcp/25 answering",
        )
        harness.figure(f"README example: `docker compose up -d` returned after {up_seconds:.1f}s,"
                       f" tcp/25 answered from the LAN {time.monotonic() - started:.1f}s after it"
                       " was run")
        yield running
    except BaseException:
        print(project.dump())
        print(lan.dnsmasq_log())
        raise
    finally:
        project.down()
        lan.close()
        for path in running.directory.iterdir():
            path.unlink()
        running.directory.rmdir()


# --- the tests --------------------------------------------------------------------------------
def test_every_readme_command_is_run() -> None:
    """Every command in the README is one this module runs (and no stale entry is left)."""
    found = readme_commands()
    assert found == set(COMMANDS) | {"make test"}, (
        f"in the README but not run here: {sorted(found - set(COMMANDS) - {'make test'})}; "
        f"run here but gone from the README: {sorted(set(COMMANDS) - found)}"
    )
    ci = (harness.REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\b", ci, re.M), "CI must run the README's test command"


def test_build_commands_make_the_images(built: dict[str, Any]) -> None:
    """`bash e2e/build-image.sh -t anchord:latest` works (the image plays every role)."""
    for cmd, result in built.items():
        assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stderr}"
    harness.run(["docker", "image", "inspect", "anchord:latest"])


def test_realhost_example_serves_every_labelled_port_with_real_sources(example: Example) -> None:
    """The README's Compose example: a lease for the project, tcp/25, 465, 587 with real sources."""
    for port in MAIL_PORTS:
        result = example.lan_query(port)
        assert answered_by_postfix(result, port, LAN_ADDRESS), result


def test_realhost_example_runs_on_a_stock_docker_host(example: Example) -> None:
    """The example runs with bridge-nf-call-ip(6)tables at 1, as Docker leaves every host."""
    assert harness.bridge_nf_call() == (1, 1)


def test_realhost_example_serves_ipv6_with_real_sources(example: Example) -> None:
    """The example serves the labelled ports on the project's IPv6 address too."""
    address6 = harness.wait_until(example.address6, 30, interval=0.3,
                                  message="a SLAAC address for the project")
    for port in MAIL_PORTS:
        def answered(p: int = port) -> dict[str, Any]:
            r = example.lan_query(p, address=address6)
            return r if "reply" in r else {}

        result = harness.wait_until(answered, 30, interval=0.3,
                                    message=f"tcp/{port} answering on [{address6}]")
        assert answered_by_postfix(result, port, LAN_ADDRESS6), result


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_realhost_example_egress_leaves_with_the_project_address(
    example: Example, proto: str, family: int
) -> None:
    """The app's egress reaches a LAN host from the project's own address, v4 and v6."""
    if family == 4:
        target, mine = LAN_ADDRESS, example.address
    else:
        target = LAN_ADDRESS6
        mine = harness.wait_until(example.address6, 30, interval=0.3,
                                  message="a SLAAC address for the project")
    result = example.app_query(proto, target, LISTEN_PORT)
    reply = result.get("reply")
    assert isinstance(reply, dict), result
    assert (reply["service"], reply["peer"]) == ("lan", mine), result


def test_realhost_example_lan_gets_no_arp_answer_for_internal_addresses(example: Example) -> None:
    """The example's sysctls: a LAN host asking (ARP) for anchord's addresses on its Docker
    networks gets no answer; the project address is answered (by the child)."""
    anchord = example.sh("docker compose ps -q anchord").strip()
    internal = example.sh(
        "docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "
        + anchord).split()
    assert internal, "anchord has no address on its Docker networks"
    lan = example.lan
    for address in internal:
        harness.run(["ip", "-n", lan.lan_ns, "route", "replace", f"{address}/32", "dev",
                     lan.lan_iface])
        harness.run(["ip", "netns", "exec", lan.lan_ns, "ping", "-c", "2", "-W", "1", address],
                    check=False)
        neigh = harness.run(["ip", "-n", lan.lan_ns, "neigh", "show", address]).stdout
        harness.run(["ip", "-n", lan.lan_ns, "route", "del", f"{address}/32"], check=False)
        assert "lladdr" not in neigh, (address, neigh)
    harness.run(["ip", "netns", "exec", lan.lan_ns, "ping", "-c", "1", "-W", "2",
                 example.address])


def _status_json(ex: Example) -> None:
    status = json.loads(ex.sh("docker compose exec anchord anchord status --json"))
    assert ex.address in json.dumps(status["leases"]), status
    assert {p["first"] for p in status["ports"]} == set(MAIL_PORTS), status["ports"]


def _status_text(ex: Example) -> None:
    out = ex.sh("docker compose exec anchord anchord status")
    assert ex.address in out, out
    assert "smtp-anchor" in out, out


def _supervisor_status(ex: Example) -> None:
    states = harness.parse_supervisor_status(
        ex.sh("docker compose exec anchord supervisorctl status")
    )
    assert all(states.get(w) == "RUNNING" for w in WORKERS), states


def _tail_dhcp(ex: Example) -> None:
    lines = ex.sh("docker compose exec anchord supervisorctl tail dhcp")
    assert any(line.get("worker") == "dhcp" for line in harness.json_log_lines(lines)), lines


def _tail_follow_dhcp(ex: Example) -> None:
    # `tail -f` never ends by itself: read until a JSON line of the dhcp worker shows up.
    proc = subprocess.Popen(
        ["bash", "-c", "docker compose exec anchord supervisorctl tail -f dhcp"],
        cwd=ex.directory,
        env=ex.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if any(x.get("worker") == "dhcp" for x in harness.json_log_lines(line)):
                return
        raise AssertionError("no JSON line of the dhcp worker from `supervisorctl tail -f dhcp`")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _restart_nat_writer(ex: Example) -> None:
    out = ex.sh("docker compose exec anchord supervisorctl restart nat-writer")
    assert "nat-writer: started" in out, out
    assert answered_by_postfix(ex.lan_query(25), 25, LAN_ADDRESS)


def _compose_logs(ex: Example) -> None:
    # Compose prefixes each line with "anchord-1  | "; the rest is the worker's JSON line.
    out = ex.sh("docker compose logs anchord")
    lines = "\n".join(line.split("| ", 1)[-1] for line in out.splitlines())
    workers = {x.get("worker") for x in harness.json_log_lines(lines)}
    assert set(WORKERS) - {"bus"} <= workers, workers


def _healthcheck(ex: Example) -> None:
    # The exit code of `compose exec` is lost here: ask the shell in the container for it.
    out = ex.sh("docker compose exec anchord sh -c 'anchord healthcheck; echo rc=$?'")
    assert out.strip().endswith("rc=0"), out


def _shim(ex: Example) -> None:
    recipe = next(c for c in COMMANDS if c.startswith("ip link add anchord-shim"))
    recipe = (
        recipe.replace("eth0.42", ex.lan.parent)
        .replace("<spare LAN IP>", SHIM_ADDRESS)
        .replace("<project address>", ex.address)
    )
    assert "<" not in recipe, recipe
    if harness.run(["ip", "link", "show", "anchord-shim"], check=False).returncode == 0:
        pytest.fail("an interface anchord-shim exists already on this host; not touching it")
    try:
        harness.run(["bash", "-c", recipe])
        # From the host itself (root namespace): the app sees the shim's address.
        out = harness.run(
            [sys.executable, str(LANTOOL), "query", "tcp", ex.address, "25", "--timeout", "3"],
            check=False,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        assert answered_by_postfix(result, 25, SHIM_ADDRESS), result
    finally:
        harness.run(["ip", "link", "del", "anchord-shim"], check=False)


def _restart_service_anchor(ex: Example) -> None:
    anchor = ex.sh("docker compose ps -q smtp-anchor").strip()
    ex.sh(f"docker restart {anchor}")

    def exposed_again() -> bool:
        health = json.loads(ex.sh(f"docker inspect {anchor}"))[0]["State"].get("Health", {})
        status = json.loads(ex.sh("docker compose exec anchord anchord status --json"))
        return health.get("Status") == "healthy" and bool(status["ports"])

    # Healthy and exposed again (discovery waits for health), yet the app is in the old
    # namespace: the port now leads to a namespace where nothing listens.
    harness.wait_until(
        exposed_again,
        60,
        interval=0.5,
        message="smtp-anchor healthy and exposed again after its restart",
    )
    result = ex.lan_query(25)
    assert not answered_by_postfix(result, 25, LAN_ADDRESS), (
        f"the app answered after a restart of its service-anchor, so the README's warning is "
        f"wrong: {result}"
    )


def _recreate_app(ex: Example) -> None:
    ex.sh("docker compose up -d --force-recreate postfix", timeout=300)
    harness.wait_until(
        lambda: answered_by_postfix(ex.lan_query(25, 1.0), 25, LAN_ADDRESS),
        60,
        interval=0.3,
        message="tcp/25 answered by the recreated app",
    )


def _release(ex: Example) -> None:
    # Without it a stop keeps the lease (the restart commands above kept the address); with
    # it, the next stop gives the address back to the LAN's server.
    out = ex.sh("docker compose exec anchord anchord release")
    assert "released when this container stops" in out, out
    assert "DHCPRELEASE" not in ex.lan.dnsmasq_log()
    ex.sh("docker compose stop anchord", timeout=120)
    release = f"DHCPRELEASE({ex.lan.lan_iface}) {ex.address}"
    harness.wait_until(lambda: release in ex.lan.dnsmasq_log(), 10,
                       message=f"{release!r} in dnsmasq's log")
    ex.sh("docker compose start anchord", timeout=120)

    def reachable() -> bool:
        mine = [x for x in ex.lan.leases() if x.family == 4 and x.hostname == ex.name]
        ex.address = mine[0].address if len(mine) == 1 else ""
        return bool(ex.address) and "reply" in ex.lan_query(25, 1.0)

    harness.wait_until(reachable, REACH_TIMEOUT, interval=0.3,
                       message="a new lease and tcp/25 answering after the release")


def _make_demo(ex: Example) -> None:
    project = harness.unique_project_name("demo")
    try:
        result = run_in_repo(
            "make demo", timeout=900, ANCHORD_DEMO_PROJECT=project, ANCHORD_IMAGE=harness.IMAGE
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert re.search(
            r"the app saw you as \S+; your address is \S+; the project got \S+", result.stdout
        ), result.stdout
    finally:
        down = run_in_repo("bash e2e/demo.sh --down", timeout=300, ANCHORD_DEMO_PROJECT=project)
        # The demo's LAN on a Docker bridge set bridge-nf-call-iptables to 0: back to a stock
        # host for the example.
        harness.set_bridge_nf_call(1)
        assert down.returncode == 0, down.stderr
    assert not harness.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"]
    ).stdout.strip()


def _by_test(ex: Example) -> None:
    """Run elsewhere in this module: the build command by the ``built`` fixture (checked by
    test_build_commands_make_the_images), ``bash e2e/demo.sh --down`` by ``_make_demo``,
    ``anchord release`` as ``docker compose exec anchord anchord release`` by ``_release``,
    ``ip netns attach`` (the host-namespace handle) by ``RealHostLan.start`` for the example."""


# Each README command -> how this module runs it (in the order they run).
COMMANDS: dict[str, Callable[[Example], None]] = {
    "bash e2e/build-image.sh -t anchord:latest": _by_test,
    "docker compose exec anchord anchord status": _status_text,
    "anchord status": _status_text,
    "docker compose exec anchord anchord status --json": _status_json,
    "docker compose exec anchord supervisorctl status": _supervisor_status,
    "supervisorctl status": _supervisor_status,
    "supervisorctl tail dhcp": _tail_dhcp,
    "docker compose exec anchord supervisorctl tail -f dhcp": _tail_follow_dhcp,
    "docker compose logs anchord": _compose_logs,
    "anchord healthcheck": _healthcheck,
    "docker compose exec anchord supervisorctl restart nat-writer": _restart_nat_writer,
    "ip link add anchord-shim link eth0.42 type macvlan mode bridge && ip addr add <spare LAN IP>/32 dev anchord-shim && ip link set anchord-shim up && ip route add <project address>/32 dev anchord-shim": _shim,  # noqa: E501
    "docker restart <service-anchor>": _restart_service_anchor,
    "docker compose up -d --force-recreate <app>": _recreate_app,
    "docker compose exec anchord anchord release": _release,
    "anchord release": _by_test,
    "make demo": _make_demo,
    "bash e2e/demo.sh --down": _by_test,
    "ip netns attach": _by_test,
}


def _short(command: str) -> str:
    return command.split(" && ")[0] + (" && ..." if " && " in command else "")


@pytest.mark.parametrize(
    "command", [c for c, run in COMMANDS.items() if run is not _by_test], ids=_short
)
def test_readme_command(example: Example, command: str) -> None:
    COMMANDS[command](example)
