"""Support of e2e/test_lifecycle.py (S-3, S-6, S-9, S-10 on the full stack).

Owns what those scenarios need beyond e2e/stack_support.py:

- ``start_stream_stack``: the full stack plus a long-lived TCP echo (``stream``, tcp/8081) in
  web-anchor's namespace, added by a Compose override file written at run time (the stack's
  app ``lantool.py serve`` answers one line and closes, so nothing there can hold a stream).
- ``LoadClient``: a script run in the LAN client container (``docker exec -i``) that holds one
  TCP stream to tcp/8081 (a numbered line every 50 ms, echo checked) and opens a new tcp/8080
  connection every 50 ms, recording every attempt with its client-side wall time; it stops
  when its stdin closes and prints one JSON report.
- reading kernel and Docker state: nftables table handles and the macvlan child inside the
  anchord container, a container's transit addresses and start time, a service-anchor's
  default routes, conntrack entries by reply source;
- ``Placeholder``: a container parked on the transit network to hold a just-freed address, so
  that the next start of a container gets a different one (Docker hands out the lowest free
  address, so a restarted container otherwise gets its old address back).
"""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e import harness, stack_support
from e2e.harness import ComposeProject
from e2e.stack_support import DNS_SERVER, LAN_IMAGE, LANTOOL, Stack

STREAM_PORT = 8081
CONN_PORT = 8080

# The stream service: echo every byte back on tcp/8081, one thread per connection.
ECHO_SERVER = f"""
import socket, threading
PORT = {STREAM_PORT}
def handle(conn):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", PORT))
srv.listen(16)
print("stream: echoing tcp", PORT, flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

# Run in the LAN client: argv = host stream_port conn_port interval client_address deadline.
LOAD_SCRIPT = r"""
import json, socket, sys, threading, time
host, sport, cport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
interval, me, deadline = float(sys.argv[4]), sys.argv[5], float(sys.argv[6])
stop = threading.Event()
stream = {"echoes": 0, "first": None, "last": None, "error": None}
conns = {"ok": [], "failed": [], "max_latency": 0.0}

def open_stream():
    end = time.monotonic() + deadline
    while True:
        try:
            return socket.create_connection((host, sport), timeout=2)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)

def run_stream(sock):
    seq = 0
    try:
        sock.settimeout(3)
        with sock:
            while not stop.is_set():
                line = ("%d\n" % seq).encode()
                sock.sendall(line)
                got = b""
                while not got.endswith(b"\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise EOFError("stream closed by the peer")
                    got += chunk
                if got != line:
                    raise ValueError("echo %r for %r" % (got, line))
                now = time.time()
                stream["echoes"] += 1
                stream["first"] = stream["first"] or now
                stream["last"] = now
                seq += 1
                stop.wait(interval)
    except Exception as exc:
        stream["error"] = "%.3f %s: %s" % (time.time(), type(exc).__name__, exc)

def connect_once():
    started = time.time()
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, cport), timeout=2) as c:
            c.settimeout(2)
            data = b""
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data.decode())
        if reply.get("peer") != me:
            raise ValueError("app saw %r" % (reply,))
    except Exception as exc:
        conns["failed"].append([started, "%s: %s" % (type(exc).__name__, exc)])
        return False
    conns["ok"].append(started)
    conns["max_latency"] = max(conns["max_latency"], time.monotonic() - t0)
    return True

def run_conns():
    while not stop.is_set():
        connect_once()
        stop.wait(interval)

sock = open_stream()
end = time.monotonic() + deadline
while not connect_once():
    if time.monotonic() > end:
        break
    time.sleep(0.1)
conns["failed"].clear()  # failures before the first success are the start, not the test
threads = [threading.Thread(target=run_stream, args=(sock,)), threading.Thread(target=run_conns)]
for t in threads:
    t.start()
while stream["echoes"] == 0 and stream["error"] is None:
    time.sleep(0.01)
print("ready" if stream["error"] is None and conns["ok"] else "not ready", flush=True)
sys.stdin.read()
stop.set()
for t in threads:
    t.join(10)
