"""One raw netlink request and its answer, with a timeout and strict framing.

Owns what every raw-netlink user in anchord shares (``anchord.routes``, the service-anchor's
default routes; ``anchord.rtnl``, the dhcp worker's links, addresses and routes;
``anchord.dhcp.hostns``, another namespace's id; ``anchord.conntrack``, ctnetlink): opening the
socket, sending one request, reading its answer (one message, a multipart dump up to
``NLMSG_DONE``, or the ACK) and the ``nlmsghdr``/attribute framing. What the
messages mean stays with the callers.

Every failure is a :class:`NetlinkError` (an ``OSError``, so callers that already handle
``OSError`` keep working):

- the kernel refused: its errno (``NLMSG_ERROR`` with a code, or an error in ``NLMSG_DONE``);
- the kernel said nothing for ``timeout`` seconds: ``ETIMEDOUT`` (the timeout is on silence,
  not on the whole answer: a long dump that keeps arriving is not cut off, a kernel that answers
  nothing never hangs the caller);
- a malformed answer: ``EBADMSG`` (a header shorter than itself or longer than the datagram,
  stray bytes after the last message, a datagram larger than the buffer, a short error message).
  Nothing is truncated silently.

No pyroute2 here: the service-anchor imports this module and stays light on purpose.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from typing import NamedTuple

# linux/netlink.h
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
# Modifiers of a NEW request (linux/netlink.h): replace an existing object, fail if one
# exists, create one if none does.
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

# Seconds the kernel may stay silent before a request fails. Generous: the kernel answers in
# microseconds to milliseconds; only a wedged kernel or a lost answer gets here.
DEFAULT_TIMEOUT = 5.0
# Larger than any datagram the kernel sends: a dump's datagrams are capped at 32 KiB.
RECV_BUFFER = 1 << 16

HEADER = struct.Struct("=IHHII")  # length, type, flags, seq, port id
_ATTR = struct.Struct("=HH")  # length, type
_ERRNO = struct.Struct("=i")
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


class NetlinkError(OSError):
    """A netlink request failed: refused by the kernel, timed out, or answered malformed."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail or os.strerror(code))


def _malformed(detail: str) -> NetlinkError:
    return NetlinkError(errno.EBADMSG, f"malformed netlink answer: {detail}")


class Message(NamedTuple):
    """One message of an answer, without its header."""

    type: int
    flags: int
    payload: bytes


class NetlinkSocket:
    """A netlink socket of ``protocol`` in the current network namespace; close it when done.

    ``sock`` replaces the kernel socket (unit tests answer from a socketpair).
    """

    def __init__(self, protocol: int, timeout: float = DEFAULT_TIMEOUT,
                 rcvbuf: int | None = None, sock: socket.socket | None = None) -> None:
        self.timeout = timeout
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
            try:
                if rcvbuf is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.bind((0, 0))
            except OSError:
                sock.close()
                raise
        # Per datagram (each one is the kernel making progress), not per answer.
        sock.settimeout(timeout)
        self._sock = sock
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[Message]:
        """Send one request; return the messages of its answer ([] for a bare ACK or DONE).

        ``NLM_F_REQUEST`` is always set. Raises NetlinkError (see the module docstring).
        """
        seq = next(self._seq)
        flags |= NLM_F_REQUEST
        self._sock.send(HEADER.pack(HEADER.size + len(body), msg_type, flags, seq, 0) + body)
        found: list[Message] = []
        while True:
            for kind, msg_flags, msg_seq, payload in parse(self._recv()):
                if msg_seq != seq or kind == NLMSG_NOOP:
                    continue  # a late answer to an earlier request that timed out
                if kind == NLMSG_ERROR:
                    if len(payload) < _ERRNO.size:
                        raise _malformed(f"error message of {len(payload)} bytes")
                    code = -_ERRNO.unpack_from(payload)[0]
                    if code:
                        raise NetlinkError(code)
                    return found  # the ACK
                if kind == NLMSG_DONE:
                    # A dump can end with an error instead of its last part (e.g. interrupted).
                    if len(payload) >= _ERRNO.size and _ERRNO.unpack_from(payload)[0] < 0:
                        raise NetlinkError(-_ERRNO.unpack_from(payload)[0])
                    return found
                if kind == NLMSG_OVERRUN:
                    raise NetlinkError(errno.ENOBUFS, "netlink overrun: answer lost")
                found.append(Message(kind, msg_flags, payload))
                # A single answer (a non-dump GET) ends here unless an ACK is still to come.
                if not msg_flags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return found

    def _recv(self) -> bytes:
        try:
            data, _, msg_flags, _ = self._sock.recvmsg(RECV_BUFFER)
        except TimeoutError:
            raise NetlinkError(errno.ETIMEDOUT,
                               f"no netlink answer within {self.timeout:g}s") from None
        if msg_flags & socket.MSG_TRUNC:
            raise _malformed(f"datagram larger than {RECV_BUFFER} bytes")
        return data


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of every message in one datagram; strict.

    The last message of a datagram may lack its alignment padding; anything else that is
    not exactly a sequence of whole messages raises NetlinkError(EBADMSG).
    """
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            raise _malformed(f"{len(data) - offset} stray bytes after the last message")
        length, kind, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            raise _malformed(f"header says {length} bytes, less than the header itself")
        if offset + length > len(data):
            raise _malformed(f"header says {length} bytes, {len(data) - offset} arrived")
        out.append((kind, flags, seq, data[offset + HEADER.size:offset + length]))
        offset += align(length)
    return out


def align(n: int) -> int:
    """``n`` rounded up to netlink's 4-byte alignment."""
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    """One attribute (``rtattr``/``nlattr``), padded."""
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + b"\0" * (align(length) - length)


def attrs(data: bytes) -> dict[int, bytes]:
    """The attributes in ``data`` by type (flag bits dropped); strict like :func:`parse`."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        if len(data) - offset < _ATTR.size:
            raise _malformed(f"{len(data) - offset} stray bytes after the last attribute")
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            raise _malformed(f"attribute {kind & _NLA_TYPE_MASK} says {length} bytes, "
                             f"{len(data) - offset} left")
        found[kind & _NLA_TYPE_MASK] = data[offset + _ATTR.size:offset + length]
        offset += align(length)
    return found
