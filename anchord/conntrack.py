"""Deleting conntrack entries by what they point at, through ctnetlink.

Owns the clean-ups the conntrack-flusher performs:

- ``reconcile``: every DNATed flow to the project address checked against the applied maps,
  those whose backend is not the current one deleted (state, not messages: nothing lost on
  the way can leave a client pinned to a dead backend);
- ``flush_backend``: entries of a backend that vanished or moved. For a DNATed
  inbound flow the original tuple is client -> project address; the backend only
  appears as the *reply* source, so that is what we match (F-13); plus the
  reverse entries a reply in flight can create (see ``flush_backend``).
- ``flush_address``: entries of an external address that was lost or replaced:
  masqueraded egress (reply destination = old address) and inbound flows to it
  (original destination = old address).

The kernel does the matching (ctnetlink dump with ``CTA_FILTER``, kernel >= 5.8):
only matching entries cross into userspace, each deleted by its exact tuple, so
the work grows with what changed, not with the size of the table. The messages are
``anchord.nfct``'s, the socket ``anchord.netlink``'s (no pyroute2). This module never touches
nftables.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from anchord.netlink import NLM_F_ACK, NLM_F_DUMP, NetlinkError, NetlinkSocket
from anchord.nfct import (
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    NETLINK_NETFILTER,
    Entry,
    Tuple,
    decode_entry,
    delete_request,
    dump_request,
    message_type,
)

log = logging.getLogger(__name__)

PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTO_NAMES = {number: name for name, number in PROTO_NUMBERS.items()}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True)
class FlushResult:
    family: int
    matched: int  # entries the kernel's filter returned
    removed: int  # entries we deleted (the rest vanished meanwhile or were out of range)
    duration: float  # seconds of work (netlink), without the settle pause


def _norm(family: int, address: str) -> str:
    addr = ipaddress.ip_address(address.split("/", 1)[0])
    if addr.version != family:
        raise ValueError(f"{address} is not an IPv{family} address")
    return addr.compressed


class Conntrack:
    """A ctnetlink socket, opened on first use in the current network namespace."""

    def __init__(self) -> None:
        self._nl: NetlinkSocket | None = None

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self) -> NetlinkSocket:
        if self._nl is None:
            # A large receive buffer: a dump of many flows arrives faster than we decode it.
            self._nl = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=1 << 20)
        return self._nl

    def _dump(self, family: int, direction: str, filt: Tuple) -> list[Entry]:
        """Entries whose ``direction`` ("orig" or "reply") tuple matches ``filt``.

        The kernel filters (CTA_FILTER). Except IPv6 addresses: on the kernels we
        run (6.x) ctnetlink's IPv6 address comparison in the dump filter is
        inverted and an equal address never matches, so for IPv6 the kernel filters
        on proto/ports only and the address is compared here.
        """
        af = _AF[family]
        kernel = filt
        if family == 6 and (filt.saddr or filt.daddr):
            kernel = Tuple(proto=filt.proto, sport=filt.sport, dport=filt.dport)
        answers = self._socket().request(message_type(IPCTNL_MSG_CT_GET), NLM_F_DUMP,
                                         dump_request(af, direction, kernel))
        entries = [decode_entry(answer, af) for answer in answers]
        if kernel is filt:
            return entries
        return [e for e in entries if filt.matches(e.orig if direction == "orig" else e.reply)]

    def _delete(self, entries: list[Entry]) -> int:
        removed = 0
        seen: set[bytes] = set()
        for entry in entries:
            if entry.orig_raw in seen:
                continue
            seen.add(entry.orig_raw)
            try:
                self._socket().request(message_type(IPCTNL_MSG_CT_DELETE), NLM_F_ACK,
                                       delete_request(entry))
                removed += 1
            except NetlinkError as exc:
                if exc.errno != errno.ENOENT:  # it expired or was deleted meanwhile
                    raise
        return removed

    def _backend_pass(self, family: int, addr: str, proto: str | None,
                      first: int, last: int, directions: tuple[str, ...]) -> tuple[int, int]:
        proto_num = PROTO_NUMBERS[proto] if proto else None
        # A single port can be matched by the kernel too; ranges are checked below.
        port = first if proto and first == last else None
        wanted = []
        matched = 0
        for direction in directions:
            filt = Tuple(saddr=addr, proto=proto_num, sport=port)
            entries = self._dump(family, direction, filt)
            matched += len(entries)
            for entry in entries:
                if proto and first != last:
                    sport = (entry.reply if direction == "reply" else entry.orig).sport
                    if sport is None or not first <= sport <= last:
                        continue
                wanted.append(entry)
        return matched, self._delete(wanted)

    def flush_backend(
        self, family: int, address: str, proto: str | None = None,
        first: int = 1, last: int = 65535, settle: float = 0.05,
    ) -> FlushResult:
        """Delete the flows of a backend that vanished or moved.

        Two kinds of entries, in two passes ``settle`` seconds apart:

        - reply source = the backend (port in range): DNATed inbound flows, the point;
        - original source = the backend with a source port in range: a reply of
          the old backend that was in flight when its entry went creates a new
          entry in the other direction (backend -> client, masqueraded), whose
          reply tuple is exactly the client's next packet: the client would be
          stuck on the old backend again. Seen in tests with a UDP client
          sending every 100 ms; the second pass removes what such a reply made.
        """
        addr = _norm(family, address)
        start = time.perf_counter()
        # Each dump walks the kernel's whole conntrack hash (all buckets, ~12 ms here
        # for 262 144 buckets): the reverse entries can only exist after our first
        # deletions, so the first pass skips that dump.
        matched, removed = self._backend_pass(family, addr, proto, first, last, ("reply",))
        work = time.perf_counter() - start
        if settle > 0:
            time.sleep(settle)
            again = time.perf_counter()
            m2, r2 = self._backend_pass(family, addr, proto, first, last, ("reply", "orig"))
            matched, removed = matched + m2, removed + r2
            work += time.perf_counter() - again
        return FlushResult(family, matched, removed, work)

    def reconcile(self, family: int, project: str, backend_of: Callable[[str, int], str | None],
                  settle: float = 0.05) -> FlushResult:
        """Delete the DNATed flows to ``project`` whose backend is not the one the maps give now.

        Works from state, not from a list of changes: one kernel-filtered dump of the flows
        whose original destination is the project address (inbound and hairpinned); a flow
        was DNATed when its reply source is not the project address, and that reply source is
        its backend. ``backend_of(proto, port)`` is the applied maps' answer (normalised
        address, or None: not exposed). Every flow whose backend differs is deleted, whatever
        was lost on the way (a message, a restart of this worker). Then, after one ``settle``
        pause for all of them, the reverse entries replies in flight made (original source
        = a stale backend and port, see ``flush_backend``): one dump per stale backend.
        """
        addr = _norm(family, project)
        start = time.perf_counter()
        entries = self._dump(family, "orig", Tuple(daddr=addr))
        stale: list[Entry] = []
        moved: dict[str, set[tuple[int, int]]] = {}  # stale backend -> {(proto, port)}
        for entry in entries:
            orig, reply = entry.orig, entry.reply
            proto = PROTO_NAMES.get(orig.proto or 0)
            if proto is None or not reply.saddr or orig.dport is None:
                continue
            backend = _norm(family, reply.saddr)
            if backend == addr:
                continue  # not DNATed: a flow to anchord itself (DHCP, ICMP errors)
            if backend_of(proto, int(orig.dport)) != backend:
                stale.append(entry)
                moved.setdefault(backend, set()).add((orig.proto or 0, int(reply.sport or 0)))
        removed = self._delete(stale)
        work = time.perf_counter() - start
        if moved and settle > 0:
            time.sleep(settle)
            again = time.perf_counter()
            for backend, ports in moved.items():
                reverse = [e for e in self._dump(family, "orig", Tuple(saddr=backend))
                           if (e.orig.proto or 0, int(e.orig.sport or 0)) in ports]
                removed += self._delete(reverse)
            work += time.perf_counter() - again
        return FlushResult(family, len(stale), removed, work)

    def flush_address(self, family: int, address: str) -> FlushResult:
        """Delete entries of an external address: egress masqueraded to it, inbound to it."""
        start = time.perf_counter()
        addr = _norm(family, address)
        egress = self._dump(family, "reply", Tuple(daddr=addr))
        inbound = self._dump(family, "orig", Tuple(daddr=addr))
        matched = egress + inbound
        removed = self._delete(matched)
        return FlushResult(family, len(matched), removed, time.perf_counter() - start)


def flush_backend(family: int, address: str, proto: str | None = None,
                  first: int = 1, last: int = 65535, settle: float = 0.05) -> FlushResult:
    with Conntrack() as ct:
        return ct.flush_backend(family, address, proto, first, last, settle)


def flush_address(family: int, address: str) -> FlushResult:
    with Conntrack() as ct:
        return ct.flush_address(family, address)
