"""``anchord.dhcp.hostns`` against the real kernel: a namespace's id and links seen from another.

Two namespaces made here: ``anchor`` (where hostns runs, as the dhcp worker would) and
``host`` (standing in for a real host, with an ``eth0.42``: one end of a veth pair). hostns is
given the path of ``host``'s namespace handle, as ``ANCHORD_PARENT=/path:ifname`` gives it; no
setns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.netns import Netns, Topology, topology

ASK = """
import json, sys
from anchord.dhcp import hostns
first = hostns.netnsid(sys.argv[1])
again = hostns.netnsid(sys.argv[1])
links = {l.name: [l.index, l.flags] for l in hostns.foreign_links(first)}
print(json.dumps({"nsid": first, "again": again, "links": links}))
"""


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    topo: Topology
    with topology("hn") as topo:
        anchor, host = topo.netns("anchor"), topo.netns("host")
        host.run("ip", "link", "add", "eth0.42", "type", "veth", "peer", "name", "wire")
        host.run("ip", "link", "set", "eth0.42", "up")
        yield anchor, host


def test_the_id_and_links_of_another_namespace(pair: tuple[Netns, Netns]) -> None:
    anchor, host = pair
    out = json.loads(anchor.run(sys.executable, "-c", ASK, host.path))
    # The first call made the kernel assign an id; the second finds the same one.
    assert out["nsid"] >= 0
    assert out["again"] == out["nsid"]
    index = int(host.run("cat", "/sys/class/net/eth0.42/ifindex"))
    assert out["links"]["eth0.42"][0] == index
    assert out["links"]["eth0.42"][1] & 0x1  # IFF_UP, as set in that namespace
    assert set(out["links"]) == {"lo", "eth0.42", "wire"}  # that namespace's, not ours


def test_a_path_that_is_no_namespace_is_an_error(pair: tuple[Netns, Netns]) -> None:
    anchor, _ = pair
    # /proc/self/status opens fine but is no namespace handle: the kernel refuses the fd.
    code = ("import sys\nfrom anchord.dhcp import hostns\n"
            "try:\n    hostns.netnsid('/proc/self/status')\n"
            "except OSError as exc:\n    print(type(exc).__name__, exc.errno)\n")
    assert anchor.run(sys.executable, "-c", code).split()[0] == "NetlinkError"
