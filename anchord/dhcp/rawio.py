"""Raw packet I/O on the macvlan child: AF_PACKET sockets, one per EtherType.

Owns the sockets the DHCP clients send and receive whole Ethernet frames on.
Raw sockets are needed because DHCPv4 talks before the interface has an
address. Received frames are returned as bytes, untouched: parsing (and
distrust) is the protocol modules' job. Frames the interface itself sent
(PACKET_OUTGOING) are skipped.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
MAX_FRAME = 65536


class RawSocket:
    """An AF_PACKET socket bound to one interface and one EtherType, non-blocking."""

    def __init__(self, ifname: str, ethertype: int) -> None:
        self.ifname = ifname
        self.ethertype = ethertype
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
        try:
            self.sock.bind((ifname, ethertype))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

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
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            frames.append(data)
        return frames

    def close(self) -> None:
        self.sock.close()
