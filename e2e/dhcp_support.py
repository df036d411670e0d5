"""Support of e2e/test_dhcp_scenarios.py: a simulated LAN with a real DHCP server (dnsmasq or
ISC Kea + radvd) and anchord projects joining it, each a Compose project of its own.

Owns: building the DHCP server's image (e2e/compose/dhcp/Dockerfile, FROM the demo LAN image,
classic ``docker build``, cached), the LAN project (e2e/compose/dhcp/lan.yaml: the server and
a LAN host) and the anchord projects on it (e2e/compose/dhcp/project.yaml, the LAN network
external), started and always taken down in the right order by ``DhcpBed``; and the questions
the scenarios ask: the server's lease table (dnsmasq's lease file or Kea's memfile CSVs, one
``Lease`` shape), reserving an address and reloading the server, the addresses on anchord's
macvlan child, readiness, the DNAT maps, conntrack entries, and counting the DHCPv4 requests
a LAN host sees from a MAC.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any

from anchord.config import derive_mac
from e2e import harness, stack_support
from e2e.harness import ComposeProject, wait_until
from e2e.lifecycle_support import transit_addresses
from e2e.stack_support import LAN_IMAGE, Lease, Stack

DHCP_IMAGE = "anchord-dhcp-lan:local"
DHCP_DIR = harness.COMPOSE_DIR / "dhcp"
LAN_FILE = DHCP_DIR / "lan.yaml"
PROJECT_FILE = DHCP_DIR / "project.yaml"
# The LAN the server speaks on the bridge (lan-server.sh's defaults).
LAN_V4 = "10.77.0"
LAN_V6 = ipaddress.IPv6Network("fd77:0:0:1::/64")
DNSMASQ_LEASES = stack_support.LEASE_FILE
KEA_LEASES = {4: "/leases/kea-leases4.csv", 6: "/leases/kea-leases6.csv"}
APP_PORT = 8080
ECHO_PORT = 9000  # the LAN client's listener: the egress target

# Run in the LAN client: argv = mac want deadline. Counts DHCPv4 client frames (UDP to port 67)
# sent from that MAC, prints one JSON line with their times once ``want`` were seen or at the
# deadline. A raw socket: what is on the wire, whatever the server does with it.
COUNT_REQUESTS = r"""
import json, socket, sys, time
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
want, deadline = int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
s.settimeout(0.5)
seen = []
end = time.monotonic() + deadline
while len(seen) < want and time.monotonic() < end:
    try:
        frame = s.recv(2048)
    except TimeoutError:
        continue
    ihl = (frame[14] & 0x0F) * 4
    if frame[6:12] == mac and frame[23] == 17 and frame[14 + ihl + 2:14 + ihl + 4] == b"\x00\x43":
        seen.append(round(time.time(), 3))
print(json.dumps({"requests": seen}))
"""


def build_dhcp_image(timeout: float = 900.0) -> str:
    """The DHCP server's image (and the demo LAN image it builds on); seconds when cached."""
    stack_support.build_lan_image(timeout)
    harness.run(
        [
            "docker",
            "build",
            "-q",
            "--build-arg",
            f"BASE={LAN_IMAGE}",
            "-t",
            DHCP_IMAGE,
            str(DHCP_DIR),
        ],
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        timeout=timeout,
    )
    return DHCP_IMAGE


def eui64(mac: str, network: ipaddress.IPv6Network = LAN_V6) -> ipaddress.IPv6Address:
    """The SLAAC address the kernel makes from ``mac`` in ``network`` (addr_gen_mode 0)."""
    octets = bytearray(int(x, 16) for x in mac.split(":"))
    octets[0] ^= 0x02
    iid = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return network.network_address + int.from_bytes(iid, "big")


