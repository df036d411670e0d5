"""The dhcp worker on the real bus: broker, nat-writer, BusClient, runner-style start, a subscriber.

Also the start of the edge (F-9): until the nat-writer reports its tables (the LAN filter), the
dhcp worker keeps the child down, with no address, whatever the lease file holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.client import BusClient
from bus.events import LeaseChanged, LinkChanged
from tests.integration.dhcp_servers import LAN_V4, MAC, REPO, Dnsmasq, Lan, lan, stop
from tests.netns import wait_until

WORKER = """
import sys
from pathlib import Path
from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import Lifecycle
from bus.client import BusClient
from workers import dhcp
run = Path(sys.argv[1])
config = NetworkAnchorConfig(project="proj", vlan_parent="eth0", dhcp_hostname="proj-bus",
                             ext_mac=sys.argv[2], run_dir=run, state_dir=run / "state")
life = Lifecycle(run)
life.install_signal_handlers()
with BusClient("dhcp", run, subscribe=dhcp.SUBSCRIBE) as bus:
    sys.exit(dhcp.run(config, bus, life))
"""


NATWRITER = """
import sys
from pathlib import Path
from anchord.config import NetworkAnchorConfig
from anchord.lifecycle import Lifecycle
from bus.client import BusClient
from workers import natwriter
run = Path(sys.argv[1])
config = NetworkAnchorConfig(project="proj", vlan_parent="eth0", run_dir=run,
                             state_dir=run / "state")
life = Lifecycle(run)
life.install_signal_handlers()
with BusClient("nat-writer", run, subscribe=natwriter.SUBSCRIBE) as bus:
    sys.exit(natwriter.run(config, bus, life))
"""
ENV = {"PYTHONPATH": str(REPO)}


def start_broker(bed: Lan) -> tuple[Path, subprocess.Popen[bytes]]:
    run = bed.tmp / "run"
    run.mkdir(mode=0o700)
    broker = bed.start(bed.anchor, [sys.executable, "-c",
                                    "import sys; from pathlib import Path; from bus import broker;"
                                    "broker.serve(Path(sys.argv[1]), lambda: False)", str(run)],
                       bed.tmp / "broker.log", ENV)
    wait_until(lambda: (run / "sub.ipc").exists(), 10, what="broker sockets")
    return run, broker


def start_natwriter(bed: Lan, run: Path) -> subprocess.Popen[bytes]:
    return bed.start(bed.anchor, [sys.executable, "-c", NATWRITER, str(run)],
                     bed.tmp / "natwriter.log", ENV)


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def test_lease_reaches_a_subscriber_and_is_republished_on_hello(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    run, broker = start_broker(bed)
    nat = start_natwriter(bed, run)
    worker = bed.start(bed.anchor, [sys.executable, "-c", WORKER, str(run), MAC],
                       bed.tmp / "worker.log", ENV)
    seen: list[object] = []
    with BusClient("probe", run, subscribe=(LeaseChanged, LinkChanged)) as probe:
        def lease() -> LeaseChanged | None:
            seen.extend(probe.poll(0.2))
            found = [e for e in seen if isinstance(e, LeaseChanged) and e.lease.family == 4]
            return found[-1] if found else None
        first = wait_until(lease, 20, what="LeaseChanged on the bus")
        assert first.lease.address.startswith(f"{LAN_V4}.")
        assert first.lease.hostname == "proj-bus"
        assert first.lease.source == "dhcp"
        assert any(isinstance(e, LinkChanged) and e.up and e.mac == MAC for e in seen)
    # A subscriber that starts later gets the whole state at once (Hello -> republish).
    seen.clear()
    with BusClient("late", run, subscribe=(LeaseChanged,), heartbeat=60) as late:
        again = wait_until(lambda: [e for e in late.poll(0.2) if isinstance(e, LeaseChanged)],
                           3, what="republished on Hello")
        assert again[0].lease.address == first.lease.address
    assert stop(worker) == 0
    stop(nat)
    stop(broker)
    assert "Traceback" not in (bed.tmp / "worker.log").read_text()


def test_child_is_held_down_until_the_lan_filter_is_in_place(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    run, broker = start_broker(bed)
    worker = bed.start(bed.anchor, [sys.executable, "-c", WORKER, str(run), MAC],
                       bed.tmp / "worker.log", ENV)
    log = bed.tmp / "worker.log"
    wait_until(lambda: "held down until the LAN filter is in place" in log.read_text(), 15,
               what="the dhcp worker holding the child down")

    def child() -> dict[str, object]:
        rows: list[dict[str, object]] = json.loads(
            bed.anchor.run("ip", "-j", "addr", "show", "dev", "anchord-ext"))
        return rows[0]

    held = child()
    assert "UP" not in held["flags"], held  # type: ignore[operator]
    assert not [a for a in held["addr_info"]  # type: ignore[attr-defined]
                if a["family"] == "inet" or a.get("scope") == "global"], held
    nat = start_natwriter(bed, run)
    with BusClient("probe", run, subscribe=(LeaseChanged,)) as probe:
        wait_until(lambda: [e for e in probe.poll(0.2) if isinstance(e, LeaseChanged)], 30,
                   what="a lease once the filter is in place")
    assert "table ip anchord_v4" in bed.anchor.run("nft", "list", "tables")
    assert stop(worker) == 0
    stop(nat)
    stop(broker)
