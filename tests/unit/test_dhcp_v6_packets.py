"""DHCPv6 messages: what ``packets6.build`` writes, scapy's dissector and our parser read alike."""

from __future__ import annotations

import struct

from scapy.layers.dhcp6 import (
    DHCP6_Renew,
    DHCP6OptClientId,
    DHCP6OptIA_NA,
    DHCP6OptOptReq,
    DHCP6OptServerId,
)
from scapy.layers.l2 import Ether

from anchord.dhcp import packets6

MAC = "02:42:aa:bb:cc:01"
DUID = packets6.duid_ll(MAC)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def test_built_renew_dissected_by_scapy_and_walked_by_us_agree() -> None:
    frame = packets6.build(packets6.RENEW, MAC, "fe80::1", 0x123456, DUID, 7, "proj-one",
                           address="fd77::5", server_duid=b"\x00\x03\x00\x01" + b"\x09" * 6,
                           elapsed=42)
    msg = Ether(frame)[DHCP6_Renew]
    assert msg.trid == 0x123456
    assert bytes(msg[DHCP6OptClientId].duid) == DUID
    assert bytes(msg[DHCP6OptServerId].duid) == b"\x00\x03\x00\x01" + b"\x09" * 6
    ia = msg[DHCP6OptIA_NA]
    assert ia.iaid == 7
    assert ia.ianaopts[0].addr == "fd77::5"
    assert 82 in msg[DHCP6OptOptReq].reqopts
    options = dict(packets6._walk(frame[62 + 4:]))
    assert options[packets6.OPT_FQDN] == b"\x01\x08proj-one"  # partial name: no root label
    assert options[packets6.OPT_ELAPSED] == struct.pack("!H", 42)


def test_decline_and_release_carry_no_fqdn() -> None:
    for msg_type in (packets6.DECLINE, packets6.RELEASE):
        frame = packets6.build(msg_type, MAC, "fe80::1", 1, DUID, 7, "proj",
                               address="fd77::5", server_duid=b"\x00\x03\x00\x01abcdef")
        codes = [c for c, _ in packets6._walk(frame[62 + 4:])]
        assert frame[62] == msg_type
        assert packets6.OPT_FQDN not in codes


def test_router_solicit_from_unspecified_has_no_source_lladdr() -> None:
    assert len(packets6.router_solicit(MAC, "::")) == 62
    assert len(packets6.router_solicit(MAC, "fe80::1")) == 70


def _reply(*opts: bytes) -> bytes:
    return bytes([7]) + (42).to_bytes(3, "big") + _opt(1, DUID) + _opt(2, b"\x00\x03" * 4) \
        + b"".join(opts)


def test_parse_statuses_preference_sol_max_rt_and_discarded_options() -> None:
    addr = bytes.fromhex("fd770000000000000000000000000105")
    good = _opt(5, addr + struct.pack("!II", 60, 120))
    bad_lifetimes = _opt(5, bytes.fromhex("fd770000000000000000000000000106")
                         + struct.pack("!II", 200, 100))  # preferred > valid: discarded
    gone = _opt(5, bytes.fromhex("fd770000000000000000000000000107") + struct.pack("!II", 0, 0))
    parsed = packets6.parse_reply(
        _reply(_opt(3, struct.pack("!III", 9, 10, 20) + bad_lifetimes + gone + good),
               _opt(7, b"\x07"), _opt(82, struct.pack("!I", 600))), 42, DUID, 9)
    assert [a.address for a in parsed.addresses] == ["fd77::105"]
    assert parsed.withdrawn == ("fd77::107",)
    assert parsed.preference == 7
    assert parsed.sol_max_rt == 600
    assert parsed.ok
    # T1 > T2: the IA is discarded (RFC 8415 21.4).
    parsed = packets6.parse_reply(_reply(_opt(3, struct.pack("!III", 9, 30, 20) + good)),
                                  42, DUID, 9)
    assert not parsed.ia_found
    assert parsed.address == ""
    # NoBinding in the IA.
    parsed = packets6.parse_reply(_reply(_opt(3, struct.pack("!III", 9, 0, 0)
                                              + _opt(13, b"\x00\x03"))), 42, DUID, 9)
    assert parsed.ia_status == packets6.NO_BINDING
    assert parsed.refusal == 3