def parse_kea_leases(text: str, family: int) -> list[Lease]:
    """Kea's memfile CSV: one row per change, the last row of an address wins; a row with
    valid_lifetime 0 is a deleted (released) lease, state 0 is the only active state."""
    last: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("address"):
            last[row["address"]] = row
    leases = []
    for address, row in last.items():
        if row.get("valid_lifetime", "0") == "0" or row.get("state", "0") != "0":
            continue
        ident = row.get("hwaddr", "") if family == 4 else row.get("iaid", "")
        leases.append(Lease(family, address, row.get("hostname", "").rstrip("."), ident))
    return leases


@dataclass
class Lan(Stack):
    """The LAN project: ``dhcp`` (the server) and ``client`` (a LAN host)."""

    server: str = "dnsmasq"
    mode: str = "both"

    @property
    def network(self) -> str:
        return f"{self.project.name}_lan"

    def leases(self) -> list[Lease]:
        if self.server == "dnsmasq":
            return stack_support.parse_leases(self.exec("dhcp", "cat", DNSMASQ_LEASES))
        found = []
        for family, path in KEA_LEASES.items():
            text = self.exec("dhcp", "cat", path, check=False)
            found += parse_kea_leases(text, family)
        return found

    def leases_of(self, hostname: str, family: int) -> list[Lease]:
        return [
            lease
            for lease in self.leases()
            if lease.family == family and lease.hostname == hostname
        ]

    def reserve(self, mac: str, address: str) -> None:
        """Reserve ``address`` for ``mac`` and reload the server (lan-server.sh reserve)."""
        self.exec("dhcp", "/dhcp/lan-server.sh", "reserve", mac, address)

    def dhcp_requests(self, mac: str, want: int, deadline: float) -> list[float]:
        """Times of the DHCPv4 client frames from ``mac`` the LAN client sees, until ``want``
        were seen or ``deadline`` seconds passed."""
        out = self.exec(
            "client",
            "python3",
            "-c",
            COUNT_REQUESTS,
            mac,
            str(want),
            str(deadline),
            timeout=deadline + 30,
        )
        times: list[float] = json.loads(out.strip().splitlines()[-1])["requests"]
        return times


@dataclass
class Project(Stack):
    """One anchord project on the LAN: ``anchord``, ``web-anchor`` (tcp+udp/8080), ``web``."""

    app_name: str = "web"

    @property
    def mac(self) -> str:
        return derive_mac(self.project.name)  # SPEC F-2: the MAC follows the project name

    def addresses(self, family: int) -> list[str]:
        """Global addresses of ``family`` on the macvlan child (``[]`` if it has none or does
        not exist yet)."""
        out = self.exec(
            "anchord", "ip", "-j", f"-{family}", "addr", "show", "dev", "anchord-ext", check=False
        )
        try:
            links = json.loads(out or "[]")
        except ValueError:
            return []
        return [
            str(a["local"])
            for link in links
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        ]

    def prefixlens(self, family: int) -> list[int]:
        out = self.exec("anchord", "ip", "-j", f"-{family}", "addr", "show", "dev", "anchord-ext")
        return [
            int(a["prefixlen"])
            for link in json.loads(out)
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        ]

    def child_mac(self) -> str:
        return self.exec("anchord", "cat", "/sys/class/net/anchord-ext/address").strip()

    def healthcheck(self) -> bool:
        """``anchord healthcheck`` (the image's HEALTHCHECK) exits 0."""
        result = harness.run(
            ["docker", "exec", self.cid("anchord"), "anchord", "healthcheck"], check=False
        )
        return result.returncode == 0

    def readyz(self) -> tuple[int, str]:
        """Status and body of GET /readyz on the metrics listener (127.0.0.1:9090)."""
        script = (
            "import urllib.request, urllib.error\n"
            "try:\n"
            "    r = urllib.request.urlopen('http://127.0.0.1:9090/readyz', timeout=5)\n"
            "    print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); print(e.read().decode())\n"
        )
        out = self.exec("anchord", "python3", "-c", script)
        code, _, body = out.partition("\n")
        return int(code), body

    def dnat_map(self, family: int, proto: str = "tcp") -> dict[int, str]:
        """{port: backend} of the anchord table's plain map of ``proto`` (single ports)."""
        table = ("ip", "anchord_v4") if family == 4 else ("ip6", "anchord_v6")
        out = self.exec("anchord", "nft", "-j", "list", "map", *table, f"dnat_{proto}")
        for item in json.loads(out)["nftables"]:
            if "map" in item:
                return {int(k): str(v) for k, v in item["map"].get("elem", [])}
        return {}

    def backend(self, family: int) -> str:
        """web-anchor's address on the project's transit network."""
        v4, v6 = transit_addresses(self.project, "web-anchor")
        return v4 if family == 4 else v6

    def conntrack(self) -> str:
        """``conntrack -L`` of both families in the anchord container."""
        return self.exec("anchord", "conntrack", "-L", "-f", "ipv4", check=False) + self.exec(
            "anchord", "conntrack", "-L", "-f", "ipv6", check=False
        )

    def worker_pids(self) -> dict[str, int | None]:
        text = self.exec("anchord", "supervisorctl", "status", check=False)
        return {
            name: harness.supervisor_pid(text, name)
            for name in harness.parse_supervisor_status(text)
        }

    def wait_address(self, family: int, timeout: float = 60.0) -> str:
        """The first global address of ``family`` on the child, once it has one."""
        found: list[str] = wait_until(
            lambda: self.addresses(family),
            timeout,
            interval=0.3,
            message=f"an IPv{family} address on {self.project.name}'s anchord-ext",
        )
        return found[0]


