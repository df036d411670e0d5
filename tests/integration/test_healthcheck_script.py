"""The image's HEALTHCHECK script (anchord/healthcheck.sh) against the real readiness files.

Owns the agreement between the script's sh fast path and ``anchord.health``: the files are
written by the real ``health.write``/``health.clear``, the script runs under the real /bin/sh
with the real find and /proc, and every case it does not answer itself reaches the real
``anchord healthcheck`` of this venv. A wrapper placed first on PATH notes each time the script
falls through to it, so each case also says which way it was answered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from anchord import health

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "anchord" / "healthcheck.sh"
# () -> (exit status, output, whether Python was started)
Check = Callable[[], tuple[int, str, bool]]


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Check]:
    run_dir, bin_dir, calls = tmp_path / "run", tmp_path / "bin", tmp_path / "python-calls"
    run_dir.mkdir()
    bin_dir.mkdir()
    wrapper = bin_dir / "anchord"
    wrapper.write_text(f"#!/bin/sh\necho x >> {calls}\n"
                       f"exec {sys.executable} -m anchord \"$@\"\n")
    wrapper.chmod(0o755)

    def check() -> tuple[int, str, bool]:
        before = calls.read_text().count("x") if calls.exists() else 0
        env = dict(os.environ, ANCHORD_RUN_DIR=str(run_dir),
                   PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
        out = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True,
                             text=True, timeout=30)
        after = calls.read_text().count("x") if calls.exists() else 0
        return out.returncode, (out.stdout + out.stderr).strip(), after > before

    return run_dir, check


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_ready_is_answered_in_sh_without_python(run: tuple[Path, Check]) -> None:
    run_dir, check = run
    health.write(run_dir, True, {})
    assert (run_dir / health.READY_MARKER).read_text().strip() == str(os.getpid())
    assert check() == (0, "ready", False)


def test_not_ready_removes_the_marker_and_python_says_why(
        run: tuple[Path, Check]) -> None:
    run_dir, check = run
    health.write(run_dir, True, {})
    health.write(run_dir, False, {"dhcp": "no lease yet"})
    assert not (run_dir / health.READY_MARKER).exists()
    rc, out, python = check()
    assert (rc, python) == (1, True)
    assert "dhcp: no lease yet" in out


def test_the_scripts_freshness_limit_is_stale_after(run: tuple[Path, Check]) -> None:
    """Younger than STALE_AFTER: sh answers; older: Python decides (from health.json)."""
    run_dir, check = run
    health.write(run_dir, True, {})
    _age(run_dir / health.READY_MARKER, health.STALE_AFTER - 3)
    assert check() == (0, "ready", False)
    _age(run_dir / health.READY_MARKER, health.STALE_AFTER + 3)
    rc, _, python = check()
    assert python, "a stale marker must not be answered in sh"
    assert rc == 0  # health.json itself is fresh: Python's judgement, not the marker's


def test_a_marker_whose_writer_is_gone_is_not_healthy(run: tuple[Path, Check]) -> None:
    run_dir, check = run
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # health.json and the marker as a writer that has since died would have left them.
    health.write(run_dir, True, {})
    for name in (health.HEALTH_FILE, health.READY_MARKER):
        path = run_dir / name
        path.write_text(path.read_text().replace(str(os.getpid()), str(gone.pid)))
    rc, out, python = check()
    assert (rc, python) == (1, True), out
    assert "is gone" in out


@pytest.mark.parametrize("content", ["", "12x", "../1", "1 2"])
def test_a_marker_without_a_plain_pid_goes_to_python(
        run: tuple[Path, Check], content: str) -> None:
    run_dir, check = run
    (run_dir / health.READY_MARKER).write_text(content + "\n")
    rc, _, python = check()
    assert (rc, python) == (1, True)  # and no health.json: not ready


def test_clear_removes_the_marker(run: tuple[Path, Check]) -> None:
    run_dir, check = run
    health.write(run_dir, True, {})
    health.clear(run_dir)
    assert not (run_dir / health.READY_MARKER).exists()
    rc, _, python = check()
    assert (rc, python) == (1, True)
