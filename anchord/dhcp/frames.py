"""Link, network and transport headers of the frames the dhcp worker sends, with ``struct``.

Owns the headers around the DHCP and neighbour-discovery messages (what ``packets`` and
``packets6`` build): Ethernet II, IPv4 (with its header checksum), IPv6, UDP over either (its
checksum over the pseudo-header, RFC 768 / RFC 8200 8.1) and the ICMPv6 checksum (RFC 4443
2.3), as the Internet checksum of RFC 1071. Like dhcpcd and systemd's sd-dhcp-client, an
exact codec of the few fields we write, instead of a general packet library: importing scapy
cost the worker 23 MB of VmRSS (issue 14), most of it tables we never looked at.

The header values are those scapy wrote before (IPv4 identification 1, no DF, TTL as the
caller says; IPv6 traffic class and flow label 0), so the frames are byte for byte what they
were; ``tests/unit/test_dhcp_scapy_oracle.py`` holds the two against each other.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_IPV4, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_UDP, PROTO_ICMPV6 = 17, 58


def mac_bytes(mac: str) -> bytes:
    """``02:42:aa:bb:cc:01`` as its six octets (ValueError if it is not six hex octets)."""
    octets = bytes(int(part, 16) for part in mac.split(":"))
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return octets


def checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: str, src: str, ethertype: int) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype)


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """A 20-octet IPv4 header (no options) and ``payload``."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, ttl, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int) -> bytes:
    """A 40-octet IPv6 header (no extension headers) and ``payload``."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def _pseudo4(src: str, dst: str, proto: int, length: int) -> bytes:
    return struct.pack("!4s4sBBH", ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed, 0, proto, length)


def _pseudo6(src: str, dst: str, next_header: int, length: int) -> bytes:
    return struct.pack("!16s16sI3xB", ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed, length, next_header)


def udp(sport: int, dport: int, payload: bytes, *, src: str, dst: str) -> bytes:
    """A UDP header and ``payload``; the checksum covers the IPv4 or IPv6 pseudo-header of
    ``src`` and ``dst`` (whichever family they are)."""
    length = 8 + len(payload)
    segment = struct.pack("!HHHH", sport, dport, length, 0) + payload
    pseudo = _pseudo6 if ":" in src else _pseudo4
    value = checksum(pseudo(src, dst, PROTO_UDP, length) + segment)
    # RFC 768: a computed 0 is sent as all ones (0 means "no checksum"); RFC 8200 8.1 likewise.
    return segment[:6] + struct.pack("!H", value or 0xFFFF) + segment[8:]


def icmpv6(icmp_type: int, code: int, body: bytes, *, src: str, dst: str) -> bytes:
    """An ICMPv6 message (type, code, checksum, then ``body``), checksummed over the IPv6
    pseudo-header."""
    message = struct.pack("!BBH", icmp_type, code, 0) + body
    value = checksum(_pseudo6(src, dst, PROTO_ICMPV6, len(message)) + message)
    return message[:2] + struct.pack("!H", value) + message[4:]
