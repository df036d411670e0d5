"""Benchmark of conntrack flushing (prints figures; not a test).

    sudo python3 -m benchmarks.bench_conntrack      (from the repository root)

Time to delete the flows of one stale backend (``flush_backend``, one pass) and
of one external address (``flush_address``) with 0 / 10 000 / 50 000 unrelated
entries in the namespace's table, against the naive way: dump everything to
userspace (``conntrack -L``) and filter there. And the cost of decoding in userspace:
``reconcile`` of the anchor's own address, which every unrelated entry is addressed to, so
every one crosses into userspace and is decoded (none is DNATed, none deleted).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

from anchord.conntrack import Conntrack
from anchord.nft import NatTables
from tests.integration.inbound_topo import inside, udp_burst
from tests.netns import topology

BACKEND, CLIENT, PROJECT, PEER = "172.31.0.11", "192.0.2.10", "192.0.2.50", "198.51.100.1"
ANCHOR = "198.51.100.2"  # the unrelated entries' destination


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def add_target(ct: NFCTSocket, i: int) -> None:
    """One DNATed inbound flow: client -> project address, answered by the backend."""
    ct.entry("add", timeout=600, tuple_orig=NFCTAttrTuple(
        saddr=CLIENT, daddr=PROJECT, proto=17, sport=40000 + i, dport=5353),
        tuple_reply=NFCTAttrTuple(
        saddr=BACKEND, daddr=CLIENT, proto=17, sport=5353, dport=40000 + i))


def main() -> None:
    buckets = Path("/proc/sys/net/netfilter/nf_conntrack_buckets").read_text().strip()
    print(f"# conntrack hash buckets (global, all namespaces): {buckets}")
    with topology("bc") as topo:
        anchor, peer = topo.netns("anc"), topo.netns("peer")
        topo.veth(anchor, "eth0", peer, "eth0")
        anchor.run("ip", "addr", "add", f"{ANCHOR}/24", "dev", "eth0")
        peer.run("ip", "addr", "add", f"{PEER}/24", "dev", "eth0")
        # Unanswered UDP entries expire after 30 s by default: the table must keep its size
        # for the whole row (per namespace, this one's only).
        anchor.run("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=900")
        with inside(anchor):
            tables = NatTables("anchord-ext")  # its rules make conntrack track this namespace
            tables.adopt()
            ct = Conntrack()
            raw = NFCTSocket(nfgen_family=socket.AF_INET)
        total = 0
        for unrelated in (0, 10_000, 50_000):
            while total < unrelated:
                n = min(20_000, unrelated - total)
                udp_burst(peer, ANCHOR, 10_000 + total % 50_000, n)
                total += n
            count = anchor.run("conntrack", "-C").strip()
            samples, addr_samples, naive, decode = [], [], [], []
            for i in range(30):
                with inside(anchor):
                    add_target(raw, i)
                    res = ct.flush_backend(4, BACKEND, "udp", 5353, 5353, settle=0)
                assert res.removed == 1, res
                samples.append(res.duration)
                with inside(anchor):
                    add_target(raw, i)
                    res = ct.flush_address(4, PROJECT)
                assert res.removed == 1, res
                addr_samples.append(res.duration)
            for _ in range(5):
                with inside(anchor):
                    res = ct.reconcile(4, ANCHOR, lambda proto, port: None, settle=0)
                assert res.removed == 0, res
                decode.append(res.duration)
            for _ in range(5):
                t = time.perf_counter()
                out = anchor.run("conntrack", "-L", "-p", "udp", timeout=120)
                [line for line in out.splitlines() if f"src={BACKEND}" in line]
                naive.append(time.perf_counter() - t)
            print(f"  {count:>6} entries in table: flush_backend p50 {pct(samples, .5):6.2f} ms "
                  f"p99 {pct(samples, .99):6.2f} ms | flush_address p50 "
                  f"{pct(addr_samples, .5):6.2f} ms | reconcile, all decoded p50 "
                  f"{pct(decode, .5):7.1f} ms | naive conntrack -L + filter p50 "
                  f"{pct(naive, .5):7.1f} ms")
        with inside(anchor):
            ct.close()
            raw.close()
            tables.delete()
            tables.close()
    print(f"# python {sys.version.split()[0]}, "
          f"{subprocess.run(['uname', '-r'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
