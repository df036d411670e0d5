"""``anchord status``: worker restarts from the readiness file, in the text and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anchord import health, status
from anchord.status import Report


def report(*procs: tuple[str, str, int | None]) -> Report:
    return Report(
        processes=[
            {
                "name": name,
                "state": state,
                "pid": 10 if state == "RUNNING" else 0,
                "uptime": 125 if state == "RUNNING" else 0,
                "description": "",
                "restarts": restarts,
            }
            for name, state, restarts in procs
        ]
    )


def worker_lines(text: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index("workers:") + 1 :]


def test_text_shows_state_uptime_and_restarts_of_each_worker() -> None:
    text = status.render_text(
        report(
            ("bus", "RUNNING", 0),
            ("nat-writer", "RUNNING", 1),
            ("dhcp", "FATAL", 3),
            ("metrics", "STARTING", None),
        )
    )
    assert worker_lines(text) == [
        "  bus                RUNNING   up 2m05s, restarts 0",
        "  nat-writer         RUNNING   up 2m05s, restarts 1",
        "  dhcp               FATAL     restarts 3",
        "  metrics            STARTING",
    ]


def test_json_has_restarts_per_process() -> None:
    data = json.loads(
        status.render_json(report(("nat-writer", "RUNNING", 1), ("bus", "RUNNING", None)))
    )
    assert {p["name"]: p["restarts"] for p in data["processes"]} == {"nat-writer": 1, "bus": None}


@pytest.mark.parametrize(
    ("written", "expected"),
    [({"nat-writer": 1, "bus": 0}, {"nat-writer": 1, "bus": 0}), (None, None)],
)
def test_restarts_read_back_from_the_readiness_file(
    tmp_path: Path, written: dict[str, int] | None, expected: dict[str, int] | None
) -> None:
    health.write(tmp_path, True, {}, written)
    assert health.read_restarts(tmp_path) == expected
    assert health.check(tmp_path) == (True, "ready")  # the extra key changes nothing there


def test_gather_joins_supervisor_processes_with_restart_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procs = [
        {"name": n, "state": "RUNNING", "pid": 1, "uptime": 1, "description": ""}
        for n in ("bus", "nat-writer", "probe")
    ]
    monkeypatch.setattr(status, "_supervisor", lambda run_dir: [dict(p) for p in procs])
    health.write(tmp_path, True, {}, {"bus": 0, "nat-writer": 1})
    got = status.gather(tmp_path)  # no bus socket: an error, but the processes are there
    assert {p["name"]: p["restarts"] for p in got.processes} == {
        "bus": 0,
        "nat-writer": 1,
        "probe": None,
    }
    assert got.ready is True


def test_text_shows_what_json_shows_conditions_rejection_kinds_and_lease_times() -> None:
    r = report(("discovery", "RUNNING", 0))
    r.workers["discovery"] = {"conditions": [
        {"key": "docker", "ok": True, "detail": "reconnecting: connection refused"},
        {"key": "self", "ok": False, "detail": "not among the containers of project 'x'"}]}
    r.rejections = [{"container": "mail-anchor", "reason": "tcp/25 taken by web-anchor",
                     "kind": "conflict"}]
    r.leases = {"ipv4": {"address": "192.0.2.5/24", "source": "dhcp", "server": "192.0.2.1",
                         "remaining": 500.0, "lease_time": 600.0, "t1": 300.0, "t2": 525.0,
                         "gateway": "192.0.2.1"}}
    text = status.render_text(r)
    assert "    docker: reconnecting: connection refused (ok)" in text
    assert "    self: not among the containers of project 'x' (NOT OK)" in text
    assert "  [conflict] mail-anchor: tcp/25 taken by web-anchor" in text
    assert "  ipv4 192.0.2.5/24 (dhcp from 192.0.2.1, 8m20s left)" in text
    assert "    gateway 192.0.2.1, lease 10m00s, T1 5m00s, T2 8m45s" in text
