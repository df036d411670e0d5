"""Soak: many backend restarts and worker kills over one run of the real stack, with the
figures that show a leak — RSS and open descriptors of every program (the anchord container's
entry, supervisord, bus and workers; the Docker API proxy), DNAT map elements and conntrack
entries — sampled at the start, periodically and at the end, and judged flat or not.

Run (as root, dockerd up, under the shared e2e lock; builds nothing: the image must exist)::

    flock /tmp/anchord-e2e.lock .venv/bin/python -m benchmarks.soak \\
        --backend-restarts 1000 --kills 1000 --image anchord:test

A round restarts the spare backend (``docker restart`` of spare-anchor, then waits until the
map points at its address again) and/or ``kill -9``s one random program of the anchord
container (each worker and the bus; then waits until it heartbeats again and anchord is
ready). The first sample is taken after a warm-up (WARMUP rounds: the first restarts import
code and fill caches once), the last once the stack has settled after the final round.

Flat means, start to end (``Report.flat``):
- a program's RSS grew by at most max(RSS_SLACK_KIB, RSS_SLACK_RATIO of its start): CPython's
  allocator keeps freed arenas, so a program's RSS wanders by a few MiB without leaking,
  while a leak of 1 KiB per round is 1 MiB at 1 000 rounds and shows above the slack over a
  long soak (the bounded CI soak only catches gross leaks: say 100 KiB per round);
- its open descriptors grew by at most FD_SLACK (a socket of a request in flight at the
  moment of the sample);
- map elements are the same number (every backend came back);
- conntrack entries at the end at most CONNTRACK_SLACK above the highest earlier sample (the
  soak makes no flows; the entries are the stack's own short-lived ones — discovery's
  connections to the proxy, DNS — whose number follows the last two minutes' activity, so a
  start-to-end comparison would judge the activity, not a leak).
A killed program's end figure is of a later instance than its start figure: for those the
verdict says whether a fresh instance is as small as the first, which is what a restart loop
(supervisord respawning it) must keep true. The programs never killed (entry, supervisord,
the proxy) carry the run's whole history.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field

from e2e import fault_support as fs
from e2e import harness
from e2e.fault_support import FaultStack, Sample
from e2e.harness import supervisor_pid, wait_until

WARMUP = 3
RSS_SLACK_KIB = 4096
RSS_SLACK_RATIO = 0.10
FD_SLACK = 2
CONNTRACK_SLACK = 20


@dataclass
class Report:
    backend_restarts: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    kill_recovery: list[float] = field(default_factory=list)
    restart_recovery: list[float] = field(default_factory=list)

    def verdicts(self) -> list[tuple[str, str, str, bool]]:
        """(what, start, end, flat) per figure, first sample against the last."""
        if len(self.samples) < 2:
            return []
        first, last = self.samples[0], self.samples[-1]
        out: list[tuple[str, str, str, bool]] = []
        for name in sorted(first.rss_kib):
            start, end = first.rss_kib[name], last.rss_kib.get(name, -1)
            ok = end >= 0 and end - start <= max(RSS_SLACK_KIB, start * RSS_SLACK_RATIO)
            out.append((f"RSS {name} KiB", str(start), str(end), ok))
        for name in sorted(first.fds):
            start, end = first.fds[name], last.fds.get(name, -1)
            out.append((f"fds {name}", str(start), str(end), 0 <= end <= start + FD_SLACK))
        out.append(("map elements", str(first.map_elements), str(last.map_elements),
                    first.map_elements == last.map_elements))
        # Conntrack entries are the stack's own short-lived flows (discovery's connections to
        # the proxy, DNS: TIME_WAIT 120 s, UDP 30 s), so their number follows the recent
        # activity: a leak grows past every earlier sample, a busy minute does not.
        band = max(s.conntrack for s in self.samples[:-1])
        out.append(("conntrack entries", str(first.conntrack), str(last.conntrack),
                    0 <= last.conntrack <= band + CONNTRACK_SLACK))
        return out

    def flat(self) -> bool:
        verdicts = self.verdicts()
        return bool(verdicts) and all(ok for *_, ok in verdicts)

    def lines(self) -> list[str]:
        kills = sum(self.kills.values())
        rec = sorted(self.kill_recovery)
        restarts = sorted(self.restart_recovery)
        lines = [
            f"{self.backend_restarts} backend restarts, {kills} kills "
            f"({', '.join(f'{p} {n}' for p, n in sorted(self.kills.items()))}) in "
            f"{self.seconds:.0f}s; {len(self.samples)} samples",
        ]
        if rec:
            lines.append(f"kill -9 -> ready: p50 {rec[len(rec) // 2]:.2f}s, max {rec[-1]:.2f}s")
        if restarts:
            lines.append(f"backend restart -> mapped: p50 {restarts[len(restarts) // 2]:.2f}s, "
                         f"max {restarts[-1]:.2f}s")
        for what, start, end, ok in self.verdicts():
            trend = ""
            series: list[int] = []
            if what.startswith("RSS "):
                series = [s.rss_kib.get(what[4:-4], -1) for s in self.samples]
            elif what == "conntrack entries":
                series = [s.conntrack for s in self.samples]
            if series:
                trend = f" (samples: {', '.join(str(v) for v in series)})"
            lines.append(f"{what}: start {start}, end {end}: "
                         f"{'flat' if ok else 'NOT FLAT'}{trend}")
        return lines


def restart_backend(stack: FaultStack) -> float:
    """``docker restart`` spare-anchor; seconds until the map points at it again."""
    started = time.monotonic()
    harness.run(["docker", "restart", "-t", "1", stack.cid("spare-anchor")])
    wait_until(lambda: stack.dnat_map(4).get(fs.SPARE_PORT) == stack.transit4("spare-anchor"),
               60, interval=0.1, message="the spare backend mapped again")
    return time.monotonic() - started


def kill_program(stack: FaultStack, program: str) -> float:
    """``kill -9`` of ``program``; seconds until a new instance heartbeats and anchord is
    ready (as e2e/test_lifecycle.py's kill test)."""
    def status() -> str:
        return stack.exec("anchord", "supervisorctl", "status", check=False)

    before = wait_until(lambda: supervisor_pid(status(), program), 20, interval=0.1,
                        message=f"{program} RUNNING before its kill")
    started = time.monotonic()
    stack.exec("anchord", "sh", "-c", f"kill -9 {before}")

    def back() -> bool:
        state = stack.status_json()
        if not state["ready"]:
            return False
        if program == "bus":
            return True
        return state["workers"].get(program, {}).get("pid") not in (None, before)

    wait_until(back, 30, interval=0.1, message=f"{program} back after kill -9")
    return time.monotonic() - started


def settle(stack: FaultStack) -> None:
    """Ready, every program RUNNING, the spare backend mapped."""
    def settled() -> bool:
        text = stack.exec("anchord", "supervisorctl", "status", check=False)
        states = harness.parse_supervisor_status(text)
        return (all(states.get(p) == "RUNNING" for p in fs.PROGRAMS)
                and bool(stack.status_json()["ready"])
                and stack.dnat_map(4).get(fs.SPARE_PORT) == stack.transit4("spare-anchor"))
    wait_until(settled, 60, interval=0.3, message="the stack settled")


def run(stack: FaultStack, backend_restarts: int, kills: int, sample_every: int = 50,
        seed: int = 12, progress: bool = False) -> Report:
    """The soak on a started stack; the stack is left as it is (the caller takes it down)."""
    rng = random.Random(seed)
    sampler = fs.ProcessSampler(stack)
    report = Report()
    began = time.monotonic()
    rounds = max(backend_restarts, kills)
    for i in range(rounds + WARMUP):
        warm = i < WARMUP
        if warm or i - WARMUP < backend_restarts:
            took = restart_backend(stack)
            if not warm:
                report.backend_restarts += 1
                report.restart_recovery.append(took)
        if warm or i - WARMUP < kills:
            program = fs.PROGRAMS[i % len(fs.PROGRAMS)] if warm else rng.choice(fs.PROGRAMS)
            took = kill_program(stack, program)
            if not warm:
                report.kills[program] = report.kills.get(program, 0) + 1
                report.kill_recovery.append(took)
        if i == WARMUP - 1:
            settle(stack)
            report.samples.append(sampler.sample())
        elif not warm and (i - WARMUP + 1) % sample_every == 0 and i - WARMUP + 1 < rounds:
            report.samples.append(sampler.sample())
            report.seconds = time.monotonic() - began
            if progress:
                print(f"round {i - WARMUP + 1}/{rounds}: {report.lines()[0]}", flush=True)
    settle(stack)
    report.samples.append(sampler.sample())
    report.seconds = time.monotonic() - began
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-restarts", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=50,
                        help="rounds between samples (default 50)")
    parser.add_argument("--image", default=harness.IMAGE,
                        help="the anchord image (default $ANCHORD_E2E_IMAGE or anchord:test)")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    harness.run(["docker", "image", "inspect", args.image])
    stack = fs.start_fault_stack(args.image, "soak")
    try:
        report = run(stack, args.backend_restarts, args.kills, args.sample_every, args.seed,
                     progress=True)
    finally:
        fs.down(stack)
    for line in report.lines():
        print(line)
    print("verdict:", "flat" if report.flat() else "NOT FLAT")
    return 0 if report.flat() else 1


if __name__ == "__main__":
    sys.exit(main())
