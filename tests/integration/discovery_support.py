"""Helpers for the discovery tests against a real dockerd: image, project, socket proxy.

Owns what those tests create in Docker: a tiny image made offline from the host's own
binaries (no registry is reachable), a ``Project`` that makes networks and containers
carrying Compose labels and removes every one of them at exit, a socat proxy standing
for a Docker socket proxy that a test can stop and start, and a thread that drives
``workers.discovery.Discovery`` as a library while recording what it published.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from anchord.config import NetworkAnchorConfig
from bus.events import BackendsDesired
from tests.netns import sh, wait_until
from workers.discovery import Discovery

IMAGE = "anchord-test-sleep:1"
SOCKET = "unix:///var/run/docker.sock"
# The host binaries the image needs: a shell for healthchecks, sleep as the main process.
_BINARIES = ("/usr/bin/dash", "/usr/bin/sleep", "/usr/bin/touch", "/usr/bin/rm")


def ensure_dockerd() -> docker.APIClient:
    """A client of the local dockerd, starting dockerd if nothing answers (idempotent)."""
    def ping() -> bool:
        with docker.APIClient(base_url=SOCKET, version="auto", timeout=5) as api:
            return bool(api.ping())

    try:
        ping()
    except Exception:  # noqa: BLE001 - not running yet: start it
        # Detached by setsid -f (dockerd outlives the session, as prepare-host's does): no
        # Popen of a still-running daemon is left for the garbage collector to warn about.
        with open("/var/log/dockerd.log", "ab") as logf:
            subprocess.run(["setsid", "-f", "dockerd"], stdin=subprocess.DEVNULL, stdout=logf,
                           stderr=logf, check=True, timeout=10)
        wait_until(ping, timeout=60, interval=0.5, what="dockerd to answer")
    return docker.APIClient(base_url=SOCKET, version="auto", timeout=30)


def ensure_image(api: docker.APIClient) -> str:
    """Import the test image from the host's own binaries once; nothing is pulled."""
    try:
        api.inspect_image(IMAGE)
        return IMAGE
    except docker.errors.ImageNotFound:
        pass
    files: set[str] = set()
    for binary in _BINARIES:
        files.add(binary)
        for line in sh("ldd", binary).splitlines():
            for part in line.split():
                if part.startswith("/"):
                    files.add(part)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc", "usr/bin", "lib64",
                  "lib/x86_64-linux-gnu"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for f in sorted(files):
            tar.add(os.path.realpath(f), arcname=f.lstrip("/"))
        sh_link = tarfile.TarInfo("bin/sh")
        sh_link.type = tarfile.SYMTYPE
        sh_link.linkname = "/usr/bin/dash"
        tar.addfile(sh_link)
    subprocess.run(["docker", "import", "--change", 'CMD ["/usr/bin/sleep", "infinity"]', "-",
                    IMAGE], input=buf.getvalue(), check=True, capture_output=True, timeout=120)
    return IMAGE


