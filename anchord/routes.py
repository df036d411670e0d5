"""Default routes of the main table, read and written over rtnetlink (pyroute2).

This module owns the only kernel writes of the service-anchor: replacing, reading and deleting
the default route of one family in the main routing table. It decides nothing: which gateway
to use and when is the caller's business.

What "the default route" means here: a route to 0.0.0.0/0 (or ::/0) in the main table with the
kernel's default metric for that family (0 for IPv4, 1024 for IPv6), which is the slot
``ip route replace default via ...`` writes and the one Docker fills on a non-internal network.
A replace therefore overwrites Docker's own default route there; default routes with any other
metric, in any other table, and every non-default route are never touched.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

MAIN_TABLE = 254
# The metric the kernel gives a route added without one: the slot `replace` targets.
_DEFAULT_METRIC: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 1024}
_DST: dict[int, str] = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}


class RouteError(Exception):
    """A netlink request about a default route failed; ``errno`` says why."""

    def __init__(self, action: str, family: int, gateway: str, exc: NetlinkError) -> None:
        self.errno = int(exc.code)
        super().__init__(f"{action} default route via {gateway} ({family_name(family)}): "
                         f"{exc.args[1] if len(exc.args) > 1 else exc}")


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
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def defaults(self, family: int) -> list[DefaultRoute]:
        """Every default route of ``family`` in the main table, any metric."""
        found = []
        for msg in self._ipr.route("dump", family=family, table=MAIN_TABLE):
            if msg["dst_len"] != 0 or _table(msg) != MAIN_TABLE:
                continue
            found.append(DefaultRoute(
                family=family,
                gateway=msg.get("RTA_GATEWAY"),
                oif=msg.get("RTA_OIF"),
                metric=msg.get("RTA_PRIORITY") or 0,
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
        try:
            self._ipr.route("replace", dst=_DST[family], gateway=gateway, family=family,
                            table=MAIN_TABLE)
        except NetlinkError as exc:
            raise RouteError("replace", family, gateway, exc) from exc

    def delete(self, family: int, gateway: str) -> bool:
        """Delete the default route via ``gateway`` only; False if no such route is left.

        The gateway is part of the match, so a default route somebody else has put in its
        place since is left alone.
        """
        if self.gateway(family) != gateway:
            return False
        try:
            self._ipr.route("del", dst=_DST[family], gateway=gateway, family=family,
                            table=MAIN_TABLE, priority=_DEFAULT_METRIC[family])
        except NetlinkError as exc:
            if exc.code == 3:  # ESRCH: gone meanwhile, which is what we wanted
                return False
            raise RouteError("delete", family, gateway, exc) from exc
        return True


def _table(msg: Any) -> int:
    # RTA_TABLE carries tables above 255; the header field is the fallback.
    table = msg.get("RTA_TABLE")
    return int(table if table is not None else msg["table"])
