"""Integration tests of service-anchor mode in real network namespaces (SPEC F-11, F-18, S-9).

Topology, all made here and removed afterwards::

    anchor (eth0 10.77.0.2/24, fd77::2/64)          the service-anchor's namespace, with dnsmasq
       |                                             on 127.0.0.11 as its resolver (like Docker's
    lan: bridge br0                                   embedded DNS), via /etc/netns/<ns>/
       |                      |                       resolv.conf bind-mounted by `ip netns exec`
    gw1 (10.77.0.1, fd77::1)  gw2 (10.77.0.3, fd77::3)
    both own 198.51.100.1 and 2001:db8::1 on lo with a TCP listener that answers its own name,
    so a connection from the anchor tells which gateway the default route really uses.

The gateway name's answer is changed by rewriting dnsmasq's hosts file and sending it SIGHUP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anchord.health import check as check_health
from tests.netns import Netns, Topology, sh, topology, wait_until

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 1.0
V4_GW = {"gw1": "10.77.0.1", "gw2": "10.77.0.3"}
V6_GW = {"gw1": "fd77::1", "gw2": "fd77::3"}
DOCKER_GW_V4, DOCKER_GW_V6 = "10.77.0.254", "fd77::fe"
PORT = 7777

# Runs main() in the namespace the way the CLI does: logging configured, config built directly.
RUN_ANCHOR = """
import json, logging, sys
from pathlib import Path
from anchord.config import MetricsAddr, ServiceAnchorConfig
from workers.service_anchor import main
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
logging.getLogger("pyroute2").setLevel(logging.WARNING)
a = json.loads(sys.argv[1])
sys.exit(main(ServiceAnchorConfig(
    mode="service-anchor",
    metrics_addr=MetricsAddr("127.0.0.1", a["port"]) if a["port"] else None,
    run_dir=Path(a["run_dir"]), gateway_hostname="anchord",
    gateway_resolve_interval=a["interval"])))
"""

# A gateway: answers every TCP connection on PORT with its own name (v4 and v6, one socket).
GATEWAY_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2])))
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[1].encode())
    c.close()
"""

ASK_GATEWAY = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
    print(c.recv(64).decode())
"""

HTTP_GET = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(f"{code}\\n" + body.decode())
"""


@dataclass
class Env:
    topo: Topology
    anchor: Netns
    tmp: Path
    dnsmasq: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def hosts(self) -> Path:
        return self.tmp / "dns-hosts"

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    # --- the resolver -------------------------------------------------------------------------
    def answer(self, v4: str | None, v6: str | None) -> None:
        """What `anchord` resolves to from now on (None: no such record)."""
        lines = [f"{addr} anchord\n" for addr in (v4, v6) if addr]
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.hosts)
        if self.dnsmasq is not None:
            self.dnsmasq.send_signal(signal.SIGHUP)  # re-reads the hosts file, clears its cache

    def start_dnsmasq(self) -> None:
        log = self.tmp / "dnsmasq.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.dnsmasq = self.anchor.popen(
                ["dnsmasq", "--conf-file=/dev/null", "--no-daemon", "--port=53",
                 "--listen-address=127.0.0.11", "--bind-interfaces", "--no-resolv", "--no-hosts",
                 f"--addn-hosts={self.hosts}", "--local=/anchord/", "--pid-file=",
                 "--user=root"],
                stdout=subprocess.DEVNULL, stderr=out)
        wait_until(lambda: "started" in log.read_text(), 10, what="dnsmasq started")

    # --- the service-anchor ---------------------------------------------------------------------
    def start_anchor(self, interval: float = INTERVAL,
                     port: int | None = 9090) -> subprocess.Popen[bytes]:
        args = json.dumps({"port": port, "run_dir": str(self.run_dir), "interval": interval})
        with (self.tmp / "anchor.log").open("ab") as log:
            proc = self.anchor.popen([sys.executable, "-c", RUN_ANCHOR, args], cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)},
                                     stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        path = self.tmp / "anchor.log"
        return path.read_text() if path.exists() else ""

    def health(self) -> dict[str, object]:
        return dict(json.loads((self.run_dir / "health.json").read_text()))

    def http(self, path: str) -> tuple[int, str]:
        out = self.anchor.run(sys.executable, "-c", HTTP_GET, f"http://127.0.0.1:9090{path}")
        code, _, body = out.partition("\n")
        return int(code), body

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.http("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric == name and ",".join(sorted(rest.rstrip("}").split(","))) == want:
                return float(value)
        raise AssertionError(f"{name}{{{want}}} not scraped:\n{text}")

    # --- the kernel -----------------------------------------------------------------------------
    def default_slot(self, v6: bool = False) -> list[str]:
        """Gateways of the main table's default route in the slot the anchor writes."""
        metric = "1024" if v6 else "0"
        out = self.anchor.run("ip", "-6" if v6 else "-4", "-j", "route", "show", "table",
                              "main", "default")
        return [r.get("gateway", "") for r in json.loads(out or "[]")
                if str(r.get("metric", 0)) == metric]

    def other_routes(self) -> list[str]:
        """Every route of every table except the main table's default slots, as text.

        Routes the kernel derives from addresses (``proto kernel``) are left out: IPv6
        link-local ones appear on their own schedule and nobody but the kernel writes them.
        """
        lines = []
        for fam in ("-4", "-6"):
            for line in self.anchor.run("ip", fam, "route", "show", "table", "all").splitlines():
                if "proto kernel" in line:
                    continue
                if line.startswith("default") and "table" not in line and (
                    "metric" not in line or "metric 1024 " in line + " "
                ):
                    continue
                lines.append(line)
        return sorted(lines)

    def ask(self, target: str) -> str:
        """Which gateway carries a real TCP connection from the anchor to ``target``."""
        return self.anchor.run(sys.executable, "-c", ASK_GATEWAY, target, str(PORT),
                               timeout=10).strip()

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=10)


