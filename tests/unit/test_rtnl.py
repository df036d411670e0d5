"""``anchord.rtnl``'s decoders on messages built here: what the kernel's answers become.

Fast and without a kernel; tests/integration/test_rtnl.py is the proof against the real one.
Here: the 32-bit fields that override the headers' 8-bit ones (IFA_FLAGS, RTA_TABLE), absent
attributes, and a message too short for its header (NetlinkError EBADMSG, never an IndexError
or a struct.error).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest

from anchord.netlink import NetlinkError, attr
from anchord.rtnl import (
    CACHEINFO,
    IFA_ADDRESS,
    IFA_CACHEINFO,
    IFA_FLAGS,
    IFA_LOCAL,
    IFADDRMSG,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINK,
    IFLA_LINK_NETNSID,
    IFLA_LINKINFO,
    IFLA_MACVLAN_MODE,
    IFLA_MTU,
    IFLA_OPERSTATE,
    MACVLAN_MODE_BRIDGE,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTMSG,
    RTN_UNICAST,
    decode_address,
    decode_link,
    decode_route,
)

u32 = struct.Struct("=I").pack


def test_a_macvlan_link() -> None:
    info = attr(IFLA_INFO_KIND, b"macvlan\0") + attr(
        IFLA_INFO_DATA, attr(IFLA_MACVLAN_MODE, u32(MACVLAN_MODE_BRIDGE)))
    payload = IFINFOMSG.pack(socket.AF_UNSPEC, 1, 7, 0x10043, 0) + b"".join((
        attr(IFLA_IFNAME, b"anchord-ext\0"), attr(IFLA_ADDRESS, bytes.fromhex("02A000000001")),
        attr(IFLA_MTU, u32(1500)), attr(IFLA_OPERSTATE, b"\x06"), attr(IFLA_LINK, u32(3)),
        attr(IFLA_LINK_NETNSID, struct.pack("=i", 0)), attr(IFLA_LINKINFO, info)))
    link = decode_link(payload)
    assert (link.index, link.name, link.flags, link.address, link.mtu, link.operstate) == (
        7, "anchord-ext", 0x10043, "02:a0:00:00:00:01", 1500, "UP")
    assert (link.kind, link.macvlan_mode, link.link, link.link_netnsid) == (
        "macvlan", MACVLAN_MODE_BRIDGE, 3, 0)


def test_a_plain_link_has_no_kind_parent_or_address() -> None:
    link = decode_link(IFINFOMSG.pack(socket.AF_UNSPEC, 772, 1, 0x49, 0)
                       + attr(IFLA_IFNAME, b"lo\0") + attr(IFLA_OPERSTATE, b"\x00"))
    assert (link.name, link.operstate, link.address, link.mtu) == ("lo", "UNKNOWN", "", 0)
    assert (link.kind, link.macvlan_mode, link.link, link.link_netnsid) == (None,) * 4
    # A state this module does not name yet is shown by its number, not dropped.
    assert decode_link(IFINFOMSG.pack(0, 0, 1, 0, 0) + attr(IFLA_OPERSTATE, b"\x09")
                       ).operstate == "9"


def test_an_address_takes_its_flags_from_ifa_flags() -> None:
    packed = socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    payload = IFADDRMSG.pack(socket.AF_INET6, 64, 0x80, 0, 4) + attr(IFA_ADDRESS, packed) \
        + attr(IFA_FLAGS, u32(0x280)) + attr(IFA_CACHEINFO, CACHEINFO.pack(50, 100, 1, 2))
    a = decode_address(payload)
    assert (a.address, a.prefixlen, a.flags, a.scope, a.index) == ("2001:db8::5", 64, 0x280, 0, 4)
    assert (a.valid, a.preferred) == (100, 50)  # the struct says preferred first


def test_an_address_without_ifa_flags_or_cacheinfo() -> None:
    packed = socket.inet_aton("10.0.0.5")
    a = decode_address(IFADDRMSG.pack(socket.AF_INET, 24, 0x80, 0, 2) + attr(IFA_LOCAL, packed))
    assert (a.address, a.flags, a.valid, a.preferred) == ("10.0.0.5", 0x80, 0, 0)


def test_a_route_takes_its_table_from_rta_table() -> None:
    payload = RTMSG.pack(socket.AF_INET, 0, 0, 0, 252, 16, 0, RTN_UNICAST, 0) + b"".join((
        attr(RTA_TABLE, u32(1000)), attr(RTA_GATEWAY, socket.inet_aton("10.0.0.1")),
        attr(RTA_OIF, u32(5))))
    r = decode_route(payload)
    assert (r.table, r.protocol, r.gateway, r.oif, r.priority, r.dst) == (
        1000, 16, "10.0.0.1", 5, None, None)
    r6 = decode_route(RTMSG.pack(socket.AF_INET6, 64, 0, 0, 254, 2, 0, 1, 0)
                      + attr(RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00::"))
                      + attr(RTA_PRIORITY, u32(256)))
    assert (r6.table, r6.dst, r6.dst_len, r6.priority, r6.gateway) == (254, "fd00::", 64, 256,
                                                                       None)


@pytest.mark.parametrize("decode", [decode_link, decode_address, decode_route])
def test_a_message_shorter_than_its_header(decode: Callable[[bytes], object]) -> None:
    with pytest.raises(NetlinkError) as exc:
        decode(b"\0\0\0")
    assert exc.value.errno == errno.EBADMSG
