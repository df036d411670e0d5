"""``anchord.nfct``: the ctnetlink requests byte for byte, entries round-tripped, and every
malformed or truncated entry rejected with the one error type (NetlinkError, EBADMSG).

The kernel's side is in tests/integration/test_conntrack.py (dumps, filters and deletions on
live flows, IPv4 and IPv6) and tests/integration/test_nfct_kernel.py (entries of every protocol
decoded as ``conntrack -L`` shows them, and deleted).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchord.netlink import HEADER, Message, NetlinkError, attr
from anchord.nfct import (
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_NEW,
    NLA_F_NESTED,
    Entry,
    Tuple,
    decode_entry,
    delete_request,
    dump_request,
    message_type,
)

EXAMPLES = int(os.environ.get("ANCHORD_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

V4, V6 = socket.AF_INET, socket.AF_INET6
CTA_STATUS, CTA_COUNTERS_ORIG = 3, 9  # attributes an entry carries that we skip


def entry_message(family: int, orig: Tuple, reply: Tuple, extra: bytes = b"") -> Message:
    """A dumped entry as the kernel frames it: nested attributes flagged NLA_F_NESTED, the
    status before the tuples' end, counters after (things the decoder must skip)."""
    body = (struct.pack("=BBH", family, 0, 0)
            + attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig.encode(family))
            + attr(CTA_TUPLE_REPLY | NLA_F_NESTED, reply.encode(family))
            + attr(CTA_STATUS, struct.pack("!I", 0x1BE))
            + attr(CTA_COUNTERS_ORIG | NLA_F_NESTED, attr(1, struct.pack("!Q", 7)))
            + extra)
    return Message(message_type(IPCTNL_MSG_CT_NEW), 0x2, body)


UDP4 = (Tuple("192.0.2.10", "192.0.2.50", 17, 40000, 5353),
        Tuple("172.31.0.11", "192.0.2.10", 17, 5353, 40000))
TCP6 = (Tuple("2001:db8::10", "2001:db8::50", 6, 41000, 443),
        Tuple("fd00::11", "2001:db8::10", 6, 8443, 41000))


def test_a_reply_source_filter_is_encoded_as_the_kernel_reads_it() -> None:
    body = dump_request(V4, "reply", Tuple(saddr="172.31.0.11", proto=17, sport=5353))
    assert body == bytes.fromhex(
        "02000000"                      # nfgenmsg: AF_INET, version 0, res_id 0
        "2400" "0200"                   # CTA_TUPLE_REPLY, 36 bytes
        "0c00" "0100" "0800" "0100" "ac1f000b"  # CTA_TUPLE_IP { CTA_IP_V4_SRC 172.31.0.11 }
        "1400" "0200"                   # CTA_TUPLE_PROTO
        "0500" "0100" "11000000"        # CTA_PROTO_NUM 17, padded
        "0600" "0200" "14e90000"        # CTA_PROTO_SRC_PORT 5353 (big endian), padded
        "0c00" "1980"                   # CTA_FILTER, NLA_F_NESTED (the kernel requires it)
        "0800" "0200" + struct.pack("=I", 1 | 8 | 16).hex())  # REPLY_FLAGS: src, proto, sport


def test_a_filter_without_fields_is_a_plain_dump() -> None:
    assert dump_request(V6, "orig", Tuple()) == struct.pack("=BBH", V6, 0, 0)


@pytest.mark.parametrize("direction", ["orig", "reply"])
@pytest.mark.parametrize(("family", "match"), [
    (V4, Tuple(daddr="192.0.2.50")),
    (V4, Tuple(saddr="172.31.0.11", proto=6, sport=80)),
    (V4, Tuple(saddr="10.0.0.1", daddr="10.0.0.2", proto=17, sport=1, dport=65535)),
    (V6, Tuple(proto=17, sport=5353)),
    (V6, Tuple(saddr="2001:db8::1", daddr="fd00::2", proto=6, dport=443)),
])
def test_requests_are_what_pyroute2_sent_before(family: int, match: Tuple, direction: str) -> None:
    """The same bytes as the pyroute2 encoding this module replaced: the kernel sees no change."""
    nfctsocket = pytest.importorskip("pyroute2.netlink.nfnetlink.nfctsocket")
    theirs = nfctsocket.NFCTAttrTuple(family=family, saddr=match.saddr, daddr=match.daddr,
                                      proto=match.proto, sport=match.sport, dport=match.dport)
    theirs.attrs()
    flags = "CTA_FILTER_ORIG_FLAGS" if direction == "orig" else "CTA_FILTER_REPLY_FLAGS"
    msg = nfctsocket.nfct_msg.create_from(**{f"tuple_{direction}": theirs,
                                             "cta_filter": {"attrs": [[flags, theirs.flags]]}})
    msg["nfgen_family"] = family
    msg.encode()
    assert dump_request(family, direction, match) == bytes(msg.data[HEADER.size:])


