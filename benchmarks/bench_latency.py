"""End-to-end benchmark: Docker event -> nftables map, and a client's outage (prints figures).

    sudo python3 -m benchmarks.bench_latency [--restarts 200] [--sizes 10,1000,10000]

Everything is real: the local dockerd, containers of a made-up Compose project
(``com.docker.compose.project=<unique>`` on plain containers, an ``internal`` transit
network), the bus broker, the discovery, nat-writer and conntrack-flusher workers
started through the runner like supervisord does, the nat-writer writing nftables in
the network namespace of the container playing anchord, and a LAN namespace made here
with a client.

    LAN ns (made here)           "anchord" container ns            backend container "web"
    eth0 192.0.2.10 ──veth── anchord-ext 192.0.2.50 (project)   tcp/80: a small server
                             eth0 on <project>_transit ──────── eth0 on <project>_transit

For each size the maps are filled to N elements (filler containers whose
``anchord.expose`` lists up to 1 000 single ports each; the backend's tcp/80 is one of
the N), then the backend is restarted ``--restarts`` times (SIGKILL stop, start: Docker
usually gives it another transit address, the count is printed). Per transition (stop
and start each change the map):

* event-to-map: the Docker event time discovery carries (``event_time``) -> the moment
  the nat-writer published the ``NatApplied`` answering it, right after the commit (the
  envelope ``ts`` of that message, read on the bus);
* transaction: ``NatApplied.duration`` (the nat-writer's apply, Python and kernel).

Per restart, with a client in the LAN connecting to 192.0.2.50:80 every ``--pause`` s:
the outage (last success before -> first success after), the backend's own down time
(stop requested -> its server listening again, route included) and the map's share
(the new address committed after the server was ready, else 0).

Cleans up everything it made (containers, networks, namespaces, processes), also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import zmq

from bus.codec import DecodeError, decode
from bus.events import BackendsDesired, NatApplied
from bus.rundir import endpoints
from tests.integration.discovery_support import Project, ensure_dockerd, project
from tests.integration.inbound_topo import SERVER, Stream, _wait_line, tcp_loop
from tests.netns import Netns, Topology, sh, topology, wait_until

ROOT = Path(__file__).resolve().parents[1]
PROJECT4, CLIENT4 = "192.0.2.50", "192.0.2.10"
PORT = 80
PORTS_PER_FILLER = 1000
FIRST_FILLER_PORT = 10_000

# The runner as supervisord starts it (config from the environment).
_LAUNCH = """
import os, sys
from anchord import runner
sys.exit(runner.run_worker(sys.argv[1], os.environ))
"""


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


# --- the bus: what the nat-writer answered, and when -----------------------------------


class NatWatch:
    """Reads every ``NatApplied`` and ``BackendsDesired`` on the bus (first copy of each).

    A plain SUB socket (it says no Hello): the envelope's ``ts`` is when the sender
    published: discovery right after its rebuild, the nat-writer right after its
    transaction committed. Heartbeat copies are ignored.
    """

    def __init__(self, run_dir: Path) -> None:
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, NatApplied.TOPIC.encode())
        self._sub.setsockopt(zmq.SUBSCRIBE, BackendsDesired.TOPIC.encode())
        self._sub.connect(endpoints(run_dir)[1])
        self.applied: dict[int, tuple[float, NatApplied]] = {}
        self.published: dict[int, float] = {}  # BackendsDesired generation -> sent at
        self.latest = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if not self._sub.poll(200):
                continue
            try:
                envelope = decode(self._sub.recv_multipart())
            except DecodeError:
                continue
            ev = envelope.event
            if isinstance(ev, BackendsDesired):
                self.published.setdefault(ev.generation, envelope.ts)
            if isinstance(ev, NatApplied):
                with self._cond:
                    if ev.generation not in self.applied:
                        self.applied[ev.generation] = (envelope.ts, ev)
                        self.latest = max(self.latest, ev.generation)
                        self._cond.notify_all()

    def wait(self, predicate: Callable[[NatApplied], bool], after: int, timeout: float,
             what: str) -> tuple[float, NatApplied]:
        """The first generation above ``after`` that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for gen in sorted(g for g in self.applied if g > after):
                    ts, ev = self.applied[gen]
                    if predicate(ev):
                        return ts, ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no NatApplied for {what} within {timeout}s")
                self._cond.wait(left)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._sub.close()
        self._ctx.term()