print(json.dumps({"stream": stream, "conns": conns}), flush=True)
"""


@dataclass
class OverriddenProject(ComposeProject):
    """A ComposeProject with extra Compose files (``-f`` after the main one)."""

    overrides: list[Path] = field(default_factory=list)

    def compose(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        files: list[str] = []
        for path in (self.compose_file, *self.overrides):
            files += ["-f", str(path)]
        return harness.run(
            ["docker", "compose", "-p", self.name, *files, *args],
            check=check,
            timeout=timeout,
            env=self._env(),
            cwd=self.compose_file.parent,
        )


def stream_override(directory: Path) -> Path:
    """The override: web-anchor also exposes tcp/8081; ``stream`` echoes there."""
    override = {
        "services": {
            "web-anchor": {
                "labels": {"anchord.expose": f"tcp/{CONN_PORT}, udp/{CONN_PORT}, tcp/{STREAM_PORT}"}
            },
            "stream": {
                "image": "${ANCHORD_LAN_IMAGE:-anchord-demo-lan:local}",
                "network_mode": "service:web-anchor",
                "command": ["python3", "-c", ECHO_SERVER],
                "depends_on": ["web-anchor"],
            },
        }
    }
    path = directory / "stream-override.yaml"
    path.write_text(json.dumps(override, indent=2))  # JSON is YAML
    return path


def start_stream_stack(image: str, hint: str, reach_timeout: float = 60.0) -> Stack:
    """The full stack with the stream override, started and answering on tcp/8080."""
    directory = Path(tempfile.mkdtemp(prefix="anchord-lifecycle-"))
    project = OverriddenProject(
        compose_file=stack_support.STACK_FILE,
        name=harness.unique_project_name(hint),
        env={
            "ANCHORD_IMAGE": image,
            "ANCHORD_LAN_IMAGE": LAN_IMAGE,
            "LAN6_DOCKER_SUBNET": stack_support.random_ula64(),
            "TRANSIT6_DOCKER_SUBNET": stack_support.random_ula64(),
        },
        overrides=[stream_override(directory)],
    )
    stack = Stack(project)
    try:
        project.up()
        out = harness.run(
            ["docker", "exec", stack.cid("client"), *LANTOOL, "client", "--once",
             "--name", stack.hostname, "--server", DNS_SERVER, "--port", str(CONN_PORT),
             "--deadline", str(reach_timeout)],
            check=False,
            timeout=reach_timeout + 30,
        )
        stack.cold_start_verdict = out.stdout.strip()
        if out.returncode != 0:
            raise RuntimeError(f"stack not reachable: {out.stdout} {out.stderr}")
    except BaseException:
        print(project.dump())
        project.down()
        raise
    return stack


# --- the load client ---------------------------------------------------------------------------
@dataclass
class LoadReport:
    echoes: int
    stream_first: float | None
    stream_last: float | None
    stream_error: str | None
    ok: list[float]
    failed: list[tuple[float, str]]
    max_latency: float

    def ok_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.ok if start <= t <= end)


class LoadClient:
    """The load script running in the client container; ``finish`` stops it."""

    def __init__(self, stack: Stack, host: str, me: str, interval: float = 0.05) -> None:
        self.proc = subprocess.Popen(
            ["docker", "exec", "-i", stack.cid("client"), "python3", "-c", LOAD_SCRIPT,
             host, str(STREAM_PORT), str(CONN_PORT), str(interval), me, "20"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("")  # EOF

    def wait_ready(self, timeout: float = 40.0) -> None:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            err = self.kill()
            raise TimeoutError(f"load client not ready after {timeout:g}s: {err}") from None
        if line != "ready":
            raise RuntimeError(f"load client did not start: {line!r} {self.kill()}")

    def finish(self, timeout: float = 30.0) -> LoadReport:
        """Close the script's stdin (it stops) and parse its report."""
        assert self.proc.stdin is not None
        assert self.proc.stderr is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        err = self.proc.stderr.read()
        self._close()
        lines = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line:
                lines.append(line)
        if not lines:
            code = self.proc.returncode
            raise RuntimeError(f"load client printed no report (exit {code}): {err}")
        data: dict[str, Any] = json.loads(lines[-1])
        stream, conns = data["stream"], data["conns"]
        return LoadReport(
            echoes=stream["echoes"],
            stream_first=stream["first"],
            stream_last=stream["last"],
            stream_error=stream["error"],
            ok=list(conns["ok"]),
            failed=[(t, e) for t, e in conns["failed"]],
            max_latency=conns["max_latency"],
        )

    def kill(self) -> str:
        """Stop the script if it still runs and release its pipes (idempotent); what it
        wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(10)
        err = ""
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            err = self.proc.stderr.read()
        self._close()
        return err

    def _close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


# --- state of containers and of the anchord namespace ------------------------------------------
def table_handles(stack: Stack) -> dict[str, int]:
    """{"ip anchord_v4": handle, ...} of the anchord tables in the anchord container."""
    out = stack.exec("anchord", "nft", "-j", "list", "tables")
    handles = {}
    for item in json.loads(out)["nftables"]:
        table = item.get("table")
        if table and table["name"].startswith("anchord_"):
            handles[f"{table['family']} {table['name']}"] = int(table["handle"])
    return handles


def ext_link(stack: Stack) -> tuple[int, list[str]]:
    """(ifindex, addresses) of the macvlan child ``anchord-ext`` in the anchord container."""
    out = stack.exec("anchord", "ip", "-j", "addr", "show", "dev", "anchord-ext")
    link = json.loads(out)[0]
    addresses = [a["local"] for a in link.get("addr_info", []) if a.get("scope") == "global"]
    return int(link["ifindex"]), addresses


def transit_addresses(project: ComposeProject, service: str) -> tuple[str, str]:
    """(IPv4, IPv6) of the service's container on the project's transit network."""
    networks = project.inspect(service)["NetworkSettings"]["Networks"]
    net = networks[f"{project.name}_transit"]
    return net["IPAddress"], net["GlobalIPv6Address"]


def started_at(project: ComposeProject, service: str) -> float:
    """The service container's State.StartedAt as a Unix time."""
    return docker_time(project.state(service)["StartedAt"])


