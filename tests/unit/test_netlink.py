"""``anchord.netlink``: strict framing, one error type, a timeout on a silent peer.

The malformed answers come from a socketpair standing in for the kernel (the kernel never sends
them); two tests ask the real kernel read-only questions, which need no privilege.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from anchord.netlink import (
    HEADER,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    RECV_BUFFER,
    NetlinkError,
    NetlinkSocket,
    attr,
    attrs,
    parse,
)

RTM_NEWLINK, RTM_GETLINK = 16, 18
IFINFOMSG = struct.Struct("=BxHiII")


def message(kind: int, seq: int, payload: bytes = b"", flags: int = 0,
            length: int | None = None) -> bytes:
    size = HEADER.size + len(payload)
    padding = b"\0" * ((4 - size % 4) % 4)
    return HEADER.pack(size if length is None else length, kind, flags, seq, 0) + payload + padding


def error(seq: int, code: int) -> bytes:
    return message(NLMSG_ERROR, seq, struct.pack("=i", -code) + b"\0" * HEADER.size)


@pytest.fixture
def pair() -> Iterator[tuple[NetlinkSocket, socket.socket]]:
    """A NetlinkSocket whose "kernel" is the other end of a datagram socketpair."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    nl = NetlinkSocket(0, timeout=0.3, sock=ours)
    kernel.settimeout(1.0)
    try:
        yield nl, kernel
    finally:
        nl.close()
        kernel.close()


def answer_next(kernel: socket.socket, *datagrams: bytes) -> None:
    """Queue ``datagrams`` as the answer; the request's seq is 1 (the first of a socket)."""
    for data in datagrams:
        kernel.send(data)


