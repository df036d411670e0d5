"""The discovery worker as a real process on a real broker, against a real dockerd.

The worker runs in the network namespace of the container that plays the anchord
container (``nsenter -n``), so it finds itself the way it does in production when the
host name is no help: by the MAC of its own interface. A subscriber in the test process
reads what it publishes. Also measures Docker event → BackendsDesired latency.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from bus.client import BusClient
from bus.events import BackendsDesired, DockerEventsSeen, Event, NetworkMap, WorkerStatus
from tests.integration.discovery_support import Project
from tests.netns import wait_until

# docker-py's connection pool sometimes drops a finished event-stream socket to the garbage
# collector instead of closing it; under load that ResourceWarning lands in a random test.
# It is a test-client artefact (the worker runs in its own process and is checked there).
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ROOT = Path(__file__).resolve().parents[2]

# Runs the worker through the real runner (config from the environment, logging, signals,
# bus client). Registers discovery in case the runner's registry does not list it yet.
_LAUNCH = """
import os, sys
from anchord import runner

runner.WORKERS.setdefault("discovery", "workers.discovery")
runner.PROGRAMS = ("bus", *runner.WORKERS)
sys.exit(runner.run_worker(sys.argv[1], os.environ))
"""


class Bus:
    """Broker process, a subscriber in this process, and the latest event of each type."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.broker = subprocess.Popen([sys.executable, "-c", _LAUNCH, "bus"], env=env,
                                       cwd=ROOT)
        wait_until(lambda: (run_dir / "sub.ipc").exists(), timeout=10, what="broker sockets")
        self.client = BusClient("discovery-test", run_dir,
                                subscribe=[BackendsDesired, NetworkMap, DockerEventsSeen,
                                           WorkerStatus])
        self.client.open()
        self.latest: dict[type[Event], Event] = {}
        self.received: list[tuple[float, BackendsDesired]] = []

    def pump(self, timeout: float = 0.05) -> None:
        for ev in self.client.poll(timeout):
            now = time.time()
            if isinstance(ev, WorkerStatus) and ev.worker != "discovery":
                continue
            self.latest[type(ev)] = ev
            if isinstance(ev, BackendsDesired):
                self.received.append((now, ev))

    def latest_of(self, cls: type[Event]) -> Event | None:
        self.pump()
        return self.latest.get(cls)

    def wait_desired(self, predicate: Callable[[BackendsDesired], object],
                     timeout: float = 5.0, what: str = "") -> BackendsDesired:
        def check() -> BackendsDesired | None:
            self.pump()
            d = self.received[-1][1] if self.received else None
            return d if d is not None and predicate(d) else None

        return wait_until(check, timeout=timeout, interval=0, what=what)

    def close(self) -> None:
        self.client.close()
        self.broker.terminate()
        self.broker.wait(10)


class Worker:
    """``anchord worker discovery`` inside the anchord container's network namespace."""

    def __init__(self, pid: int, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-n", "--", sys.executable, "-c", _LAUNCH,
             "discovery"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as ``supervisorctl restart`` sends it; returns exit code and output."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return self.proc.returncode, out.decode(errors="replace")


@pytest.fixture
def rig(proj: Project, api: docker.APIClient, tmp_path: Path) -> Iterator[
        tuple[Project, str, str, Bus, dict[str, str]]]:
    transit, lan = proj.network("transit"), proj.network("lan")
    me = proj.container("anchord", networks=(lan, transit))
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ANCHORD_PROJECT": proj.name,
        "ANCHORD_VLAN_PARENT": "lan",
        "ANCHORD_RUN_DIR": str(run_dir),
        "ANCHORD_METRICS_ADDR": "",
        "ANCHORD_POLL_INTERVAL": "30s",
        "ANCHORD_CONSOLE": "/dev/null",
        "DOCKER_HOST": "unix:///var/run/docker.sock",
    }
    bus = Bus(run_dir, env)
    try:
        yield proj, me, transit, bus, env
    finally:
        bus.close()


