"""anchord.dhcp.gateway in a real kernel: the anchord namespace's routing outside its child.

Topology, made here and removed afterwards::

    anchor: t0 (10.79.0.2/24, fd79::2/64) with Docker's default routes via 10.79.0.1 and
            fd79::1 (a transit network whose bridge has no host address: nobody has .1);
            cx (a veth to a third namespace, standing in for the macvlan child) with a
            default route of its own
      |
    peer:   p0 (10.79.0.3/24) with its default route via 10.79.0.1, as Docker gives every
            container on the transit network

Checked: the default routes not via the child go (both families) and the child's stays; the
gateway goes onto t0, so the peer's gateway now answers and is the anchor (its MAC); a second
pass changes nothing (a restarted worker adopts the state).
"""

from __future__ import annotations

import json
import sys

from tests.netns import topology, wait_until

SNIPPET = """
import json, sys
from anchord.dhcp import gateway
from anchord.rtnl import Rtnl
child_index, mac = int(sys.argv[1]), sys.argv[2]
with Rtnl() as rt:
    dropped = gateway.drop_foreign_defaults(rt, child_index)
    claimed = gateway.claim_gateways(rt, [(mac, "10.79.0.1")], "cx")
print(json.dumps({"dropped": dropped, "claimed": claimed}))
"""


def _link(ns_run, name: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    rows: list[dict[str, object]] = json.loads(ns_run("ip", "-j", "link", "show", name))
    return rows[0]


def test_foreign_defaults_go_and_the_transit_gateway_is_taken() -> None:
    with topology("gw") as topo:
        anchor, peer, lan = topo.netns("anchor"), topo.netns("peer"), topo.netns("lan")
        topo.veth(anchor, "t0", peer, "p0")
        topo.veth(anchor, "cx", lan, "l0")
        anchor.run("ip", "addr", "add", "10.79.0.2/24", "dev", "t0")
        anchor.run("ip", "addr", "add", "fd79::2/64", "dev", "t0", "nodad")
        anchor.run("ip", "route", "add", "default", "via", "10.79.0.1", "dev", "t0")
        anchor.run("ip", "-6", "route", "add", "default", "via", "fd79::1", "dev", "t0")
        anchor.run("ip", "addr", "add", "10.80.0.2/24", "dev", "cx")
        anchor.run("ip", "route", "add", "default", "via", "10.80.0.1", "dev", "cx",
                   "metric", "5")
        peer.run("ip", "addr", "add", "10.79.0.3/24", "dev", "p0")
        peer.run("ip", "route", "add", "default", "via", "10.79.0.1", "dev", "p0")
        assert " 0 received" in peer.run("ping", "-c1", "-W1", "10.79.0.1", check=False)

        child_index = int(_link(anchor.run, "cx")["ifindex"])  # type: ignore[call-overload]
        mac = str(_link(anchor.run, "t0")["address"])
        argv = [sys.executable, "-c", SNIPPET, str(child_index), mac]
        first = json.loads(anchor.run(*argv))
        assert len(first["dropped"]) == 2, first  # Docker's v4 and v6 defaults
        assert first["claimed"] == ["10.79.0.1 on t0"], first
        v4 = anchor.run("ip", "-4", "route", "show", "default")
        assert "dev cx" in v4, v4
        assert "dev t0" not in v4, v4
        assert "default" not in anchor.run("ip", "-6", "route", "show", "default"), "v6 left"
        assert "inet 10.79.0.1/32" in anchor.run("ip", "-4", "-o", "addr", "show", "dev", "t0")

        # The peer's gateway is now the anchor, from the peer's side of the wire.
        wait_until(lambda: "1 received" in peer.run("ping", "-c1", "-W1", "10.79.0.1",
                                                     check=False),
                   10, what="the peer's gateway answering")
        neigh = peer.run("ip", "neigh", "show", "10.79.0.1", "dev", "p0")
        assert mac in neigh, neigh

        again = json.loads(anchor.run(*argv))
        assert again == {"dropped": [], "claimed": []}, again