@pytest.mark.parametrize(("orig", "reply"), [UDP4, TCP6], ids=["udp4", "tcp6"])
def test_an_entry_round_trips(orig: Tuple, reply: Tuple) -> None:
    family = V6 if ":" in (orig.saddr or "") else V4
    entry = decode_entry(entry_message(family, orig, reply), family)
    assert entry == Entry(family, orig, reply, orig.encode(family))
    # Its deletion names it by the kernel's own original tuple.
    assert delete_request(entry) == (struct.pack("=BBH", family, 0, 0)
                                     + attr(CTA_TUPLE_ORIG, orig.encode(family)))
    assert message_type(IPCTNL_MSG_CT_DELETE) == 0x102


def test_a_protocol_without_ports_decodes_without_them() -> None:
    icmp_type, icmp_code, icmp_id = 7, 8, 4  # CTA_PROTO_ICMP_* attribute types
    raw = (attr(1 | NLA_F_NESTED, attr(1, socket.inet_aton("192.0.2.10"))
                + attr(2, socket.inet_aton("192.0.2.50")))
           + attr(CTA_TUPLE_PROTO | NLA_F_NESTED, attr(1, b"\x01") + attr(icmp_id, b"\x12\x34")
                  + attr(icmp_type, b"\x08") + attr(icmp_code, b"\x00")))
    body = (struct.pack("=BBH", V4, 0, 0) + attr(CTA_TUPLE_ORIG | NLA_F_NESTED, raw)
            + attr(CTA_TUPLE_REPLY | NLA_F_NESTED, raw))
    entry = decode_entry(Message(message_type(IPCTNL_MSG_CT_NEW), 0, body), V4)
    assert entry.orig == Tuple("192.0.2.10", "192.0.2.50", 1, None, None)
    assert entry.orig_raw == raw  # ICMP's id/type/code go back to the kernel as they came


def test_matches_compares_only_the_fields_given() -> None:
    orig, _ = UDP4
    assert Tuple().matches(orig)
    assert Tuple(daddr="192.0.2.50", proto=17).matches(orig)
    assert not Tuple(daddr="192.0.2.50", proto=6).matches(orig)
    assert not Tuple(sport=1).matches(orig)
    assert Tuple(saddr="1.2.3.4", dport=9).filter_flags() == 1 | 32


def expect_malformed(msg: Message, family: int = V4) -> None:
    with pytest.raises(NetlinkError) as caught:
        decode_entry(msg, family)
    assert caught.value.errno == errno.EBADMSG


def test_truncated_anywhere_inside_the_tuples_is_rejected() -> None:
    """Every cut of a valid entry either fails with EBADMSG or, when it falls between whole
    attributes after both tuples, still gives the same entry: nothing else, never a guess."""
    whole = entry_message(V4, *UDP4)
    expected = decode_entry(whole, V4)
    tuples_end = 4 + 4 + len(UDP4[0].encode(V4)) + 4 + len(UDP4[1].encode(V4))
    for cut in range(len(whole.payload)):
        msg = whole._replace(payload=whole.payload[:cut])
        if cut < tuples_end:
            expect_malformed(msg)
        else:
            try:
                assert decode_entry(msg, V4) == expected
            except NetlinkError as exc:
                assert exc.errno == errno.EBADMSG


def inner(family: int, ip: bytes, proto: bytes) -> Message:
    tup = attr(1, ip) + attr(2, proto)
    return Message(message_type(IPCTNL_MSG_CT_NEW), 0,
                   struct.pack("=BBH", family, 0, 0) + attr(CTA_TUPLE_ORIG, tup)
                   + attr(CTA_TUPLE_REPLY, tup))


