"""anchord.supervisorrpc against a real supervisord: RUNNING, then the SHUTDOWN_STATE fault
while it stops a slow program, then no answer once it is gone.

The entry process tells "supervisord is stopping" (its cue to stop the workers together) by
that fault, so the fault is checked against supervisord itself, not a canned answer.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from anchord import supervisorrpc
from tests.netns import wait_until

SHUTDOWN_STATE = 6  # supervisor.xmlrpc.Faults.SHUTDOWN_STATE

CONF = """[unix_http_server]
file={dir}/supervisor.sock
[supervisord]
nodaemon=true
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:slow]
command={python} -c "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (time.sleep(3), sys.exit(0))); pathlib.Path('{dir}/ready').touch(); signal.pause()"
stopwaitsecs=10
"""  # noqa: E501 - one supervisord command line


def state_or_fault(sock: Path) -> str:
    try:
        return supervisorrpc.get_state(sock)
    except supervisorrpc.Fault as fault:
        return f"fault {fault.code}"
    except OSError:
        return "no answer"


def test_running_then_the_shutdown_fault_then_nothing(tmp_path: Path) -> None:
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent))
    assert supervisord, "supervisord is installed beside this interpreter"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.format(dir=tmp_path, python=sys.executable))
    sock = tmp_path / "supervisor.sock"
    proc = subprocess.Popen([supervisord, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: state_or_fault(sock) == "RUNNING", 20, what="supervisord running")
        wait_until((tmp_path / "ready").exists, 20, what="the slow program's SIGTERM handler")
        proc.send_signal(signal.SIGTERM)
        # The program takes 3 s to stop: supervisord answers with the fault meanwhile.
        wait_until(lambda: state_or_fault(sock) == f"fault {SHUTDOWN_STATE}", 5,
                   what="the SHUTDOWN_STATE fault while supervisord stops")
        assert proc.wait(20) == 0
        assert state_or_fault(sock) == "no answer"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_answer_that_is_not_xmlrpc_is_an_oserror(tmp_path: Path) -> None:
    import socket
    import threading

    path = tmp_path / "not-supervisord.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n<html>hello</html>")

        thread = threading.Thread(target=answer)
        thread.start()
        with pytest.raises(supervisorrpc.BadAnswer, match="no statename"):
            supervisorrpc.get_state(path)
        thread.join(5)
