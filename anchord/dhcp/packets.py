"""DHCPv4 on the wire: build client messages, parse server replies strictly.

Owns the DHCPv4 message format and ARP. A client message is written field by field with
``struct`` (the BOOTP fixed fields, the magic cookie, our options, padding to RFC 1542's 300
octets) inside the Ethernet, IPv4 and UDP headers of ``frames``. A received frame is read by
offsets (Ethernet, IPv4 and UDP headers, bounded by their lengths, then the BOOTP fixed
fields) and its options are walked by a strict TLV parser: a bad length or a missing end
option is an error here, not a best guess. Every received packet is untrusted: anything
malformed raises ``Malformed``, which the caller counts and drops.
``tests/unit/test_fuzz_dhcp.py`` fuzzes this module; ``tests/unit/test_dhcp_scapy_oracle.py``
checks what it builds and parses against scapy, kept as a test oracle only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from anchord.dhcp import frames
from anchord.dhcp.frames import mac_bytes as mac_bytes  # re-exported: packets6, the tests

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
MAGIC = b"\x63\x82\x53\x63"
MIN_BOOTP = 300  # RFC 1542 2.1: relay agents may drop a shorter BOOTP message
OVERLOAD = 52  # RFC 2132 9.3: options continue in `file` (1), `sname` (2) or both (3)
MAX_MESSAGE = 1500  # we announce 1500 (option 57); anything larger is not for us

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
TYPE_NAMES = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak",
              7: "release", 8: "inform"}
# subnet mask, router, DNS, hostname, domain, broadcast, lease time, server id, T1, T2,
# classless static routes (RFC 3442)
PARAMETER_REQUEST = [1, 3, 6, 12, 15, 28, 51, 54, 58, 59, 121]


class Malformed(ValueError):
    """A received packet that is not a well-formed reply for us; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    """A validated DHCPv4 server reply (only the fields the client uses)."""

    msg_type: int
    xid: int
    yiaddr: str
    server_id: str  # option 54, "" if absent (allowed in NAK)
    src_ip: str
    prefixlen: int
    router: str
    lease_time: int  # 0 if absent (allowed in OFFER/NAK)
    t1: int  # 0 if absent
    t2: int


def client_id(mac: str) -> bytes:
    """Option 61: hardware type 1 + MAC, stable because the MAC is."""
    return b"\x01" + mac_bytes(mac)


def fqdn(hostname: str) -> bytes:
    """Option 81 (RFC 4702): flags S+E (server updates A, wire-format name), rcodes, name."""
    wire = b"".join(bytes([len(label)]) + label.encode("ascii")
                    for label in hostname.split(".") if label)
    return bytes([0x05, 0, 0]) + wire


def _option(code: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"option {code}: {len(value)} octets do not fit in one option")
    return bytes([code, len(value)]) + value


def bootp_request(xid: int, mac: str, *, secs: int = 0, ciaddr: str = "0.0.0.0") -> bytes:
    """The 236 octets of BOOTP fixed fields of a client message (RFC 2131 2): op BOOTREQUEST,
    Ethernet, no hops, flags 0 (we read unicast replies), yiaddr/siaddr/giaddr 0, ``chaddr``
    our MAC, ``sname`` and ``file`` empty."""
    return struct.pack("!BBBBIHH4s12x16s64x128x", 1, 1, 6, 0, xid, min(secs, 0xFFFF), 0,
                       ipaddress.IPv4Address(ciaddr).packed, mac_bytes(mac))


def build(
    msg_type: int,
    mac: str,
    xid: int,
    hostname: str,
    *,
    requested: str = "",
    server_id: str = "",
    ciaddr: str = "0.0.0.0",
    src_ip: str = "0.0.0.0",
    dst_ip: str = "255.255.255.255",
    dst_mac: str = BROADCAST_MAC,
    secs: int = 0,
) -> bytes:
    """One client message as an Ethernet frame ready for the AF_PACKET socket."""
    options = [_option(53, bytes([msg_type])), _option(61, client_id(mac))]
    if msg_type in (DISCOVER, REQUEST, INFORM):
        options.append(_option(57, struct.pack("!H", MAX_MESSAGE)))
        # RFC 4702 3.1: a client sends option 81 *or* option 12, never both: the FQDN option
        # when the name carries a domain, the plain host name otherwise.
        if "." in hostname.strip("."):
            options.append(_option(81, fqdn(hostname)))
        else:
            options.append(_option(12, hostname.encode()))
        options.append(_option(55, bytes(PARAMETER_REQUEST)))
    if requested:
        options.append(_option(50, ipaddress.IPv4Address(requested).packed))
    if server_id:
        options.append(_option(54, ipaddress.IPv4Address(server_id).packed))
    message = bootp_request(xid, mac, secs=secs, ciaddr=ciaddr) + MAGIC \
        + b"".join(options) + b"\xff"
    # Pad options after the end option, up to the 300 octets relays may insist on.
    message = message.ljust(MIN_BOOTP, b"\x00")
    return frames.ethernet(dst_mac, mac, frames.ETH_IPV4) + frames.ipv4(
        src_ip, dst_ip, frames.PROTO_UDP,
        frames.udp(68, 67, message, src=src_ip, dst=dst_ip), ttl=64)


