"""Test helpers for real network namespaces: make them, wire them, run in them, clean up.

Every namespace a test makes carries a unique prefix and is deleted at teardown,
so a failed test never leaves state behind for the next. Nothing here sends
traffic anywhere; tests do that inside the namespaces they made.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TypeVar

T = TypeVar("T")


def sh(*argv: str, check: bool = True, timeout: float = 30, **kw: object) -> str:
    """Run a command, return its stdout; raise with stderr on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return str(proc.stdout)


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05,
    what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` seconds.

    The result is never None (typed so: callers need no ``assert result is not None``, which
    could not fail)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the predicate may fail until ready
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}"
                               + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


class Netns:
    """One network namespace made by a test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []  # started by popen(), reaped by delete()
        sh("ip", "netns", "add", name)
        self.run("ip", "link", "set", "lo", "up")

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.name, *argv], **kw)
        self.procs.append(proc)
        return proc

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def delete(self) -> None:
        # Kill what still runs inside, then drop the namespace.
        pids = sh("ip", "netns", "pids", self.name, check=False).split()
        for pid in pids:
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        # Reap what popen() started, even after a failed test: an unreaped Popen would be
        # reported ("subprocess N is still running") in whichever later test collects it.
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.procs.clear()
        sh("ip", "netns", "del", self.name, check=False)


class Topology:
    """A set of namespaces and links, all removed on close."""

    def __init__(self, prefix: str = "at") -> None:
        self.tag = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.namespaces: list[Netns] = []

    def netns(self, role: str) -> Netns:
        ns = Netns(f"{self.tag}-{role}")
        self.namespaces.append(ns)
        return ns

    def veth(self, a: Netns, a_name: str, b: Netns, b_name: str) -> None:
        """A veth pair with end ``a_name`` in ``a`` and ``b_name`` in ``b``, both up."""
        tmp_a, tmp_b = f"v{uuid.uuid4().hex[:8]}", f"v{uuid.uuid4().hex[:8]}"
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        sh("ip", "link", "set", tmp_a, "netns", a.name)
        sh("ip", "link", "set", tmp_b, "netns", b.name)
        a.run("ip", "link", "set", tmp_a, "name", a_name)
        b.run("ip", "link", "set", tmp_b, "name", b_name)
        a.run("ip", "link", "set", a_name, "up")
        b.run("ip", "link", "set", b_name, "up")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()


@contextmanager
def topology(prefix: str = "at") -> Iterator[Topology]:
    topo = Topology(prefix)
    try:
        yield topo
    finally:
        topo.close()