def tcp_count(ev: NatApplied) -> int:
    return next((c.count for c in ev.counts if (c.family, c.proto) == (4, "tcp")), 0)


# --- processes ------------------------------------------------------------------------


class Programs:
    """The broker and the workers, each a process of its own; stopped by ``close``."""

    def __init__(self, run_dir: Path, env: dict[str, str], logs: Path) -> None:
        self.run_dir, self.env, self.logs = run_dir, env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, netns_pid: int | None = None) -> None:
        argv = [sys.executable, "-c", _LAUNCH, name]
        if netns_pid is not None:
            argv = ["nsenter", "-t", str(netns_pid), "-n", "--", *argv]
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs.append(subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=out,
                                               stderr=subprocess.STDOUT))

    def close(self) -> None:
        for proc in reversed(self.procs):  # workers first, the broker last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@dataclass
class WebBackend:
    """The restarted backend: a container, and its server run in the container's netns.

    The image only has ``sleep``: the server and the default route (via the anchor, so
    that replies to LAN clients go back through the DNAT) are set up from the host in
    the container's network namespace after every start, as its own start-up would.
    """

    api: docker.APIClient
    cid: str
    transit: str
    gateway: str
    spare_addresses: tuple[str, str]
    server: subprocess.Popen[bytes] | None = None
    addresses: list[str] = field(default_factory=list)

    def move(self, i: int) -> None:
        """While stopped: reconnect to the transit network with the other spare address.

        Docker hands a restarted container the lowest free address, i.e. its old one;
        a real restart often moves (another container took the address meanwhile).
        """
        self.api.disconnect_container_from_network(self.cid, self.transit)
        self.api.connect_container_to_network(self.cid, self.transit,
                                              ipv4_address=self.spare_addresses[i % 2])

    def pid(self) -> int:
        return int(self.api.inspect_container(self.cid)["State"]["Pid"])

    def bring_up(self) -> float:
        """Route and server in the running container; returns when it listens."""
        pid = self.pid()
        self.addresses.append(str(self.api.inspect_container(self.cid)["NetworkSettings"]
                                  ["Networks"][self.transit]["IPAddress"]))
        sh("nsenter", "-t", str(pid), "-n", "ip", "route", "replace", "default", "via",
           self.gateway)
        self.server = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", SERVER, "web", str(PORT),
             ""], stdout=subprocess.PIPE)
        _wait_line(self.server, "ready", timeout=30)
        return time.time()

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)
            if self.server.stdout is not None:
                self.server.stdout.close()
            self.server = None


# --- the setup ----------------------------------------------------------------------


@contextmanager
def rig(api: docker.APIClient, work: Path, logs: Path,
        log_level: str) -> Iterator[tuple[Project, Topology, str, NatWatch]]:
    """Project, LAN namespace, broker and workers; everything removed on exit."""
    with ExitStack() as stack:
        proj = stack.enter_context(project(api))
        transit = proj.network("transit", subnet=True)
        me = proj.container("anchord", networks=(transit,))
        pid = int(api.inspect_container(me)["State"]["Pid"])
        topo = stack.enter_context(topology("pl"))
        lan = topo.netns("lan")
        wire_lan(lan, pid)
        run_dir = work / "run"
        run_dir.mkdir(mode=0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": str(ROOT),
            "ANCHORD_PROJECT": proj.name,
            "ANCHORD_VLAN_PARENT": "lan",
            "ANCHORD_RUN_DIR": str(run_dir),
            "ANCHORD_METRICS_ADDR": "",
            # The event path is what is measured: the safety-net poll stays out of the way.
            "ANCHORD_POLL_INTERVAL": "1h",
            "ANCHORD_CONSOLE": "/dev/null",
            "ANCHORD_LOG_LEVEL": log_level,
            "DOCKER_HOST": "unix:///var/run/docker.sock",
        }
        programs = Programs(run_dir, env, logs)
        stack.callback(programs.close)
        programs.start("bus")
        wait_until(lambda: (run_dir / "sub.ipc").exists(), timeout=20, what="broker sockets")
        watch = NatWatch(run_dir)
        stack.callback(watch.close)
        programs.start("nat-writer", pid)
        # Flows of a vanished backend would stick to it otherwise (a retried SYN included).
        programs.start("conntrack-flusher", pid)
        programs.start("discovery", pid)
        yield proj, topo, transit, watch