def _arp(mac: str, sender_ip: str, target_ip: str) -> bytes:
    """An Ethernet/IPv4 ARP request (RFC 826) from ``mac``, broadcast, target MAC unknown."""
    return frames.ethernet(BROADCAST_MAC, mac, frames.ETH_ARP) + struct.pack(
        "!HHBBH6s4s6s4s", 1, frames.ETH_IPV4, 6, 4, 1, mac_bytes(mac),
        ipaddress.IPv4Address(sender_ip).packed, b"\x00" * 6,
        ipaddress.IPv4Address(target_ip).packed)


def arp_probe(mac: str, target: str) -> bytes:
    """RFC 5227 probe: sender IP 0.0.0.0, target the address we want."""
    return _arp(mac, "0.0.0.0", target)


def arp_announce(mac: str, address: str) -> bytes:
    """Gratuitous ARP (RFC 5227 announcement): sender and target both our address."""
    return _arp(mac, address, address)


def parse_options(data: bytes, options: dict[int, bytes] | None = None,
                  need_end: bool = True) -> dict[int, bytes]:
    """Strict TLV walk of one options area (after the magic cookie, or an overloaded
    ``file``/``sname`` field), into ``options``.

    A length running past the end and a missing end option (in the options field) are
    errors. An option that appears again is concatenated to what came before (RFC 3396:
    servers split anything over 255 octets, e.g. a long option 121, that way).
    """
    options = {} if options is None else options
    i = 0
    while True:
        if i >= len(data):
            if need_end:
                raise Malformed("missing_end")
            return options
        code = data[i]
        if code == 255:
            return options
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            raise Malformed("truncated_option", f"option {code}")
        length = data[i + 1]
        value = data[i + 2:i + 2 + length]
        if len(value) != length:
            raise Malformed("bad_option_length", f"option {code} length {length}")
        options[code] = options.get(code, b"") + value
        i += 2 + length


