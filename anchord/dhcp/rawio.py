"""Raw packet I/O on the macvlan child: AF_PACKET sockets, one per EtherType, filtered.

Owns the sockets the DHCP clients send and receive whole Ethernet frames on.
Raw sockets are needed because DHCPv4 talks before the interface has an
address. Received frames are returned as bytes, untouched: parsing (and
distrust) is the protocol modules' job. Frames the interface itself sent
(PACKET_OUTGOING) are skipped.

A raw socket without a filter sees the whole data plane: every packet of the project's
inbound and egress traffic would be copied into the dhcp worker, wake it, and compete with
the DHCP replies for the socket buffer. Each socket therefore carries a classic BPF program
run by the kernel (``SO_ATTACH_FILTER``) before anything is queued: IPv4 only UDP to port 68
(unfragmented), IPv6 only UDP to port 546 and router advertisements. The ARP socket exists
only while an IPv4 address is probed or held, and its filter (``arp_filter``) names that
address: received Ethernet/IPv4 ARP whose sender is the address (another host using it) or,
while probing, a probe for it; the LAN's other ARP traffic and our own never wake the worker.
The filter is attached before the socket is bound to its EtherType, so no unfiltered frame
is ever queued.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import struct

log = logging.getLogger(__name__)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
MAX_FRAME = 65536
SO_ATTACH_FILTER = 26
# Enough for a burst of DHCP replies; nothing else reaches the queue.
RCVBUF = 256 * 1024

# Classic BPF (linux/filter.h): (code, jt, jf, k).
_LD_ABS, _LDH_ABS, _LDB_ABS, _LDX_MSH, _LDH_IND = 0x20, 0x28, 0x30, 0xB1, 0x48
# Ancillary load (SKF_AD_OFF + SKF_AD_PKTTYPE): the packet type, PACKET_OUTGOING for our own.
_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06
_ACCEPT = 0x40000  # bytes of the frame to keep: all of it
Insn = tuple[int, int, int, int]

# Ethernet + IPv4 + UDP to port 68, not a fragment.
FILTER_DHCP4: tuple[Insn, ...] = (
    (_LDH_ABS, 0, 0, 12),        # 0: EtherType
    (_JEQ, 0, 8, ETH_P_IP),      # 1: not IPv4 -> drop
    (_LDB_ABS, 0, 0, 23),        # 2: IP protocol
    (_JEQ, 0, 6, 17),            # 3: not UDP -> drop
    (_LDH_ABS, 0, 0, 20),        # 4: flags + fragment offset
    (_JSET, 4, 0, 0x1FFF),       # 5: a later fragment -> drop
    (_LDX_MSH, 0, 0, 14),        # 6: X = IP header length
    (_LDH_IND, 0, 0, 16),        # 7: UDP destination port (14 + X + 2)
    (_JEQ, 0, 1, 68),            # 8: not 68 -> drop
    (_RET, 0, 0, _ACCEPT),       # 9
    (_RET, 0, 0, 0),             # 10: drop
)

# Ethernet + IPv6 (no extension header) + UDP to port 546, or ICMPv6 router advertisement.
FILTER_DHCP6: tuple[Insn, ...] = (
    (_LDH_ABS, 0, 0, 12),        # 0: EtherType
    (_JEQ, 0, 8, ETH_P_IPV6),    # 1: not IPv6 -> drop
    (_LDB_ABS, 0, 0, 20),        # 2: next header
    (_JEQ, 0, 2, 58),            # 3: not ICMPv6 -> 6
    (_LDB_ABS, 0, 0, 54),        # 4: ICMPv6 type
    (_JEQ, 3, 4, 134),           # 5: router advertisement -> accept, else drop
    (_JEQ, 0, 3, 17),            # 6: not UDP -> drop
    (_LDH_ABS, 0, 0, 56),        # 7: UDP destination port
    (_JEQ, 0, 1, 546),           # 8: not 546 -> drop
    (_RET, 0, 0, _ACCEPT),       # 9
    (_RET, 0, 0, 0),             # 10: drop
)

FILTER_ARP: tuple[Insn, ...] = (
    (_LDH_ABS, 0, 0, 12),
    (_JEQ, 0, 1, ETH_P_ARP),
    (_RET, 0, 0, _ACCEPT),
    (_RET, 0, 0, 0),
)



def arp_filter(address: str, probing: bool) -> tuple[Insn, ...]:
    """Received Ethernet/IPv4 ARP with sender IP ``address`` (RFC 5227 2.1.1 and 2.4: someone
    else uses it) and, if ``probing``, also sender 0.0.0.0 with target ``address`` (someone
    else probes for it). Frames we sent are dropped in the kernel too."""
    ip = int(ipaddress.IPv4Address(address))
    head: tuple[Insn, ...] = (
        (_LD_ABS, 0, 0, _AD_PKTTYPE),  # 0: packet type
        (_JEQ, 0, 0, PACKET_OUTGOING),  # 1: ours -> drop (jt patched below)
        (_LDH_ABS, 0, 0, 12),          # 2: EtherType
        (_JEQ, 0, 0, ETH_P_ARP),       # 3: not ARP -> drop
        (_LD_ABS, 0, 0, 14),           # 4: hardware type + protocol type
        (_JEQ, 0, 0, 0x00010800),      # 5: not Ethernet/IPv4 -> drop
        (_LDH_ABS, 0, 0, 18),          # 6: address lengths
        (_JEQ, 0, 0, 0x0604),          # 7: not 6 and 4 -> drop
        (_LD_ABS, 0, 0, 28),           # 8: sender IP
    )
    if probing:
        tail: tuple[Insn, ...] = (
            (_JEQ, 3, 0, ip),          # 9: sender is the address -> accept (13)
            (_JEQ, 0, 3, 0),           # 10: sender not 0.0.0.0 -> drop (14)
            (_LD_ABS, 0, 0, 38),       # 11: target IP
            (_JEQ, 0, 1, ip),          # 12: target not the address -> drop
        )
    else:
        tail = ((_JEQ, 0, 1, ip),)     # 9: sender not the address -> drop
    body = head + tail
    drop = len(body) + 1
    # Every comparison of the head drops on a mismatch (or, for the packet type, on a match).
    fixed = [(code, drop - i - 1 if code == _JEQ and i == 1 else jt,
              drop - i - 1 if code == _JEQ and i in (3, 5, 7) else jf, k)
             for i, (code, jt, jf, k) in enumerate(head)]
    return (*fixed, *tail, (_RET, 0, 0, _ACCEPT), (_RET, 0, 0, 0))


FILTERS: dict[int, tuple[Insn, ...]] = {
    ETH_P_IP: FILTER_DHCP4, ETH_P_IPV6: FILTER_DHCP6, ETH_P_ARP: FILTER_ARP}


def attach_filter(sock: socket.socket, program: tuple[Insn, ...]) -> None:
    """Attach a classic BPF program (the kernel copies it)."""
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class RawSocket:
    """An AF_PACKET socket bound to one interface and one EtherType, filtered, non-blocking."""

    def __init__(self, ifname: str, ethertype: int,
                 program: tuple[Insn, ...] | None = None) -> None:
        self.ifname = ifname
        self.ethertype = ethertype
        # Protocol 0: the socket receives nothing until it is bound below, after the filter.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(self.sock, program or FILTERS[ethertype])
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((ifname, ethertype))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.received = 0  # frames that passed the filter (for the benchmark and tests)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError as exc:
            # The link may be going away under us; the caller's timers retry.
            log.debug("raw send failed", extra={"fields": {"iface": self.ifname,
                                                           "error": str(exc)}})

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` frames waiting now (never blocks)."""
        frames: list[bytes] = []
        for _ in range(limit):
            try:
                data, addr = self.sock.recvfrom(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("raw receive failed", extra={"fields": {"iface": self.ifname,
                                                                  "error": str(exc)}})
                break
            self.received += 1
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            frames.append(data)
        return frames

    def close(self) -> None:
        self.sock.close()