class Project:
    """Networks and containers of one made-up Compose project; all removed by ``close``."""

    def __init__(self, api: docker.APIClient, name: str | None = None) -> None:
        self.api = api
        self.name = name or f"adt{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []
        self.networks: list[str] = []
        self.image = ensure_image(api)

    def network(self, alias: str, ipv6: bool = False, subnet: bool = False) -> str:
        """An ``internal`` network named like Compose would: ``<project>_<alias>``.

        ``subnet``: a subnet of our own (10.213-222.x.0/24, retried on overlap), which
        Docker requires before a test may pick a container's address.
        """
        name = f"{self.name}_{alias}"
        for _ in range(20):
            pools = []
            if subnet:
                pools.append(docker.types.IPAMPool(
                    subnet=f"10.{random.randrange(213, 223)}.{random.randrange(256)}.0/24"))
            if ipv6:
                pools.append(docker.types.IPAMPool(
                    subnet=f"fd{random.randrange(256):02x}:{random.randrange(65536):04x}:"
                           f"{random.randrange(65536):04x}:1::/64"))
            ipam = docker.types.IPAMConfig(pool_configs=pools) if pools else None
            try:
                net = self.api.create_network(
                    name, driver="bridge", internal=True, enable_ipv6=ipv6, ipam=ipam,
                    labels={"com.docker.compose.project": self.name,
                            "com.docker.compose.network": alias})
            except docker.errors.APIError as exc:
                if "overlap" in str(exc).lower():
                    continue  # another network holds that subnet: draw again
                raise
            self.networks.append(net["Id"])
            return name
        raise RuntimeError("no free subnet found for the test network")

    def container(self, service: str, networks: tuple[str, ...] = (), expose: str | None = None,
                  labels: dict[str, str] | None = None, project: str | None = None,
                  healthcheck: bool = False, network_mode: str | None = None,
                  start: bool = True) -> str:
        """A container of ``service``; first network at create, the others connected after."""
        all_labels = {"com.docker.compose.project": project or self.name,
                      "com.docker.compose.service": service}
        if expose is not None:
            all_labels["anchord.expose"] = expose
        all_labels.update(labels or {})
        health = None
        if healthcheck:
            # Fast checks so the test sees transitions within a second.
            health = docker.types.Healthcheck(test=["CMD-SHELL", "test -f /tmp/healthy"],
                                              interval=100_000_000, timeout=1_000_000_000,
                                              retries=1, start_period=0)
        mode = network_mode or (networks[0] if networks else "none")
        host_config = self.api.create_host_config(network_mode=mode)
        c = self.api.create_container(
            self.image, command=["/usr/bin/sleep", "infinity"], labels=all_labels,
            name=f"{project or self.name}-{service}-{uuid.uuid4().hex[:4]}",
            host_config=host_config, healthcheck=health, stop_signal="SIGKILL")
        cid = str(c["Id"])
        self.containers.append(cid)
        for net in networks[1:]:
            self.api.connect_container_to_network(cid, net)
        if start:
            self.api.start(cid)
        return cid

    def address(self, cid: str, network: str, family: int = 4) -> str:
        net = self.api.inspect_container(cid)["NetworkSettings"]["Networks"][network]
        return str(net["IPAddress"] if family == 4 else net["GlobalIPv6Address"])

    def name_of(self, cid: str) -> str:
        return str(self.api.inspect_container(cid)["Name"]).lstrip("/")

    def close(self) -> None:
        for cid in reversed(self.containers):
            with suppress(docker.errors.NotFound):
                self.api.remove_container(cid, force=True)
        for nid in self.networks:
            with suppress(docker.errors.NotFound):
                self.api.remove_network(nid)


@contextmanager
def project(api: docker.APIClient) -> Iterator[Project]:
    p = Project(api)
    try:
        yield p
    finally:
        p.close()


class SocketProxy:
    """``socat`` relaying a private unix socket to the Docker socket: a proxy we can stop."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        assert shutil.which("socat"), "socat is needed (e2e/prepare-host.sh installs it)"
        self.path.unlink(missing_ok=True)
        # Own session: stop() kills the listener and every forked relay at once, so open
        # streams really break, as when a proxy container stops.
        self.proc = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.path},fork,unlink-early",
             "UNIX-CONNECT:/var/run/docker.sock"], start_new_session=True)
        wait_until(self.path.exists, timeout=5, what="socat socket")

    def stop(self) -> None:
        if self.proc is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None
        self.path.unlink(missing_ok=True)


class Driver:
    """Runs a Discovery in a thread (as the worker loop would) and records each change."""

    def __init__(self, config: NetworkAnchorConfig, self_id: str) -> None:
        self.changes: list[tuple[float, BackendsDesired | None]] = []
        self.lock = threading.Lock()
        self.discovery = Discovery(config, on_change=self._changed, hostname=self_id[:12],
                                   macs=set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.failure: BaseException | None = None

    def _changed(self) -> None:
        with self.lock:
            self.changes.append((time.time(), self.discovery.desired))

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.discovery.wait(0.2)
                self.discovery.step()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc

    def __enter__(self) -> Driver:
        self.discovery.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.discovery.stop()

    @property
    def desired(self) -> BackendsDesired | None:
        assert self.failure is None, f"discovery loop failed: {self.failure!r}"
        return self.discovery.desired

    def entries(self) -> set[tuple[int, str, int, int, str, str]]:
        d = self.desired
        return {(e.family, e.proto, e.first, e.last, e.address, e.container)
                for e in (d.entries if d else ())}

    def wait(self, predicate: Any, timeout: float = 5.0, what: str = "") -> BackendsDesired:
        """Wait until ``predicate(desired)`` holds; return that table."""
        def check() -> BackendsDesired | None:
            d = self.desired
            return d if d is not None and predicate(d) else None

        return wait_until(check, timeout=timeout, what=what)


def config(project: str, docker_host: str = SOCKET, poll_interval: float = 30.0,
           vlan_parent: str = "lan") -> NetworkAnchorConfig:
    return NetworkAnchorConfig(project=project, vlan_parent=vlan_parent,
                               docker_host=docker_host, poll_interval=poll_interval)
