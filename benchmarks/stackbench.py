"""The README's stack as a user runs it: start, footprint, idle CPU; and the image's size.

Owns sections 2-4 of the report (docs/benchmarks.md). The stack is the demo's
(e2e/compose/demo/compose.yaml: dnsmasq on a simulated LAN, the real image as network-anchor,
web-anchor + app, a LAN client) as a project of its own; a namespace made here is plugged
into its LAN bridge as a second LAN host.

* start: ``compose up -d`` issued -> ``/readyz`` answers 200 (polled every 20 ms inside the
  network-anchor's namespace) -> the first answer of the app to a LAN host (the namespace:
  asks dnsmasq for the project's name, connects to tcp/8080, every 20 ms); fresh (a new
  project, no lease; the LAN's DHCP server is started and healthy before the clock starts, as
  a LAN's server is up before the servers on it: its own healthcheck is not anchord's time),
  then with a stored lease (``compose stop anchord``, ``compose start
  anchord``: INIT-REBOOT); the DHCPv4 bind time from the dhcp worker's own log lines.
* footprint: RSS and PSS (/proc/<pid>/smaps_rollup) of every process of the network-anchor
  container, at idle and the highest seen under churn (web-anchor restarted over and over:
  events, map changes), and the service-anchor's RSS.
* idle CPU over N minutes: the whole host (/proc/stat; other users of the machine included),
  and what is the stack's: its containers' cgroups (healthcheck execs included), their
  containerd shims, dockerd and containerd (which also serve the machine's other users).
* image: ``docker save | gzip -c | wc -c`` and the uncompressed size Docker reports.

The pollers are benchmarks/probes.py (``ready``, ``lan``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HostCpu,
    bridge_of,
    cgroup_cpu_seconds,
    container_pid,
    container_processes,
    lan_host,
    load,
    mem,
    proc_cpu_seconds,
)
from e2e import harness
from e2e.stack_support import build_lan_image
from tests.netns import Netns, sh, topology, wait_until

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILE = harness.COMPOSE_DIR / "demo" / "compose.yaml"
LANTOOL = harness.COMPOSE_DIR / "demo" / "lan" / "lantool.py"
LAN_HOST = "10.77.0.31"
DNS = "10.77.0.1"
READYZ = "http://127.0.0.1:9090/readyz"
POLL = 0.02
WORKER_MODULES = {"bus": "bus.broker", "discovery": "workers.discovery", "dhcp": "workers.dhcp",
                  "nat-writer": "workers.natwriter",
                  "conntrack-flusher": "workers.conntrack_flusher",
                  "metrics": "workers.metrics", "service-anchor": "workers.service_anchor"}


# --- the stack ---------------------------------------------------------------------------


def project(image: str) -> harness.ComposeProject:
    return harness.ComposeProject(
        compose_file=DEMO_FILE, name=harness.unique_project_name("bench-st"),
        env={"ANCHORD_IMAGE": image, "ANCHORD_LAN_IMAGE": "anchord-demo-lan:local",
             "ANCHORD_LOG_LEVEL": "info"})


def _poller(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline() if proc.stdout
                                                         else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if not out or not out[0].strip():
        raise TimeoutError(f"{proc.args!r} gave nothing in {timeout} s")
    return out[0]


def _iso(t: str) -> float:
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def bind_seconds(logs: str) -> float | None:
    """First DHCPv4 transition -> ``-> bound``, from the dhcp worker's JSON log lines."""
    start = end = None
    for obj in harness.json_log_lines(logs):
        msg = str(obj.get("message", ""))
        if not msg.startswith("dhcpv4 "):
            continue
        if start is None:
            start = _iso(str(obj["time"]))
        if re.search(r"-> bound\b", msg):
            end = _iso(str(obj["time"]))
            break
    return end - start if start is not None and end is not None else None


def timed_start(proj: harness.ComposeProject, lan: Netns | None,
                fresh: bool) -> tuple[dict[str, float], Netns | None]:
    """One start: fresh (``up -d`` of a new project) or stored lease (``start anchord``)."""
    name = f"{proj.name}-anchord-1"
    old_pid = 0 if fresh else container_pid(name)
    since = time.time()
    t0 = time.time()
    cmd = ["up", "-d", "--no-build", "--pull", "never"] if fresh else ["start", "anchord"]
    if fresh:
        harness.set_bridge_nf_call(0)
        proj.compose(*cmd, "--wait", "dhcp", timeout=180)
        since = t0 = time.time()
    compose = threading.Thread(target=proj.compose, args=cmd, kwargs={"timeout": 180})
    compose.start()
    if lan is None:
        assert _topo is not None
        bridge = wait_until(lambda: bridge_of(f"{proj.name}_lan"), 60, 0.02, "the LAN bridge")
        lan = _topo.netns("lan")
        lan_host(lan, bridge, LAN_HOST)
    lan_poll = _poller(["ip", "netns", "exec", lan.name, sys.executable, "-m",
                        "benchmarks.probes", "lan", proj.name, DNS, "8080"])

    def started() -> int:
        pid = container_pid(name)
        return pid if pid and pid != old_pid else 0

    pid = wait_until(started, 60, 0.02, "the network-anchor's process")
    ready_poll = _poller(["nsenter", "-t", str(pid), "-n", sys.executable, "-m",
                          "benchmarks.probes", "ready", READYZ])
    compose.join(180)
    t_up = time.time()
    t_ready = float(_first_line(ready_poll, 60))
    t_lan = float(_first_line(lan_poll, 60).split()[0])
    logs = sh("docker", "logs", "--since", str(int(since) - 1), name, timeout=60)
    return {"compose_up": t_up - t0, "ready": t_ready - t0, "lan": t_lan - t0,
            "bind": bind_seconds(logs) or 0.0}, lan


