"""anchord.routesignal over real loopback sockets: what is received, what is ignored."""

from __future__ import annotations

import select
import socket

from anchord import routesignal


def received(receiver: routesignal.Receiver, want: int) -> list[str]:
    """What the receiver returns once ``want`` datagrams were read (poll with a deadline)."""
    found: list[str] = []
    for _ in range(50):
        if len(found) + receiver.ignored >= want:
            break
        select.select([receiver.fileno()], [], [], 0.1)
        found += receiver.receive()
    return found


def test_the_message_from_either_family_is_received_by_its_source_address() -> None:
    receiver = routesignal.Receiver(port=0)
    try:
        port = receiver.port
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.sendto(routesignal.MESSAGE, (host, port))
                s.sendto(b"anything else", (host, port))
        got = received(receiver, 4)
        # IPv4 arrives on the dual-stack socket as ::ffff:127.0.0.1: reported as plain IPv4.
        assert sorted(got) == ["127.0.0.1", "::1"]
        assert receiver.ignored == 2
        assert receiver.receive() == []  # nothing waiting: returns at once
    finally:
        receiver.close()


def test_send_never_raises() -> None:
    routesignal.send("::1")  # nobody listening on the port: nothing to see, nothing raised
    routesignal.send("not an address")
