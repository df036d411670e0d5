"""Least privilege inside a running network-anchor (F-21), read from the kernel.

Owns the contract of anchord/privileges.py as the kernel sees it in the real image under real
Compose (e2e/compose/smoke/compose.yaml: `cap_drop: [ALL]` and the five capabilities the README
asks for, the Docker socket mounted): the bus, discovery and metrics — the processes that parse
Docker's JSON, relay every message and serve HTTP — run as the user ``anchord`` with no
capability at all and no_new_privs; dhcp, nat-writer and conntrack-flusher run as root with
CAP_NET_ADMIN and CAP_NET_RAW only; the run directory is root's and the group's alone; the
metrics listener is a socket of the unprivileged user. And everything an operator does with
``docker exec`` still works: ``anchord status``, ``anchord healthcheck``, ``supervisorctl
restart`` of every program (supervisord, root, must be able to stop another user's process).
"""

from __future__ import annotations

import functools
import json

from e2e.harness import (
    ComposeFactory,
    ComposeProject,
    figure,
    json_log_lines,
    parse_supervisor_status,
    supervisor_pid,
    wait_until,
)

SCENARIO = "F-21"  # for the scenario report (e2e/conftest.py)

SERVICE = "anchord"
UID = GID = 6480  # the Dockerfile's user anchord
UNPRIVILEGED = ("bus", "discovery", "metrics")
NETWORK = ("dhcp", "nat-writer", "conntrack-flusher")
CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN, CAP_NET_RAW = 5, 6, 7, 12, 13
NET_CAPS = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
CONTAINER_CAPS = NET_CAPS | (1 << CAP_SETUID) | (1 << CAP_SETGID) | (1 << CAP_KILL)
START_TIMEOUT = 30.0


def proc_status(project: ComposeProject, pid: int | str) -> dict[str, str]:
    """/proc/<pid>/status of a process in the container, as {field: value}."""
    text = project.exec(SERVICE, "cat", f"/proc/{pid}/status").stdout
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines())}


def pids(project: ComposeProject) -> dict[str, int]:
    """{program: pid} once every program is RUNNING, else an empty dict."""
    status = project.supervisor_status(SERVICE)
    states = parse_supervisor_status(status)
    if not all(states.get(p) == "RUNNING" for p in (*UNPRIVILEGED, *NETWORK)):
        return {}
    found = {p: supervisor_pid(status, p) for p in (*UNPRIVILEGED, *NETWORK)}
    return {p: pid for p, pid in found.items() if pid is not None}


def restarted(project: ComposeProject, program: str, before: int) -> dict[str, int]:
    """{program: pid} once every program runs and ``program`` with a pid other than
    ``before``, else an empty dict."""
    now = pids(project)
    return now if now and now[program] != before else {}


def healthy(project: ComposeProject) -> bool:
    return project.exec(SERVICE, "anchord", "healthcheck", check=False).returncode == 0


