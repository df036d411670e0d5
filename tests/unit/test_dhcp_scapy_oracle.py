"""Our DHCP frame codec held against scapy, which the product no longer imports (the oracle).

``anchord/dhcp/{frames,packets,packets6}.py`` write and read DHCPv4, ARP, DHCPv6, Router
Solicitation and Neighbour Advertisement frames with ``struct``. Properties checked here, with
hypothesis-generated fields:

- byte for byte: every builder writes exactly what the scapy-based builders wrote before the
  switch (kept below, verbatim in what they send);
- what we build, scapy dissects to the same fields: addresses, ports, hop limits, every option
  with its value, and valid checksums (scapy rebuilds the very frame from the fields it read
  with its lengths and checksums recomputed);
- what scapy builds (generated option sets), we parse to the same values: DHCPv4 replies, ARP,
  DHCPv6 replies, router advertisements with their options.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP, DHCPRevOptions
from scapy.layers.dhcp6 import (
    DHCP6_Advertise,
    DHCP6_Decline,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptPref,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
    DHCP6OptUnknown,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from anchord.dhcp import frames, packets, packets6
from tests.unit.fuzz_dhcp_support import FUZZ, MAC

# --- what the builders were with scapy (anchord/dhcp/packets*.py before the switch) -----------


def scapy_build4(msg_type: int, mac: str, xid: int, hostname: str, *, requested: str = "",
                 server_id: str = "", ciaddr: str = "0.0.0.0", src_ip: str = "0.0.0.0",
                 dst_ip: str = "255.255.255.255", dst_mac: str = packets.BROADCAST_MAC,
                 secs: int = 0) -> bytes:
    options: list[tuple[str, object] | str] = [
        ("message-type", msg_type), ("client_id", packets.client_id(mac))]
    if msg_type in (packets.DISCOVER, packets.REQUEST, packets.INFORM):
        options.append(("max_dhcp_size", packets.MAX_MESSAGE))
        if "." in hostname.strip("."):
            options.append(("client_FQDN", packets.fqdn(hostname)))
        else:
            options.append(("hostname", hostname.encode()))
        options.append(("param_req_list", packets.PARAMETER_REQUEST))
    if requested:
        options.append(("requested_addr", requested))
    if server_id:
        options.append(("server_id", server_id))
    options.append("end")
    bootp = BOOTP(op=1, htype=1, hlen=6, xid=xid, secs=min(secs, 0xFFFF), ciaddr=ciaddr,
                  chaddr=packets.mac_bytes(mac) + b"\x00" * 10)
    short = packets.MIN_BOOTP - len(bytes(bootp / DHCP(options=options)))
    if short > 0:
        options += ["pad"] * short
    return bytes(Ether(src=mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip, ttl=64)
                 / UDP(sport=68, dport=67) / bootp / DHCP(options=options))


def scapy_arp(mac: str, sender: str, target: str) -> bytes:
    return bytes(Ether(src=mac, dst=packets.BROADCAST_MAC)
                 / ARP(op=1, hwsrc=mac, psrc=sender, hwdst="00:00:00:00:00:00", pdst=target))


SCAPY_MESSAGES6: dict[int, type[Packet]] = {
    packets6.SOLICIT: DHCP6_Solicit, packets6.REQUEST: DHCP6_Request,
    packets6.RENEW: DHCP6_Renew, packets6.REBIND: DHCP6_Rebind,
    packets6.RELEASE: DHCP6_Release, packets6.DECLINE: DHCP6_Decline}
ORO = [packets6.OPT_DNS_SERVERS, packets6.OPT_DOMAIN_LIST, packets6.OPT_FQDN,
       packets6.OPT_SOL_MAX_RT]


def scapy_build6(msg_type: int, mac: str, src: str, xid: int, duid: bytes, iaid: int,
                 hostname: str, *, address: str = "", server_duid: bytes = b"",
                 elapsed: int = 0) -> bytes:
    message = SCAPY_MESSAGES6[msg_type](trid=xid & 0xFFFFFF)
    message /= DHCP6OptClientId(duid=Raw(duid))
    if server_duid:
        message /= DHCP6OptServerId(duid=Raw(server_duid))
    ia_addrs = [DHCP6OptIAAddress(addr=address, preflft=0, validlft=0)] if address else []
    message /= DHCP6OptIA_NA(iaid=iaid, T1=0, T2=0, ianaopts=ia_addrs)
    message /= DHCP6OptElapsedTime(elapsedtime=elapsed)
    if msg_type not in (packets6.RELEASE, packets6.DECLINE):
        message /= DHCP6OptUnknown(optcode=packets6.OPT_FQDN, data=packets6._fqdn(hostname))
        message /= DHCP6OptOptReq(reqopts=ORO)
    return bytes(Ether(src=mac, dst="33:33:00:01:00:02") / IPv6(src=src, dst="ff02::1:2", hlim=1)
                 / UDP(sport=546, dport=547) / message)


def scapy_rs(mac: str, src: str) -> bytes:
    rs = Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src=src, dst="ff02::2", hlim=255) \
        / ICMPv6ND_RS()
    if src != "::":
        rs /= ICMPv6NDOptSrcLLAddr(lladdr=mac)
    return bytes(rs)


def scapy_na(mac: str, address: str) -> bytes:
    return bytes(Ether(src=mac, dst="33:33:00:00:00:01")
                 / IPv6(src=address, dst="ff02::1", hlim=255)
                 / ICMPv6ND_NA(tgt=address, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac))


# --- strategies ------------------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
ipv4s = st.integers(0, 0xFFFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6s = st.integers(0, (1 << 128) - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
link_locals = st.integers(0, (1 << 64) - 1).map(
    lambda n: str(ipaddress.IPv6Address((0xFE80 << 112) | n)))
globals6 = st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + (1 << 64)).map(
    lambda n: str(ipaddress.IPv6Address(n)))
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
duids = st.binary(min_size=3, max_size=130)


@st.composite
def v4_builds(draw: st.DrawFn) -> tuple[tuple[int, str, int, str], dict[str, object]]:
    args = (draw(st.sampled_from(sorted(packets.TYPE_NAMES))), draw(macs), draw(u32),
            draw(hostnames))
    kwargs: dict[str, object] = {
        "requested": draw(st.just("") | ipv4s), "server_id": draw(st.just("") | ipv4s),
        "ciaddr": draw(st.just("0.0.0.0") | ipv4s), "src_ip": draw(st.just("0.0.0.0") | ipv4s),
        "dst_ip": draw(st.just("255.255.255.255") | ipv4s),
        "dst_mac": draw(st.just(packets.BROADCAST_MAC) | macs),
        "secs": draw(st.integers(0, 100000))}
    return args, kwargs


@st.composite
def v6_builds(draw: st.DrawFn) -> tuple[tuple[int, str, str, int, bytes, int, str],
                                        dict[str, object]]:
    args = (draw(st.sampled_from(sorted(SCAPY_MESSAGES6))), draw(macs),
            draw(st.just("::") | link_locals | ipv6s), draw(u32), draw(duids), draw(u32),
            draw(hostnames))
    kwargs: dict[str, object] = {
        "address": draw(st.just("") | globals6), "server_duid": draw(st.just(b"") | duids),
        "elapsed": draw(st.integers(0, 0xFFFF))}
    return args, kwargs


# --- byte for byte ---------------------------------------------------------------------------


@FUZZ
@given(v4_builds())
def test_dhcpv4_frames_are_byte_for_byte_what_scapy_wrote(
        case: tuple[tuple[int, str, int, str], dict[str, object]]) -> None:
    args, kwargs = case
    assert packets.build(*args, **kwargs) == scapy_build4(*args, **kwargs)  # type: ignore[arg-type]


@FUZZ
@given(macs, ipv4s)
def test_arp_frames_are_byte_for_byte_what_scapy_wrote(mac: str, address: str) -> None:
    assert packets.arp_probe(mac, address) == scapy_arp(mac, "0.0.0.0", address)
    assert packets.arp_announce(mac, address) == scapy_arp(mac, address, address)


@FUZZ
@given(v6_builds())
def test_dhcpv6_frames_are_byte_for_byte_what_scapy_wrote(
        case: tuple[tuple[int, str, str, int, bytes, int, str], dict[str, object]]) -> None:
    args, kwargs = case
    assert packets6.build(*args, **kwargs) == scapy_build6(*args, **kwargs)  # type: ignore[arg-type]


@FUZZ
@given(macs, st.just("::") | link_locals | ipv6s, globals6 | link_locals)
def test_rs_and_na_are_byte_for_byte_what_scapy_wrote(mac: str, src: str, address: str) -> None:
    assert packets6.router_solicit(mac, src) == scapy_rs(mac, src)
    assert packets6.unsolicited_na(mac, address) == scapy_na(mac, address)


def _udp_checksum_zero_xid(src_ip: str) -> int:
    """An xid that makes the DISCOVER's UDP checksum compute to 0: the sum with xid 0, made up
    to 0xFFFF by the xid's low 16 bits (ones' complement addition)."""
    base = packets.build(packets.DISCOVER, MAC, 0, "proj", src_ip=src_ip)
    udp = base[34:]
    pseudo = struct.pack("!4s4sBBH", ipaddress.IPv4Address(src_ip).packed, b"\xff" * 4, 0, 17,
                         len(udp))
    folded = 0xFFFF - frames.checksum(pseudo + udp[:6] + b"\x00\x00" + udp[8:])
    return 0xFFFF - folded


def test_a_udp_checksum_of_zero_is_sent_as_all_ones_as_scapy_does() -> None:
    xid = _udp_checksum_zero_xid("0.0.0.0")
    frame = packets.build(packets.DISCOVER, MAC, xid, "proj")
    assert frame[40:42] == b"\xff\xff"  # RFC 768: 0 would mean "no checksum"
    assert frame == scapy_build4(packets.DISCOVER, MAC, xid, "proj")


def test_internet_checksum_of_known_headers() -> None:
    # RFC 1071's example words, and an IPv4 header whose checksum is well known.
    assert frames.checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2 & 0xFFFF)
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert frames.checksum(header) == 0xB861
    assert frames.checksum(b"\x01") == (~0x0100 & 0xFFFF)  # odd length: padded with a zero


# --- what we build, scapy reads --------------------------------------------------------------


def _rebuilt(frame: bytes, *strip: tuple[type[Packet], str]) -> bytes:
    """``frame`` dissected by scapy and built again with the named length/checksum fields left
    for scapy to compute: equal to ``frame`` only if every one of them was right."""
    packet = Ether(frame)
    for layer, field in strip:
        delattr(packet[layer], field)
    return bytes(packet)


def _scapy_options4(dhcp: DHCP) -> dict[int, bytes]:
    """scapy's reading of the options, encoded again one by one by scapy: code -> value."""
    found: dict[int, bytes] = {}
    for option in dhcp.options:
        if option in ("end", "pad"):
            continue
        assert isinstance(option, tuple), f"scapy could not read an option: {option!r}"
        code = option[0] if isinstance(option[0], int) else DHCPRevOptions[option[0]][0]
        encoded = bytes(DHCP(options=[option]))
        assert code not in found
        found[code] = encoded[2:2 + encoded[1]]
    return found