GOOD_IP = attr(1, socket.inet_aton("10.0.0.1")) + attr(2, socket.inet_aton("10.0.0.2"))
GOOD_PROTO = attr(1, b"\x11") + attr(2, b"\x00\x35") + attr(3, b"\x00\x35")


def bare(*attributes: bytes) -> Message:
    return Message(message_type(IPCTNL_MSG_CT_NEW), 0,
                   struct.pack("=BBH", V4, 0, 0) + b"".join(attributes))


GOOD = inner(V4, GOOD_IP, GOOD_PROTO)


@pytest.mark.parametrize(("msg", "family"), [
    pytest.param(GOOD._replace(type=message_type(IPCTNL_MSG_CT_DELETE)), V4, id="not-an-entry"),
    pytest.param(GOOD._replace(payload=b"\x02\x00\x00"), V4, id="short-header"),
    pytest.param(GOOD, V6, id="family-not-the-dumps"),
    pytest.param(inner(V4, attr(1, b"\x0a\x00\x00\x01\x00") + attr(2, bytes(4)), GOOD_PROTO),
                 V4, id="5-byte-ipv4-address"),
    pytest.param(inner(V4, attr(2, bytes(4)), GOOD_PROTO), V4, id="no-source"),
    pytest.param(inner(V6, attr(3, bytes(4)) + attr(4, bytes(4)), GOOD_PROTO), V6,
                 id="4-byte-ipv6-addresses"),
    pytest.param(inner(V6, GOOD_IP, GOOD_PROTO), V6, id="ipv4-attributes-in-ipv6-entry"),
    pytest.param(inner(V4, GOOD_IP, attr(1, b"\x11\x00") + attr(2, b"\x00\x35")), V4,
                 id="2-byte-protocol"),
    pytest.param(inner(V4, GOOD_IP, attr(2, b"\x00\x35")), V4, id="no-protocol"),
    pytest.param(inner(V4, GOOD_IP, attr(1, b"\x11") + attr(2, b"\x35")), V4, id="1-byte-port"),
    pytest.param(bare(attr(CTA_TUPLE_ORIG, attr(1, GOOD_IP) + attr(2, GOOD_PROTO))), V4,
                 id="no-reply-tuple"),
    pytest.param(bare(attr(CTA_TUPLE_ORIG, attr(2, GOOD_PROTO)),
                      attr(CTA_TUPLE_REPLY, attr(1, GOOD_IP) + attr(2, GOOD_PROTO))), V4,
                 id="tuple-without-addresses"),
    pytest.param(bare(b"\xff\x00\x01\x00"), V4, id="attribute-longer-than-message"),
    pytest.param(bare(attr(CTA_TUPLE_ORIG, b"\x10\x00\x01\x00" + bytes(4)),
                      attr(CTA_TUPLE_REPLY, attr(1, GOOD_IP) + attr(2, GOOD_PROTO))), V4,
                 id="nested-attribute-longer-than-parent"),
])
def test_malformed_entries_are_rejected(msg: Message, family: int) -> None:
    expect_malformed(msg, family)


def test_the_good_case_of_the_malformed_table_decodes() -> None:
    """The table above is malformed only where it says: its base decodes."""
    entry = decode_entry(GOOD, V4)
    assert entry.orig == Tuple("10.0.0.1", "10.0.0.2", 17, 53, 53)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([V4, V6]))
def test_any_bytes_decode_or_fail_with_ebadmsg(data: bytes, family: int) -> None:
    try:
        decode_entry(Message(message_type(IPCTNL_MSG_CT_NEW), 0, data), family)
    except NetlinkError as exc:
        assert exc.errno == errno.EBADMSG


@FUZZ
@given(st.data())
def test_a_valid_entry_with_bytes_flipped_decodes_or_fails_with_ebadmsg(
        data: st.DataObject) -> None:
    payload = bytearray(entry_message(V4, *UDP4).payload)
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode_entry(Message(message_type(IPCTNL_MSG_CT_NEW), 0, bytes(payload)), V4)
    except NetlinkError as exc:
        assert exc.errno == errno.EBADMSG