def mapped_at(stack: Stack, port: int, address: str, timeout: float = 15.0) -> float:
    """Unix time at which anchord's IPv4 single-port TCP map first sent ``port`` to ``address``
    (polled through ``docker exec``: ~0.1 s resolution)."""
    def mapped() -> bool:
        out = stack.exec("anchord", "nft", "-j", "list", "map", "ip", "anchord_v4", "dnat_tcp",
                         check=False)
        for item in json.loads(out or "{}").get("nftables", []):
            if "map" in item:
                return [port, address] in item["map"].get("elem", [])
        return False

    harness.wait_until(mapped, timeout, interval=0.05, message=f"tcp/{port} mapped to {address}")
    return time.time()


def docker_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds -> Unix time (microsecond precision)."""
    base, _, rest = text.rstrip("Z").partition(".")
    frac = (rest + "000000")[:6]
    return datetime.fromisoformat(f"{base}.{frac}+00:00").timestamp()


def default_gateways(stack: Stack, service: str) -> tuple[str | None, str | None]:
    """The IPv4 and IPv6 default routes' gateways in the service's namespace."""
    found: list[str | None] = []
    for family in ("-4", "-6"):
        routes = json.loads(stack.exec(service, "ip", "-j", family, "route", "show", "default"))
        found.append(routes[0].get("gateway") if routes else None)
    return found[0], found[1]


def conntrack_reply_sources(stack: Stack) -> list[str]:
    """The reply source of every IPv4 conntrack entry in the anchord namespace."""
    out = harness.run(
        ["docker", "exec", stack.cid("anchord"), "conntrack", "-L", "-f", "ipv4"], check=False
    ).stdout
    sources = []
    for line in out.splitlines():
        fields = [f for f in line.split() if f.startswith("src=")]
        if len(fields) >= 2:
            sources.append(fields[1][4:])
    return sources


def now() -> float:
    return time.time()


class Placeholder:
    """A container on the project's transit network, holding the lowest free address."""

    def __init__(self, project: ComposeProject) -> None:
        self.name = f"{project.name}-placeholder"
        network = f"{project.name}_transit"
        # The project's labels let ``compose down --remove-orphans`` (and the suite's removal
        # of a killed run's leftovers) take it away with the project if the test cannot.
        harness.run(
            ["docker", "run", "-d", "--name", self.name, "--network", network,
             "--label", f"com.docker.compose.project={project.name}",
             "--label", "com.docker.compose.service=lifecycle-placeholder",
             "--entrypoint", "sleep", LAN_IMAGE, "600"]
        )
        out = harness.run(["docker", "inspect", self.name]).stdout
        self.address: str = json.loads(out)[0]["NetworkSettings"]["Networks"][network][
            "IPAddress"
        ]

    def remove(self) -> None:
        harness.run(["docker", "rm", "-f", self.name], check=False)