_topo = None


@contextmanager
def stack(image: str) -> Iterator[tuple[harness.ComposeProject, list[dict[str, float]]]]:
    """A fresh demo stack, timed; taken down on exit."""
    global _topo
    with ExitStack() as es:
        build_lan_image()
        _topo = es.enter_context(topology("bs"))
        proj = project(image)
        es.callback(proj.down)
        timing, _ = timed_start(proj, None, fresh=True)
        yield proj, [timing]


def start_times(image: str, reps: int) -> dict[str, Any]:
    """``reps`` fresh starts (a new project each) and ``reps`` restarts with a stored lease."""
    global _topo
    fresh, stored = [], []
    for i in range(reps):
        with ExitStack() as es:
            _topo = es.enter_context(topology("bs"))
            proj = project(image)
            es.callback(proj.down)
            print(f"  start {i + 1}/{reps}: fresh", file=sys.stderr, flush=True)
            t, lan = timed_start(proj, None, fresh=True)
            fresh.append(t)
            print(f"  start {i + 1}/{reps}: stored lease", file=sys.stderr, flush=True)
            proj.compose("stop", "anchord", timeout=120)
            t, _ = timed_start(proj, lan, fresh=False)
            stored.append(t)
    return {"fresh": fresh, "stored": stored}


# --- footprint -------------------------------------------------------------------------


def label(args: str) -> str:
    if "supervisord" in args:
        return "supervisord"
    m = re.search(r"worker (\S+)", args)
    if m:
        return m.group(1)
    if "healthcheck" in args:
        return "healthcheck"
    return "entry" if "anchord" in args else args.split()[0]


