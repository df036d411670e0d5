"""A real bus process for the integration tests: a publisher or a subscriber.

publisher NAME CTL_DIR HEARTBEAT: owns one LinkChanged whose interface field is
the content of CTL_DIR/NAME (re-read every 20 ms), republished by the client.
subscriber NAME OUT_DIR HEARTBEAT: writes OUT_DIR/NAME.json with the latest
state seen per publisher, its Hello time and its decode error count.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from bus.client import BusClient
from bus.events import Event, LinkChanged


def publisher(run_dir: Path, name: str, ctl: Path, heartbeat: float) -> None:
    value = ""
    with BusClient(name, run_dir, heartbeat=heartbeat) as bus:
        bus.set_state(lambda: [LinkChanged(interface=value, mac=name, up=True)])
        while True:
            try:
                new = (ctl / name).read_text()
            except FileNotFoundError:
                new = ""
            if new != value:
                value = new
                bus.state_changed()
            bus.poll(0.02)


def subscriber(run_dir: Path, name: str, out: Path, heartbeat: float) -> None:
    latest: dict[str, str] = {}
    hello_at = time.time()
    written: object = None
    with BusClient(name, run_dir, subscribe=[LinkChanged], heartbeat=heartbeat) as bus:
        while True:
            events: list[Event] = bus.poll(0.05)
            for ev in events:
                if isinstance(ev, LinkChanged):
                    latest[ev.mac] = ev.interface
            body = {"hello_at": hello_at, "latest": dict(latest), "acked": bus.hello_acked,
                    "decode_errors": sum(bus.decode_errors.values()), "pid": os.getpid()}
            if body != written:
                tmp = out / f".{name}.tmp"
                tmp.write_text(json.dumps(body | {"time": time.time()}))
                os.replace(tmp, out / f"{name}.json")
                written = dict(body)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    role, name, folder, heartbeat = sys.argv[1:5]
    run_dir = Path(os.environ["ANCHORD_RUN_DIR"])
    if role == "publisher":
        publisher(run_dir, name, Path(folder), float(heartbeat))
    else:
        subscriber(run_dir, name, Path(folder), float(heartbeat))


if __name__ == "__main__":
    main()