# Run in the LAN client: argv = host port threads. Each thread connects every 50 ms (0.3 s
# timeout) and prints "<wall time> ok|<error>" per attempt; stops when stdin closes.
PROBE_SCRIPT = r"""
import socket, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = threading.Event()
lock = threading.Lock()
def probe():
    while not stop.is_set():
        t = time.time()
        try:
            with socket.create_connection((host, port), timeout=0.3) as c:
                c.settimeout(0.5)
                ok = b'"service": "web"' in c.recv(4096)
            result = "ok" if ok else "bad-answer"
        except OSError as exc:
            result = type(exc).__name__
        with lock:
            print("%.6f %s" % (t, result), flush=True)
        stop.wait(0.05)
print("started", flush=True)
threads = [threading.Thread(target=probe) for _ in range(n)]
for th in threads:
    th.start()
    time.sleep(0.1 / n)
sys.stdin.read()
stop.set()
for th in threads:
    th.join(5)
"""


class Prober:
    """Connection attempts to tcp/8080 from the LAN client, running across a restart."""

    def __init__(self, stack: Stack, host: str, threads: int = 3) -> None:
        self.proc = subprocess.Popen(
            ["docker", "exec", "-i", stack.cid("client"), "python3", "-c", PROBE_SCRIPT,
             host, str(CONN_PORT), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()  # bounded: the script prints it at once
        if first != "started":
            self.stop()
            raise RuntimeError(f"prober did not start: {first!r}")

    def stop(self, timeout: float = 30.0) -> list[tuple[float, str]]:
        """Stop probing; every attempt as (wall time, "ok" or the error's name)."""
        out, _ = self.proc.communicate(input="", timeout=timeout)
        attempts = []
        for line in out.splitlines():
            stamp, _, result = line.partition(" ")
            try:
                attempts.append((float(stamp), result))
            except ValueError:
                continue
        return attempts


# Run inside a namespace: argv = port deadline. Poll 127.0.0.1:port every 20 ms; print the
# wall time of the first connection the app answered (the app's listener is up), exit 0.
LOCAL_PROBE_SCRIPT = r"""
import socket, sys, time
port, end = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < end:
    t = time.time()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
            if c.recv(4096):
                print("%.6f" % t, flush=True)
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.02)
sys.exit(1)
"""


class LocalProbe:
    """When the app in ``service``'s namespace answers on 127.0.0.1:port (started before the
    app is, so the first answer marks its listener coming up)."""

    def __init__(self, stack: Stack, service: str, port: int = CONN_PORT) -> None:
        self.proc = subprocess.Popen(
            ["docker", "exec", stack.cid(service), "python3", "-c", LOCAL_PROBE_SCRIPT,
             str(port), "30"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.done = False

    def answered_at(self, timeout: float = 60.0) -> float:
        out, err = self.proc.communicate(timeout=timeout)
        self.done = True
        if self.proc.returncode != 0:
            raise RuntimeError(f"the app never answered locally: {out} {err}")
        return float(out.split()[-1])

    def close(self) -> None:
        """Stop the probe if it still runs and release its pipes (idempotent)."""
        if not self.done:
            self.proc.kill()
            self.proc.communicate(timeout=10)
            self.done = True