def test_worker_publishes_table_network_map_and_status(
        rig: tuple[Project, str, str, Bus, dict[str, str]], api: docker.APIClient) -> None:
    proj, me, transit, bus, env = rig
    web = proj.container("web", networks=(transit,), expose="tcp/443")
    pid = int(api.inspect_container(me)["State"]["Pid"])
    worker = Worker(pid, env)
    try:
        d = bus.wait_desired(lambda d: len(d.entries) == 1, timeout=10, what="first table")
        (e,) = d.entries
        assert (e.proto, e.first, e.address) == ("tcp", 443, proj.address(web, transit))
        assert d.transit_network == transit
        assert d.transit_v4 == proj.address(me, transit)
        nm = wait_until(lambda: bus.latest_of(NetworkMap), timeout=5)
        assert isinstance(nm, NetworkMap)
        mine = api.inspect_container(me)["NetworkSettings"]["Networks"]
        assert {(n.alias, n.mac) for n in nm.networks} == {
            ("lan", mine[proj.name + "_lan"]["MacAddress"]),
            ("transit", mine[transit]["MacAddress"])}
        status = wait_until(lambda: bus.latest_of(WorkerStatus), timeout=10)
        assert isinstance(status, WorkerStatus)
        assert [(c.key, c.ok) for c in status.conditions] == [
                ("docker", True), ("self", True)]

        # A new labelled container shows up through the event stream within a second.
        mail = proj.container("mail", networks=(transit,), expose="tcp/25")
        d2 = bus.wait_desired(lambda d: len(d.entries) == 2, timeout=1, what="mail")
        assert d2.generation > d.generation
        assert d2.cause == "event"
        assert proj.address(mail, transit) in {x.address for x in d2.entries}

        # A restart of the worker: exit 0, and the next one republishes the same table with
        # a higher generation (it starts from nothing, the nat-writer must not see it older).
        code, out = worker.stop()
        assert code == 0, out
        assert "found the anchord container" in out
        assert "MAC" in out
        assert f"transit network is {transit}" in out
        worker = Worker(pid, env)
        d3 = bus.wait_desired(lambda d: d.generation > d2.generation, timeout=10,
                              what="table from the restarted worker")
        assert d3.entries == d2.entries
    finally:
        worker.stop()


def test_event_to_published_latency(rig: tuple[Project, str, str, Bus, dict[str, str]],
                                    api: docker.APIClient,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Docker ``start`` event time → BackendsDesired received by a bus subscriber."""
    proj, me, transit, bus, env = rig
    web = proj.container("web", networks=(transit,), expose="tcp/80")
    for i in range(10):  # unrelated backends, so the table is not trivial
        proj.container(f"s{i}", networks=(transit,), expose=f"udp/{5000 + i}")
    pid = int(api.inspect_container(me)["State"]["Pid"])
    # The event path is what is measured: keep the safety-net poll out of the way.
    worker = Worker(pid, env | {"ANCHORD_POLL_INTERVAL": "1h"})
    latencies: list[float] = []
    try:
        bus.wait_desired(lambda d: len(d.entries) == 11, timeout=10, what="first table")
        for _ in range(50):
            api.stop(web)
            gone = bus.wait_desired(lambda d: len(d.entries) == 10, timeout=5, what="stopped")
            api.start(web)
            g = gone.generation
            back = bus.wait_desired(
                lambda d: d.generation > g and len(d.entries) == 11,  # noqa: B023 - waited here
                timeout=5, what="started")
            received = next(t for t, d in bus.received if d.generation == back.generation)
            assert back.cause == "event"
            assert back.event_time > 0
            latencies.append(received - back.event_time)
    finally:
        worker.stop()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * len(latencies)) - 1)]
    with capsys.disabled():
        print(f"\ndiscovery: docker start event -> BackendsDesired on the bus, "
              f"{len(latencies)} restarts: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
    assert p99 < 1.0  # F-13: reflected within 1 s (the map itself follows the nat-writer)