def wire_lan(lan: Netns, pid: int) -> None:
    """A veth from the LAN namespace into the anchord container's (as ``anchord-ext``)."""
    tmp_a, tmp_b = f"pl{os.urandom(4).hex()}", f"pl{os.urandom(4).hex()}"
    sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
    sh("ip", "link", "set", tmp_a, "netns", lan.name)
    sh("ip", "link", "set", tmp_b, "netns", str(pid))
    lan.run("ip", "link", "set", tmp_a, "name", "eth0")
    lan.run("ip", "link", "set", "eth0", "up")
    lan.run("ip", "addr", "add", f"{CLIENT4}/24", "dev", "eth0")

    def anchor(*argv: str) -> None:
        sh("nsenter", "-t", str(pid), "-n", *argv)

    anchor("ip", "link", "set", tmp_b, "name", "anchord-ext")
    anchor("ip", "link", "set", "anchord-ext", "up")
    anchor("ip", "addr", "add", f"{PROJECT4}/24", "dev", "anchord-ext")
    anchor("sysctl", "-qw", "net.ipv4.ip_forward=1")


def fill(proj: Project, transit: str, have: int, want: int, ranges: bool) -> int:
    """Filler containers until ``want`` filler elements exist (``have`` already do).

    Each element is a single port, or with ``ranges`` a two-port range (interval map).
    """
    while have < want:
        n = min(PORTS_PER_FILLER, want - have)
        if ranges:
            firsts = range(FIRST_FILLER_PORT + 3 * have, FIRST_FILLER_PORT + 3 * (have + n), 3)
            label = ",".join(f"tcp/{p}-{p + 1}" for p in firsts)
        else:
            first = FIRST_FILLER_PORT + have
            label = ",".join(f"tcp/{p}" for p in range(first, first + n))
        proj.container(f"fill{have}", networks=(transit,), expose=label)
        have += n
    return have


# --- measuring ------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    latency: list[float] = field(default_factory=list)  # event -> NatApplied published
    by_kind: dict[str, list[float]] = field(default_factory=dict)  # the same, "down"/"up"
    discovery: list[float] = field(default_factory=list)  # event -> BackendsDesired published
    duration: list[float] = field(default_factory=list)  # NatApplied.duration
    outage: list[float] = field(default_factory=list)
    backend_down: list[float] = field(default_factory=list)
    map_wait: list[float] = field(default_factory=list)
    # first success - (server ready and map committed): the client's own retry, timeouts
    client: list[float] = field(default_factory=list)
    moved: int = 0
    restarts: int = 0
    timeouts: int = 0  # restarts during which a client attempt timed out (after 2 s)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


def transition(watch: NatWatch, after: int, predicate: Callable[[NatApplied], bool],
               kind: str, result: SizeResult) -> tuple[float, NatApplied]:
    ts, ev = watch.wait(predicate, after, timeout=60, what=f"backend {kind}")
    assert ev.ok, ev.error
    if ev.event_time > 0:
        result.latency.append(ts - ev.event_time)
        result.by_kind.setdefault(kind, []).append(ts - ev.event_time)
        result.duration.append(ev.duration)
        sent = watch.published.get(ev.generation)
        if sent is not None:
            result.discovery.append(sent - ev.event_time)
    return ts, ev


def attempts(loop: Stream) -> list[tuple[float, float, str]]:
    """The client's attempts: (start, end, result) from ``<start> <result> @<end>`` lines."""
    out = []
    for t, rest in loop.records():
        result, _, end = rest.rpartition(" @")
        out.append((t, float(end), result))
    return out


def timed_out(loop: Stream, start: float, end: float) -> bool:
    return any(start <= t <= end and result in ("fail timeout", "fail TimeoutError")
               for t, _, result in attempts(loop))


def outage_around(loop: Stream, t_kill: float, t_after: float) -> tuple[float, float] | None:
    """(last success completed before ``t_kill``, first success completed by an attempt
    started at or after ``t_after``) of the client: what it saw, retried SYNs included."""
    records = attempts(loop)
    before = [end for _, end, result in records if end < t_kill and result.startswith("ok ")]
    after = [end for t, end, result in records if t >= t_after and result.startswith("ok web")]
    if not before or not after:
        return None
    return max(before), min(after)


