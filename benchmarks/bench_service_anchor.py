"""Footprint and reaction time of one service-anchor, measured in real namespaces.

Runs ``python3 -m anchord service-anchor`` (the real CLI: config from the environment, JSON logs)
in the namespace topology of ``tests/integration/test_service_anchor.py`` (dnsmasq as the
resolver, two gateways) and prints:

- time from process start to ready (health file says ready);
- RSS at idle (VmRSS / VmHWM / RssAnon) with the metrics listener on and off, after idling,
  and after a burst of scrapes;
- CPU used while idle;
- how long the default route takes to follow a changed answer (several changes).

Run as root from the repository root::

    python3 benchmarks/bench_service_anchor.py [--idle SECONDS] [--changes N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.test_service_anchor import (  # noqa: E402
    V4_GW,
    V6_GW,
    Env,
    _build,
)
from tests.netns import topology, wait_until  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SCRAPE = """
import sys, urllib.request
for _ in range(int(sys.argv[2])):
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        r.read()
"""


def status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / TICKS  # utime + stime


# --no-site: run the interpreter without site's .pth hooks (this test bed's pyenv loads extra
# modules at start-up that a Debian image's python3 does not), site-packages still on the path.
NO_SITE = False


def start(env: Env, port: int | None, interval: str) -> subprocess.Popen[bytes]:
    path = [str(REPO), *(site.getsitepackages() if NO_SITE else [])]
    variables = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "ANCHORD_RUN_DIR": str(env.run_dir),
        "ANCHORD_METRICS_ADDR": f"127.0.0.1:{port}" if port else "",
        "ANCHORD_GATEWAY_RESOLVE_INTERVAL": interval,
    }
    with (env.tmp / "anchor.log").open("ab") as log:
        argv = [sys.executable, *(["-S"] if NO_SITE else []), "-m", "anchord", "service-anchor"]
        return env.anchor.popen(argv, cwd=REPO, env=variables, stdout=log, stderr=log)


def ready(env: Env) -> bool:
    try:
        return bool(json.loads((env.run_dir / "health.json").read_text())["ready"])
    except (OSError, ValueError):
        return False


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def footprint(env: Env, port: int | None, idle: float) -> None:
    label = "listener on " if port else "listener off"
    t0 = time.monotonic()
    proc = start(env, port, "5s")
    wait_until(lambda: ready(env), 30, interval=0.01, what="ready")
    to_ready = time.monotonic() - t0
    time.sleep(1.0)  # let start-up garbage settle before the idle window
    cpu0, t_idle = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(idle)
    cpu = cpu_seconds(proc.pid) - cpu0
    wall = time.monotonic() - t_idle
    mem = status_kb(proc.pid)
    print(f"{label}: ready in {to_ready:.2f}s; idle RSS {mem['VmRSS'] / 1024:.1f} MB "
          f"(peak {mem['VmHWM'] / 1024:.1f} MB, anon {mem['RssAnon'] / 1024:.1f} MB, "
          f"file {mem['RssFile'] / 1024:.1f} MB, threads {mem['Threads']}); "
          f"idle CPU {100 * cpu / wall:.2f}% over {wall:.0f}s")
    if port:
        env.anchor.run(sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{port}/metrics", "100")
        mem = status_kb(proc.pid)
        print(f"{label}: after 100 scrapes RSS {mem['VmRSS'] / 1024:.1f} MB "
              f"(peak {mem['VmHWM'] / 1024:.1f} MB)")
    assert stop(proc) == 0


def follow(env: Env, changes: int) -> None:
    proc = start(env, None, "1s")
    current = "gw1"
    env.answer(V4_GW[current], V6_GW[current])
    wait_until(lambda: env.default_slot() == [V4_GW[current]], 30, what="route via gw1")
    times = []
    for _ in range(changes):
        current = "gw2" if current == "gw1" else "gw1"
        env.answer(V4_GW[current], V6_GW[current])
        t0 = time.monotonic()
        def moved(gw: str = current) -> bool:
            return env.default_slot() == [V4_GW[gw]] and \
                env.default_slot(v6=True) == [V6_GW[gw]]

        wait_until(moved, 10, interval=0.01, what=f"route via {current}")
        times.append(time.monotonic() - t0)
    assert stop(proc) == 0
    print(f"route follows a changed answer (resolve interval 1s, {changes} changes): "
          f"min {min(times):.2f}s, median {sorted(times)[len(times) // 2]:.2f}s, "
          f"max {max(times):.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--idle", type=float, default=15.0, help="idle window, seconds")
    parser.add_argument("--changes", type=int, default=6, help="answer changes to time")
    parser.add_argument("--no-site", action="store_true",
                        help="start python with -S (no .pth start-up hooks)")
    args = parser.parse_args()
    global NO_SITE
    NO_SITE = args.no_site
    with tempfile.TemporaryDirectory() as tmp, topology("sab") as topo:
        env = _build(topo, Path(tmp))
        try:
            env.answer(V4_GW["gw1"], V6_GW["gw1"])
            env.start_dnsmasq()
            print(f"python {sys.version.split()[0]}{' -S' if NO_SITE else ''}, "
                  f"{os.cpu_count()} CPUs")
            footprint(env, 9090, args.idle)
            footprint(env, None, args.idle)
            follow(env, args.changes)
        finally:
            for proc in [*env.procs, env.dnsmasq]:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=5)
                if proc is not None and proc.stdout is not None:
                    proc.stdout.close()
            shutil.rmtree(Path("/etc/netns") / env.anchor.name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
