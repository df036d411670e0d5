"""The real nat-writer and conntrack-flusher processes on the real bus.

A broker, the nat-writer in the anchor namespace and the flusher next to it;
the test plays discovery (publishes BackendsDesired) and watches NatApplied /
ConntrackFlushed. A worker restart (SIGTERM without the shutdown marker) keeps
the tables (same handles) while a client loops without a single failure; a
shutdown (marker, then SIGTERM) deletes them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from anchord.lifecycle import mark_shutdown
from bus.client import BusClient
from bus.events import Backend as Entry
from bus.events import BackendsDesired, ConntrackFlushed, Event, Lease, LeaseChanged, NatApplied
from tests.integration import inbound_topo as it
from tests.netns import Netns, wait_until

BROKER = r"""
import signal, sys
from pathlib import Path
from bus import broker
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
broker.serve(Path(sys.argv[1]), lambda: bool(stop))
"""

WORKER = r"""
import importlib, logging, sys
from pathlib import Path
from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import Lifecycle
from bus.client import BusClient
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
name, module_name, run_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
module = importlib.import_module(module_name)
config = NetworkAnchorConfig(project="t", vlan_parent="lan", ext_iface="anchord-ext",
                             run_dir=run_dir)
life = Lifecycle(run_dir)
life.install_signal_handlers()
with BusClient(name, run_dir, subscribe=module.SUBSCRIBE, heartbeat=1.0) as bus:
    sys.exit(module.run(config, bus, life))
"""


class Procs:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, ns: Netns | None, argv: list[str]) -> subprocess.Popen[bytes]:
        cwd = str(Path(__file__).resolve().parents[2])
        full = ["ip", "netns", "exec", ns.name, *argv] if ns else argv
        env = {"PYTHONPATH": cwd, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = subprocess.Popen(full, cwd=cwd, env=env)
        self.procs.append(proc)
        return proc

    def worker(self, ns: Netns, name: str, module: str) -> subprocess.Popen[bytes]:
        return self.start(ns, [sys.executable, "-c", WORKER, name, module, str(self.run_dir)])

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=15)


def handles(net: it.Inbound) -> dict[str, int]:
    listing = it.nft_json(net.anchor, "list", "tables")
    return {o["table"]["name"]: o["table"]["handle"]
            for o in listing["nftables"] if "table" in o}  # type: ignore[attr-defined]


def wait_event(bus: BusClient, pred: object, timeout: float, what: str,
               publish: Event | None = None) -> Event:
    """Poll the bus until ``pred(event)``; republish ``publish`` meanwhile (level-triggered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if publish is not None:
            bus.publish(publish)
        for ev in bus.poll(0.2):
            if pred(ev):  # type: ignore[operator]
                return ev
    raise TimeoutError(f"no {what} within {timeout}s")


def test_worker_restart_keeps_tables_and_shutdown_deletes(
    net: it.Inbound, tmp_path: Path
) -> None:
    b1, b2 = net.backends
    it.serve(b1, tcp=[8080], udp=[5353])
    it.serve(b2, tcp=[8080], udp=[5353])
    run_dir = tmp_path / "run"
    procs = Procs(run_dir)
    try:
        procs.start(None, [sys.executable, "-c", BROKER, str(run_dir)])
        wait_until(lambda: (run_dir / "sub.ipc").exists(), 10, what="broker sockets")
        writer = procs.worker(net.anchor, "nat-writer", "workers.natwriter")
        flusher = procs.worker(net.anchor, "conntrack-flusher", "workers.conntrack_flusher")
        with BusClient("test", run_dir, subscribe=(NatApplied, ConntrackFlushed)) as bus:
            # This test plays the dhcp worker too: the project's address, level-triggered
            # (republished on every Hello, so the restarted flusher learns it).
            lease = LeaseChanged(lease=Lease(4, f"{it.PROJECT4}/24"))
            bus.set_state(lambda: [lease])
            bus.state_changed()
            gen1 = BackendsDesired.of(generation=1, cause="event", event_time=time.time(), entries=(
                Entry(4, "tcp", 8080, 8080, b1.v4, "b1"), Entry(4, "udp", 5353, 5353, b1.v4, "b1")))
            applied = wait_event(bus, lambda e: isinstance(e, NatApplied) and e.generation == 1,
                                 20, "NatApplied 1", publish=gen1)
            assert isinstance(applied, NatApplied)
            assert applied.ok
            assert applied.added == 2
            before = handles(net)
            assert set(before) == {"anchord_v4", "anchord_v6"}

            loop = it.tcp_loop(net.lan, it.PROJECT4, 8080)
            stream = it.udp_stream(net.lan, it.PROJECT4, 5353, 40000)
            wait_until(lambda: len(loop.lines) >= 30, 20, what="client loop")
            # supervisorctl restart of both workers: SIGTERM, no shutdown marker.
            assert stop(writer) == 0
            assert stop(flusher) == 0
            assert handles(net) == before
            mark = len(loop.lines)
            wait_until(lambda: len(loop.lines) >= mark + 30, 20, what="loop without writer")
            writer = procs.worker(net.anchor, "nat-writer", "workers.natwriter")
            flusher = procs.worker(net.anchor, "conntrack-flusher", "workers.conntrack_flusher")
            # The new writer adopts: the same generation needs no change at all.
            # (The old instance's last heartbeat may still be queued: skip its copy.)
            again = wait_event(bus, lambda e: isinstance(e, NatApplied) and e.generation == 1
                               and e != applied, 20, "NatApplied after restart", publish=gen1)
            assert isinstance(again, NatApplied)
            assert (again.added, again.removed,
                                                       again.changed) == (0, 0, 0)
            assert handles(net) == before

            # The backend moves: the restarted flusher flushes, the UDP flow follows.
            gen2 = BackendsDesired.of(generation=2, cause="event", event_time=time.time(), entries=(
                Entry(4, "tcp", 8080, 8080, b2.v4, "b2"), Entry(4, "udp", 5353, 5353, b2.v4, "b2")))
            switched = time.time()
            flushed = wait_event(bus, lambda e: isinstance(e, ConntrackFlushed), 20,
                                 "ConntrackFlushed", publish=gen2)
            assert isinstance(flushed, ConntrackFlushed)
            assert flushed.removed >= 1
            it.wait_records(stream, lambda r: r[0] > switched and r[1].startswith("b2 "), 5,
                            "udp flow on b2")
            mark = len(loop.lines)
            wait_until(lambda: sum("ok b2" in line for line in loop.lines[mark:]) >= 30, 20,
                       what="tcp on b2")
            lines = loop.stop()
            stream.stop()
            assert not [line for line in lines if " fail " in line], lines[:5]

            # A container shutdown: marker first, then SIGTERM: tables gone, exit 0.
            mark_shutdown(run_dir, "test")
            assert stop(writer) == 0
            assert stop(flusher) == 0
            assert handles(net) == {}
    finally:
        procs.close()