def test_a_dump_is_read_across_datagrams_up_to_done(
        pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, kernel = pair
    answer_next(kernel,
                message(RTM_NEWLINK, 1, b"a", NLM_F_MULTI) + message(RTM_NEWLINK, 1, b"bb",
                                                                      NLM_F_MULTI),
                message(RTM_NEWLINK, 1, b"ccc", NLM_F_MULTI) + message(NLMSG_DONE, 1, b"\0" * 4))
    found = nl.request(RTM_GETLINK, NLM_F_DUMP, b"")
    assert [(m.type, m.payload) for m in found] == [
        (RTM_NEWLINK, b"a"), (RTM_NEWLINK, b"bb"), (RTM_NEWLINK, b"ccc")]
    sent = kernel.recv(100)
    length, kind, flags, seq, _ = HEADER.unpack_from(sent)
    assert (length, kind, flags & NLM_F_DUMP, seq) == (16, RTM_GETLINK, NLM_F_DUMP, 1)


def test_an_answer_to_an_earlier_request_is_skipped(
        pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, kernel = pair
    answer_next(kernel, error(7, errno.EPERM) + error(1, 0))
    assert nl.request(RTM_GETLINK, NLM_F_ACK, b"") == []


def test_a_refusal_raises_the_kernels_errno(pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, kernel = pair
    answer_next(kernel, error(1, errno.ENETUNREACH))
    with pytest.raises(NetlinkError) as info:
        nl.request(RTM_GETLINK, NLM_F_ACK, b"")
    assert info.value.errno == errno.ENETUNREACH
    assert isinstance(info.value, OSError)


def test_a_dump_that_ends_in_an_error_raises(pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, kernel = pair
    answer_next(kernel, message(RTM_NEWLINK, 1, b"a", NLM_F_MULTI)
                + message(NLMSG_DONE, 1, struct.pack("=i", -errno.EINTR)))
    with pytest.raises(NetlinkError) as info:
        nl.request(RTM_GETLINK, NLM_F_DUMP, b"")
    assert info.value.errno == errno.EINTR


@pytest.mark.parametrize(("datagram", "detail"), [
    (message(RTM_NEWLINK, 1, b"abcd", length=8), "less than the header"),  # shorter than itself
    (message(RTM_NEWLINK, 1, b"abcd", length=64), "64 bytes, 20 arrived"),  # longer than sent
    (message(RTM_NEWLINK, 1, b"abcd", NLM_F_MULTI) + b"\1\2\3", "3 stray bytes"),  # a torso
    (message(NLMSG_ERROR, 1, b"\0\0"), "error message of 2 bytes"),  # no room for the errno
], ids=["too-short", "oversized-length", "truncated-header", "short-error"])
def test_malformed_answers_raise_ebadmsg(pair: tuple[NetlinkSocket, socket.socket],
                                         datagram: bytes, detail: str) -> None:
    nl, kernel = pair
    answer_next(kernel, datagram)
    with pytest.raises(NetlinkError, match=detail) as info:
        nl.request(RTM_GETLINK, NLM_F_DUMP, b"")
    assert info.value.errno == errno.EBADMSG


def test_a_datagram_larger_than_the_buffer_is_an_error_not_a_truncation(
        pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, kernel = pair
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * RECV_BUFFER)
    answer_next(kernel, message(RTM_NEWLINK, 1, b"x" * RECV_BUFFER, NLM_F_MULTI))
    with pytest.raises(NetlinkError, match="larger than") as info:
        nl.request(RTM_GETLINK, NLM_F_DUMP, b"")
    assert info.value.errno == errno.EBADMSG


def test_a_silent_peer_times_out(pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, _ = pair
    start = time.monotonic()
    with pytest.raises(NetlinkError) as info:
        nl.request(RTM_GETLINK, NLM_F_DUMP, b"")
    elapsed = time.monotonic() - start
    assert info.value.errno == errno.ETIMEDOUT
    assert 0.25 <= elapsed < 2.0, elapsed


def test_the_timeout_is_on_silence_not_on_the_whole_answer(
        pair: tuple[NetlinkSocket, socket.socket]) -> None:
    """A dump still arriving after more than one timeout in total is read to its end."""
    nl, kernel = pair

    def dribble() -> None:
        for _ in range(4):
            time.sleep(0.15)  # each part well inside the 0.3 s timeout; 0.6 s in total
            kernel.send(message(RTM_NEWLINK, 1, b"p", NLM_F_MULTI))
        kernel.send(message(NLMSG_DONE, 1, b"\0" * 4))

    thread = threading.Thread(target=dribble)
    thread.start()
    try:
        assert len(nl.request(RTM_GETLINK, NLM_F_DUMP, b"")) == 4
    finally:
        thread.join()


def test_parse_accepts_an_unpadded_last_message() -> None:
    data = HEADER.pack(17, RTM_NEWLINK, 0, 3, 0) + b"z"
    assert parse(data) == [(RTM_NEWLINK, 0, 3, b"z")]


def test_attributes_round_trip_and_malformed_ones_raise() -> None:
    data = attr(3, b"eth0\0") + attr(0x8000 | 46, struct.pack("=i", 5))
    assert attrs(data) == {3: b"eth0\0", 46: struct.pack("=i", 5)}
    with pytest.raises(NetlinkError, match="says 40 bytes"):
        attrs(struct.pack("=HH", 40, 3) + b"abcd")
    with pytest.raises(NetlinkError, match="stray bytes"):
        attrs(attr(3, b"ab") + b"\1")


def test_the_real_kernel_dumps_the_links_of_this_namespace() -> None:
    with NetlinkSocket(socket.NETLINK_ROUTE) as nl:
        found = nl.request(RTM_GETLINK, NLM_F_DUMP,
                           IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    names = {attrs(m.payload[IFINFOMSG.size:]).get(3, b"").rstrip(b"\0") for m in found
             if m.type == RTM_NEWLINK}
    assert b"lo" in names


def test_the_real_kernel_refusal_is_a_netlink_error() -> None:
    with NetlinkSocket(socket.NETLINK_ROUTE) as nl, pytest.raises(NetlinkError) as info:
        nl.request(RTM_GETLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0x7FFFFFF0, 0, 0))
    assert info.value.errno == errno.ENODEV
