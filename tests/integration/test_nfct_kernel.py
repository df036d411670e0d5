"""``anchord.nfct`` against the real kernel: entries of every protocol decoded as
``conntrack -L`` (libnetfilter_conntrack, an independent decoder) shows them, and deleted.

Entries are inserted with ``conntrack -I`` in a namespace the test makes: the protocols anchord
forwards (TCP, UDP), and those only an egress masquerade sees (ICMP, ICMPv6, GRE), whose
deletion must name the entry by fields anchord never decodes (ICMP id/type/code, GRE keys):
that is why a deletion sends the kernel's own original tuple back.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from anchord.conntrack import Conntrack
from anchord.netlink import NLM_F_DUMP, NetlinkSocket
from anchord.nfct import (
    IPCTNL_MSG_CT_GET,
    NETLINK_NETFILTER,
    Tuple,
    decode_entry,
    dump_request,
    message_type,
)
from tests.integration.inbound_topo import inside
from tests.netns import Netns, topology

INSERTS = [
    # A DNATed TCP flow: the reply comes from the backend.
    "-s 192.0.2.1 -d 192.0.2.2 -p tcp --sport 1001 --dport 80 --state ESTABLISHED "
    "-r 10.0.0.9 -q 192.0.2.1 --reply-port-src 8080 --reply-port-dst 1001",
    "-s 192.0.2.1 -d 192.0.2.2 -p udp --sport 1000 --dport 53",
    "-s 192.0.2.1 -d 192.0.2.2 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77",
    "-s 192.0.2.1 -d 192.0.2.2 -p gre --srckey 1 --dstkey 2",
    "-s 2001:db8::1 -d 2001:db8::2 -p udp --sport 1000 --dport 53",
    "-s 2001:db8::1 -d 2001:db8::2 -p icmpv6 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 78",
]
PORT_KEYS = {"sport": "sport", "dport": "dport", "srckey": "sport", "dstkey": "dport"}


@pytest.fixture
def ns() -> Iterator[Netns]:
    with topology("nk") as topo:
        ns = topo.netns("ct")
        for insert in INSERTS:
            ns.run("conntrack", "-I", *insert.split(), "-t", "300")
        yield ns


def listed(ns: Netns, family: str) -> set[tuple[Tuple, Tuple]]:
    """(orig, reply) of each entry as ``conntrack -L`` shows it."""
    rows = set()
    for line in ns.run("conntrack", "-L", "-f", family).splitlines():
        proto = int(line.split()[1])
        _, *sides = line.split(" src=")  # the original tuple, then the reply tuple
        assert len(sides) == 2, line
        orig, reply = (side_tuple(proto, "src=" + side) for side in sides)
        rows.add((orig, reply))
    return rows


def side_tuple(proto: int, text: str) -> Tuple:
    fields = dict(re.findall(r"(\w+)=(\S+)", text))
    ports = {PORT_KEYS[k]: int(v, 0) for k, v in fields.items() if k in PORT_KEYS}
    return Tuple(fields["src"], fields["dst"], proto, ports.get("sport"), ports.get("dport"))


def dumped(ns: Netns, af: int) -> set[tuple[Tuple, Tuple]]:
    with inside(ns), NetlinkSocket(NETLINK_NETFILTER) as nl:
        answers = nl.request(message_type(IPCTNL_MSG_CT_GET), NLM_F_DUMP,
                             dump_request(af, "orig", Tuple()))
    entries = [decode_entry(answer, af) for answer in answers]
    return {(e.orig, e.reply) for e in entries}


@pytest.mark.parametrize(("af", "family", "count"), [(socket.AF_INET, "ipv4", 4),
                                               (socket.AF_INET6, "ipv6", 2)])
def test_entries_decode_as_conntrack_lists_them(ns: Netns, af: int, family: str,
                                                count: int) -> None:
    expected = listed(ns, family)
    assert len(expected) == count
    assert dumped(ns, af) == expected


@pytest.mark.parametrize(("family", "address", "count"), [(4, "192.0.2.2", 4),
                                                    (6, "2001:db8::2", 2)])
def test_entries_of_every_protocol_are_deleted(ns: Netns, family: int, address: str,
                                               count: int) -> None:
    with inside(ns), Conntrack() as ct:
        res = ct.flush_address(family, address)
    assert (res.matched, res.removed) == (count, count)
    assert listed(ns, f"ipv{family}") == set()