def assert_privileges(project: ComposeProject, running: dict[str, int]) -> None:
    socket_gid = int(project.exec(SERVICE, "stat", "-c", "%g", "/var/run/docker.sock").stdout)
    for program, pid in running.items():
        st = proc_status(project, pid)
        held = {cap: int(st[cap], 16) for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
        where = f"{program} (pid {pid}): {st}"
        # The bounding set is the container's: dropping from it needs CAP_SETPCAP, and with
        # no_new_privs no exec can raise a set into it.
        assert int(st["CapBnd"], 16) == CONTAINER_CAPS, where
        assert st["NoNewPrivs"] == "1", where
        if program in UNPRIVILEGED:
            assert st["Uid"].split() == [str(UID)] * 4, where
            assert st["Gid"].split() == [str(GID)] * 4, where
            assert held == dict.fromkeys(held, 0), where
            # Only discovery talks to Docker: the mounted socket's group, nothing else.
            groups = st["Groups"].split()
            expected = [str(socket_gid)] if program == "discovery" else []
            assert groups == expected, where
        else:
            assert st["Uid"].split() == ["0"] * 4, where
            assert held["CapEff"] == held["CapPrm"] == NET_CAPS, where
            assert held["CapInh"] == held["CapAmb"] == 0, where


def test_programs_hold_only_what_they_need(compose: ComposeFactory) -> None:
    project = compose("smoke")
    project.up()
    running = wait_until(lambda: pids(project), START_TIMEOUT, interval=0.5,
                         message="every program RUNNING")
    wait_until(lambda: healthy(project), START_TIMEOUT, interval=0.5,
               message="anchord healthcheck passing")
    assert_privileges(project, running)

    # The entry process and supervisord: root with what the container grants (they start
    # the programs as root and stop the unprivileged ones).
    entry = proc_status(project, 1)
    assert entry["Uid"].split() == ["0"] * 4, entry
    assert int(entry["CapEff"], 16) == CONTAINER_CAPS, entry

    # The run directory: root's and the group's alone (sticky); the broker's sockets and the
    # readiness file belong to the unprivileged user and are open to root as "other".
    listing = project.exec(SERVICE, "stat", "-c", "%n %U %G %a", "/run/anchord",
                           "/run/anchord/pub.ipc", "/run/anchord/sub.ipc",
                           "/run/anchord/health.json", "/run/anchord/supervisor.sock").stdout
    modes = {line.split()[0]: line.split()[1:] for line in listing.splitlines()}
    assert modes["/run/anchord"] == ["root", "anchord", "1770"], listing
    assert modes["/run/anchord/pub.ipc"] == ["anchord", "anchord", "666"], listing
    assert modes["/run/anchord/sub.ipc"] == ["anchord", "anchord", "666"], listing
    assert modes["/run/anchord/health.json"] == ["anchord", "anchord", "644"], listing
    assert modes["/run/anchord/supervisor.sock"][:1] == ["root"], listing

    # The HTTP listener (127.0.0.1:9090 = 0100007F:2382) is a socket of user anchord.
    tcp = project.exec(SERVICE, "cat", "/proc/net/tcp").stdout.splitlines()[1:]
    listeners = [row.split() for row in tcp if row.split()[1] == "0100007F:2382"
                 and row.split()[3] == "0A"]
    assert listeners, tcp
    assert all(row[7] == str(UID) for row in listeners), tcp

    # What an operator runs through `docker exec` (root without CAP_DAC_OVERRIDE) works.
    status = json.loads(project.exec(SERVICE, "anchord", "status", "--json").stdout)
    assert status["reachable"], status
    assert not status["errors"], status
    assert {"discovery", "dhcp", "nat-writer", "conntrack-flusher", "metrics"} <= set(
        status["workers"]), status

    # supervisord stops and restarts every program, the unprivileged ones included; each
    # comes back with the same privileges.
    for program in (*UNPRIVILEGED, *NETWORK):
        before = running[program]
        result = project.exec(SERVICE, "supervisorctl", "restart", program)
        assert f"{program}: started" in result.stdout, result.stdout
        running = wait_until(functools.partial(restarted, project, program, before), 15,
                             interval=0.3, message=f"{program} RUNNING again with a new pid")
    assert_privileges(project, running)
    wait_until(lambda: healthy(project), START_TIMEOUT, interval=0.5,
               message="anchord healthcheck passing after the restarts")

    # A container stop still exits 0, and the entry process (root) signals the unprivileged
    # programs along with the others (without CAP_KILL it could not: supervisord's slow
    # one-by-one stop would be all there is).
    project.stop(SERVICE)
    assert project.state(SERVICE)["ExitCode"] == 0, project.state(SERVICE)
    lines = json_log_lines(project.logs(SERVICE))
    together = [line["fields"]["workers"] for line in lines
                if line["message"] == "stopping workers together"]
    # supervisord signals the last-started program (metrics) itself as it begins to stop, and a
    # program that sees its signal at once may be gone before the fan-out: whichever of the
    # four are left are signalled together, and an unprivileged one among them proves KILL.
    assert len(together) == 1, lines
    assert set(together[0]) <= {"conntrack-flusher", "dhcp", "discovery", "metrics"}, lines
    assert {"discovery", "metrics"} & set(together[0]), lines
    stopped = [line["fields"]["seconds"] for line in lines if line["message"] == "anchord stopped"]
    assert len(stopped) == 1, lines
    assert stopped[0] < 5, lines
    figure(f"least privilege: the container stop took {stopped[0]:.2f} s (entry process's log)")
