"""The privilege switch and the shared run directory on the real kernel, without the image.

Owns anchord/privileges.py and the run-directory modes of bus/broker.py as processes see them:
a program that becomes another user holds no uid 0, no capability and no_new_privs; a root
program reduced to NET_ADMIN and NET_RAW holds exactly those; and in a run directory shared
with the group, the real broker running as that user serves a root client that has no
CAP_DAC_OVERRIDE (the container's root), which also reads the readiness file that user wrote.
The host's ``nobody`` stands in for the image's ``anchord`` (the host has no such user). Each
switch happens in a child process the test starts; the test process keeps its privileges.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchord import privileges
from bus.rundir import SHARED_MODE, prepare_run_dir
from tests.netns import wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def nobody() -> privileges.Account:
    entry = pwd.getpwnam("nobody")
    return privileges.Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


@pytest.fixture
def shared_dir(nobody: privileges.Account) -> Iterator[Path]:
    """A run directory shared with nobody's group, under a base that user may traverse (the
    pytest tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="anchord-priv-"))
    os.chmod(base, 0o755)
    run_dir = base / "run"
    prepare_run_dir(run_dir, nobody.gid)
    try:
        yield run_dir
    finally:
        shutil.rmtree(base)


def _python(code: str) -> subprocess.Popen[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(code: str) -> dict[str, object]:
    proc = _python(code)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_become_leaves_no_root_and_no_capability(nobody: privileges.Account) -> None:
    result = _run(f"""
        import json, os
        from anchord import privileges
        privileges.become(privileges.Account("nobody", {nobody.uid}, {nobody.gid}, "/"), [])
        print(json.dumps({{"status": open("/proc/self/status").read(),
                          "home": os.environ["HOME"]}}))
    """)
    st = _status_fields(str(result["status"]))
    assert st["Uid"].split() == [str(nobody.uid)] * 4, st
    assert st["Gid"].split() == [str(nobody.gid)] * 4, st
    assert st["Groups"] == "", st
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap], 16) == 0, st
    assert st["NoNewPrivs"] == "1", st
    assert result["home"] == "/", result


def test_root_programs_keep_only_the_network_capabilities() -> None:
    result = _run("""
        import json
        from anchord import privileges
        privileges.keep_capabilities(privileges.NETWORK_CAPS)
        privileges.no_new_privs()
        print(json.dumps({"status": open("/proc/self/status").read()}))
    """)
    st = _status_fields(str(result["status"]))
    assert st["Uid"].split() == ["0"] * 4, st
    assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == (1 << 12) | (1 << 13), st
    assert int(st["CapInh"], 16) == 0, st
    assert st["NoNewPrivs"] == "1", st


def test_docker_socket_group_only_for_a_socket_it_could_not_open(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        os.chown(path, 0, 4242)
        os.chmod(path, 0o660)
        assert privileges.docker_socket_group(f"unix://{path}") == 4242
        os.chmod(path, 0o666)
        assert privileges.docker_socket_group(f"unix://{path}") is None
    assert privileges.docker_socket_group("tcp://docker-proxy:2375") is None
    assert privileges.docker_socket_group(f"unix://{tmp_path}/absent.sock") is None


def test_shared_run_dir_serves_a_root_without_dac_override(
    nobody: privileges.Account, shared_dir: Path,
) -> None:
    st = shared_dir.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, nobody.gid, SHARED_MODE)
    # The broker and a readiness file of the unprivileged user.
    broker = _python(f"""
        import os, signal
        from pathlib import Path
        from anchord import health, privileges
        from bus import broker
        privileges.become(privileges.Account("nobody", {nobody.uid}, {nobody.gid}, "/"), [])
        run_dir = Path({str(shared_dir)!r})
        health.write(run_dir, True, {{}})
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        broker.serve(run_dir, lambda: bool(stop))
    """)
    try:
        wait_until(lambda: (shared_dir / "sub.ipc").exists() and broker.poll() is None, 10,
                   what="the unprivileged broker's sockets")
        # A root client with the container's root workers' capabilities only.
        result = _run(f"""
            import json, time
            from pathlib import Path
            from anchord import health, privileges
            from bus.client import BusClient
            privileges.keep_capabilities(privileges.NETWORK_CAPS)
            run_dir = Path({str(shared_dir)!r})
            with BusClient("root-client", run_dir, heartbeat=3600) as bus:
                deadline = time.monotonic() + 10
                while not bus.hello_acked and time.monotonic() < deadline:
                    bus.poll(0.1)
                acked = bus.hello_acked
            print(json.dumps({{"acked": acked, "health": health.check(run_dir)}}))
        """)
        assert result["acked"] is True, result
        assert result["health"] == [True, "ready"], result
    finally:
        broker.terminate()
        broker.communicate(timeout=10)
    for name in ("pub.ipc", "sub.ipc", "health.json"):
        owner = (shared_dir / name).lstat().st_uid
        assert owner == nobody.uid, (name, owner)
