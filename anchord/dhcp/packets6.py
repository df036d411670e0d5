"""DHCPv6 and Neighbour Discovery on the wire: build with scapy, parse strictly.

Owns the IPv6 message formats the dhcp worker speaks: DHCPv6 client messages
(RFC 8415), Router Solicitation, unsolicited Neighbour Advertisement, and the
reading of Router Advertisements (only the M flag, lifetime and source matter
to us: the kernel does SLAAC itself). scapy builds the IPv6/UDP/ICMPv6 framing;
the DHCPv6 options are a flat TLV we write and walk ourselves so that a
received message is validated byte by byte. Anything malformed raises
``Malformed``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from anchord.dhcp.packets import Malformed, mac_bytes

SOLICIT, ADVERTISE, REQUEST, RENEW, REBIND, REPLY, RELEASE = 1, 2, 3, 5, 6, 7, 8
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 5, 6
OPT_ELAPSED, OPT_STATUS, OPT_FQDN = 8, 13, 39
MAX_MESSAGE = 1500

__all__ = ["Malformed", "Reply6", "RouterAdvert", "build", "classify", "parse_reply"]


def duid_ll(mac: str) -> bytes:
    """DUID-LL (RFC 8415 11.4): type 3, hardware type 1, the MAC. Stable as the MAC is."""
    return struct.pack("!HH", 3, 1) + mac_bytes(mac)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def _fqdn(hostname: str) -> bytes:
    # RFC 4704: flags S=1 (server updates AAAA), then the name in wire format (partial).
    wire = b"".join(bytes([len(label)]) + label.encode("ascii")
                    for label in hostname.split(".") if label)
    return b"\x01" + wire


def build(msg_type: int, mac: str, src: str, xid: int, duid: bytes, iaid: int,
          hostname: str, *, address: str = "", server_duid: bytes = b"",
          elapsed: int = 0) -> bytes:
    """One DHCPv6 client message to All_DHCP_Relay_Agents_and_Servers, as a frame."""
    ia_options = b""
    if address:
        ia_options = _opt(OPT_IAADDR, ipaddress.IPv6Address(address).packed
                          + struct.pack("!II", 0, 0))
    body = _opt(OPT_CLIENTID, duid)
    if server_duid:
        body += _opt(OPT_SERVERID, server_duid)
    body += _opt(OPT_IA_NA, struct.pack("!III", iaid, 0, 0) + ia_options)
    body += _opt(OPT_ELAPSED, struct.pack("!H", elapsed))
    if msg_type != RELEASE:
        body += _opt(OPT_FQDN, _fqdn(hostname))
        body += _opt(OPT_ORO, struct.pack("!HHH", 23, 24, OPT_FQDN))
    payload = struct.pack("!I", (msg_type << 24) | (xid & 0xFFFFFF)) + body
    frame = (Ether(src=mac, dst="33:33:00:01:00:02")
             / IPv6(src=src, dst="ff02::1:2", hlim=1)
             / UDP(sport=546, dport=547) / Raw(payload))
    return bytes(frame)


def router_solicit(mac: str, src: str) -> bytes:
    return bytes(Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src=src, dst="ff02::2", hlim=255)
                 / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=mac))


def unsolicited_na(mac: str, address: str) -> bytes:
    """RFC 4861 7.2.6: tell the LAN at once which MAC has ``address`` now."""
    return bytes(Ether(src=mac, dst="33:33:00:00:00:01")
                 / IPv6(src=address, dst="ff02::1", hlim=255)
                 / ICMPv6ND_NA(tgt=address, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac))


@dataclass(frozen=True)
class RouterAdvert:
    source: str
    managed: bool
    other: bool
    lifetime: int


@dataclass(frozen=True)
class Reply6:
    msg_type: int
    server_duid: bytes
    address: str  # "" if the IA carries no usable address
    preferred: int
    valid: int
    t1: int
    t2: int
    status: int


def classify(frame: bytes, mac: str) -> tuple[str, RouterAdvert | bytes | None]:
    """("ra", RouterAdvert), ("dhcp6", UDP payload) or ("other", None)."""
    if len(frame) < 54 or frame[12:14] != b"\x86\xdd":
        return "other", None
    if frame[0] & 1 == 0 and frame[0:6] != mac_bytes(mac):
        return "other", None
    next_header = frame[20]
    (plen,) = struct.unpack("!H", frame[18:20])
    body = frame[54:54 + plen]
    if len(body) != plen:
        raise Malformed("truncated_ipv6")
    source = str(ipaddress.IPv6Address(frame[22:38]))
    if next_header == 58:
        if len(body) < 16 or body[0] != 134:
            return "other", None
        if frame[21] != 255 or not source.startswith("fe80:"):
            raise Malformed("ra_not_on_link")
        flags = body[5]
        (lifetime,) = struct.unpack("!H", body[6:8])
        return "ra", RouterAdvert(source, bool(flags & 0x80), bool(flags & 0x40), lifetime)
    if next_header == 17:
        if len(body) < 8:
            raise Malformed("truncated_udp")
        sport, dport, ulen = struct.unpack("!HHH", body[:6])
        if dport != 546:
            return "other", None
        if sport != 547 or ulen != len(body) or ulen > MAX_MESSAGE + 8:
            raise Malformed("bad_udp")
        return "dhcp6", bytes(body[8:])
    return "other", None


def _walk(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 4 > len(data):
            raise Malformed("truncated_option")
        code, length = struct.unpack("!HH", data[i:i + 4])
        value = data[i + 4:i + 4 + length]
        if len(value) != length:
            raise Malformed("bad_option_length", f"option {code} length {length}")
        out.append((code, value))
        i += 4 + length
    return out


def _status(value: bytes) -> int:
    if len(value) < 2:
        raise Malformed("bad_status")
    return int(struct.unpack("!H", value[:2])[0])


def parse_reply(payload: bytes, xid: int, duid: bytes, iaid: int) -> Reply6:
    """Validate a DHCPv6 Advertise/Reply to transaction ``xid`` for our DUID and IA."""
    if len(payload) < 4:
        raise Malformed("truncated")
    if len(payload) > MAX_MESSAGE:
        raise Malformed("oversized")
    msg_type = payload[0]
    if msg_type not in (ADVERTISE, REPLY):
        raise Malformed("bad_message_type")
    if int.from_bytes(payload[1:4], "big") != xid:
        raise Malformed("wrong_xid")
    options = _walk(payload[4:])
    codes = [code for code, _ in options]
    if codes.count(OPT_CLIENTID) != 1 or codes.count(OPT_SERVERID) != 1:
        raise Malformed("bad_ids")
    found = dict(options)
    if found[OPT_CLIENTID] != duid:
        raise Malformed("wrong_client")
    server = found[OPT_SERVERID]
    if not 2 < len(server) <= 130:
        raise Malformed("bad_server_id")
    status = _status(found[OPT_STATUS]) if OPT_STATUS in found else 0
    address, preferred, valid, t1, t2 = "", 0, 0, 0, 0
    for code, value in options:
        if code != OPT_IA_NA:
            continue
        if len(value) < 12:
            raise Malformed("bad_ia_na")
        ia, t1, t2 = struct.unpack("!III", value[:12])
        if ia != iaid:
            continue
        for sub, subvalue in _walk(value[12:]):
            if sub == OPT_STATUS:
                status = status or _status(subvalue)
            elif sub == OPT_IAADDR and not address:
                if len(subvalue) < 24:
                    raise Malformed("bad_iaaddr")
                candidate = ipaddress.IPv6Address(subvalue[:16])
                preferred, valid = struct.unpack("!II", subvalue[16:24])
                if any(sub2 == OPT_STATUS and _status(v) != 0 for sub2, v in _walk(subvalue[24:])):
                    continue
                if candidate.is_multicast or candidate.is_unspecified or \
                        candidate.is_link_local or candidate.is_loopback or preferred > valid:
                    raise Malformed("bad_iaaddr")
                address = str(candidate)
    if status != 0:
        address = ""
    return Reply6(msg_type, server, address, preferred, valid, t1, t2, status)
