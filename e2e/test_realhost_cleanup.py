"""The real-host tests' sweep of what an earlier, killed run left behind.

Owns one guarantee: the sweep never touches a process of the machine. A killed run leaves
``arh<pid>-<tag>-host``, a handle of the host namespace made with ``ip netns attach``; the
namespace behind it is the machine's own, so "kill what runs in it" means every process of the
machine (CI's runner among them: that is how a run ended with exit -1 in test_readme). The
sweep deletes such a handle and kills only inside the LAN namespaces it made.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from e2e import harness
from e2e.realhost_support import NS_PREFIX, _kill_ns_processes, ip, remove_stale


@pytest.fixture
def dead_pid() -> int:
    """A pid whose process is gone (a finished child, reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the host namespace that a sweep must leave alone."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_stale_host_handle_is_deleted_and_nothing_in_it_is_killed(
    dead_pid: int, bystander: subprocess.Popen[bytes]
) -> None:
    handle = f"{NS_PREFIX}{dead_pid}-{uuid.uuid4().hex[:6]}-host"
    ip("netns", "attach", handle, str(os.getpid()))
    try:
        remove_stale()
        assert handle not in ip("netns", "list").split(), "the stale handle is still there"
        assert bystander.poll() is None, "the sweep killed a process of the host namespace"
    finally:
        ip("netns", "del", handle, check=False)


def test_a_stale_lan_namespace_is_emptied_and_deleted(dead_pid: int) -> None:
    name = f"{NS_PREFIX}{dead_pid}-{uuid.uuid4().hex[:6]}-lan"
    ip("netns", "add", name)
    inside = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"])
    try:
        harness.wait_until(lambda: bool(ip("netns", "pids", name).split()), 10,
                           message="the sleeper inside the stale LAN namespace")
        remove_stale()
        assert name not in ip("netns", "list").split()
        assert inside.wait(10) == -9, "the process left in the stale LAN namespace lives on"
    finally:
        if inside.poll() is None:
            inside.kill()
            inside.wait()
        ip("netns", "del", name, check=False)


def test_killing_inside_the_host_namespace_is_refused(bystander: subprocess.Popen[bytes]) -> None:
    handle = f"{NS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}-host"
    ip("netns", "attach", handle, str(os.getpid()))
    try:
        with pytest.raises(RuntimeError, match="refusing"):
            _kill_ns_processes(handle)
        assert bystander.poll() is None
    finally:
        ip("netns", "del", handle, check=False)