@FUZZ
@given(v4_builds())
def test_dhcpv4_frames_dissected_by_scapy_carry_our_fields(
        case: tuple[tuple[int, str, int, str], dict[str, object]]) -> None:
    (msg_type, mac, xid, hostname), kw = case
    frame = packets.build(msg_type, mac, xid, hostname, **kw)  # type: ignore[arg-type]
    packet = Ether(frame)
    assert (packet.src, packet.dst) == (mac, kw["dst_mac"])
    assert (packet[IP].src, packet[IP].dst, packet[IP].ttl, packet[IP].proto) == \
        (kw["src_ip"], kw["dst_ip"], 64, 17)
    assert (packet[UDP].sport, packet[UDP].dport) == (68, 67)
    assert _rebuilt(frame, (IP, "chksum"), (IP, "len"), (UDP, "chksum"), (UDP, "len")) == frame
    bootp = packet[BOOTP]
    assert (bootp.op, bootp.htype, bootp.hlen, bootp.xid) == (1, 1, 6, xid)
    assert bootp.secs == min(int(kw["secs"]), 0xFFFF)  # type: ignore[call-overload]
    assert (bootp.ciaddr, bootp.chaddr[:6]) == (kw["ciaddr"], packets.mac_bytes(mac))
    assert len(bytes(bootp)) >= packets.MIN_BOOTP
    dhcp = packet[DHCP]
    assert dhcp.options[0] == ("message-type", msg_type)
    assert "end" in dhcp.options
    options = _scapy_options4(dhcp)
    assert options == packets.all_options(bytes(bootp))  # every option, as we would read it
    assert options[61] == packets.client_id(mac)
    assert options.get(50) == (ipaddress.IPv4Address(kw["requested"]).packed
                               if kw["requested"] else None)
    assert options.get(54) == (ipaddress.IPv4Address(kw["server_id"]).packed
                               if kw["server_id"] else None)
    if msg_type in (packets.DISCOVER, packets.REQUEST, packets.INFORM):
        assert dhcp.getopt("max_dhcp_size") == packets.MAX_MESSAGE
        assert dhcp.getopt("param_req_list") == packets.PARAMETER_REQUEST
        name = "client_FQDN" if "." in hostname else "hostname"
        assert dhcp.getopt(name) == (packets.fqdn(hostname) if "." in hostname
                                     else hostname.encode())
    else:
        assert not {55, 57, 12, 81} & set(options)