def anchor_memory(cid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for pid, args in container_processes(cid):
        m = mem(pid)
        name = label(args)
        if name == "healthcheck":
            continue
        out[name] = {"rss": m.rss_kib, "pss": m.pss_kib}
    return out


def host_cpu_over(minutes: float, what: str) -> dict[str, Any]:
    """The whole host's CPU over ``minutes``, in cores, with the load average around it."""
    print(f"  host CPU {what} over {minutes} min ...", file=sys.stderr, flush=True)
    host, t0, load0 = HostCpu(), time.monotonic(), load()
    time.sleep(minutes * 60)
    return {"host": host.cores(), "seconds": time.monotonic() - t0, "load_before": load0,
            "load_after": load()}


def _ready(cid: str) -> bool:
    """The container's own readiness (``anchord healthcheck``: exit 0)."""
    return subprocess.run(["docker", "exec", cid, "anchord", "healthcheck"],
                          capture_output=True, timeout=30).returncode == 0


# The demo's containers that are the project (anchord's and the app's); the others (dnsmasq,
# a LAN client) stand in for the LAN, which a user does not run.
PROJECT_SERVICES = ("anchord", "web-anchor", "web")


def footprint(image: str, churn_seconds: float, idle_minutes: float) -> dict[str, Any]:
    with stack(image) as (proj, timings):
        anchor, web_anchor = proj.container_id("anchord"), proj.container_id("web-anchor")
        # Idle: let the start's work settle (first healthchecks, the client's query).
        time.sleep(10)
        idle = anchor_memory(anchor)
        sa = {label(a): mem(p).rss_kib for p, a in container_processes(web_anchor)}
        # Idle CPU of the stack over the window.
        cids = [proj.container_id(s) for s in ("dhcp", "anchord", "web-anchor", "web",
                                               "client")]
        pids = [container_pid(c) for c in cids]
        shims = [int(p) for p in sh("pgrep", "-f", "containerd-shim", check=False).split()
                 if any(c in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                        for c in cids)]
        daemons = [int(p) for name in ("dockerd", "containerd")
                   for p in sh("pgrep", "-x", name, check=False).split()]
        host = HostCpu()
        t0 = time.monotonic()
        c0 = [cgroup_cpu_seconds(p) for p in pids]
        s0 = [proc_cpu_seconds(p, children=True) for p in shims]
        d0 = [proc_cpu_seconds(p, children=True) for p in daemons]
        load_idle0 = load()
        print(f"  idle CPU over {idle_minutes} min ...", file=sys.stderr, flush=True)
        time.sleep(idle_minutes * 60)
        wall = time.monotonic() - t0
        cont = {s: (cgroup_cpu_seconds(p) - c) / wall for s, p, c in
                zip(("dhcp", "anchord", "web-anchor", "web", "client"), pids, c0, strict=True)}
        shim_cpu = sum(proc_cpu_seconds(p, children=True) - c
                       for p, c in zip(shims, s0, strict=True)) / wall
        daemon_cpu = sum(proc_cpu_seconds(p, children=True) - c
                         for p, c in zip(daemons, d0, strict=True)) / wall
        host_idle = host.cores()
        # The same host with the demo's LAN alone (its DHCP server checks its health every
        # second): the difference is the project's own cost, healthchecks and dockerd included.
        proj.compose("stop", *reversed(PROJECT_SERVICES), timeout=120)
        baseline = host_cpu_over(min(idle_minutes, 5.0), "with the LAN alone (project stopped)")
        proj.compose("start", *PROJECT_SERVICES, timeout=120)
        wait_until(lambda: _ready(anchor), 60, 0.2, "the network-anchor ready again")
        idle_cpu = {"host": host_idle, "baseline": baseline, "containers": cont,
                    "shims": shim_cpu,
                    "daemons": daemon_cpu, "seconds": wall, "load_before": load_idle0,
                    "load_after": load()}
        # Churn: web-anchor restarted over and over (stop/start events, map changes).
        peak: dict[str, dict[str, int]] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for k, v in anchor_memory(anchor).items():
                    p = peak.setdefault(k, {"rss": 0, "pss": 0})
                    p["rss"], p["pss"] = max(p["rss"], v["rss"]), max(p["pss"], v["pss"])
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        restarts = 0
        end = time.monotonic() + churn_seconds
        print(f"  churn for {churn_seconds} s ...", file=sys.stderr, flush=True)
        while time.monotonic() < end:
            sh("docker", "restart", "-t", "0", web_anchor, timeout=60)
            restarts += 1
        stop.set()
        sampler.join(5)
        imports = import_profile(anchor, web_anchor)
    return {"start": timings, "idle": idle, "churn": peak, "churn_restarts": restarts,
            "service_anchor": sa, "idle_cpu": idle_cpu, "imports": imports}


def import_profile(anchor: str, web_anchor: str) -> dict[str, list[tuple[str, int, int]]]:
    """``python -X importtime -c 'import <module>'`` of each program inside its container:
    per top-level package, the sum of its modules' own import time (us) and their count,
    the heaviest first -- what a program loads, used or not."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for name, module in WORKER_MODULES.items():
        cid = web_anchor if name == "service-anchor" else anchor
        r = subprocess.run(["docker", "exec", cid, "python3", "-X", "importtime", "-c",
                            f"import {module}"], capture_output=True, text=True, timeout=120)
        tops: dict[str, list[int]] = {}
        for line in r.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
            if m:
                t = tops.setdefault(m.group(2).split(".")[0], [0, 0])
                t[0] += int(m.group(1))
                t[1] += 1
        out[name] = [(k, v[0], v[1]) for k, v in
                     sorted(tops.items(), key=lambda kv: -kv[1][0])[:8]]
    return out


# --- the image ---------------------------------------------------------------------------


def image_size(image: str) -> dict[str, Any]:
    """Compressed (``docker save | gzip -c | wc -c``) and uncompressed size, and where the
    bytes are: the largest directories over all layers, read from the saved tar (no
    container is started)."""
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        tar = Path(tmp) / "image.tar"
        with tar.open("wb") as f:
            subprocess.run(["docker", "save", image], stdout=f, check=True, timeout=600)
        with tar.open("rb") as f:
            gz = subprocess.run(["gzip", "-c"], stdin=f, capture_output=True, check=True,
                                timeout=600)
        dirs: dict[str, int] = {}
        with tarfile.open(tar) as outer:
            for member in outer.getmembers():
                if not member.name.endswith("layer.tar"):
                    continue
                layer = outer.extractfile(member)
                if layer is None:
                    continue
                with tarfile.open(fileobj=layer) as inner:
                    for m in inner.getmembers():
                        if m.isfile():
                            key = _bucket(m.name)
                            dirs[key] = dirs.get(key, 0) + m.size
    size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image).strip())
    largest = sorted(dirs.items(), key=lambda kv: -kv[1])[:15]
    return {"compressed": len(gz.stdout), "uncompressed": size,
            "largest_dirs": [f"{n / 1e6:7.1f} MB  {d}" for d, n in largest]}


def _bucket(path: str) -> str:
    """A path's directory at a depth that says something: a package under site-packages,
    else two levels (usr/lib/x86_64-linux-gnu, usr/share/...)."""
    parts = path.removeprefix("./").split("/")
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return "/".join(parts[:i + 2])
    if parts[:2] in (["usr", "lib"], ["usr", "share"]) and len(parts) > 3:
        return "/".join(parts[:3])
    return "/".join(parts[:2]) if len(parts) > 2 else path
