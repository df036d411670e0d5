"""Fuzzing the DHCPv4 and ARP parsers and the lease-file reader, seeded with real replies.

The seeds are DHCPOFFER/ACK/NAK frames captured from real dnsmasq and Kea
(``tests/fixtures/dhcp``, see its README). Properties:

- a mutated reply (byte edits anywhere, favouring the options; option-level edits: options
  dropped, repeated, split, resized, moved into an overloaded ``file``/``sname``) is rejected
  with ``Malformed`` or accepted as a ``Reply`` the client may use as is (usable address, a
  lease time in an ACK, a prefix length, a usable router or none) — never another exception;
- what the client builds (every message type, any hostname) parses back equal through the
  strict option parser; a reply built from generated fields (options split per RFC 3396,
  overloaded per RFC 2132 9.3) parses back to exactly those fields; ARP probes and
  announcements parse back equal;
- a lease file written by ``LeaseFile.save`` loads back equal; any byte mutation of a real one
  loads as valid leases or ``{}``.

``ANCHORD_FUZZ_EXAMPLES`` sets the cases per test (default 200: both files run in about 20 s). The
long run, one mutation test per target with ``ANCHORD_FUZZ_EXAMPLES=100000`` and ``--timeout
0``, and its figures are in docs/dhcp.md ("Fuzzing").
"""

from __future__ import annotations

import ipaddress
import json
import struct
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from anchord.dhcp import packets
from anchord.dhcp.leasefile import LeaseFile, StoredLease
from tests.unit.fuzz_dhcp_support import (
    FUZZ,
    MAC,
    byte_mutation,
    reframe4,
    seeds,
    tlv4,
    tlv_mutation,
    udp_payload4,
)

REPLIES = seeds("*-[oan][fca]*.bin")  # offer, ack, nak of dnsmasq and Kea
V4_SEEDS = [f for f in REPLIES if f[12:14] == b"\x08\x00"]
OPTIONS_AT = 14 + 20 + 8 + 240  # the options field of an unoptioned IPv4 header


def _xid(frame: bytes) -> int:
    return int(struct.unpack("!I", udp_payload4(frame)[4:8])[0])


def _usable(address: str) -> bool:
    ip = ipaddress.IPv4Address(address)
    return not (ip.is_unspecified or ip.is_multicast or ip.is_loopback
                or ip == ipaddress.IPv4Address("255.255.255.255"))


def _check(frame: bytes, xid: int) -> packets.Reply | None:
    """parse_reply's contract: Malformed, or a reply the client can use as it is."""
    try:
        reply = packets.parse_reply(frame, MAC, xid)
    except packets.Malformed as exc:
        assert exc.reason
        return None
    assert reply.xid == xid
    assert reply.msg_type in (packets.OFFER, packets.ACK, packets.NAK)
    if reply.msg_type != packets.NAK:
        assert _usable(reply.yiaddr)
        assert reply.server_id
        assert 0 <= reply.prefixlen <= 32
        assert reply.router == "" or _usable(reply.router)
        assert reply.msg_type == packets.OFFER or reply.lease_time > 0
        assert all(0 <= v <= 0xFFFFFFFF for v in (reply.lease_time, reply.t1, reply.t2))
    return reply


def test_every_seed_is_a_valid_reply() -> None:
    kinds = {_check(frame, _xid(frame)).msg_type  # type: ignore[union-attr]
             for frame in V4_SEEDS}
    assert kinds == {packets.OFFER, packets.ACK, packets.NAK}


@FUZZ
@given(st.sampled_from(V4_SEEDS).flatmap(
    lambda seed: st.tuples(st.just(_xid(seed)), byte_mutation(seed, hot=OPTIONS_AT))))
def test_a_byte_mutated_reply_is_rejected_or_usable(case: tuple[int, bytes]) -> None:
    xid, frame = case
    _check(frame, xid)