@FUZZ
@given(macs, ipv4s, st.booleans())
def test_arp_frames_dissected_by_scapy_carry_our_fields(mac: str, address: str,
                                                        probe: bool) -> None:
    frame = packets.arp_probe(mac, address) if probe else packets.arp_announce(mac, address)
    arp = Ether(frame)[ARP]
    assert Ether(frame).dst == packets.BROADCAST_MAC
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 1)
    assert (arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == \
        (mac, "0.0.0.0" if probe else address, "00:00:00:00:00:00", address)


@FUZZ
@given(v6_builds())
def test_dhcpv6_frames_dissected_by_scapy_carry_our_fields(
        case: tuple[tuple[int, str, str, int, bytes, int, str], dict[str, object]]) -> None:
    (msg_type, mac, src, xid, duid, iaid, hostname), kw = case
    frame = packets6.build(msg_type, mac, src, xid, duid, iaid, hostname,
                           **kw)  # type: ignore[arg-type]
    packet = Ether(frame)
    assert (packet.src, packet.dst) == (mac, "33:33:00:01:00:02")
    assert (_ip6(packet[IPv6].src), packet[IPv6].dst, packet[IPv6].hlim, packet[IPv6].nh) == \
        (_ip6(src), "ff02::1:2", 1, 17)
    assert (packet[UDP].sport, packet[UDP].dport) == (546, 547)
    assert _rebuilt(frame, (IPv6, "plen"), (UDP, "chksum"), (UDP, "len")) == frame
    message = packet[SCAPY_MESSAGES6[msg_type]]
    assert message.trid == xid & 0xFFFFFF
    assert bytes(message[DHCP6OptClientId].duid) == duid
    if kw["server_duid"]:
        assert bytes(message[DHCP6OptServerId].duid) == kw["server_duid"]
    else:
        assert DHCP6OptServerId not in message
    ia = message[DHCP6OptIA_NA]
    assert (ia.iaid, ia.T1, ia.T2) == (iaid, 0, 0)
    if kw["address"]:
        (iaaddr,) = ia.ianaopts
        assert (_ip6(iaaddr.addr), iaaddr.preflft, iaaddr.validlft) == \
            (_ip6(str(kw["address"])), 0, 0)
    else:
        assert not ia.ianaopts
    assert message[DHCP6OptElapsedTime].elapsedtime == kw["elapsed"]
    if msg_type in (packets6.RELEASE, packets6.DECLINE):
        assert DHCP6OptOptReq not in message
    else:
        assert message[DHCP6OptOptReq].reqopts == ORO
        fqdn = [o for o in _options6(message) if o.optcode == packets6.OPT_FQDN]
        assert bytes(fqdn[0])[4:4 + fqdn[0].optlen] == packets6._fqdn(hostname)


def _ip6(address: str) -> ipaddress.IPv6Address:
    # scapy writes some addresses its own way ("::0.1.0.0" for ::1:0): compare the addresses.
    return ipaddress.IPv6Address(address)


def _options6(message: Packet) -> list[Packet]:
    found = []
    layer = message.payload
    while layer and not isinstance(layer, Raw):
        found.append(layer)
        layer = layer.payload
    return found


@FUZZ
@given(macs, link_locals, globals6)
def test_rs_and_na_dissected_by_scapy_carry_our_fields(mac: str, src: str, address: str) -> None:
    for source in ("::", src):
        frame = packets6.router_solicit(mac, source)
        packet = Ether(frame)
        assert (packet.dst, packet[IPv6].dst, packet[IPv6].hlim) == \
            ("33:33:00:00:00:02", "ff02::2", 255)
        assert (packet[ICMPv6ND_RS].type, packet[ICMPv6ND_RS].code) == (133, 0)
        assert _rebuilt(frame, (IPv6, "plen"), (ICMPv6ND_RS, "cksum")) == frame
        if source == "::":
            assert ICMPv6NDOptSrcLLAddr not in packet  # RFC 4861 4.1
        else:
            assert packet[ICMPv6NDOptSrcLLAddr].lladdr == mac
    frame = packets6.unsolicited_na(mac, address)
    packet = Ether(frame)
    na = packet[ICMPv6ND_NA]
    assert (packet.src, packet.dst, _ip6(packet[IPv6].src), packet[IPv6].dst,
            packet[IPv6].hlim) == (mac, "33:33:00:00:00:01", _ip6(address), "ff02::1", 255)
    assert (na.R, na.S, na.O, _ip6(na.tgt)) == (0, 0, 1, _ip6(address))
    assert packet[ICMPv6NDOptDstLLAddr].lladdr == mac
    assert _rebuilt(frame, (IPv6, "plen"), (ICMPv6ND_NA, "cksum")) == frame


# --- what scapy builds, we read --------------------------------------------------------------

SERVER_MAC = "02:00:00:00:00:fe"
masks = st.integers(0, 32).map(lambda n: str(ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask))
usable4 = ipv4s.filter(lambda a: not (ipaddress.IPv4Address(a).is_unspecified
                                      or ipaddress.IPv4Address(a).is_multicast
                                      or ipaddress.IPv4Address(a).is_loopback
                                      or a == "255.255.255.255"))
# Options the client does not read, with any value (by code: scapy writes them as they are):
# they must not disturb what it does read.
others4 = st.lists(st.tuples(st.sampled_from((6, 12, 15, 28, 42, 119, 252)),
                             st.binary(min_size=1, max_size=40)), max_size=4,
                   unique_by=lambda o: o[0])


@st.composite
def scapy_replies4(draw: st.DrawFn) -> tuple[bytes, int, packets.Reply, dict[int, bytes]]:
    msg_type = draw(st.sampled_from((packets.OFFER, packets.ACK)))
    xid, yiaddr, server = draw(u32), draw(usable4), draw(usable4)
    lease = draw(st.integers(1, 0xFFFFFFFF))
    t1, t2 = draw(st.none() | u32), draw(st.none() | u32)
    mask, router = draw(st.none() | masks), draw(st.none() | usable4)
    default = draw(st.none() | usable4)  # option 121's default route, when drawn
    options: list[tuple[object, ...]] = [("message-type", msg_type), ("server_id", server),
                                         ("lease_time", lease)]
    if t1 is not None:
        options.append(("renewal_time", t1))
    if t2 is not None:
        options.append(("rebinding_time", t2))
    if mask is not None:
        options.append(("subnet_mask", mask))
    if router is not None:
        options.append(("router", router))
    if default is not None:
        options.append(("classless_static_routes", "10.9.0.0/16:10.0.0.9",
                        f"0.0.0.0/0:{default}"))
    options += draw(others4)
    options = draw(st.permutations(options))
    frame = bytes(Ether(src=SERVER_MAC, dst=MAC) / IP(src=server, dst=yiaddr)
                  / UDP(sport=67, dport=68)
                  / BOOTP(op=2, xid=xid, yiaddr=yiaddr, chaddr=packets.mac_bytes(MAC))
                  / DHCP(options=[*options, "end"]))
    expected = packets.Reply(
        msg_type, xid, yiaddr, server, server,
        ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else 24,
        default if default is not None else (router or ""), lease, t1 or 0, t2 or 0)
    # What scapy put on the wire for each option, encoded by scapy on its own.
    encoded = {}
    for option in options:
        wire = bytes(DHCP(options=[option]))
        encoded[wire[0]] = wire[2:2 + wire[1]]
    return frame, xid, expected, encoded


@FUZZ
@given(scapy_replies4())
def test_dhcpv4_replies_scapy_builds_parse_to_the_same_values(
        case: tuple[bytes, int, packets.Reply, dict[int, bytes]]) -> None:
    frame, xid, expected, options = case
    assert packets.parse_reply(frame, MAC, xid) == expected
    src_ip, payload = packets.udp_payload(frame)
    assert src_ip == expected.server_id
    assert packets.all_options(payload) == options


@FUZZ
@given(macs, ipv4s, ipv4s, st.sampled_from((1, 2)))
def test_arp_scapy_builds_parses_to_the_same_values(mac: str, sender: str, target: str,
                                                    op: int) -> None:
    frame = bytes(Ether(src=mac, dst=packets.BROADCAST_MAC)
                  / ARP(op=op, hwsrc=mac, psrc=sender, pdst=target))
    assert packets.parse_arp(frame) == packets.ArpSeen(op, mac, sender, target)


IAID = 9


@st.composite
def scapy_replies6(draw: st.DrawFn) -> tuple[bytes, int, bytes, packets6.Reply6]:
    msg_type = draw(st.sampled_from((packets6.ADVERTISE, packets6.REPLY)))
    xid, duid, server = draw(st.integers(0, 0xFFFFFF)), draw(duids), draw(duids)
    valid = draw(st.integers(1, 0xFFFFFFFF))
    preferred = draw(st.integers(0, valid))
    t2 = draw(u32)
    t1 = draw(st.integers(0, t2))
    address = draw(globals6)
    status = draw(st.none() | st.integers(0, 5))
    preference = draw(st.none() | st.integers(0, 255))
    sol_max_rt = draw(st.none() | u32)
    other_ia = draw(st.booleans())  # another IAID's IA_NA, which is not ours
    options: list[Packet] = [
        DHCP6OptClientId(duid=Raw(duid)), DHCP6OptServerId(duid=Raw(server)),
        DHCP6OptIA_NA(iaid=IAID, T1=t1, T2=t2, ianaopts=[
            DHCP6OptIAAddress(addr=address, preflft=preferred, validlft=valid)])]
    if other_ia:
        options.append(DHCP6OptIA_NA(iaid=IAID + 1, T1=1, T2=2, ianaopts=[
            DHCP6OptIAAddress(addr="2001:db8::99", preflft=1, validlft=2)]))
    if status is not None:
        options.append(DHCP6OptStatusCode(statuscode=status, statusmsg="oracle"))
    if preference is not None:
        options.append(DHCP6OptPref(prefval=preference))
    if sol_max_rt is not None:
        options.append(DHCP6OptUnknown(optcode=packets6.OPT_SOL_MAX_RT,
                                       data=struct.pack("!I", sol_max_rt)))
    message: Packet = (DHCP6_Advertise if msg_type == packets6.ADVERTISE else DHCP6_Reply)(
        trid=xid)
    for option in draw(st.permutations(options)):
        message /= option
    frame = bytes(Ether(src=SERVER_MAC, dst=MAC) / IPv6(src="fe80::fe", dst="fe80::1")
                  / UDP(sport=547, dport=546) / message)
    in_range = sol_max_rt is not None and \
        packets6.SOL_MAX_RT_RANGE[0] <= sol_max_rt <= packets6.SOL_MAX_RT_RANGE[1]
    expected = packets6.Reply6(
        msg_type, server, status or 0, True, 0, t1, t2,
        (packets6.IaAddress(address, preferred, valid),), (), preference or 0,
        sol_max_rt if in_range and sol_max_rt is not None else 0)
    return frame, xid, duid, expected


@FUZZ
@given(scapy_replies6())
def test_dhcpv6_replies_scapy_builds_parse_to_the_same_values(
        case: tuple[bytes, int, bytes, packets6.Reply6]) -> None:
    frame, xid, duid, expected = case
    kind, payload = packets6.classify(frame, MAC)
    assert kind == "dhcp6"
    assert isinstance(payload, bytes)
    assert packets6.parse_reply(payload, xid, duid, IAID) == expected


@FUZZ
@given(link_locals, st.booleans(), st.booleans(), st.integers(0, 0xFFFF), globals6,
       st.integers(1, 128), st.booleans(), st.lists(st.sampled_from(("mtu", "lladdr", "prefix")),
                                                    max_size=4))
def test_router_advertisements_scapy_builds_classify_to_the_same_values(
        source: str, managed: bool, other: bool, lifetime: int, prefix: str, prefixlen: int,
        autonomous: bool, extra: list[str]) -> None:
    # The options after the RA header (prefix information, MTU, source link-layer address)
    # are the kernel's to act on; reading the header must not depend on them.
    ra: Packet = ICMPv6ND_RA(M=int(managed), O=int(other), routerlifetime=lifetime)
    for kind in extra:
        if kind == "mtu":
            ra /= ICMPv6NDOptMTU(mtu=1500)
        elif kind == "lladdr":
            ra /= ICMPv6NDOptSrcLLAddr(lladdr=SERVER_MAC)
        else:
            ra /= ICMPv6NDOptPrefixInfo(prefix=prefix, prefixlen=prefixlen, A=int(autonomous))
    frame = bytes(Ether(src=SERVER_MAC, dst="33:33:00:00:00:01")
                  / IPv6(src=source, dst="ff02::1", hlim=255) / ra)
    assert packets6.classify(frame, MAC) == ("ra", packets6.RouterAdvert(
        source, managed, other, lifetime))
    forwarded = bytes(Ether(src=SERVER_MAC, dst="33:33:00:00:00:01")
                      / IPv6(src=source, dst="ff02::1", hlim=64) / ra)
    with pytest.raises(packets6.Malformed) as info:
        packets6.classify(forwarded, MAC)
    assert info.value.reason == "ra_not_on_link"
