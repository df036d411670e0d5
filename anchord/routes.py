"""Default routes of the main table, read and written over rtnetlink.

This module owns the only kernel writes of the service-anchor: replacing, reading and deleting
the default route of one family in the main routing table. It decides nothing: which gateway
to use and when is the caller's business.

What "the default route" means here: a route to 0.0.0.0/0 (or ::/0) in the main table with the
kernel's default metric for that family (0 for IPv4, 1024 for IPv6), which is the slot
``ip route replace default via ...`` writes and the one Docker fills on a non-internal network.
A replace therefore overwrites Docker's own default route there; default routes with any other
metric, in any other table, and every non-default route are never touched.

It speaks rtnetlink directly (three message types, a handful of attributes) instead of through
pyroute2: importing pyroute2 costs about 19 MB of RSS, half of a service-anchor's budget, and
a service-anchor runs once per exposed service (measured by benchmarks/bench_service_anchor.py).
The network-anchor's workers use pyroute2.
"""

from __future__ import annotations

import errno as errnos
import itertools
import logging
import os
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAIN_TABLE = 254
# The metric the kernel gives a route added without one: the slot `replace` targets.
_DEFAULT_METRIC: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 1024}

# linux/netlink.h, linux/rtnetlink.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_ACK = 0x1, 0x2, 0x4
_NLM_F_DUMP = 0x300
_NLM_F_REPLACE, _NLM_F_CREATE = 0x100, 0x400
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_TABLE = 1, 4, 5, 6, 15
_RTPROT_STATIC = 4
_RT_SCOPE_UNIVERSE, _RT_SCOPE_NOWHERE = 0, 255
_RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type,
_RTATTR = struct.Struct("=HH")  # length, type                                          flags


class RouteError(Exception):
    """A netlink request about a default route failed; ``errno`` says why."""

    def __init__(self, action: str, family: int, gateway: str, code: int) -> None:
        self.errno = code
        super().__init__(f"{action} default route via {gateway} ({family_name(family)}): "
                         f"{os.strerror(code)}")


def family_name(family: int) -> str:
    """``ipv4`` / ``ipv6``: the value of the ``family`` label and of log fields."""
    return "ipv6" if family == socket.AF_INET6 else "ipv4"


@dataclass(frozen=True)
class DefaultRoute:
    """One default route as the kernel reports it."""

    family: int
    gateway: str | None
    oif: int | None
    metric: int


class RouteTable:
    """An open rtnetlink socket in the current network namespace; close it when done."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        # A kernel that answers nothing must not hang the caller forever.
        self._sock.settimeout(5.0)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def defaults(self, family: int) -> list[DefaultRoute]:
        """Every default route of ``family`` in the main table, any metric."""
        found = []
        rtmsg = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        for body in self._request(_RTM_GETROUTE, _NLM_F_DUMP, rtmsg):
            fam, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(body)
            attrs = _attrs(body[_RTMSG.size:])
            if _RTA_TABLE in attrs:  # the header's table field is only 8 bits
                table = struct.unpack_from("=I", attrs[_RTA_TABLE])[0]
            if fam != family or dst_len != 0 or table != MAIN_TABLE:
                continue
            gateway = attrs.get(_RTA_GATEWAY)
            oif = attrs.get(_RTA_OIF)
            metric = attrs.get(_RTA_PRIORITY)
            found.append(DefaultRoute(
                family=family,
                gateway=socket.inet_ntop(family, gateway) if gateway else None,
                oif=struct.unpack_from("=I", oif)[0] if oif else None,
                metric=struct.unpack_from("=I", metric)[0] if metric else 0,
            ))
        return found

    def gateway(self, family: int) -> str | None:
        """Gateway of the default route in the slot :meth:`replace` writes, if any."""
        for route in self.defaults(family):
            if route.metric == _DEFAULT_METRIC[family]:
                return route.gateway
        return None

    def replace(self, family: int, gateway: str) -> None:
        """Point the default route of ``family`` at ``gateway`` in one atomic netlink request.

        Atomic so that there is no instant without a default route while it moves.
        Raises RouteError (e.g. ENETUNREACH when the gateway is not on a connected network).
        """
        rtmsg = _RTMSG.pack(family, 0, 0, 0, MAIN_TABLE, _RTPROT_STATIC, _RT_SCOPE_UNIVERSE,
                            _RTN_UNICAST, 0)
        body = rtmsg + _route_attrs(family, gateway)
        try:
            self._request(_RTM_NEWROUTE, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE, body)
        except OSError as exc:
            raise RouteError("replace", family, gateway, exc.errno or errnos.EIO) from exc

    def delete(self, family: int, gateway: str) -> bool:
        """Delete the default route via ``gateway`` only; False if no such route is left.

        The gateway is part of the match, so a default route somebody else has put in its
        place since is left alone.
        """
        if self.gateway(family) != gateway:
            return False
        # Scope "nowhere" in a delete request means "any scope", as `ip route del` sends it.
        rtmsg = _RTMSG.pack(family, 0, 0, 0, MAIN_TABLE, 0, _RT_SCOPE_NOWHERE, 0, 0)
        try:
            self._request(_RTM_DELROUTE, _NLM_F_ACK, rtmsg + _route_attrs(family, gateway))
        except OSError as exc:
            if exc.errno == errnos.ESRCH:  # gone meanwhile, which is what we wanted
                return False
            raise RouteError("delete", family, gateway, exc.errno or errnos.EIO) from exc
        return True

    def _request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the bodies of the answers (dump) or [] (ack).

        Raises OSError with the kernel's errno when it refuses.
        """
        seq = next(self._seq)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, _NLM_F_REQUEST | flags,
                                seq, 0)
        self._sock.send(header + body)
        bodies: list[bytes] = []
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, msg_flags, msg_seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(errnos.EBADMSG, "malformed netlink message")
                payload = data[offset + _NLMSGHDR.size:offset + length]
                offset += _align(length)
                if msg_seq != seq:
                    continue  # a late answer to an earlier request that timed out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return bodies  # the ack
                if kind == _NLMSG_DONE:
                    return bodies
                bodies.append(payload)
                if not msg_flags & _NLM_F_MULTI:
                    return bodies


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    length = _RTATTR.size + len(value)
    return _RTATTR.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _route_attrs(family: int, gateway: str) -> bytes:
    return (_attr(_RTA_TABLE, struct.pack("=I", MAIN_TABLE))
            + _attr(_RTA_GATEWAY, socket.inet_pton(family, gateway))
            + _attr(_RTA_PRIORITY, struct.pack("=I", _DEFAULT_METRIC[family])))


def _attrs(data: bytes) -> dict[int, bytes]:
    found = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTATTR.size:offset + length]  # drop NLA_F_* bits
        offset += _align(length)
    return found