def _encode4(options: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, value in options:
        # RFC 3396: what does not fit in one instance is split over several.
        chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
        out += b"".join(bytes([code, len(chunk)]) + chunk for chunk in chunks)
    return out


@st.composite
def option_mutated_replies(draw: st.DrawFn) -> tuple[int, bytes]:
    seed = draw(st.sampled_from(V4_SEEDS))
    payload = udp_payload4(seed)
    options = draw(tlv_mutation(tlv4(payload[240:]), (1, 254)))
    area = _encode4(options)
    head = bytearray(payload[:240])
    if draw(st.booleans()):
        # Move a tail of the options into `file` (and `sname`) with option 52 (RFC 2132 9.3).
        cut = draw(st.integers(0, len(area)))
        spill = area[cut:]
        head[108:236] = (spill[:127] + b"\xff").ljust(128, b"\x00")[:128]
        head[44:108] = (spill[127:190] + b"\xff").ljust(64, b"\x00")[:64]
        area = area[:cut] + b"\x34\x01" + bytes([draw(st.sampled_from((1, 2, 3, 0, 4)))])
    end = draw(st.sampled_from((b"\xff", b"\xff\x00\x00", b"", b"\x00")))
    return _xid(seed), reframe4(seed, bytes(head) + area + end)


@FUZZ
@given(option_mutated_replies())
def test_an_option_mutated_reply_is_rejected_or_usable(case: tuple[int, bytes]) -> None:
    xid, frame = case
    _check(frame, xid)


# --- round trips -----------------------------------------------------------------------------

addresses = st.integers(1, 0xDFFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def replies(draw: st.DrawFn) -> tuple[bytes, packets.Reply]:
    """A server reply built from generated fields, and the Reply the client must read."""
    msg_type = draw(st.sampled_from((packets.OFFER, packets.ACK, packets.NAK)))
    xid = draw(u32)
    server = draw(addresses.filter(_usable))
    src = draw(addresses)
    options: list[tuple[int, bytes]] = [(53, bytes([msg_type])),
                                        (54, ipaddress.IPv4Address(server).packed)]
    if msg_type == packets.NAK:
        yiaddr, expected = "0.0.0.0", packets.Reply(packets.NAK, xid, "0.0.0.0", server, src,
                                                     0, "", 0, 0, 0)
    else:
        yiaddr = draw(addresses.filter(_usable))
        prefixlen = draw(st.integers(0, 32))
        mask = ipaddress.IPv4Network(f"0.0.0.0/{prefixlen}").netmask.packed
        lease = draw(st.integers(1 if msg_type == packets.ACK else 0, 0xFFFFFFFF))
        t1, t2 = draw(u32), draw(u32)
        options += [(1, mask), (58, struct.pack("!I", t1)), (59, struct.pack("!I", t2))]
        if lease:
            options.append((51, struct.pack("!I", lease)))
        router = ""
        gateways = draw(st.lists(addresses, max_size=3))
        if gateways:
            options.append((3, b"".join(ipaddress.IPv4Address(g).packed for g in gateways)))
            router = gateways[0]
        if draw(st.booleans()):
            # Option 121, often long enough (> 255 octets) to be split (RFC 3396).
            routes = draw(st.lists(st.tuples(st.integers(1, 32), addresses), max_size=60))
            default = draw(st.one_of(st.none(), addresses))
            value = b""
            for width, gw in routes:
                value += bytes([width]) + b"\x0a" * ((width + 7) // 8) \
                    + ipaddress.IPv4Address(gw).packed
            if default is not None:
                value += b"\x00" + ipaddress.IPv4Address(default).packed
            if value:
                options.append((121, value))
                router = default or ""
        router = router if router and _usable(router) else ""
        expected = packets.Reply(msg_type, xid, yiaddr, server, src, prefixlen, router, lease,
                                 t1, t2)
    options = draw(st.permutations(options))
    area = _encode4(options) + b"\xff"
    bootp = (struct.pack("!BBBBIHH", 2, 1, 6, 0, xid, 0, 0) + b"\x00" * 4
             + ipaddress.IPv4Address(yiaddr).packed + b"\x00" * 8
             + packets.mac_bytes(MAC) + b"\x00" * 10 + b"\x00" * 192 + packets.MAGIC)
    frame = bytes(Ether(dst=MAC) / IP(src=src, dst="255.255.255.255") / UDP(sport=67, dport=68)
                  / Raw(bootp + area))
    return frame, expected


@FUZZ
@given(replies())
def test_a_built_reply_parses_back_to_its_fields(case: tuple[bytes, packets.Reply]) -> None:
    frame, expected = case
    assert packets.parse_reply(frame, MAC, expected.xid) == expected


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)


@FUZZ
@given(st.sampled_from(sorted(packets.TYPE_NAMES)), u32, hostnames,
       st.one_of(st.just(""), addresses), st.one_of(st.just(""), addresses),
       st.one_of(st.just("0.0.0.0"), addresses), st.integers(0, 100000))
def test_what_the_client_builds_parses_back_equal(msg_type: int, xid: int, hostname: str,
                                                   requested: str, server_id: str, ciaddr: str,
                                                   secs: int) -> None:
    frame = packets.build(msg_type, MAC, xid, hostname, requested=requested,
                          server_id=server_id, ciaddr=ciaddr, secs=secs)
    payload = udp_payload4(frame)
    assert len(payload) >= packets.MIN_BOOTP
    assert payload[0] == 1
    assert struct.unpack("!I", payload[4:8])[0] == xid
    assert struct.unpack("!H", payload[8:10])[0] == min(secs, 0xFFFF)
    assert str(ipaddress.IPv4Address(payload[12:16])) == ciaddr
    assert payload[28:34] == packets.mac_bytes(MAC)
    assert payload[236:240] == packets.MAGIC
    options = packets.all_options(payload)
    assert options[53] == bytes([msg_type])
    assert options[61] == packets.client_id(MAC)
    assert options.get(50, b"") == (ipaddress.IPv4Address(requested).packed if requested else b"")
    assert options.get(54, b"") == (ipaddress.IPv4Address(server_id).packed if server_id
                                    else b"")
    if msg_type in (packets.DISCOVER, packets.REQUEST, packets.INFORM):
        if "." in hostname:
            assert 12 not in options
            assert options[81] == packets.fqdn(hostname)
        else:
            assert 81 not in options
            assert options[12] == hostname.encode()


@FUZZ
@given(addresses, st.sampled_from((True, False)))
def test_arp_probe_and_announcement_parse_back_equal(address: str, probe: bool) -> None:
    frame = packets.arp_probe(MAC, address) if probe else packets.arp_announce(MAC, address)
    seen = packets.parse_arp(frame)
    assert seen == packets.ArpSeen(1, MAC, "0.0.0.0" if probe else address, address)


@FUZZ
@given(st.binary(max_size=80).map(lambda b: bytes(packets.arp_announce(MAC, "10.0.0.1")[:14]) + b))
def test_any_arp_frame_is_parsed_or_rejected(frame: bytes) -> None:
    try:
        seen = packets.parse_arp(frame)
    except packets.Malformed:
        return
    ipaddress.IPv4Address(seen.sender_ip)
    ipaddress.IPv4Address(seen.target_ip)


# --- the lease file ---------------------------------------------------------------------------

IFACE = "anchord-ext"
times = st.integers(0, 0xFFFFFFFF).map(float) | st.floats(0, 0xFFFFFFFF)


@st.composite
def stored_leases(draw: st.DrawFn, family: int) -> StoredLease:
    if family == 4:
        address = draw(addresses.filter(_usable))
        prefixlen = draw(st.integers(1, 32))
        router = draw(st.one_of(st.just(""), addresses))
        server = draw(addresses)
    else:
        address = str(ipaddress.IPv6Address(draw(st.integers(1 << 125, (1 << 127) - 1))))
        prefixlen = draw(st.integers(1, 128))
        router = draw(st.sampled_from(("", "fe80::1")))
        server = draw(st.binary(min_size=3, max_size=130)).hex()
    return StoredLease(
        family=family, address=address, prefixlen=prefixlen, server=server, router=router,
        lease_time=draw(times), t1=draw(times), t2=draw(times),
        acquired=draw(st.floats(0, 1.7e9)), iaid=draw(u32) if family == 6 else 0,
        preferred=draw(times) if family == 6 else 0.0,
        server_mac=draw(st.sampled_from(("", "02:00:00:00:00:01"))))


@FUZZ
@given(st.sampled_from(((4,), (6,), (4, 6))).flatmap(
    lambda fams: st.fixed_dictionaries({f: stored_leases(f) for f in fams})))
def test_a_saved_lease_file_loads_back_equal(leases: dict[int, StoredLease]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lease_file = LeaseFile(Path(tmp), IFACE, MAC)
        lease_file.save(leases)
        assert lease_file.load() == leases


def _real_lease_file() -> bytes:
    """The file the worker writes for the leases of the captured Kea ACK (and a v6 one)."""
    ack = packets.parse_reply(V4_SEEDS[0], MAC, _xid(V4_SEEDS[0]))
    v4 = StoredLease(4, ack.yiaddr, ack.prefixlen, ack.server_id, ack.router,
                     float(ack.lease_time), float(ack.t1), float(ack.t2), 1.7e9,
                     server_mac="02:00:00:00:00:09")
    v6 = StoredLease(6, "fd77::200", 128, "000300010200000000009", "fe80::1", 30.0, 8.0, 14.0,
                     1.7e9, iaid=1, preferred=20.0)
    with tempfile.TemporaryDirectory() as tmp:
        lease_file = LeaseFile(Path(tmp), IFACE, MAC)
        lease_file.save({4: v4, 6: v6})
        assert len(lease_file.load()) == 2
        return lease_file.path.read_bytes()


REAL_LEASE_FILE = _real_lease_file()


@FUZZ
@given(st.one_of(byte_mutation(REAL_LEASE_FILE),
                 st.builds(lambda b, k, v: json.dumps(
                     {**json.loads(b), k: v} if isinstance(json.loads(b), dict) else v).encode(),
                     st.just(REAL_LEASE_FILE), st.sampled_from(("format", "mac", "leases")),
                     st.one_of(st.none(), st.integers(), st.text(max_size=5))),
                 st.builds(lambda lease, key, value: _with_field(lease, key, value),
                           st.integers(0, 1), st.sampled_from(
                               ("family", "address", "prefixlen", "router", "server", "lease_time",
                                "t1", "acquired", "iaid", "preferred", "server_mac")),
                           st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                                     st.floats(), st.text(max_size=8), st.lists(st.none())))))
def test_a_mutated_real_lease_file_loads_valid_or_nothing(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lease_file = LeaseFile(Path(tmp), IFACE, MAC)
        lease_file.path.write_bytes(data)
        leases = lease_file.load()
    for family, lease in leases.items():
        assert lease.family == family
        address = ipaddress.ip_address(lease.address)
        assert address.version == family
        assert not address.is_multicast
        assert 1 <= lease.prefixlen <= (32 if family == 4 else 128)
        for value in (lease.lease_time, lease.t1, lease.t2, lease.acquired, lease.preferred):
            assert 0 <= value <= 0xFFFFFFFF * 2


def _with_field(index: int, key: str, value: object) -> bytes:
    doc = json.loads(REAL_LEASE_FILE)
    doc["leases"][index][key] = value
    return json.dumps(doc).encode()


@FUZZ
@given(st.sampled_from(V4_SEEDS), st.integers(0, 60), st.binary(min_size=1, max_size=300))
def test_only_the_ip_datagram_is_read(seed: bytes, shorter: int, trailer: bytes) -> None:
    """Bytes after the IPv4 total length (Ethernet padding, a lying header) are not DHCP: the
    verdict on a datagram does not change with what follows it on the frame."""
    head = bytearray(seed)
    total = struct.unpack("!H", head[16:18])[0] - shorter
    struct.pack_into("!H", head, 16, total)
    datagram = bytes(head[:14 + total])
    verdicts = []
    for frame in (datagram, datagram + trailer):
        try:
            verdicts.append(packets.parse_reply(frame, MAC, _xid(seed)))
        except packets.Malformed as exc:
            verdicts.append(exc.reason)  # type: ignore[arg-type]
    assert verdicts[0] == verdicts[1]
