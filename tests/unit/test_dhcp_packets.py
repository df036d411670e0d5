"""Strict parsing of DHCPv4/DHCPv6 input, lease file validation, backoff."""

from __future__ import annotations

import contextlib
import json
import random
import struct
from pathlib import Path

import pytest

from anchord.dhcp import packets, packets6
from anchord.dhcp.leasefile import LeaseFile, StoredLease
from anchord.dhcp.timers import Backoff
from tests.unit.test_dhcp_v4_machine import MAC, reply


def test_option_121_zero_length_is_ignored_router_option_used() -> None:
    frame = reply(packets.OFFER, 5, extra=b"\x79\x00")
    parsed = packets.parse_reply(frame, MAC, 5)
    assert parsed.router == "10.0.0.1"
    assert parsed.yiaddr == "10.0.0.5"


def test_option_121_default_route_wins() -> None:
    frame = reply(packets.ACK, 5, extra=b"\x79\x05\x00\x0a\x00\x00\xfe")
    assert packets.parse_reply(frame, MAC, 5).router == "10.0.0.254"


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda f: f[:200], "truncated"),
    (lambda f: f[:-1], "missing_end"),
    (lambda f: f[:-1] + b"\x0c\x20abc\xff", "bad_option_length"),
    # RFC 3396: a repeated option is concatenated; here that makes it invalid.
    (lambda f: f[:-1] + b"\x35\x01\x02\xff", "bad_message_type"),
    (lambda f: f[:70] + b"\x00" * 6 + f[76:], "wrong_mac"),
    (lambda f: f[:-1] + b"\x01\x04\xff\x00\xff\x00\xff", "bad_option_length"),
    (lambda f: f[:-1] + b"\x34\x01\x07\xff", "bad_overload"),
])
def test_malformed_v4_rejected_with_reason(mutate: object, reason: str) -> None:
    frame = reply(packets.OFFER, 5)
    with pytest.raises(packets.Malformed) as info:
        packets.parse_reply(_relength(mutate(frame)), MAC, 5)  # type: ignore[operator]
    assert info.value.reason == reason


def _relength(frame: bytes) -> bytes:
    """The IPv4 and UDP lengths of ``frame`` made to match what it carries (the parser reads
    nothing past the datagram)."""
    return frame[:16] + struct.pack("!H", len(frame) - 14) + frame[18:38] \
        + struct.pack("!H", len(frame) - 34) + frame[40:]


def test_garbage_hostname_in_reply_is_harmless() -> None:
    frame = reply(packets.ACK, 5, extra=b"\x0c\x06\x00/..\xff;")
    assert packets.parse_reply(frame, MAC, 5).yiaddr == "10.0.0.5"


def test_random_mutations_only_raise_malformed() -> None:
    rng = random.Random(3)
    base = reply(packets.ACK, 5, extra=b"\x79\x05\x00\x0a\x00\x00\xfe")
    for _ in range(3000):
        frame = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        with contextlib.suppress(packets.Malformed):
            packets.parse_reply(bytes(frame[:rng.randrange(len(frame) + 1)]), MAC, 5)


def _v6(msg: int, xid: int, *opts: bytes) -> bytes:
    return bytes([msg]) + xid.to_bytes(3, "big") + b"".join(opts)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


DUID = packets6.duid_ll(MAC)


def test_v6_reply_parsed_and_t1_t2_zero_kept_for_client_to_choose() -> None:
    ia = _opt(3, struct.pack("!III", 9, 0, 0) + _opt(5, bytes.fromhex(
        "fd770000000000000000000000000105") + struct.pack("!II", 60, 120)))
    parsed = packets6.parse_reply(_v6(7, 42, _opt(1, DUID), _opt(2, b"\x00\x03" * 4), ia),
                                  42, DUID, 9)
    assert parsed.address == "fd77::105"
    assert (parsed.t1, parsed.t2) == (0, 0)
    assert (parsed.preferred, parsed.valid) == (60, 120)


def test_v6_random_mutations_only_raise_malformed() -> None:
    rng = random.Random(5)
    ia = _opt(3, struct.pack("!III", 9, 10, 20) + _opt(5, b"\xfd" + b"\x01" * 15
                                                       + struct.pack("!II", 60, 120)))
    base = _v6(7, 42, _opt(1, DUID), _opt(2, b"\x00\x03" * 4), ia)
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(packets6.Malformed):
            packets6.parse_reply(bytes(data[:rng.randrange(len(data) + 1)]), 42, DUID, 9)


def _lease() -> StoredLease:
    return StoredLease(family=4, address="10.0.0.5", prefixlen=24, server="10.0.0.1",
                       router="10.0.0.1", lease_time=100, t1=50, t2=87.5, acquired=1000.0)