def all_options(payload: bytes) -> dict[int, bytes]:
    """The options of a BOOTP payload: the options field, then (option 52) ``file`` and
    ``sname``, in RFC 3396's order, each option concatenated across them."""
    options = parse_options(payload[240:])
    overload = options.get(OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise Malformed("bad_overload", overload.hex())
        if overload[0] & 1:
            parse_options(payload[108:236], options, need_end=False)
        if overload[0] & 2:
            parse_options(payload[44:108], options, need_end=False)
    return options


def _ip4(value: bytes | None, what: str) -> str:
    if value is None or len(value) != 4:
        raise Malformed("bad_option_length", what)
    return str(ipaddress.IPv4Address(value))


def _u32(value: bytes | None, what: str) -> int:
    if value is None:
        return 0
    if len(value) != 4:
        raise Malformed("bad_option_length", what)
    return int(struct.unpack("!I", value)[0])


def _prefixlen(value: bytes | None, yiaddr: str) -> int:
    if value is None:
        # No mask: assume the classful default is wrong more often than /24 is.
        return 24
    mask = _ip4(value, "subnet mask")
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError as exc:
        raise Malformed("bad_subnet_mask", mask) from exc


def classless_default(value: bytes) -> str | None:
    """The default route's gateway from option 121 (RFC 3442), None if it has none.

    Raises Malformed on a bad encoding (a zero-length option, a width above 32,
    a descriptor running past the end).
    """
    if not value:
        raise Malformed("bad_option_121", "zero length")
    i = 0
    gateway: str | None = None
    while i < len(value):
        width = value[i]
        if width > 32:
            raise Malformed("bad_option_121", f"width {width}")
        significant = (width + 7) // 8
        end = i + 1 + significant + 4
        if end > len(value):
            raise Malformed("bad_option_121", "descriptor past the end")
        if width == 0:
            gateway = str(ipaddress.IPv4Address(value[end - 4:end]))
        i = end
    return gateway


def _usable(address: str) -> bool:
    ip = ipaddress.IPv4Address(address)
    return not (ip.is_unspecified or ip.is_multicast or ip.is_loopback
                or ip == ipaddress.IPv4Address("255.255.255.255"))


def udp_payload(frame: bytes) -> tuple[str, bytes]:
    """The IPv4 source and the UDP payload of a frame from server port 67 to client port 68.

    Read by offsets, only within the datagram: the IPv4 total length and the UDP length bound
    what is DHCP, so Ethernet padding or a trailer after the datagram is never parsed as
    options (fuzzing found that scapy's decoding let such bytes into the payload: a missing
    end option could come from past the datagram's end). A frame shorter than its lengths
    claim is read as far as it goes (the option parser then rejects what is cut off).
    """
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        raise Malformed("not_dhcp")
    ihl = (frame[14] & 0x0F) * 4
    if ihl < 20:
        raise Malformed("bad_ip_header", f"header length {ihl}")
    (total,) = struct.unpack("!H", frame[16:18])
    (fragment,) = struct.unpack("!H", frame[20:22])
    if total < ihl + 8:
        raise Malformed("bad_ip_header", f"total length {total}")
    if fragment & 0x3FFF:  # more fragments, or not the first: never a whole reply
        raise Malformed("fragment")
    if frame[23] != 17:
        raise Malformed("not_dhcp")
    udp = frame[14 + ihl:14 + total]
    if len(udp) < 8:
        raise Malformed("truncated", "udp header")
    sport, dport, length = struct.unpack("!HHH", udp[:6])
    if sport != 67 or dport != 68:
        raise Malformed("not_dhcp")
    if length < 8:
        raise Malformed("bad_udp_length", str(length))
    return str(ipaddress.IPv4Address(frame[26:30])), udp[8:length]


def parse_reply(frame: bytes, mac: str, xid: int) -> Reply:
    """Validate ``frame`` as a DHCPv4 reply to transaction ``xid`` for ``mac``."""
    if len(frame) > 14 + 60 + 8 + MAX_MESSAGE + 512:
        raise Malformed("oversized", str(len(frame)))
    src_ip, payload = udp_payload(frame)
    if len(payload) < 240:
        raise Malformed("truncated", f"{len(payload)} bytes")
    op, htype, hlen = payload[0], payload[1], payload[2]
    (rxid,) = struct.unpack("!I", payload[4:8])
    if op != 2 or htype != 1 or hlen != 6:
        raise Malformed("not_reply")
    if rxid != xid:
        raise Malformed("wrong_xid")
    if payload[28:34] != mac_bytes(mac):
        raise Malformed("wrong_mac")
    if payload[236:240] != MAGIC:
        raise Malformed("no_magic")
    options = all_options(payload)
    mtype = options.get(53, b"")
    if len(mtype) != 1 or mtype[0] not in (OFFER, ACK, NAK):
        raise Malformed("bad_message_type")
    msg_type = mtype[0]
    yiaddr = str(ipaddress.IPv4Address(payload[16:20]))
    server_id = _ip4(options[54], "server id") if 54 in options else ""
    if msg_type == NAK:
        return Reply(NAK, rxid, yiaddr, server_id, src_ip, 0, "", 0, 0, 0)
    if not _usable(yiaddr):
        raise Malformed("bad_yiaddr", yiaddr)
    if not server_id:
        raise Malformed("no_server_id")
    lease_time = _u32(options.get(51), "lease time")
    if msg_type == ACK and lease_time == 0:
        raise Malformed("no_lease_time")
    prefixlen = _prefixlen(options.get(1), yiaddr)
    router = ""
    classless = False
    if 121 in options:
        try:
            router = classless_default(options[121]) or ""
            classless = True
        except Malformed:
            # A bad option 121 is ignored as a whole, the rest of the reply is fine.
            router = ""
    # RFC 3442: with a (valid) option 121 the client ignores option 3, even when 121 has
    # no default route.
    if not classless and 3 in options:
        routers = options[3]
        if not routers or len(routers) % 4:
            raise Malformed("bad_option_length", "router")
        router = str(ipaddress.IPv4Address(routers[:4]))
    if router and not _usable(router):
        router = ""
    t1 = _u32(options.get(58), "T1")
    t2 = _u32(options.get(59), "T2")
    return Reply(msg_type, rxid, yiaddr, server_id, src_ip, prefixlen, router,
                 lease_time, t1, t2)


@dataclass(frozen=True)
class ArpSeen:
    op: int
    sender_mac: str
    sender_ip: str
    target_ip: str


def parse_arp(frame: bytes) -> ArpSeen:
    if len(frame) < 42:
        raise Malformed("truncated_arp")
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise Malformed("not_ethernet_arp")
    sender_mac = ":".join(f"{b:02x}" for b in frame[22:28])
    sender_ip = str(ipaddress.IPv4Address(frame[28:32]))
    target_ip = str(ipaddress.IPv4Address(frame[38:42]))
    return ArpSeen(op, sender_mac, sender_ip, target_ip)