def _build(topo: Topology, tmp: Path) -> Env:
    lan, anchor = topo.netns("lan"), topo.netns("anchor")
    lan.run("ip", "link", "add", "br0", "type", "bridge")
    lan.run("ip", "link", "set", "br0", "up")
    gateways = {name: topo.netns(name) for name in ("gw1", "gw2")}
    topo.veth(anchor, "eth0", lan, "p-anchor")
    lan.run("ip", "link", "set", "p-anchor", "master", "br0")
    anchor.run("ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
    anchor.run("ip", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
    env = Env(topo, anchor, tmp)
    for name, ns in gateways.items():
        topo.veth(ns, "eth0", lan, f"p-{name}")
        lan.run("ip", "link", "set", f"p-{name}", "master", "br0")
        ns.run("ip", "addr", "add", f"{V4_GW[name]}/24", "dev", "eth0")
        ns.run("ip", "addr", "add", f"{V6_GW[name]}/64", "dev", "eth0", "nodad")
        ns.run("ip", "addr", "add", "198.51.100.1/32", "dev", "lo")
        ns.run("ip", "addr", "add", "2001:db8::1/128", "dev", "lo")
        proc = ns.popen([sys.executable, "-u", "-c", GATEWAY_LISTENER, name, str(PORT)],
                        stdout=subprocess.PIPE)
        env.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"listening\n"
    # What Docker leaves in a container on a non-internal network (a default route via the
    # bridge) plus routes nobody but their owner may touch.
    for cmd in (
        ["ip", "route", "add", "default", "via", DOCKER_GW_V4],
        ["ip", "route", "add", "default", "via", DOCKER_GW_V4, "metric", "500"],
        ["ip", "route", "add", "10.200.0.0/16", "via", DOCKER_GW_V4],
        ["ip", "route", "add", "default", "via", DOCKER_GW_V4, "table", "100"],
        ["ip", "-6", "route", "add", "fd99::/64", "via", DOCKER_GW_V6],
        ["ip", "-6", "route", "add", "default", "via", DOCKER_GW_V6, "metric", "2000"],
    ):
        anchor.run(*cmd)
    # `ip netns exec` bind-mounts these over /etc/resolv.conf and /etc/hosts in the namespace.
    etc = Path("/etc/netns") / anchor.name
    etc.mkdir(parents=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.11\noptions timeout:1 attempts:2\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    return env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with topology("sa") as topo:
        built: Env | None = None
        try:
            built = _build(topo, tmp_path)
            built.answer(None, None)
            built.start_dnsmasq()
            yield built
        finally:
            if built is not None:
                for proc in [*built.procs, built.dnsmasq]:
                    if proc is not None and proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=5)
                    if proc is not None and proc.stdout is not None:
                        proc.stdout.close()
            for ns in topo.namespaces:
                shutil.rmtree(Path("/etc/netns") / ns.name, ignore_errors=True)


def _installed(env: Env, gw: str) -> bool:
    return env.default_slot() == [V4_GW[gw]] and env.default_slot(v6=True) == [V6_GW[gw]]


def test_installs_default_routes_that_carry_traffic_and_becomes_ready(env: Env) -> None:
    env.answer(V4_GW["gw1"], V6_GW["gw1"])
    before = env.other_routes()
    assert env.default_slot() == [DOCKER_GW_V4]
    proc = env.start_anchor()
    wait_until(lambda: _installed(env, "gw1"), 10, what="default routes via gw1")
    # Real connections leave through the resolved gateway, both families.
    assert env.ask("198.51.100.1") == "gw1"
    assert env.ask("2001:db8::1") == "gw1"
    # Docker's default route was replaced (one route in the slot), the rest is as it was.
    assert env.other_routes() == before
    wait_until(lambda: env.http("/readyz") == (200, "ready\n"), 10, what="/readyz 200")
    assert env.http("/healthz") == (200, "ok\n")
    for family in ("ipv4", "ipv6"):
        assert env.metric("anchord_default_route_present", family=family) == 1
        assert env.metric("anchord_gateway_route_replaces_total", family=family) == 1
        assert env.metric("anchord_gateway_resolve_total", family=family, outcome="ok") >= 1
    assert env.metric("anchord_build_info", version=_version(), role="service-anchor") == 1
    health = env.health()
    assert health["ready"] is True
    assert health["unmet"] == {}
    assert check_health(env.run_dir) == (True, "ready")  # `anchord healthcheck`
    assert health["routes"] == {"ipv4": V4_GW["gw1"], "ipv6": V6_GW["gw1"]}
    assert health["pid"] == proc.pid
    assert proc.poll() is None


def test_follows_a_changed_answer_within_interval_plus_one_second(env: Env) -> None:
    env.answer(V4_GW["gw1"], V6_GW["gw1"])
    env.start_anchor()
    wait_until(lambda: _installed(env, "gw1"), 10, what="default routes via gw1")
    before = env.other_routes()
    # The network-anchor is recreated with new addresses (S-9).
    env.answer(V4_GW["gw2"], V6_GW["gw2"])
    start = time.monotonic()
    wait_until(lambda: _installed(env, "gw2"), INTERVAL + 1.0, interval=0.02,
               what="default routes via gw2")
    followed = time.monotonic() - start
    assert env.ask("198.51.100.1") == "gw2"
    assert env.ask("2001:db8::1") == "gw2"
    assert env.other_routes() == before
    for family in ("ipv4", "ipv6"):
        assert env.metric("anchord_gateway_route_replaces_total", family=family) == 2
    print(f"route followed the new answer in {followed:.3f}s (interval {INTERVAL}s)")


def test_sigterm_removes_its_routes_only_and_exits_0(env: Env) -> None:
    env.answer(V4_GW["gw1"], V6_GW["gw1"])
    before = env.other_routes()
    proc = env.start_anchor()
    wait_until(lambda: _installed(env, "gw1"), 10, what="default routes via gw1")
    assert (env.run_dir / "health.json").exists()
    assert env.stop(proc) == 0
    assert env.default_slot() == []
    assert env.default_slot(v6=True) == []
    assert env.other_routes() == before  # metric-500/2000 defaults, table 100, prefixes: all kept
    assert not (env.run_dir / "health.json").exists()
    assert check_health(env.run_dir)[0] is False
    assert "removed" in env.log()


def test_sigterm_leaves_a_default_route_that_is_no_longer_its_own(env: Env) -> None:
    env.answer(V4_GW["gw1"], V6_GW["gw1"])
    # A long interval: nothing re-installs the route between the change and SIGTERM.
    # No listener either: readiness is still visible in the health file.
    proc = env.start_anchor(interval=60.0, port=None)
    wait_until(lambda: _installed(env, "gw1"), 10, what="default routes via gw1")
    wait_until(lambda: check_health(env.run_dir) == (True, "ready"), 5,
               what="`anchord healthcheck` passes without a listener")
    env.anchor.run("ip", "route", "replace", "default", "via", DOCKER_GW_V4)
    assert env.stop(proc) == 0
    assert env.default_slot() == [DOCKER_GW_V4]  # somebody else's: left alone
    assert env.default_slot(v6=True) == []  # still its own: removed


def test_nothing_resolves_keeps_trying_then_becomes_ready(env: Env) -> None:
    proc = env.start_anchor()
    code, body = wait_until(lambda: env.http("/readyz"), 10, what="listener up")
    assert code == 503
    assert re.fullmatch(r"default_route: none via anchord \(ipv4: .+; ipv6: .+\)\n", body), body
    assert env.health()["ready"] is False
    assert "default_route" in env.health()["unmet"]  # type: ignore[operator]
    assert check_health(env.run_dir)[0] is False
    # Retried with backoff, never gave up: several failed lookups while it stays up.
    wait_until(lambda: env.metric("anchord_gateway_resolve_total", family="ipv4",
                                  outcome="not_found") >= 4, 10, what="4 failed lookups")
    assert proc.poll() is None
    assert env.default_slot() == [DOCKER_GW_V4]  # nothing resolved: nothing touched
    # The gateway appears (IPv4 only): ready within the resolve interval + 1 s.
    env.answer(V4_GW["gw2"], None)
    wait_until(lambda: env.http("/readyz") == (200, "ready\n"), INTERVAL + 1.0, interval=0.05,
               what="/readyz 200")
    assert env.default_slot() == [V4_GW["gw2"]]
    assert env.ask("198.51.100.1") == "gw2"
    assert env.default_slot(v6=True) == []
    assert env.metric("anchord_default_route_present", family="ipv4") == 1
    assert env.metric("anchord_default_route_present", family="ipv6") == 0
    assert env.health()["ready"] is True
    assert env.stop(proc) == 0


def test_a_restarted_anchor_adopts_the_route_without_rewriting_it(env: Env) -> None:
    env.answer(V4_GW["gw1"], V6_GW["gw1"])
    first = env.start_anchor()
    wait_until(lambda: _installed(env, "gw1"), 10, what="default routes via gw1")
    first.kill()  # a crash, not a stop: the route stays for the next instance
    first.wait(timeout=5)
    assert _installed(env, "gw1")
    second = env.start_anchor()
    wait_until(lambda: env.http("/readyz") == (200, "ready\n"), 10, what="/readyz 200")
    for family in ("ipv4", "ipv6"):
        assert env.metric("anchord_gateway_route_replaces_total", family=family) == 0
        assert env.metric("anchord_default_route_present", family=family) == 1
    assert env.stop(second) == 0
    assert env.default_slot() == []
    assert env.default_slot(v6=True) == []


def _version() -> str:
    from anchord import __version__
    return __version__


def test_other_routes_snapshot_sees_the_routes_it_must_keep(env: Env) -> None:
    # Guards the helper the other tests rely on: it must list the routes they check.
    routes = "\n".join(env.other_routes())
    for needle in ("default via 10.77.0.254 dev eth0 metric 500", "10.200.0.0/16 via",
                   "default via 10.77.0.254 dev eth0 table 100", "fd99::/64 via",
                   "default via fd77::fe dev eth0 metric 2000"):
        assert needle in routes, routes
    assert not any(line.startswith(f"default via {DOCKER_GW_V4} dev eth0") and "metric" not in
                   line and "table" not in line for line in env.other_routes())


ROUTE_TABLE_PROBE = """
import errno, json, socket
from anchord.routes import RouteError, RouteTable
out = {}
with RouteTable() as rt:
    out["defaults"] = sorted([r.gateway, r.metric] for r in rt.defaults(socket.AF_INET))
    out["slot"] = rt.gateway(socket.AF_INET)
    try:
        rt.replace(socket.AF_INET, "10.99.0.1")  # on no connected network
    except RouteError as exc:
        out["unreachable"] = exc.errno == errno.ENETUNREACH
    out["foreign_delete"] = rt.delete(socket.AF_INET, "10.77.0.1")  # not the slot's gateway
    rt.replace(socket.AF_INET6, "fd77::1")
    out["v6"] = rt.gateway(socket.AF_INET6)
    out["v6_deleted"] = rt.delete(socket.AF_INET6, "fd77::1")
    out["v6_after"] = rt.gateway(socket.AF_INET6)
print(json.dumps(out))
"""


def test_route_table_reads_writes_and_refuses_like_the_kernel(env: Env) -> None:
    out = json.loads(sh("ip", "netns", "exec", env.anchor.name, sys.executable, "-c",
                        ROUTE_TABLE_PROBE, cwd=REPO,
                        env={**os.environ, "PYTHONPATH": str(REPO)}))
    # Main table only (not table 100), every metric; the slot is the metric-0 one.
    assert out["defaults"] == [[DOCKER_GW_V4, 0], [DOCKER_GW_V4, 500]]
    assert out["slot"] == DOCKER_GW_V4
    assert out["unreachable"] is True
    assert out["foreign_delete"] is False
    assert env.default_slot() == [DOCKER_GW_V4]  # neither the refused replace nor the delete
    assert out["v6"] == "fd77::1"
    assert out["v6_deleted"] is True
    assert out["v6_after"] is None
    assert "default via fd77::fe dev eth0 metric 2000" in "\n".join(env.other_routes())
