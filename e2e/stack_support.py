"""Support of e2e/test_stack.py: the full stack (e2e/compose/stack/compose.yaml) as one object.

Owns: building the simulated LAN's image (dnsmasq, client, demo app: e2e/compose/demo/lan,
classic ``docker build`` from the local debian:bookworm-slim, cached), starting the stack as a
uniquely named project with random IPv6 subnets for Docker's side of its bridges, timing the
cold start (``compose up`` returned -> the LAN client got an answer from the app), and the
questions the tests ask: the DHCP server's lease table, what a LAN host or an app container
sees when it connects (``lantool.py query``), ``anchord status``.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from e2e import harness
from e2e.harness import ComposeProject

LAN_IMAGE = "anchord-demo-lan:local"
LAN_IMAGE_DIR = harness.COMPOSE_DIR / "demo" / "lan"
STACK_FILE = harness.COMPOSE_DIR / "stack" / "compose.yaml"
LEASE_FILE = "/var/lib/misc/dnsmasq.leases"
# The LAN that dnsmasq serves on the bridge (see the compose file) and its one client host.
CLIENT_V4 = "10.77.0.10"
CLIENT_V6 = "fd77:0:0:1::10"
DNS_SERVER = "10.77.0.1"
LANTOOL = ("python3", "/demo/lantool.py")
# How long the LAN client keeps trying at a cold start before it gives up.
REACH_TIMEOUT = 60.0


def build_lan_image(timeout: float = 600.0) -> str:
    """The LAN hosts' image; seconds when it is cached."""
    harness.run(
        ["docker", "build", "-q", "-t", LAN_IMAGE, str(LAN_IMAGE_DIR)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        timeout=timeout,
    )
    return LAN_IMAGE


def random_ula64() -> str:
    """A random ULA /64 (RFC 4193 style) for Docker's side of a bridge: no two projects
    collide, and none collides with the LAN prefix fd77:0:0:1::/64 dnsmasq serves."""
    words = [random.randrange(0xFD00, 0xFE00)] + [random.randrange(0x10000) for _ in range(3)]
    return ":".join(f"{w:x}" for w in words) + "::/64"


@dataclass(frozen=True)
class Lease:
    family: int
    address: str
    hostname: str
    identifier: str  # MAC (v4) or IAID (v6)


def reply(result: dict[str, Any]) -> dict[str, Any]:
    """The server's JSON answer in a ``lantool.py query`` result; fails the test if none."""
    assert "reply" in result, result
    answer = result["reply"]
    assert isinstance(answer, dict), result
    return answer


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq's lease file: v4 rows ``expiry mac ip host clientid``, then after a ``duid``
    line v6 rows ``expiry iaid ip host duid``."""
    leases = []
    family = 4
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "duid":
            family = 6
            continue
        if len(parts) >= 4:
            leases.append(Lease(family, parts[2], parts[3], parts[1]))
    return leases


@dataclass
class Stack:
    project: ComposeProject
    cold_start_seconds: float = 0.0
    cold_start_verdict: str = ""
    _ids: dict[str, str] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return self.project.name  # the DHCP hostname is the project name (SPEC F-3)

    def cid(self, service: str) -> str:
        if service not in self._ids:
            self._ids[service] = self.project.container_id(service)
        return self._ids[service]

    def forget_containers(self) -> None:
        """Forget the cached container ids (after a step that re-creates containers)."""
        self._ids.clear()

    def exec(self, service: str, *cmd: str, check: bool = True, timeout: float = 60.0) -> str:
        """``docker exec`` (faster than ``compose exec``, which matters while polling)."""
        return harness.run(
            ["docker", "exec", self.cid(service), *cmd], check=check, timeout=timeout
        ).stdout

    def leases(self) -> list[Lease]:
        return parse_leases(self.exec("dhcp", "cat", LEASE_FILE))

    def project_address(self, family: int) -> str:
        """The project's address in the DHCP server's lease table (by hostname)."""
        found = [
            lease.address
            for lease in self.leases()
            if lease.family == family and lease.hostname == self.hostname
        ]
        if len(found) != 1:
            raise LookupError(f"ipv{family} lease of {self.hostname}: {found} in {self.leases()}")
        return found[0]

    def query(
        self, service: str, proto: str, host: str, port: int, timeout: float = 2.0
    ) -> dict[str, Any]:
        """What ``service`` sees connecting to host:port: {"reply": {...}, "local": addr} or
        {"error": "..."}."""
        out = self.exec(
            service,
            *LANTOOL,
            "query",
            proto,
            host,
            str(port),
            "--timeout",
            str(timeout),
            check=False,
            timeout=timeout + 30,
        )
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def status_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.exec("anchord", "anchord", "status", "--json"))
        return data

    def status_text(self) -> str:
        return self.exec("anchord", "anchord", "status", check=False)


def start_stack(image: str, hint: str = "stack", reach_timeout: float = REACH_TIMEOUT) -> Stack:
    """Start the stack and time its cold start: from ``compose up`` returning to the LAN
    client's first answer from the app (the client asks dnsmasq for the project's name, then
    connects to tcp/8080, polling every 0.2 s inside its own container: no exec per try)."""
    project = ComposeProject(
        compose_file=STACK_FILE,
        name=harness.unique_project_name(hint),
        env={
            "ANCHORD_IMAGE": image,
            "ANCHORD_LAN_IMAGE": LAN_IMAGE,
            "LAN6_DOCKER_SUBNET": random_ula64(),
            "TRANSIT6_DOCKER_SUBNET": random_ula64(),
        },
    )
    stack = Stack(project)
    try:
        project.up()
        started = time.monotonic()
        out = harness.run(
            [
                "docker",
                "exec",
                stack.cid("client"),
                *LANTOOL,
                "client",
                "--once",
                "--name",
                stack.hostname,
                "--server",
                DNS_SERVER,
                "--port",
                "8080",
                "--deadline",
                str(reach_timeout),
            ],
            check=False,
            timeout=reach_timeout + 30,
        )
        stack.cold_start_seconds = time.monotonic() - started
        stack.cold_start_verdict = out.stdout.strip()
    except BaseException:
        print(project.dump())
        project.down()
        raise
    return stack
