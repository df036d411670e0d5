"""Smoke scenario: the anchord image runs as a network-anchor under Docker Compose.

Owns the foundation contract as a person sees it from the host: supervisord inside runs the
bus and every worker program, ``supervisorctl restart`` brings a worker back, workers log
JSON lines both to ``docker compose logs`` and to ``supervisorctl tail``, ``/healthz`` answers
``ok`` and the image's healthcheck passes, a container stop exits 0 well inside the grace
period, and a bad configuration value stops the container at once with one line naming it.
Compose file: e2e/compose/smoke/compose.yaml (a LAN and a transit network, both internal).
"""

from __future__ import annotations

import json

from e2e.harness import (
    ComposeFactory,
    ComposeProject,
    json_log_lines,
    parse_supervisor_status,
    supervisor_pid,
    wait_until,
)

SCENARIO = "F-16..18"  # for the scenario report (e2e/conftest.py)

SERVICE = "anchord"
WORKERS = ("bus", "discovery", "dhcp", "nat-writer", "conntrack-flusher", "metrics")
START_TIMEOUT = 30.0
HEALTHZ = (
    "import urllib.request as u; "
    "r = u.urlopen('http://127.0.0.1:9090/healthz', timeout=2); "
    "print(r.status, r.read().decode().strip())"
)


def workers_running(project: ComposeProject) -> dict[str, str] | None:
    """{program: state} once every worker of WORKERS is RUNNING, else None."""
    states = parse_supervisor_status(project.supervisor_status(SERVICE))
    return states if all(states.get(w) == "RUNNING" for w in WORKERS) else None


def start(compose: ComposeFactory) -> ComposeProject:
    project = compose("smoke")
    project.up()
    wait_until(
        lambda: workers_running(project),
        START_TIMEOUT,
        interval=0.5,
        message="every program RUNNING in supervisorctl status",
    )
    return project


def healthz(project: ComposeProject) -> str:
    return project.exec(SERVICE, "python3", "-c", HEALTHZ, check=False).stdout.strip()


def test_supervisord_runs_every_worker(compose: ComposeFactory) -> None:
    project = start(compose)
    states = parse_supervisor_status(project.supervisor_status(SERVICE))
    for worker in WORKERS:
        assert states[worker] == "RUNNING", states
    assert project.state(SERVICE)["Running"] is True


def test_restart_metrics_comes_back_running(compose: ComposeFactory) -> None:
    project = start(compose)
    before = supervisor_pid(project.supervisor_status(SERVICE), "metrics")
    assert before is not None
    result = project.exec(SERVICE, "supervisorctl", "restart", "metrics")
    assert "metrics: started" in result.stdout, result.stdout

    def restarted() -> bool:
        status = project.supervisor_status(SERVICE)
        pid = supervisor_pid(status, "metrics")
        return parse_supervisor_status(status).get("metrics") == "RUNNING" and pid != before

    wait_until(restarted, 15, interval=0.3, message="metrics RUNNING again with a new pid")
    assert parse_supervisor_status(project.supervisor_status(SERVICE))["bus"] == "RUNNING"
    wait_until(
        lambda: healthz(project) == "200 ok",
        15,
        interval=0.3,
        message="/healthz answers after the metrics restart",
    )


def test_json_logs_reach_compose_logs_and_supervisorctl_tail(compose: ComposeFactory) -> None:
    project = start(compose)

    def metrics_lines_in_compose_logs() -> list[dict[str, object]]:
        return [o for o in json_log_lines(project.logs(SERVICE)) if o["worker"] == "metrics"]

    console = wait_until(
        metrics_lines_in_compose_logs,
        15,
        interval=0.5,
        message="JSON lines of worker metrics in docker compose logs",
    )
    workers_seen = {o["worker"] for o in json_log_lines(project.logs(SERVICE))}
    assert "bus" in workers_seen, f"no JSON line from the bus in compose logs: {workers_seen}"
    for obj in console:
        assert isinstance(obj["time"], str), obj
        assert obj["time"], obj
        assert obj["level"] in {"debug", "info", "warning", "warn", "error", "critical"}, obj
        assert isinstance(obj["message"], str), obj

    def metrics_lines_in_tail() -> list[dict[str, object]]:
        out = project.exec(SERVICE, "supervisorctl", "tail", "metrics").stdout
        return [o for o in json_log_lines(out) if o["worker"] == "metrics"]

    tail = wait_until(
        metrics_lines_in_tail,
        15,
        interval=0.5,
        message="JSON lines of worker metrics in supervisorctl tail metrics",
    )
    # The same records reach both places: some line of the tail is in the console too.
    console_keys = {(o["time"], o["message"]) for o in console}
    assert any((o["time"], o["message"]) in console_keys for o in tail), (tail, console)


def test_healthz_and_healthcheck(compose: ComposeFactory) -> None:
    project = start(compose)
    wait_until(
        lambda: healthz(project) == "200 ok",
        15,
        interval=0.3,
        message="GET /healthz on 127.0.0.1:9090 answers 200 ok",
    )
    check = project.exec(SERVICE, "anchord", "healthcheck", check=False)
    assert check.returncode == 0, (check.stdout, check.stderr)
    # Docker runs the image's own HEALTHCHECK, the sh fast path (anchord/healthcheck.sh).
    wait_until(
        lambda: project.state(SERVICE).get("Health", {}).get("Status") == "healthy",
        30,
        interval=0.5,
        message="Docker reports the container healthy",
    )
    log = project.state(SERVICE)["Health"]["Log"]
    assert log[-1]["ExitCode"] == 0, log
    assert log[-1]["Output"].strip() == "ready", log
    fast = project.exec(SERVICE, "anchord-healthcheck", check=False)
    assert (fast.returncode, fast.stdout.strip()) == (0, "ready"), (fast.stdout, fast.stderr)


def test_stop_exits_zero_inside_grace_period(compose: ComposeFactory) -> None:
    project = start(compose)
    seconds = project.stop(SERVICE)
    state = project.state(SERVICE)
    assert state["Status"] == "exited", state
    assert state["ExitCode"] == 0, (state, project.logs(SERVICE)[-3000:])
    assert not state["OOMKilled"], state
    assert seconds < 10, f"compose stop took {seconds:.1f}s (grace period 30s)"


def test_bad_env_value_exits_nonzero_with_one_line(compose: ComposeFactory) -> None:
    project = compose("smoke", ANCHORD_POLL_INTERVAL="0")
    project.up()
    state = wait_until(
        lambda: (s := project.state(SERVICE))["Status"] == "exited" and s,
        20,
        interval=0.3,
        message="container with ANCHORD_POLL_INTERVAL=0 exits",
    )
    assert state["ExitCode"] != 0, state
    logs = project.logs(SERVICE)
    naming = [line for line in logs.splitlines() if "ANCHORD_POLL_INTERVAL" in line]
    assert len(naming) == 1, f"expected one line naming ANCHORD_POLL_INTERVAL:\n{logs}"
    line = naming[0]
    obj = json.loads(line)
    assert obj["level"] == "error", line
    assert "0" in obj["message"], line
    # It stopped before starting anything: no supervisord, no worker ran.
    assert not [o for o in json_log_lines(logs) if o["worker"] in WORKERS], logs
