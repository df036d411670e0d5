"""The real entry process and supervisord.conf, in a network namespace made by the test.

Proves: every program RUNNING, `supervisorctl restart` brings a worker back,
JSON lines reach both the per-program log (`supervisorctl tail`) and the
console, /healthz and /readyz answer, a worker can tell a restart of itself
from a container shutdown, and SIGTERM stops everything with exit 0 in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import Netns, sh, topology, wait_until

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
[program:probe]
command={python} -m tests.integration.lifecycle_probe {out}
directory={root}
autorestart=true
startsecs=1
stopwaitsecs=5
redirect_stderr=true
stdout_logfile={logs}/probe.log
"""


@dataclass
class Anchor:
    ns: Netns
    proc: subprocess.Popen[str]
    conf: Path
    run_dir: Path
    probe_out: Path
    console: Path
    port: int

    def ctl(self, *args: str) -> str:
        return self.ns.run(sys.executable, "-m", "supervisor.supervisorctl", "-c",
                           str(self.conf), *args, check=False)

    def states(self) -> dict[str, str]:
        lines = self.ctl("status").splitlines()
        return {ln.split()[0]: ln.split()[1] for ln in lines if len(ln.split()) > 1}

    def anchord(self, *args: str) -> str:
        """``anchord ARGS`` as an operator runs it in the container (output, any exit code)."""
        return self.ns.run("env", f"ANCHORD_RUN_DIR={self.run_dir}", f"PYTHONPATH={ROOT}",
                           sys.executable, "-m", "anchord", *args, check=False)

    def restarts(self) -> dict[str, int | None]:
        """Each program's restarts as ``anchord status --json`` shows them."""
        report = json.loads(self.anchord("status", "--json"))
        return {p["name"]: p["restarts"] for p in report["processes"]}

    def http(self, path: str) -> tuple[int, str]:
        code = "import sys,urllib.request,urllib.error\n" \
            "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=2); print(r.status); " \
            "print(r.read().decode(),end='')\n" \
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode(),end='')"
        out = self.ns.run(sys.executable, "-c", code, f"http://127.0.0.1:{self.port}{path}")
        status, _, body = out.partition("\n")
        return int(status), body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A real worker that can be made to fail at every start: once the gate file exists it exits at
# once, and with one retry supervisord gives up on it within seconds (FATAL).
GATED_FLUSHER = """
[program:conntrack-flusher]
command=sh -c 'test -e {gate} && exit 3; exec anchord worker conntrack-flusher'
priority=40
autorestart=true
startsecs=1
startretries=1
stopsignal=TERM
stopwaitsecs=4
redirect_stderr=true
stdout_logfile={logs}/conntrack-flusher.log
"""


