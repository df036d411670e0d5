"""The service-anchor's "my default route leads to you" datagram, and anchord's receiver.

Discovery exposes a labelled container's ports once replies from it come back through anchord.
Where the transit network's IPv4 gateway is anchord's own, that holds from the container's first
instant. Otherwise (IPv6, whose gateway Docker keeps on the host's bridge, and internal transit
networks, where containers get no default route at all) it holds once the service-anchor has
replaced the default route — which only it knows. Docker's healthcheck would tell discovery too,
but its first check comes one interval after the start, and a short interval costs every host
CPU at idle. So the service-anchor says it itself: after installing or confirming its default
route via anchord's address of a family, it sends one UDP datagram to that address (and again
at every resolution, so that a restarted discovery hears it within one resolve interval).

The datagram carries nothing but a fixed text: the family and the container are those of its
source address, which discovery matches against the transit addresses Docker reports. Only
the project's own containers share the transit network; from the LAN, anchord's input filter
rejects it (the LAN-facing interfaces jump to ``ext_in``). Standard library only: the
service-anchor imports it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

log = logging.getLogger(__name__)

PORT = 47001
MESSAGE = b"anchord route-ready 1\n"
_MAX = 512  # anything longer is not ours


def send(gateway: str) -> None:
    """Tell anchord at ``gateway`` (its transit address) that our default route leads to it.
    Never raises: a lost datagram is sent again at the next resolution."""
    try:
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(MESSAGE, (gateway, PORT))
    except OSError as exc:
        log.debug("route-ready datagram to %s not sent: %s", gateway, exc)


def _normal(address: str) -> str:
    """The textual address, with an IPv4-mapped IPv6 address as plain IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class Receiver:
    """A non-blocking UDP socket on every address of anchord's namespace, both families."""

    def __init__(self, port: int = PORT) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError:
            # IPv6 off in this namespace: IPv4 only.
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        self._sock = sock
        self.ignored = 0  # datagrams that were not the message

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def receive(self) -> list[str]:
        """Source addresses of the route-ready datagrams waiting now (normalised)."""
        found: list[str] = []
        while True:
            try:
                data, source = self._sock.recvfrom(_MAX)
            except (BlockingIOError, InterruptedError):
                return found
            except OSError as exc:  # e.g. an ICMP error queued on the socket: next time
                log.debug("route-ready socket: %s", exc)
                return found
            if data != MESSAGE:
                self.ignored += 1
                continue
            try:
                found.append(_normal(str(source[0])))
            except ValueError:
                self.ignored += 1

    def close(self) -> None:
        self._sock.close()
