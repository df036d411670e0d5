"""What the dhcp worker's raw sockets cost while the project's address carries traffic.

Two network namespaces on a veth (made here, removed at the end): iperf3 sends TCP from the
"lan" end to a server on the "anchor" end for ``--seconds``, while a receiver process on the
anchor end runs the dhcp worker's receive loop (select on its raw sockets, ``receive()``, the
DHCPv4 pre-filter) over one of two socket setups, measured one after the other in one run:

- ``unfiltered``: AF_PACKET sockets for IPv4, ARP and IPv6 with no filter (anchord before the
  BPF filters): every frame of the data plane is copied to the worker;
- ``filtered``: ``anchord.dhcp.rawio.RawSocket`` for IPv4 and IPv6 (BPF: DHCP and RAs only)
  and ARP as a bound worker has it (BPF: ARP claiming the bound address only).

Printed per setup: iperf3's throughput, the frames the receiver was handed and its CPU seconds
(user + system, ``getrusage``), and the ratios. Run as root on Debian with iperf3 installed
(``apt-get install iperf3``)::

    .venv/bin/python -m benchmarks.bench_dhcp_socket --seconds 10

All traffic stays on the veth between the two namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

RECEIVER = r"""
import json, resource, select, socket, sys, time
sys.path.insert(0, sys.argv[3])
from anchord.dhcp.rawio import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, RawSocket, arp_filter
from workers.dhcp import _is_dhcp4_reply
mode, seconds = sys.argv[1], float(sys.argv[2])

class Plain:
    def __init__(self, ethertype):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
        self.sock.bind(("eth0", ethertype))
        self.sock.setblocking(False)
        self.received = 0
    def fileno(self):
        return self.sock.fileno()
    def receive(self, limit=64):
        out = []
        for _ in range(limit):
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            self.received += 1
            out.append(data)
        return out

if mode == "unfiltered":
    socks = [Plain(t) for t in (ETH_P_IP, ETH_P_ARP, ETH_P_IPV6)]
else:
    socks = [RawSocket("eth0", t) for t in (ETH_P_IP, ETH_P_IPV6)]
    # The ARP socket of a bound address (RFC 5227 2.4), filtered to claims on it.
    socks.append(RawSocket("eth0", ETH_P_ARP, arp_filter("10.99.0.2", False)))
print("ready", flush=True)
start = time.monotonic()
dhcp = 0
while time.monotonic() - start < seconds:
    ready, _, _ = select.select(socks, [], [], 0.5)
    for s in ready:
        for frame in s.receive():
            dhcp += _is_dhcp4_reply(frame)
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"frames": sum(s.received for s in socks), "dhcp": dhcp,
                  "cpu": use.ru_utime + use.ru_stime}), flush=True)
"""


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def measure(mode: str, seconds: float, lan: str, anchor: str) -> dict[str, float]:
    repo = str(Path(__file__).resolve().parents[1])
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", anchor, sys.executable, "-c", RECEIVER, mode,
         str(seconds + 2), repo],
        stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    if receiver.stdout.readline().strip() != "ready":
        raise RuntimeError("receiver did not start")
    server = subprocess.Popen(["ip", "netns", "exec", anchor, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # iperf3 -s has no readiness signal; the client retries below anyway
    result: dict[str, object] = {}
    for _ in range(20):
        out = subprocess.run(["ip", "netns", "exec", lan, "iperf3", "-c", "10.99.0.2", "-t",
                              str(seconds), "-J"], capture_output=True, text=True)
        if out.returncode == 0:
            result = json.loads(out.stdout)
            break
        time.sleep(0.25)
    server.wait(10)
    figures = json.loads(receiver.stdout.readline())
    receiver.wait(30)
    end = result.get("end", {}) if isinstance(result, dict) else {}
    sent = end.get("sum_received", {}) if isinstance(end, dict) else {}
    figures["gbit"] = float(sent.get("bits_per_second", 0.0)) / 1e9
    return figures  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("iperf3"):
        print("needs root and iperf3 (apt-get install iperf3)", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:6]
    lan, anchor = f"bds{tag}-lan", f"bds{tag}-anc"
    try:
        for ns in (lan, anchor):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"bd{tag}", "type", "veth", "peer", "name", f"be{tag}")
        sh("ip", "link", "set", f"bd{tag}", "netns", lan, "name", "eth0")
        sh("ip", "link", "set", f"be{tag}", "netns", anchor, "name", "eth0")
        for ns, addr in ((lan, "10.99.0.1/24"), (anchor, "10.99.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        rows = {mode: measure(mode, args.seconds, lan, anchor)
                for mode in ("unfiltered", "filtered")}
    finally:
        for ns in (lan, anchor):
            sh("ip", "netns", "del", ns, check=False)
    print(f"dhcp worker receive loop while iperf3 (1 TCP stream, {args.seconds:g} s) saturates "
          "the address:")
    print(f"{'sockets':<12} {'Gbit/s':>8} {'frames handed':>14} {'CPU s':>7}")
    for mode, r in rows.items():
        print(f"{mode:<12} {r['gbit']:8.2f} {int(r['frames']):14d} {r['cpu']:7.2f}")
    u, f = rows["unfiltered"], rows["filtered"]
    print(f"filtered / unfiltered: throughput {f['gbit'] / max(u['gbit'], 1e-9):.2f}x, frames "
          f"{int(f['frames'])} vs {int(u['frames'])}, CPU {f['cpu'] / max(u['cpu'], 1e-9):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