def measure(api: docker.APIClient, web: WebBackend, watch: NatWatch, loop: Stream, size: int,
            restarts: int, verbose: bool = False) -> SizeResult:
    result = SizeResult(size=size, load=os.getloadavg())
    after = watch.latest
    for i in range(restarts):
        # Down: the server goes, the container is killed (stop signal SIGKILL).
        t_kill = time.time()
        web.stop_server()
        api.stop(web.cid, timeout=0)
        _, ev = transition(watch, after, lambda e: e.removed >= 1, "down", result)
        after = ev.generation
        if i % 2:
            web.move(i // 2)  # every other restart: another address
        # Up: Docker starts it (often with another address); the map follows the start
        # event; the backend's own start-up (route, server) runs meanwhile.
        api.start(web.cid)
        t_ready = web.bring_up()
        ts_up, ev = transition(watch, after, lambda e: e.added >= 1, "up", result)
        after = ev.generation
        result.restarts += 1
        if len(web.addresses) > 1 and web.addresses[-1] != web.addresses[-2]:
            result.moved += 1
        # The client: wait until it got through again, then read the gap.
        def through(t: float = t_kill) -> tuple[float, float] | None:
            return outage_around(loop, t, t)

        try:
            gap = wait_until(through, timeout=30, interval=0.01,
                             what="the client through to the restarted backend")
        except TimeoutError:
            print(f"  restart {i}: the client never got through again", file=sys.stderr)
            continue
        assert gap is not None
        last_ok, first_ok = gap
        result.timeouts += timed_out(loop, last_ok, first_ok)
        result.outage.append(first_ok - last_ok)
        # Seeing the server's "ready" line may lag here under load; it was ready by the time
        # the client got through at the latest.
        ready = min(t_ready, first_ok)
        result.backend_down.append(ready - t_kill)
        result.map_wait.append(max(0.0, ts_up - ready))
        result.client.append(first_ok - max(ready, ts_up))
        if verbose:
            print(f"  restart {i}: {web.addresses[-1]}, gap {ms(first_ok - last_ok)}, down "
                  f"{ms(ready - t_kill)}, map committed {ms(ts_up - ready)} after ready, "
                  f"{ms(ts_up - ev.event_time)} after its event, client {ms(first_ok - ready)}",
                  flush=True)
    return result



# --- a burst of simultaneous restarts -------------------------------------------------


@dataclass
class BurstResult:
    size: int
    last: list[float] = field(default_factory=list)  # last start event -> its map commit
    spread: list[float] = field(default_factory=list)  # first die event -> last start event
    whole: list[float] = field(default_factory=list)  # first die event -> map whole again
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    teardown_error: str = ""  # the rig's removal failed after the figures were taken


def burst(api: docker.APIClient, proj: Project, transit: str, watch: NatWatch, n: int,
          rounds: int) -> BurstResult:
    """``n`` backends (one port each) restarted all at once, ``rounds`` times: from the last
    one's Docker ``start`` event to the nat-writer's commit of a map holding all ``n`` again
    (the burst's last element), the NatApplied answering that very event or a later one."""
    result = BurstResult(size=n, load=os.getloadavg())
    cids = [proj.container(f"burst{i}", networks=(transit,), expose=f"tcp/{20_000 + i}")
            for i in range(n)]

    def full(e: NatApplied) -> bool:
        return e.ok and tcp_count(e) == n

    watch.wait(full, 0, timeout=120, what=f"{n} burst backends in the map")
    for _ in range(rounds):
        after = watch.latest
        since = int(time.time()) - 1
        threads = [threading.Thread(target=api.restart, args=(cid,), kwargs={"timeout": 0})
                   for cid in cids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        until = int(time.time()) + 2
        ours = set(cids)
        starts: list[float] = []
        dies: list[float] = []
        for ev in api.events(since=since, until=until, decode=True,
                             filters={"type": "container", "event": ["start", "die"]}):
            if ev.get("Actor", {}).get("ID") in ours:
                (starts if ev["Action"] == "start" else dies).append(ev["timeNano"] / 1e9)
        last_start = max(starts)
        # Discovery carries the earliest pending event's time when it coalesces, so the
        # answer to the last start is found by quiescence: once nothing new comes for 1.5 s,
        # the last NatApplied that changed the map is the commit of the burst's last element.
        last_seen = {"gen": watch.latest, "at": time.monotonic()}

        def quiet(s: dict[str, float] = last_seen) -> bool:
            if watch.latest != s["gen"]:
                s["gen"], s["at"] = watch.latest, time.monotonic()
            return time.monotonic() - s["at"] > 1.5

        wait_until(quiet, timeout=120, interval=0.1, what="the map settling after the burst")
        changes = sorted((g, v) for g, v in watch.applied.items()
                         if g > after and (v[1].added or v[1].removed))
        ts, final = changes[-1][1]
        assert full(final), f"after the burst the map holds {tcp_count(final)} of {n}"
        result.last.append(ts - last_start)
        result.spread.append(last_start - min(dies))
        result.whole.append(ts - min(dies))
    return result


def run_burst(n: int = 50, rounds: int = 10, log_level: str = "warn") -> BurstResult:
    api = ensure_dockerd()
    result: BurstResult | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp, \
                rig(api, Path(tmp), Path(tmp), log_level) as (proj, _topo, transit, watch):
            result = burst(api, proj, transit, watch, n, rounds)
    except docker.errors.APIError as exc:
        if result is None:
            raise
        # Measured, then the rig would not go: dockerd 20.10 can keep a phantom endpoint on
        # the network after many concurrent restarts ("has active endpoints" with none
        # listed; a dockerd restart clears it). The figures stand; the leftover is reported.
        print(f"burst: teardown failed: {exc}", file=sys.stderr, flush=True)
        result.teardown_error = str(exc)
    return result


def run_size(size: int, restarts: int, pause: float = 0.01, log_level: str = "warn",
             during: Callable[[], object] | None = None) -> SizeResult:
    """One size in a rig of its own (so a caller can hold the Docker lock per size);
    ``during`` is called (in a thread) once the restarts begin, e.g. to load the bus."""
    api = ensure_dockerd()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
            rig(api, Path(tmp), Path(tmp), log_level) as (proj, topo, transit, watch):
        gateway = str(api.inspect_container(proj.containers[0])["NetworkSettings"]["Networks"]
                      [transit]["IPAddress"])
        cid = proj.container("web", networks=(transit,), expose=f"tcp/{PORT}")
        prefix = gateway.rsplit(".", 1)[0]
        web = WebBackend(api, cid, transit, gateway, (f"{prefix}.201", f"{prefix}.202"))
        try:
            web.bring_up()
            loop = tcp_loop(topo.namespaces[0], PROJECT4, PORT, pause=pause)
            fill(proj, transit, 0, size - 1, False)

            def filled(e: NatApplied) -> bool:
                return e.ok and tcp_count(e) == size

            def serving() -> bool:
                return outage_around(loop, time.time(), 0) is not None

            watch.wait(filled, 0, timeout=300, what=f"{size} elements in the map")
            wait_until(serving, 30, what="the client through to the backend")
            side = threading.Thread(target=during, daemon=True) if during else None
            if side:
                side.start()
            result = measure(api, web, watch, loop, size, restarts)
            if side:
                side.join()
            loop.stop()
            return result
        finally:
            web.stop_server()

# --- the report -----------------------------------------------------------------------


KINDS = {"down": "backend down (die event)", "up": "backend up (start event)"}


def ms(x: float) -> str:
    return f"{x * 1000:8.1f}"


def report(results: list[SizeResult]) -> None:
    print()
    print("event-to-map: Docker event time -> NatApplied published after the commit (ms);")
    print("  of it, discovery: event -> BackendsDesired published; apply: NatApplied.duration")
    print(f"{'elements':>9} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
          f"   {'disc p50':>8} {'disc p99':>8}   {'apply p50':>9} {'apply p99':>9}"
          f"   {'moved':>7}   load avg (1/5/15 min)")
    for r in results:
        lat, disc = r.latency, r.discovery or [0.0]
        print(f"{r.size:>9} {len(lat):>5} {ms(pct(lat, .5))} {ms(pct(lat, .95))} "
              f"{ms(pct(lat, .99))} {ms(max(lat))}   {ms(pct(disc, .5))} {ms(pct(disc, .99))}"
              f"   {ms(pct(r.duration, .5)):>9} {ms(pct(r.duration, .99)):>9}"
              f"   {r.moved:>3}/{r.restarts:<3}   {' '.join(f'{x:.2f}' for x in r.load)}")
    for r in results:
        print(f"{r.size:>9}   " + "   ".join(
            f"{KINDS[kind]}: p50 {ms(pct(v, .5)).strip()} p99 "
            f"{ms(pct(v, .99)).strip()}" for kind, v in sorted(r.by_kind.items())))
    base = results[0]
    if len(results) > 1:
        print("ratios to the smallest size (p50 / p99):")
        for r in results[1:]:
            print(f"  {r.size:>6} vs {base.size}: "
                  f"{statistics.median(r.latency) / statistics.median(base.latency):.2f}x / "
                  f"{pct(r.latency, .99) / pct(base.latency, .99):.2f}x")
    print()
    print("outage a LAN client sees per backend restart (ms): the gap (last success before ->")
    print("  first after), the backend's own down time (stop requested -> its server listens "
          "again),")
    print("  the map's share (new address committed after the server was ready, else 0), the "
          "client's")
    print("  (server ready and map committed -> its first success: its next try, its timeouts)")
    print(f"{'elements':>9} {'n':>5}   {'gap p50':>8} {'gap p99':>8} {'gap max':>8}   "
          f"{'down p50':>8} {'down p99':>8}   {'map p50':>8} {'map p99':>8} {'map max':>8}"
          f"   {'client p50':>10} {'client p99':>10}   client timeouts")
    for r in results:
        if not r.outage:
            print(f"{r.size:>9} {0:>5}   (no outage measured)")
            continue
        print(f"{r.size:>9} {len(r.outage):>5}   {ms(pct(r.outage, .5))} "
              f"{ms(pct(r.outage, .99))} {ms(max(r.outage))}   {ms(pct(r.backend_down, .5))} "
              f"{ms(pct(r.backend_down, .99))}   {ms(pct(r.map_wait, .5))} "
              f"{ms(pct(r.map_wait, .99))} {ms(max(r.map_wait))}   {ms(pct(r.client, .5)):>10} "
              f"{ms(pct(r.client, .99)):>10}   {r.timeouts}/{len(r.outage)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=200, help="restarts per size")
    parser.add_argument("--sizes", default="10,1000,10000", help="map elements, ascending")
    parser.add_argument("--pause", type=float, default=0.01,
                        help="seconds between the client's connection attempts")
    parser.add_argument("--verbose", action="store_true", help="one line per restart")
    parser.add_argument("--logs", default="", help="keep the workers' logs in this directory")
    parser.add_argument("--log-level", default="warn", help="the workers' ANCHORD_LOG_LEVEL")
    parser.add_argument("--ranges", action="store_true",
                        help="every element a port range (interval map), the backend's too")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if os.geteuid() != 0:
        sys.exit("run as root: it makes network namespaces and nftables tables")
    # Ctrl-C or SIGTERM: unwind through every cleanup below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    api = ensure_dockerd()
    results: list[SizeResult] = []
    print(f"# {sh('nft', '--version').strip()}, kernel {os.uname().release}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.restarts} restarts per size, "
          f"{'ranges (interval map)' if args.ranges else 'single ports (plain map)'}")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
            rig(api, Path(tmp), Path(args.logs or tmp), args.log_level) as (
                proj, topo, transit, watch):
        gateway = str(api.inspect_container(proj.containers[0])["NetworkSettings"]["Networks"]
                      [transit]["IPAddress"])
        expose = f"tcp/{PORT}-{PORT + 1}" if args.ranges else f"tcp/{PORT}"
        cid = proj.container("web", networks=(transit,), expose=expose)
        prefix = gateway.rsplit(".", 1)[0]
        web = WebBackend(api, cid, transit, gateway, (f"{prefix}.201", f"{prefix}.202"))
        try:
            web.bring_up()
            loop = tcp_loop(topo.namespaces[0], PROJECT4, PORT, pause=args.pause)
            fillers = 0
            for size in sizes:
                fillers = fill(proj, transit, fillers, size - 1, args.ranges)
                def filled(e: NatApplied, n: int = size) -> bool:
                    return e.ok and tcp_count(e) == n

                def serving() -> bool:
                    return outage_around(loop, time.time(), 0) is not None

                watch.wait(filled, 0, timeout=300, what=f"{size} elements in the map")
                wait_until(serving, 30, what="the client through to the backend")
                print(f"{size} elements applied; {args.restarts} restarts ...", flush=True)
                results.append(measure(api, web, watch, loop, size, args.restarts, args.verbose))
                r = results[-1]
                print(f"  event-to-map p50 {ms(pct(r.latency, .5)).strip()} ms, p99 "
                      f"{ms(pct(r.latency, .99)).strip()} ms", flush=True)
            loop.stop()
        finally:
            web.stop_server()
    report(results)


if __name__ == "__main__":
    main()