def test_leasefile_roundtrip_atomic(tmp_path: Path) -> None:
    lf = LeaseFile(tmp_path, "anchord-ext", MAC)
    lf.save({4: _lease()})
    assert lf.load() == {4: _lease()}
    assert [p.name for p in tmp_path.iterdir()] == ["anchord-ext.lease"]  # no temp left


@pytest.mark.parametrize("content", [
    "{not json", "[]", json.dumps({"format": 1, "iface": "anchord-ext", "mac": "02:00:00:00:00:01",
                                  "leases": []}),
    json.dumps({"format": 1, "iface": "anchord-ext", "mac": MAC,
                "leases": [{"family": 4, "address": "224.0.0.1", "prefixlen": 24}]}),
    json.dumps({"format": 1, "iface": "anchord-ext", "mac": MAC,
                "leases": [{"family": 4, "address": "10.0.0.5", "prefixlen": 24,
                            "lease_time": "x", "t1": 1, "t2": 2, "acquired": 3}]}),
])
def test_leasefile_corrupt_or_foreign_ignored(tmp_path: Path, content: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    lf = LeaseFile(tmp_path, "anchord-ext", MAC)
    lf.path.write_text(content)
    assert lf.load() == {}
    assert "ignored" in caplog.text


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(initial=4, cap=20, rng=random.Random(1))
    delays = [b.next() for _ in range(6)]
    assert 3.6 <= delays[0] <= 4.4
    assert 7.2 <= delays[1] <= 8.8
    assert all(d <= 20 for d in delays)
    assert delays[-1] >= 18
    b.reset()
    assert b.next() <= 4.4


def _with_file(frame: bytes, file_area: bytes, sname_area: bytes = b"") -> bytes:
    """``frame`` with its BOOTP ``file`` (and ``sname``) field replaced (lengths unchanged)."""
    base = 14 + 20 + 8  # Ethernet + IPv4 + UDP headers of reply()
    file_area = file_area.ljust(128, b"\x00")
    sname_area = sname_area.ljust(64, b"\x00")
    return frame[:base + 44] + sname_area + file_area + frame[base + 236:]


def test_rfc3396_a_split_option_121_is_concatenated() -> None:
    """Kea and ISC split anything over 255 octets: here option 121 in two instances."""
    value = bytes([24, 10, 1, 2, 10, 0, 0, 1]) + bytes([0, 10, 0, 0, 253])  # a /24, default
    first, second = value[:6], value[6:]
    extra = bytes([121, len(first)]) + first + bytes([121, len(second)]) + second
    parsed = packets.parse_reply(reply(packets.ACK, 5, extra=extra), MAC, 5)
    assert parsed.router == "10.0.0.253"
    # Either part alone is a malformed 121 (ignored as a whole): the split must be joined.
    with pytest.raises(packets.Malformed):
        packets.classless_default(first)


def test_rfc2132_overloaded_file_and_sname_are_read() -> None:
    """Option 52: the options go on in `file` (1), `sname` (2) or both (3)."""
    frame = reply(packets.ACK, 5, extra=b"\x34\x01\x03")
    # The default route in `file`, T1 in `sname`.
    overloaded = _with_file(frame, b"\x79\x05\x00\x0a\x00\x00\xfe\xff",
                            b"\x3a\x04\x00\x00\x00\x1e\xff")
    parsed = packets.parse_reply(overloaded, MAC, 5)
    assert parsed.router == "10.0.0.254"
    assert parsed.t1 == 30


def test_rfc3442_option_121_without_a_default_route_hides_option_3() -> None:
    frame = reply(packets.ACK, 5, extra=b"\x79\x08\x18\x0a\x01\x02\x0a\x00\x00\x01")
    assert packets.parse_reply(frame, MAC, 5).router == ""  # not option 3's 10.0.0.1


def test_rfc4702_option_12_or_81_never_both_and_rfc1542_length() -> None:
    bare = packets.build(packets.DISCOVER, MAC, 1, "mail")
    opts = packets.parse_options(bare[42 + 240:])
    assert opts[12] == b"mail"
    assert 81 not in opts
    full = packets.build(packets.REQUEST, MAC, 1, "mail.example.org", requested="10.0.0.5")
    opts = packets.parse_options(full[42 + 240:])
    assert 12 not in opts
    assert opts[81][3:] == b"\x04mail\x07example\x03org\x00"[:-1]
    for frame in (bare, full, packets.build(packets.RELEASE, MAC, 1, "mail")):
        assert len(frame) - 42 >= 300  # the BOOTP message, after Ethernet/IPv4/UDP
