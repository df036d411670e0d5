"""Capture real DHCP replies and router advertisements as fuzzing seeds (tests/fixtures/dhcp).

Owns the making of the seed corpus of ``tests/unit/test_fuzz_dhcp*.py``: real dnsmasq, ISC Kea
(v4 and v6) and radvd run in namespaces a LAN bed makes (``tests.integration.dhcp_servers``); a
client in the anchor namespace sends the messages ``anchord.dhcp.packets``/``packets6`` build
(DISCOVER, REQUEST, a REQUEST for an address that is not ours, Solicit, Request) from a raw
socket and writes each reply it sees, the whole Ethernet frame, to ``<out>/<server>-<what>.bin``.
Run as root: ``python3 -m tests.integration.capture_dhcp_fixtures tests/fixtures/dhcp``.
Nothing leaves the namespaces it makes; they are deleted at the end.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from anchord.dhcp import packets, packets6
from tests.integration.dhcp_servers import LAN_V4, LAN_V6, MAC, Dnsmasq, Kea4, Kea6, Lan, Radvd, lan
from tests.integration.inbound_topo import inside
from tests.netns import wait_until

ETH_P_ALL = 0x0003
DUID = packets6.duid_ll(MAC)
IAID = 1


class Client:
    """A raw socket on the anchor's ``eth0`` (which carries the client MAC)."""

    def __init__(self, bed: Lan) -> None:
        # The kernel answers the servers' neighbour solicitations for the link-local address
        # the DHCPv6 messages come from: derived from MAC when the link comes up, no DAD.
        bed.anchor.run("ip", "link", "set", "eth0", "down")
        bed.anchor.run("ip", "link", "set", "eth0", "address", MAC)
        bed.anchor.sysctl("net.ipv6.conf.eth0.disable_ipv6", "0")
        bed.anchor.sysctl("net.ipv6.conf.eth0.accept_dad", "0")
        bed.anchor.run("ip", "link", "set", "eth0", "up")
        with inside(bed.anchor):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind(("eth0", 0))
        self.sock.settimeout(0.2)

    def exchange(self, frame: bytes, want: Callable[[bytes], bool], timeout: float = 10.0,
                 resend: float = 1.0) -> bytes:
        """Send ``frame`` (again every ``resend`` s) until a received frame satisfies ``want``."""
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                self.sock.send(frame)
                next_send = time.monotonic() + resend
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] != socket.PACKET_OUTGOING and want(data):
                return data
        raise TimeoutError("no matching reply")

    def wait(self, want: Callable[[bytes], bool], timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] != socket.PACKET_OUTGOING and want(data):
                return data
        raise TimeoutError("nothing matching seen")

    def close(self) -> None:
        self.sock.close()


def eui64_link_local(mac: str) -> str:
    """The EUI-64 link-local address of ``mac`` (what the kernel gives the client's link)."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def _v4(msg_type: int, xid: int) -> Callable[[bytes], bool]:
    def want(frame: bytes) -> bool:
        try:
            return packets.parse_reply(frame, MAC, xid).msg_type == msg_type
        except packets.Malformed:
            return False
    return want


def _v6(msg_type: int, xid: int) -> Callable[[bytes], bool]:
    def want(frame: bytes) -> bool:
        try:
            kind, payload = packets6.classify(frame, MAC)
        except packets6.Malformed:
            return False
        return kind == "dhcp6" and isinstance(payload, bytes) and len(payload) >= 4 \
            and payload[0] == msg_type and int.from_bytes(payload[1:4], "big") == xid
    return want


def _ra(frame: bytes) -> bool:
    try:
        return packets6.classify(frame, MAC)[0] == "ra"
    except packets6.Malformed:
        return False


def capture_v4(client: Client, name: str, out: Path, wrong: str) -> None:
    xid = 0x11223300 + len(name)
    offer = client.exchange(packets.build(packets.DISCOVER, MAC, xid, "proj-one"),
                            _v4(packets.OFFER, xid))
    reply = packets.parse_reply(offer, MAC, xid)
    ack = client.exchange(packets.build(packets.REQUEST, MAC, xid, "proj-one",
                                        requested=reply.yiaddr, server_id=reply.server_id),
                          _v4(packets.ACK, xid))
    # INIT-REBOOT for an address the server will not give us: a NAK.
    nak = client.exchange(packets.build(packets.REQUEST, MAC, xid + 1, "proj-one",
                                        requested=wrong), _v4(packets.NAK, xid + 1))
    for what, frame in (("offer", offer), ("ack", ack), ("nak", nak)):
        (out / f"{name}-{what}.bin").write_bytes(frame)


def capture_v6(client: Client, name: str, out: Path) -> None:
    xid = 0x445500 + len(name)
    src = eui64_link_local(MAC)
    advertise = client.exchange(packets6.build(packets6.SOLICIT, MAC, src, xid, DUID, IAID,
                                               "proj-one"), _v6(packets6.ADVERTISE, xid))
    _kind, payload = packets6.classify(advertise, MAC)
    assert isinstance(payload, bytes)
    offer = packets6.parse_reply(payload, xid, DUID, IAID)
    reply = client.exchange(packets6.build(packets6.REQUEST, MAC, src, xid + 1, DUID, IAID,
                                           "proj-one", address=offer.address,
                                           server_duid=offer.server_duid),
                            _v6(packets6.REPLY, xid + 1))
    for what, frame in (("advertise", advertise), ("reply", reply)):
        (out / f"{name}-{what}.bin").write_bytes(frame)


@contextmanager
def _bed() -> Iterator[tuple[Lan, Client]]:
    with tempfile.TemporaryDirectory(prefix="anchord-capture-") as tmp, lan(Path(tmp)) as bed:
        client = Client(bed)
        try:
            yield bed, client
        finally:
            client.close()


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with _bed() as (bed, client):
        server = bed.server_ns("srv", 1)
        dns = Dnsmasq(bed, server, "dnsmasq", f"--dhcp-option=3,{LAN_V4}.1",
                      "--dhcp-option=121,0.0.0.0/0,10.77.0.1,192.168.5.0/24,10.77.0.2",
                      "--dhcp-authoritative", f"--dhcp-range={LAN_V6}100,{LAN_V6}1ff,64,2m",
                      "--enable-ra", "--ra-param=eth0,3,1800", "--domain=lan.test")
        wait_until(lambda: "started" in dns.lines(), 10, what="dnsmasq started")
        capture_v4(client, "dnsmasq", out, wrong=f"{LAN_V4}.99")
        capture_v6(client, "dnsmasq", out)
        (out / "dnsmasq-ra.bin").write_bytes(client.wait(_ra))
    with _bed() as (bed, client):
        server = bed.server_ns("srv", 1)
        Kea4(bed, server, "kea4", authoritative=True, renew=10, rebind=20)
        Kea6(bed, server, "kea6")
        capture_v4(client, "kea", out, wrong=f"{LAN_V4}.99")
        capture_v6(client, "kea", out)
        Radvd(bed, server, "radvd", managed=True)
        (out / "radvd-ra-managed.bin").write_bytes(client.wait(_ra))
    with _bed() as (bed, client):
        server = bed.server_ns("srv", 1)
        Radvd(bed, server, "radvd")
        (out / "radvd-ra-slaac.bin").write_bytes(client.wait(_ra))
    for path in sorted(out.glob("*.bin")):
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m tests.integration.capture_dhcp_fixtures <out-dir>")
    sys.exit(main(Path(sys.argv[1])))

