"""Default routes of the main table, read and written over rtnetlink.

This module owns the only kernel writes of the service-anchor: replacing, reading and deleting
the default route of one family in the main routing table. It decides nothing: which gateway
to use and when is the caller's business.

What "the default route" means here: a route to 0.0.0.0/0 (or ::/0) in the main table with the
kernel's default metric for that family (0 for IPv4, 1024 for IPv6), which is the slot
``ip route replace default via ...`` writes and the one Docker fills on a non-internal network.
A replace therefore overwrites Docker's own default route there; default routes with any other
metric, in any other table, and every non-default route are never touched.

It speaks rtnetlink directly (three message types, a handful of attributes, framed by
``anchord.netlink``) instead of through pyroute2: importing pyroute2 costs about 19 MB of RSS,
half of a service-anchor's budget, and a service-anchor runs once per exposed service (measured
by benchmarks/bench_service_anchor.py). The dhcp worker's rtnetlink is ``anchord.rtnl``.
"""

from __future__ import annotations

import errno as errnos
import logging
import os
import socket
import struct
from dataclasses import dataclass

from anchord.netlink import NLM_F_ACK, NLM_F_DUMP, NetlinkSocket, attr, attrs

log = logging.getLogger(__name__)

MAIN_TABLE = 254
# The metric the kernel gives a route added without one: the slot `replace` targets.
_DEFAULT_METRIC: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 1024}

# linux/rtnetlink.h
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLM_F_REPLACE, _NLM_F_CREATE = 0x100, 0x400
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_TABLE = 1, 4, 5, 6, 15
_RTPROT_STATIC = 4
_RT_SCOPE_UNIVERSE, _RT_SCOPE_NOWHERE = 0, 255
_RTN_UNICAST = 1

# family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")


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
        self._nl = NetlinkSocket(socket.NETLINK_ROUTE)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def defaults(self, family: int) -> list[DefaultRoute]:
        """Every default route of ``family`` in the main table, any metric."""
        found = []
        rtmsg = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        for msg in self._nl.request(_RTM_GETROUTE, NLM_F_DUMP, rtmsg):
            if msg.type != _RTM_NEWROUTE or len(msg.payload) < _RTMSG.size:
                continue
            fam, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(msg.payload)
            found_attrs = attrs(msg.payload[_RTMSG.size:])
            if _RTA_TABLE in found_attrs:  # the header's table field is only 8 bits
                table = struct.unpack_from("=I", found_attrs[_RTA_TABLE])[0]
            if fam != family or dst_len != 0 or table != MAIN_TABLE:
                continue
            gateway = found_attrs.get(_RTA_GATEWAY)
            oif = found_attrs.get(_RTA_OIF)
            metric = found_attrs.get(_RTA_PRIORITY)
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
            self._nl.request(_RTM_NEWROUTE, NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE, body)
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
            self._nl.request(_RTM_DELROUTE, NLM_F_ACK, rtmsg + _route_attrs(family, gateway))
        except OSError as exc:
            if exc.errno == errnos.ESRCH:  # gone meanwhile, which is what we wanted
                return False
            raise RouteError("delete", family, gateway, exc.errno or errnos.EIO) from exc
        return True


def _route_attrs(family: int, gateway: str) -> bytes:
    return (attr(_RTA_TABLE, struct.pack("=I", MAIN_TABLE))
            + attr(_RTA_GATEWAY, socket.inet_pton(family, gateway))
            + attr(_RTA_PRIORITY, struct.pack("=I", _DEFAULT_METRIC[family])))

