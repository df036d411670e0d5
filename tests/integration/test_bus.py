"""The bus with real processes: three publishers, three subscribers, the real broker.

Covers convergence, a broker killed with -9 and restarted, a subscriber that
restarts, and a flood of malformed messages that must leave everyone alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

from bus.rundir import endpoints
from tests.netns import wait_until

HEARTBEAT = 1.0
PUBS = ("pub1", "pub2", "pub3")
SUBS = ("sub1", "sub2", "sub3")
ROOT = Path(__file__).resolve().parents[2]


class Bus:
    def __init__(self, tmp: Path) -> None:
        self.run_dir = tmp / "run"
        self.ctl = tmp / "ctl"
        self.out = tmp / "out"
        self.ctl.mkdir()
        self.out.mkdir()
        self.env = os.environ | {
            "ANCHORD_RUN_DIR": str(self.run_dir), "ANCHORD_PROJECT": "bustest",
            "ANCHORD_VLAN_PARENT": "lo", "ANCHORD_LOG_LEVEL": "warn",
            "PYTHONPATH": str(ROOT)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_broker(self) -> None:
        self.procs["bus"] = subprocess.Popen(
            [sys.executable, "-m", "anchord.cli", "worker", "bus"], env=self.env,
            stdout=subprocess.DEVNULL)
        wait_until(lambda: (self.run_dir / "sub.ipc").exists(), 10, what="broker sockets")

    def start_peer(self, role: str, name: str) -> None:
        folder = self.ctl if role == "publisher" else self.out
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.bus_peer", role, name, str(folder),
             str(HEARTBEAT)], env=self.env, cwd=ROOT)

    def set(self, pub: str, value: str) -> None:
        tmp = self.ctl / f".{pub}"
        tmp.write_text(value)
        os.replace(tmp, self.ctl / pub)

    def seen(self, sub: str) -> dict[str, object]:
        try:
            return dict(json.loads((self.out / f"{sub}.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def all_see(self, values: dict[str, str], subs: tuple[str, ...] = SUBS) -> bool:
        return all(self.seen(s).get("latest") == values for s in subs)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = Bus(tmp_path)
    b.start_broker()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def full_bus(bus: Bus) -> Bus:
    for pub in PUBS:
        bus.set(pub, "a")
        bus.start_peer("publisher", pub)
    for sub in SUBS:
        bus.start_peer("subscriber", sub)
    wait_until(lambda: bus.all_see(dict.fromkeys(PUBS, "a")), 10, what="initial convergence")
    return bus


def test_three_publishers_three_subscribers_converge(full_bus: Bus) -> None:
    for i in range(20):
        for pub in PUBS:
            full_bus.set(pub, f"v{i}")
        if i % 5 == 0:
            def round_seen(i: int = i) -> bool:
                return full_bus.all_see(dict.fromkeys(PUBS, f"v{i}"))

            wait_until(round_seen, 2, what=f"round {i}")
    wait_until(lambda: full_bus.all_see(dict.fromkeys(PUBS, "v19")), 2, what="last round")


def test_broker_killed_and_restarted(full_bus: Bus) -> None:
    full_bus.procs["bus"].send_signal(signal.SIGKILL)
    full_bus.procs["bus"].wait()
    # State changes while the broker is down are lost in flight...
    for pub in PUBS:
        full_bus.set(pub, "during-outage")
    full_bus.start_broker()
    restarted = time.monotonic()
    # ...and every subscriber holds the latest state again within one heartbeat.
    wait_until(lambda: full_bus.all_see(dict.fromkeys(PUBS, "during-outage")),
               HEARTBEAT + 0.5, what="convergence after broker restart")
    took = time.monotonic() - restarted
    assert took <= HEARTBEAT + 0.5
    assert full_bus.alive()


def test_restarted_subscriber_gets_state_within_a_second_of_hello(full_bus: Bus) -> None:
    full_bus.procs["sub2"].kill()
    full_bus.procs["sub2"].wait()
    (full_bus.out / "sub2.json").unlink()
    for pub in PUBS:
        full_bus.set(pub, "b")
    wait_until(lambda: full_bus.all_see(dict.fromkeys(PUBS, "b"), ("sub1", "sub3")), 2)
    full_bus.start_peer("subscriber", "sub2")
    wait_until(lambda: full_bus.seen("sub2").get("latest") == dict.fromkeys(PUBS, "b"), 5,
               what="restarted subscriber converges")
    seen = full_bus.seen("sub2")
    # The heartbeat is 1 s here, so this proves the Hello path, not the heartbeat.
    assert float(seen["time"]) - float(seen["hello_at"]) < 1.0  # type: ignore[arg-type]


def _garbage() -> Iterator[list[bytes]]:
    good = {"v": 1, "type": "LinkChanged", "schema": 1, "ts": 1.0, "source": "evil",
            "seq": 1, "data": {"interface": "x", "mac": "pub1", "up": True}}
    yield [b"LinkChanged/"]
    yield [b"LinkChanged/", b"{}", b"extra"]
    yield [b"LinkChanged/", b"\xff\x00not json"]
    yield [b"LinkChanged/", json.dumps(good | {"v": 7}).encode()]
    yield [b"LinkChanged/", json.dumps(good | {"schema": 9}).encode()]
    yield [b"LinkChanged/", json.dumps(good | {"data": {"interface": 1}}).encode()]
    yield [b"LinkChanged/", json.dumps(good | {"type": "Hello"}).encode()]
    yield [b"LinkChanged/", b"[" * 50_000]
    yield [b"LinkChanged/", b" " * (9 * 1024 * 1024)]
    yield [b"LinkChangedX/", b"{}"]


@contextmanager
def raw_publisher(bus: Bus) -> Iterator[zmq.Socket[bytes]]:
    """A bare ZeroMQ PUB on the broker, sending whatever a test wants (no codec)."""
    pub_ep, _ = endpoints(bus.run_dir)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(pub_ep)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def assert_state_still_flows(bus: Bus, value: str, timeout: float) -> None:
    for pub in PUBS:
        bus.set(pub, value)
    wait_until(lambda: bus.all_see(dict.fromkeys(PUBS, value)), timeout,
               what=f"state flows ({value})")
    assert bus.alive()


def test_flood_of_malformed_frames_leaves_everyone_alive(full_bus: Bus) -> None:
    with raw_publisher(full_bus) as sock:
        # Wait until the flood would be delivered: a subscriber must count errors.
        def flood_counted() -> bool:
            for frames in _garbage():
                sock.send_multipart(frames)
            return all(int(full_bus.seen(s).get("decode_errors", 0)) > 0  # type: ignore[call-overload]
                       for s in SUBS)

        wait_until(flood_counted, 10, interval=0.2, what="decode errors counted")
        for _ in range(200):
            for frames in _garbage():
                if len(frames[-1]) < 1024 * 1024:
                    sock.send_multipart(frames)
    assert_state_still_flows(full_bus, "after-flood", 3)


def test_an_oversized_frame_is_refused_before_it_is_read(full_bus: Bus) -> None:
    """A frame above the codec's limit (8 MiB): ZeroMQ drops the sender at the broker
    (MAXMSGSIZE) instead of reading it into memory; everyone else carries on."""
    from bus.codec import MAX_MESSAGE_BYTES

    with raw_publisher(full_bus) as sock:
        for _ in range(3):
            sock.send_multipart([b"NatApplied/", b"x" * (MAX_MESSAGE_BYTES + 1)])
    assert_state_still_flows(full_bus, "after-oversize", 5)


def test_lost_messages_are_noticed_by_their_sequence_numbers(bus: Bus) -> None:
    """A subscriber told of a gap in a publisher's numbers of a topic it receives (the
    conntrack-flusher then reconciles at once); a publisher that restarts from 1 is no gap."""
    from bus.client import BusClient
    from bus.codec import encode
    from bus.events import NatApplied

    gaps: list[tuple[str, str]] = []
    received: list[int] = []

    def send(sock: zmq.Socket[bytes], seq: int) -> None:
        event = NatApplied(generation=seq, ok=True, duration=0.0, event_time=0.0)
        sock.send_multipart(encode(event, "nat-writer", seq))

    def receive(client: BusClient) -> None:
        received.extend(e.generation for e in client.poll(0.05) if isinstance(e, NatApplied))

    with BusClient("gap-watcher", bus.run_dir, subscribe=(NatApplied,)) as client, \
            raw_publisher(bus) as sock:
        client.on_gap(lambda source, topic: gaps.append((source, topic)))

        def first_heard() -> bool:
            # Frames sent before the subscription reached the broker are dropped (the slow
            # joiner): the first one is sent until it comes through.
            send(sock, 1)
            receive(client)
            return bool(received)

        wait_until(first_heard, 10, what="the first message through the broker")
        assert gaps == []
        received.clear()
        for seq in (2, 5, 1, 2):  # 3 and 4 lost; then the publisher restarts from 1
            send(sock, seq)

        def all_heard() -> bool:
            receive(client)
            return len(received) >= 4

        wait_until(all_heard, 5, what="the rest through the broker")
        assert received == [2, 5, 1, 2]
        assert gaps == [("nat-writer", NatApplied.TOPIC)]
        assert client.gaps["nat-writer"] == 2