def lan_env(image: str) -> dict[str, str]:
    return {
        "ANCHORD_IMAGE": image,
        "ANCHORD_LAN_IMAGE": LAN_IMAGE,
        "ANCHORD_DHCP_IMAGE": DHCP_IMAGE,
    }


@dataclass
class DhcpBed:
    """A LAN project and the anchord projects on it, for one test. ``close`` takes the
    anchord projects down first (they hold endpoints on the LAN's network), then the LAN."""

    image: str
    hint: str
    lan: Lan | None = None
    projects: list[Project] = field(default_factory=list)

    def start_lan(self, server: str, mode: str, **env: str) -> Lan:
        project = ComposeProject(
            compose_file=LAN_FILE,
            name=harness.unique_project_name(f"{self.hint}-lan"),
            env={
                **lan_env(self.image),
                "SERVER": server,
                "MODE": mode,
                "LAN6_DOCKER_SUBNET": stack_support.random_ula64(),
                **env,
            },
        )
        self.lan = Lan(project, server=server, mode=mode)
        harness.ensure_bridge_nf_call_off()
        # --wait: the server's healthcheck says its sockets are bound (a LAN's DHCP server is
        # up before the hosts on it).
        project.compose("up", "-d", "--no-build", "--pull", "never", "--wait", timeout=180)
        return self.lan

    def start_project(self, app_name: str, **env: str) -> Project:
        assert self.lan is not None, "start the LAN first"
        project = ComposeProject(
            compose_file=PROJECT_FILE,
            name=harness.unique_project_name(f"{self.hint}-{app_name}"),
            env={
                **lan_env(self.image),
                "LAN_NETWORK": self.lan.network,
                "APP_NAME": app_name,
                "TRANSIT6_DOCKER_SUBNET": stack_support.random_ula64(),
                **env,
            },
        )
        started = Project(project, app_name=app_name)
        self.projects.append(started)
        project.up()
        return started

    def query(self, proto: str, host: str, port: int = APP_PORT) -> dict[str, Any]:
        """What the LAN client sees connecting to host:port."""
        assert self.lan is not None
        return self.lan.query("client", proto, host, port)

    def close(self, failed: bool) -> None:
        for part in [*self.projects, *([self.lan] if self.lan else [])]:
            if failed:
                print(part.project.dump())
        for started in self.projects:
            started.project.down()
        if self.lan is not None:
            self.lan.project.down()
