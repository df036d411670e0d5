"""DHCPv6 and Neighbour Discovery on the wire: built with ``struct``, parsed strictly.

Owns the IPv6 message formats the dhcp worker speaks: DHCPv6 client messages
(RFC 8415: Solicit, Request, Renew, Rebind, Release, Decline), Router
Solicitation, unsolicited Neighbour Advertisement, and the reading of Router
Advertisements (the M flag, lifetime and source matter to us: the kernel does
SLAAC itself).

A client message is written option by option (Client and Server Identifier, IA_NA with its
IA Address, Elapsed Time, Client FQDN, Option Request) inside the Ethernet, IPv6 and UDP
headers of ``frames``; Router Solicitation and Neighbour Advertisement likewise, with the
ICMPv6 checksum. The Client FQDN option (39) carries a bare host name as a *partial* name
(RFC 4704 4.2, no root label) so that the server appends its own domain.

A received message is walked byte by byte, and anything malformed raises ``Malformed``: an
option whose length runs past the end of its parent, a truncated IA_NA, a server DUID of 200
octets are errors here, never a guess. tests/unit/test_dhcp_scapy_oracle.py checks that
scapy (a test oracle only) and this module read and write the same messages.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from anchord.dhcp import frames
from anchord.dhcp.packets import Malformed, mac_bytes

SOLICIT, ADVERTISE, REQUEST, RENEW, REBIND, REPLY, RELEASE, DECLINE = 1, 2, 3, 5, 6, 7, 8, 9
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 5, 6
OPT_PREFERENCE, OPT_ELAPSED, OPT_STATUS, OPT_FQDN, OPT_SOL_MAX_RT = 7, 8, 13, 39, 82
OPT_DNS_SERVERS, OPT_DOMAIN_LIST = 23, 24
# RFC 8415 21.13 status codes
SUCCESS, UNSPEC_FAIL, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK, USE_MULTICAST = range(6)
STATUS_NAMES = {SUCCESS: "Success", UNSPEC_FAIL: "UnspecFail", NO_ADDRS_AVAIL: "NoAddrsAvail",
                NO_BINDING: "NoBinding", NOT_ON_LINK: "NotOnLink",
                USE_MULTICAST: "UseMulticast"}
SOL_MAX_RT_RANGE = (60, 86400)  # RFC 8415 21.24: a value outside is ignored
MAX_MESSAGE = 1500
INFINITY = 0xFFFFFFFF

_CLIENT_MESSAGES = (SOLICIT, REQUEST, RENEW, REBIND, RELEASE, DECLINE)
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = ("ff02::1:2", "33:33:00:01:00:02")
ALL_ROUTERS = ("ff02::2", "33:33:00:00:00:02")
ALL_NODES = ("ff02::1", "33:33:00:00:00:01")
ND_ROUTER_SOLICIT, ND_NEIGHBOR_ADVERT = 133, 136
ND_OPT_SOURCE_LLADDR, ND_OPT_TARGET_LLADDR = 1, 2
NA_OVERRIDE = 0x20  # RFC 4861 4.4: R 0x80, S 0x40, O 0x20

__all__ = ["Malformed", "Reply6", "RouterAdvert", "build", "classify", "parse_reply"]


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, f"status {code}")


def duid_ll(mac: str) -> bytes:
    """DUID-LL (RFC 8415 11.4): type 3, hardware type 1, the MAC. Stable as the MAC is."""
    return struct.pack("!HH", 3, 1) + mac_bytes(mac)


def _fqdn(hostname: str) -> bytes:
    # RFC 4704: flags S=1 (server updates AAAA), then the name in wire format; a bare host
    # name is a partial name (no root label), a dotted one is sent fully qualified.
    labels = [label for label in hostname.split(".") if label]
    wire = b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels)
    return b"\x01" + wire + (b"\x00" if len(labels) > 1 else b"")


def option(code: int, value: bytes) -> bytes:
    """One DHCPv6 option (RFC 8415 21.1): code, length, value."""
    if len(value) > 0xFFFF:
        raise ValueError(f"option {code}: {len(value)} octets do not fit in one option")
    return struct.pack("!HH", code, len(value)) + value


def build(msg_type: int, mac: str, src: str, xid: int, duid: bytes, iaid: int,
          hostname: str, *, address: str = "", server_duid: bytes = b"",
          elapsed: int = 0) -> bytes:
    """One DHCPv6 client message to All_DHCP_Relay_Agents_and_Servers, as a frame."""
    if msg_type not in _CLIENT_MESSAGES:
        raise ValueError(f"not a client message type: {msg_type}")
    message = struct.pack("!I", (msg_type << 24) | (xid & 0xFFFFFF)) + option(OPT_CLIENTID, duid)
    if server_duid:
        message += option(OPT_SERVERID, server_duid)
    # RFC 8415 21.6: lifetimes in a client's IA Address option are 0 (the server decides).
    ia_addrs = option(OPT_IAADDR, ipaddress.IPv6Address(address).packed
                      + struct.pack("!II", 0, 0)) if address else b""
    message += option(OPT_IA_NA, struct.pack("!III", iaid, 0, 0) + ia_addrs)
    message += option(OPT_ELAPSED, struct.pack("!H", elapsed))
    if msg_type not in (RELEASE, DECLINE):
        message += option(OPT_FQDN, _fqdn(hostname))
        # RFC 8415 18.2: SOL_MAX_RT is always in the Option Request option.
        message += option(OPT_ORO, struct.pack(
            "!4H", OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_FQDN, OPT_SOL_MAX_RT))
    dst, dst_mac = ALL_DHCP_RELAY_AGENTS_AND_SERVERS
    return frames.ethernet(dst_mac, mac, frames.ETH_IPV6) + frames.ipv6(
        src, dst, frames.PROTO_UDP, frames.udp(546, 547, message, src=src, dst=dst),
        hop_limit=1)


def _lladdr_option(kind: int, mac: str) -> bytes:
    # RFC 4861 4.6.1: type, length in units of 8 octets, the link-layer address.
    return struct.pack("!BB6s", kind, 1, mac_bytes(mac))


def _icmpv6_frame(mac: str, src: str, group: tuple[str, str], icmp_type: int,
                  body: bytes) -> bytes:
    dst, dst_mac = group
    return frames.ethernet(dst_mac, mac, frames.ETH_IPV6) + frames.ipv6(
        src, dst, frames.PROTO_ICMPV6, frames.icmpv6(icmp_type, 0, body, src=src, dst=dst),
        hop_limit=255)  # RFC 4861: 255, so a receiver knows it was not forwarded


def router_solicit(mac: str, src: str) -> bytes:
    """RFC 4861 6.3.7; from the unspecified address (no link-local yet) without the SLLAO
    (4.1: it MUST NOT be included then)."""
    body = b"\x00" * 4  # reserved
    if src != "::":
        body += _lladdr_option(ND_OPT_SOURCE_LLADDR, mac)
    return _icmpv6_frame(mac, src, ALL_ROUTERS, ND_ROUTER_SOLICIT, body)


def unsolicited_na(mac: str, address: str) -> bytes:
    """RFC 4861 7.2.6: tell the LAN at once which MAC has ``address`` now."""
    body = struct.pack("!B3x16s", NA_OVERRIDE, ipaddress.IPv6Address(address).packed) \
        + _lladdr_option(ND_OPT_TARGET_LLADDR, mac)
    return _icmpv6_frame(mac, address, ALL_NODES, ND_NEIGHBOR_ADVERT, body)


@dataclass(frozen=True)
class RouterAdvert:
    source: str
    managed: bool
    other: bool
    lifetime: int


@dataclass(frozen=True)
class IaAddress:
    address: str
    preferred: int
    valid: int


@dataclass(frozen=True)
class Reply6:
    """An Advertise or Reply, reduced to what the client acts on.

    ``addresses`` holds the IA_NA's usable addresses only: an address whose valid lifetime
    is 0 (the server withdraws it, RFC 8415 18.2.10.1) is in ``withdrawn`` instead, and an
    address with preferred > valid, or an IA whose T1 > T2, is discarded (21.4, 21.6).
    """

    msg_type: int
    server_duid: bytes
    status: int  # the message's own status (0 when absent)
    ia_found: bool  # an IA_NA with our IAID was in the message
    ia_status: int  # that IA's status (0 when absent)
    t1: int
    t2: int
    addresses: tuple[IaAddress, ...] = ()
    withdrawn: tuple[str, ...] = ()
    preference: int = 0
    sol_max_rt: int = 0  # 0: none given (or out of range)

    @property
    def address(self) -> str:
        """The first usable address ("" if none): what a Solicit exchange is offered."""
        return self.addresses[0].address if self.addresses and self.ok else ""

    @property
    def preferred(self) -> int:
        return self.addresses[0].preferred if self.addresses else 0

    @property
    def valid(self) -> int:
        return self.addresses[0].valid if self.addresses else 0

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS and self.ia_status == SUCCESS

    @property
    def refusal(self) -> int:
        """The status that refuses us something (the message's first, then the IA's)."""
        return self.status or self.ia_status


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


def _one(options: list[tuple[int, bytes]], code: int) -> bytes | None:
    values = [v for c, v in options if c == code]
    return values[0] if values else None


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
    if _one(options, OPT_CLIENTID) != duid:
        raise Malformed("wrong_client")
    server = _one(options, OPT_SERVERID) or b""
    if not 2 < len(server) <= 130:
        raise Malformed("bad_server_id")
    status_value = _one(options, OPT_STATUS)
    status = _status(status_value) if status_value is not None else SUCCESS
    preference = 0
    pref_value = _one(options, OPT_PREFERENCE)
    if pref_value is not None:
        if len(pref_value) != 1:
            raise Malformed("bad_preference")
        preference = pref_value[0]
    sol_max_rt = 0
    rt_value = _one(options, OPT_SOL_MAX_RT)
    if rt_value is not None:
        if len(rt_value) != 4:
            raise Malformed("bad_sol_max_rt")
        (rt,) = struct.unpack("!I", rt_value)
        if SOL_MAX_RT_RANGE[0] <= rt <= SOL_MAX_RT_RANGE[1]:
            sol_max_rt = int(rt)
    ia_found, ia_status, t1, t2 = False, SUCCESS, 0, 0
    addresses: list[IaAddress] = []
    withdrawn: list[str] = []
    for code, value in options:
        if code != OPT_IA_NA:
            continue
        if len(value) < 12:
            raise Malformed("bad_ia_na")
        ia, ia_t1, ia_t2 = struct.unpack("!III", value[:12])
        # The IAID first: another IA's timers (or a second copy of ours) are not ours.
        if ia != iaid or ia_found:
            continue
        sub_options = _walk(value[12:])
        if ia_t1 and ia_t2 and ia_t1 > ia_t2:
            continue  # RFC 8415 21.4: the client MUST discard such an IA_NA
        ia_found, t1, t2 = True, int(ia_t1), int(ia_t2)
        for sub, subvalue in sub_options:
            if sub == OPT_STATUS:
                ia_status = ia_status or _status(subvalue)
            elif sub == OPT_IAADDR:
                if len(subvalue) < 24:
                    raise Malformed("bad_iaaddr")
                candidate = ipaddress.IPv6Address(subvalue[:16])
                preferred, valid = struct.unpack("!II", subvalue[16:24])
                if candidate.is_multicast or candidate.is_unspecified or \
                        candidate.is_link_local or candidate.is_loopback:
                    raise Malformed("bad_iaaddr")
                if any(s == OPT_STATUS and _status(v) != SUCCESS
                       for s, v in _walk(subvalue[24:])):
                    continue
                if preferred > valid:
                    continue  # RFC 8415 21.6: MUST discard the IA Address option
                if valid == 0:
                    withdrawn.append(str(candidate))
                elif str(candidate) not in {a.address for a in addresses}:
                    addresses.append(IaAddress(str(candidate), int(preferred), int(valid)))
    return Reply6(msg_type, server, status, ia_found, ia_status, t1, t2, tuple(addresses),
                  tuple(withdrawn), preference, sol_max_rt)