@contextmanager
def _run_anchor(tmp_path: Path, extra: str = "") -> Iterator[Anchor]:
    """The entry process with bus, metrics, the probe and ``extra`` programs, in a netns."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    probe_out = tmp_path / "probe.out"
    conf_text = (ROOT / "supervisord.conf").read_text()
    conf_text = conf_text.replace("/run/anchord", str(run_dir))
    conf_text = conf_text.replace("/var/log/anchord", str(logs))
    # Only the bus and metrics programs: the other workers need a LAN and Docker, which the
    # e2e suite gives them; here their absence is what readiness must report.
    sections = conf_text.split("\n[")
    conf_text = "\n[".join(sec for sec in sections if not sec.startswith("program:")
                           or sec.startswith(("program:bus]", "program:metrics]")))
    conf_text += PROBE.format(python=sys.executable, out=probe_out, root=ROOT, logs=logs)
    conf_text += extra.format(logs=logs, gate=tmp_path / "gate")
    conf = tmp_path / "supervisord.conf"
    conf.write_text(conf_text)
    port = _free_port()
    console = tmp_path / "console.log"
    env = os.environ | {
        "ANCHORD_RUN_DIR": str(run_dir), "ANCHORD_SUPERVISORD_CONF": str(conf),
        "ANCHORD_PROJECT": "suptest", "ANCHORD_VLAN_PARENT": "lan0",
        "ANCHORD_METRICS_ADDR": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    programs = {"bus", "metrics", "probe"} | set(re.findall(r"\[program:([^\]]+)\]", extra))
    with topology("sup") as topo:
        ns = topo.netns("anchor")
        # A pipe, like the container's stdout (supervisord writes /dev/stdout without
        # O_APPEND, which would clobber a regular file).
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-m", "anchord",
             "network-anchor"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=ROOT)
        copier = threading.Thread(target=_copy, args=(proc, console), daemon=True)
        copier.start()
        a = Anchor(ns, proc, conf, run_dir, probe_out, console, port)
        try:
            wait_until(lambda: set(a.states().values()) == {"RUNNING"}
                       and programs <= set(a.states()), 20,
                       interval=0.2, what="all programs RUNNING")
            yield a
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            # Whatever survived (supervisord's children) holds the console pipe open.
            for pid in sh("ip", "netns", "pids", ns.name, check=False).split():
                os.kill(int(pid), signal.SIGKILL)
            proc.wait()
            copier.join(5)
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.fixture
def anchor(tmp_path: Path) -> Iterator[Anchor]:
    with _run_anchor(tmp_path) as a:
        yield a


@pytest.fixture
def anchor_with_flusher(tmp_path: Path) -> Iterator[Anchor]:
    with _run_anchor(tmp_path, GATED_FLUSHER) as a:
        yield a


def _copy(proc: subprocess.Popen[str], console: Path) -> None:
    assert proc.stdout is not None
    with console.open("a") as out:
        for line in proc.stdout:
            out.write(line)
            out.flush()


def _json_lines(text: str, worker: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if obj.get("worker") == worker:
                out.append(obj)
    return out


def test_programs_run_and_restart(anchor: Anchor) -> None:
    pid_before = re.search(r"pid (\d+)", anchor.ctl("status", "metrics"))
    assert pid_before
    anchor.ctl("restart", "metrics")
    wait_until(lambda: anchor.states().get("metrics") == "RUNNING", 10, what="metrics back")
    pid_after = re.search(r"pid (\d+)", anchor.ctl("status", "metrics"))
    assert pid_after
    assert pid_after.group(1) != pid_before.group(1)


def test_json_logs_reach_tail_and_console(anchor: Anchor) -> None:
    tail = wait_until(lambda: _json_lines(anchor.ctl("tail", "metrics"), "metrics"), 10)
    console = wait_until(lambda: _json_lines(anchor.console.read_text(), "metrics"), 10)
    for line in (tail[0], console[0]):
        assert {"time", "level", "worker", "message"} <= set(line)
    messages = {str(line["message"]) for line in console}
    assert "worker started" in messages
    assert any(str(line["message"]) == "broker listening"
               for line in _json_lines(anchor.console.read_text(), "bus"))


def test_health_and_readiness(anchor: Anchor) -> None:
    assert anchor.http("/healthz") == (200, "ok\n")
    # The other workers never started: readiness names each of them, one line each.
    status, body = anchor.http("/readyz")
    assert status == 503
    missing = {line.split(":")[0] for line in body.splitlines()}
    assert missing == {"worker_discovery", "worker_dhcp", "worker_nat-writer",
                       "worker_conntrack-flusher"}
    metrics = anchor.http("/metrics")[1]
    assert 'anchord_build_info{role="network-anchor",version=' in metrics
    assert "anchord_bus_messages_total" in metrics
    assert 'anchord_worker_up{worker="dhcp"} 0.0' in metrics
    health = anchor.anchord("healthcheck")
    assert health.startswith("not ready: ")
    assert "worker_dhcp: no heartbeat yet" in health


def test_restart_versus_shutdown(anchor: Anchor) -> None:
    anchor.ctl("restart", "probe")
    wait_until(lambda: "restart" in anchor.probe_out.read_text(), 10, what="probe restart")
    wait_until(lambda: anchor.states().get("probe") == "RUNNING", 10)
    assert "shutdown" not in anchor.probe_out.read_text()
    started = time.monotonic()
    anchor.proc.send_signal(signal.SIGTERM)
    code = anchor.proc.wait(timeout=30)
    took = time.monotonic() - started
    assert code == 0
    assert took < 10, f"stop took {took:.1f}s"
    lines = anchor.probe_out.read_text().split()
    assert lines[-1] == "shutdown"
    # Every program was stopped, none left behind: no process is left in the namespace the
    # entry process and everything it started ran in.
    left = sh("ip", "netns", "pids", anchor.ns.name).split()
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]


def test_status_counts_restarts_of_workers_the_bus_and_metrics(anchor_with_flusher: Anchor) -> None:
    a = anchor_with_flusher
    zero = {"bus": 0, "metrics": 0, "conntrack-flusher": 0, "probe": None}
    # The probe is no bus client: nobody counts it, and status says so (None) rather than 0.
    wait_until(lambda: a.restarts() == zero, 15, what=f"status shows restarts {zero}")
    for program in ("conntrack-flusher", "bus", "metrics"):
        a.ctl("restart", program)
        zero[program] = 1
        # The metrics worker's own restart is counted, and the others' counts survive it.
        wait_until(lambda: a.restarts() == zero, 20, what=f"status shows restarts {zero}")
    text = a.anchord("status")
    assert re.search(r"^  conntrack-flusher +RUNNING +up \d+s, restarts 1$", text, re.M), text
    metrics = a.http("/metrics")[1]
    for program in ("bus", "metrics", "conntrack-flusher"):
        assert f'anchord_worker_restarts_total{{worker="{program}"}} 1.0' in metrics


def test_fatal_worker_shows_as_not_ready(anchor_with_flusher: Anchor, tmp_path: Path) -> None:
    a = anchor_with_flusher
    unmet = {"worker_discovery", "worker_dhcp", "worker_nat-writer"}  # never started here

    def readyz_keys() -> set[str]:
        code, body = a.http("/readyz")
        assert code == 503, (code, body)
        return {line.split(":")[0] for line in body.splitlines()}

    # Heartbeating: the flusher is not among the unmet conditions.
    wait_until(lambda: readyz_keys() == unmet, 20, what="the flusher heartbeats")
    (tmp_path / "gate").touch()  # every start from now on fails at once
    a.ctl("signal", "KILL", "conntrack-flusher")
    wait_until(lambda: a.states().get("conntrack-flusher") == "FATAL", 20,
               what="supervisord gives up on the flusher (FATAL)")
    # It stops heartbeating: after STALE_AFTER (15 s) readiness names it.
    wait_until(lambda: readyz_keys() == unmet | {"worker_conntrack-flusher"}, 40,
               interval=0.5, what="/readyz names the FATAL worker")
    body = a.http("/readyz")[1]
    assert re.search(r"^worker_conntrack-flusher: no heartbeat for \d+s$", body, re.M), body
    assert 'anchord_worker_up{worker="conntrack-flusher"} 0.0' in a.http("/metrics")[1]
    # The readiness file follows within the metrics worker's next loop (a second).
    def names_it() -> str:
        h = a.anchord("healthcheck")
        return h if "worker_conntrack-flusher" in h else ""

    health = wait_until(names_it, 5, what="`anchord healthcheck` names the FATAL worker")
    assert health.startswith("not ready: ")
    assert "worker_conntrack-flusher: no heartbeat" in health
    text = a.anchord("status")
    assert re.search(r"^  conntrack-flusher +FATAL\b", text, re.M), text
    assert "missing worker_conntrack-flusher: no heartbeat for" in text, text
