"""Fuzzing the DHCPv6 and router advertisement parsers, seeded with real replies and RAs.

The seeds are Advertise/Reply frames captured from real dnsmasq and Kea and router
advertisements from radvd and dnsmasq (``tests/fixtures/dhcp``, see its README). Targets:
``packets6.classify`` (IPv6 framing, RA reading) and ``packets6.parse_reply`` (the DHCPv6
message). Properties:

- a mutated frame or message (byte edits; option-level edits of the message and of the
  options inside its IA_NA) is rejected with ``Malformed`` or read into values the client may
  use as they are — never another exception;
- what the client builds (Solicit, Request, Renew, Rebind, Release) carries exactly its
  fields; a reply and an RA built from generated fields parse back to exactly those fields.

``ANCHORD_FUZZ_EXAMPLES`` sets the cases per test (default 200); the long run is in
``tests/unit/test_fuzz_dhcp.py``'s docstring. This file only reads ``packets6``: a bug found
here is reported to the module's owner, not fixed here.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_RA, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from anchord.dhcp import packets6
from tests.unit.fuzz_dhcp_support import (
    FUZZ,
    IAID,
    MAC,
    byte_mutation,
    reframe6,
    seeds,
    tlv6,
    tlv_mutation,
)

DUID = packets6.duid_ll(MAC)
DHCP6_SEEDS = seeds("*-[ar][de][vp]*.bin")  # advertise, reply of dnsmasq and Kea
RA_SEEDS = seeds("*-ra*.bin")
ALL_SEEDS = DHCP6_SEEDS + RA_SEEDS


def _payload(frame: bytes) -> bytes:
    kind, payload = packets6.classify(frame, MAC)
    assert kind == "dhcp6"
    assert isinstance(payload, bytes)
    return payload


def _check_frame(frame: bytes) -> None:
    try:
        kind, value = packets6.classify(frame, MAC)
    except packets6.Malformed as exc:
        assert exc.reason
        return
    if kind == "ra":
        assert isinstance(value, packets6.RouterAdvert)
        assert ipaddress.IPv6Address(value.source).is_link_local
        assert 0 <= value.lifetime <= 0xFFFF
    elif kind == "dhcp6":
        assert isinstance(value, bytes)
        assert len(value) <= packets6.MAX_MESSAGE
        _check_payload(value, int.from_bytes(value[1:4], "big") if len(value) >= 4 else 0)
    else:
        assert kind == "other"
        assert value is None


def _check_payload(payload: bytes, xid: int) -> None:
    try:
        reply = packets6.parse_reply(payload, xid, DUID, IAID)
    except packets6.Malformed as exc:
        assert exc.reason
        return
    assert reply.msg_type in (packets6.ADVERTISE, packets6.REPLY)
    assert 2 < len(reply.server_duid) <= 130
    if reply.address:
        address = ipaddress.IPv6Address(reply.address)
        assert not (address.is_multicast)
        assert not (address.is_link_local)
        assert not (address.is_unspecified)
        assert reply.status == 0
        assert reply.preferred <= reply.valid


def test_every_seed_is_valid() -> None:
    kinds = [packets6.classify(frame, MAC)[0] for frame in ALL_SEEDS]
    assert kinds.count("ra") == len(RA_SEEDS)
    assert kinds.count("dhcp6") == len(DHCP6_SEEDS)
    for frame in DHCP6_SEEDS:
        payload = _payload(frame)
        assert packets6.parse_reply(payload, int.from_bytes(payload[1:4], "big"), DUID,
                                    IAID).address


def _body_mutation(seed: bytes) -> st.SearchStrategy[bytes]:
    """Byte edits of the L4 body, the IPv6 payload length (and UDP length) put right."""
    return byte_mutation(seed[54:]).map(lambda body: reframe6(seed, body))


@FUZZ
@given(st.sampled_from(DHCP6_SEEDS).flatmap(
    lambda seed: st.one_of(byte_mutation(seed, hot=54), _body_mutation(seed))))
def test_a_mutated_dhcp6_frame_is_rejected_or_usable(frame: bytes) -> None:
    _check_frame(frame)


@FUZZ
@given(st.sampled_from(RA_SEEDS).flatmap(
    lambda seed: st.one_of(byte_mutation(seed, hot=54), _body_mutation(seed))))
def test_a_mutated_router_advertisement_is_rejected_or_usable(frame: bytes) -> None:
    _check_frame(frame)


def _encode6(options: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("!HH", code, len(value)) + value for code, value in options)


@st.composite
def option_mutated_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    payload = _payload(draw(st.sampled_from(DHCP6_SEEDS)))
    options = tlv6(payload[4:])
    if draw(st.booleans()):
        # Mutate inside the IA_NA (and its IAADDR) instead of the top level.
        options = [(code, value[:12] + _encode6(draw(tlv_mutation(tlv6(value[12:]), (1, 30)))))
                   if code == packets6.OPT_IA_NA else (code, value) for code, value in options]
    else:
        options = draw(tlv_mutation(options, (1, 30)))
    return int.from_bytes(payload[1:4], "big"), payload[:4] + _encode6(options)


@FUZZ
@given(option_mutated_payloads())
def test_an_option_mutated_message_is_rejected_or_usable(case: tuple[int, bytes]) -> None:
    xid, payload = case
    _check_payload(payload, xid)


# --- round trips -----------------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
globals6 = st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + (1 << 64)).map(
    lambda n: str(ipaddress.IPv6Address(n)))
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@FUZZ
@given(st.sampled_from((packets6.SOLICIT, packets6.REQUEST, packets6.RENEW, packets6.REBIND,
                        packets6.RELEASE)), st.integers(0, 0xFFFFFF), u32,
       st.lists(labels, min_size=1, max_size=3).map(".".join), st.one_of(st.just(""), globals6),
       st.binary(min_size=3, max_size=20), st.integers(0, 0xFFFF))
def test_what_the_client_builds_carries_its_fields(msg_type: int, xid: int, iaid: int,
                                                   hostname: str, address: str, server: bytes,
                                                   elapsed: int) -> None:
    frame = packets6.build(msg_type, MAC, "fe80::1", xid, DUID, iaid, hostname,
                           address=address, server_duid=server, elapsed=elapsed)
    assert frame[54 + 2:54 + 4] == b"\x02\x23"  # to port 547
    payload = frame[54 + 8:]
    assert payload[0] == msg_type
    assert int.from_bytes(payload[1:4], "big") == xid
    options = dict(tlv6(payload[4:]))
    assert _encode6(tlv6(payload[4:])) == payload[4:]  # a clean walk, nothing left over
    assert options[packets6.OPT_CLIENTID] == DUID
    assert options[packets6.OPT_SERVERID] == server
    assert options[packets6.OPT_ELAPSED] == struct.pack("!H", elapsed)
    ia = options[packets6.OPT_IA_NA]
    assert struct.unpack("!I", ia[:4])[0] == iaid
    inner = dict(tlv6(ia[12:]))
    if address:
        assert ipaddress.IPv6Address(inner[packets6.OPT_IAADDR][:16]) == \
            ipaddress.IPv6Address(address)
    else:
        assert packets6.OPT_IAADDR not in inner


@st.composite
def replies(draw: st.DrawFn) -> tuple[bytes, int, packets6.Reply6]:
    msg_type = draw(st.sampled_from((packets6.ADVERTISE, packets6.REPLY)))
    xid = draw(st.integers(0, 0xFFFFFF))
    server = draw(st.binary(min_size=3, max_size=130))
    address = draw(globals6)
    # A usable address (valid > 0, preferred <= valid) in an IA whose T1 <= T2: the parser
    # discards the others (RFC 8415 21.4, 21.6), as the machine tests show.
    valid = draw(st.integers(1, 0xFFFFFFFF))
    preferred = draw(st.integers(0, valid))
    t2 = draw(u32)
    t1 = draw(st.integers(0, t2))
    iaaddr = ipaddress.IPv6Address(address).packed + struct.pack("!II", preferred, valid)
    # Options the client does not act on (preference and SOL_MAX_RT it does: not here).
    others = draw(st.lists(st.tuples(st.sampled_from((23, 24, 39)),
                                     st.binary(max_size=30)), max_size=3))
    ia = (packets6.OPT_IA_NA, struct.pack("!III", IAID, t1, t2)
          + _encode6([(packets6.OPT_IAADDR, iaaddr)]))
    options = draw(st.permutations([(packets6.OPT_CLIENTID, DUID),
                                    (packets6.OPT_SERVERID, server), ia, *others]))
    payload = bytes([msg_type]) + xid.to_bytes(3, "big") + _encode6(options)
    expected = packets6.Reply6(msg_type, server, status=0, ia_found=True, ia_status=0, t1=t1,
                               t2=t2, addresses=(packets6.IaAddress(address, preferred, valid),))
    return payload, xid, expected


@FUZZ
@given(replies())
def test_a_built_reply_parses_back_to_its_fields(case: tuple[bytes, int, packets6.Reply6]) -> None:
    payload, xid, expected = case
    frame = bytes(Ether(dst=MAC) / IPv6(src="fe80::9", dst="fe80::1") / UDP(sport=547, dport=546)
                  / Raw(payload))
    assert _payload(frame) == payload
    assert packets6.parse_reply(payload, xid, DUID, IAID) == expected


@FUZZ
@given(st.booleans(), st.booleans(), st.integers(0, 0xFFFF),
       st.integers(0xFE80 << 112, (0xFE80 << 112) + (1 << 64) - 1))
def test_a_built_router_advertisement_parses_back(managed: bool, other: bool, lifetime: int,
                                                  source: int) -> None:
    src = str(ipaddress.IPv6Address(source))
    frame = bytes(Ether(dst="33:33:00:00:00:01") / IPv6(src=src, dst="ff02::1", hlim=255)
                  / ICMPv6ND_RA(M=int(managed), O=int(other), routerlifetime=lifetime))
    assert packets6.classify(frame, MAC) == ("ra", packets6.RouterAdvert(src, managed, other,
                                                                         lifetime))
