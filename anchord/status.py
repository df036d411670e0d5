"""``anchord status``: gather the current state from supervisord and the bus, render it.

It joins the bus as a short-lived client named ``status``; its ``Hello`` makes
every owner republish its full state at once, so a second is enough. Process
states come from supervisord's XML-RPC interface on its unix socket; each
program's restart count from the readiness file the metrics worker writes
(the counts of ``anchord_worker_restarts_total``).
"""

from __future__ import annotations

import json
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msgspec.structs import asdict as struct_asdict

from anchord import health
from bus.client import BusClient
from bus.events import (
    BackendsDesired,
    LeaseChanged,
    LinkChanged,
    NatApplied,
    WorkerStatus,
)

SUPERVISOR_SOCKET = "supervisor.sock"


@dataclass
class Report:
    reachable: bool = True
    errors: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    link: dict[str, Any] | None = None
    ports: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    nat: dict[str, Any] | None = None
    ready: bool = False
    unmet: list[str] = field(default_factory=list)


def _supervisor(run_dir: Path) -> list[dict[str, Any]]:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{run_dir / SUPERVISOR_SOCKET}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    infos: list[dict[str, Any]] = proxy.supervisor.getAllProcessInfo()  # type: ignore[assignment]
    return [
        {"name": i["name"], "state": i["statename"], "pid": i["pid"],
         "uptime": max(0, i["now"] - i["start"]) if i["statename"] == "RUNNING" else 0,
         "description": i["description"]}
        for i in infos
    ]


def gather(run_dir: Path, timeout: float = 1.5) -> Report:
    report = Report()
    try:
        report.processes = _supervisor(run_dir)
    except (OSError, xmlrpc.client.Error) as exc:
        report.errors.append(f"supervisord is not reachable at {run_dir / SUPERVISOR_SOCKET}: "
                             f"{exc}")
    if not (run_dir / "sub.ipc").exists():
        report.errors.append(f"the bus is not running (no {run_dir / 'sub.ipc'})")
    else:
        _gather_bus(run_dir, timeout, report)
    health_file = run_dir / "health.json"
    try:
        body = json.loads(health_file.read_text())
        report.ready = bool(body["ready"])
        report.unmet = [f"{k}: {v}" for k, v in sorted(body["unmet"].items())]
    except (OSError, ValueError, KeyError, TypeError):
        report.unmet = ["readiness unknown: the metrics worker has not written it"]
    restarts = health.read_restarts(run_dir) or {}
    for proc in report.processes:
        proc["restarts"] = restarts.get(proc["name"])  # None: not counted (yet)
    report.reachable = not report.errors
    return report


def _gather_bus(run_dir: Path, timeout: float, report: Report) -> None:
    deadline = time.monotonic() + timeout
    with BusClient("status", run_dir, subscribe_all=True, heartbeat=3600) as bus:
        acked_at: float | None = None
        while time.monotonic() < deadline:
            for event in bus.poll(0.1):
                _absorb(report, event)
            if bus.hello_acked and acked_at is None:
                acked_at = time.monotonic()
            # Owners answer a Hello within milliseconds; half a second is generous.
            if acked_at is not None and time.monotonic() - acked_at > 0.5:
                break
        if not bus.hello_acked:
            report.errors.append("the bus did not answer within the timeout")


def _absorb(report: Report, event: object) -> None:
    if isinstance(event, WorkerStatus) and event.worker != "status":
        report.workers[event.worker] = {
            "pid": event.pid, "started": event.started, "summary": event.summary,
            "conditions": [struct_asdict(c) for c in event.conditions],
            "decode_errors": event.decode_errors}
    elif isinstance(event, LeaseChanged):
        lease = struct_asdict(event.lease)
        lease["remaining"] = max(0.0, event.lease.expiry - time.time()) if event.lease.expiry \
            else None
        report.leases[f"ipv{event.lease.family}"] = lease
    elif isinstance(event, LinkChanged):
        report.link = struct_asdict(event)
    elif isinstance(event, BackendsDesired):
        report.ports = [e._asdict() for e in event.entries]
        report.rejections = [struct_asdict(r) for r in event.rejections]
    elif isinstance(event, NatApplied):
        report.nat = {"generation": event.generation, "ok": event.ok, "error": event.error,
                      "duration": event.duration}


def render_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2, sort_keys=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def render_text(report: Report) -> str:
    out: list[str] = []
    for err in report.errors:
        out.append(f"error: {err}")
    out.append(f"ready: {'yes' if report.ready else 'no'}")
    out.extend(f"  missing {line}" for line in report.unmet)
    if report.link:
        state = "up" if report.link["up"] else "down"
        out.append(f"interface: {report.link['interface']} {report.link['mac']} {state}")
    if report.leases:
        out.append("addresses:")
        for fam, lease in sorted(report.leases.items()):
            left = lease.get("remaining")
            left_s = f", {_duration(left)} left" if left is not None else ""
            server = f" from {lease['server']}" if lease.get("server") else ""
            out.append(f"  {fam} {lease['address']} ({lease['source']}{server}{left_s})")
            times = [f"{name} {_duration(lease[key])}" for name, key in (
                ("lease", "lease_time"), ("T1", "t1"), ("T2", "t2")) if lease.get(key)]
            if lease.get("gateway"):
                times.insert(0, f"gateway {lease['gateway']}")
            if times:
                out.append(f"    {', '.join(times)}")
    else:
        out.append("addresses: none yet")
    if report.ports:
        out.append("ports:")
        for p in sorted(report.ports, key=lambda p: (p["family"], p["proto"], p["first"])):
            ports = str(p["first"]) if p["first"] == p["last"] else f"{p['first']}-{p['last']}"
            out.append(f"  ipv{p['family']} {p['proto']}/{ports} -> {p['container']} "
                       f"{p['address']}")
    if report.rejections:
        out.append("rejected:")
        out.extend(f"  [{r.get('kind', 'label')}] {r['container']}: {r['reason']}"
                   for r in report.rejections)
    if report.processes:
        out.append("workers:")
        for proc in report.processes:
            details = [f"up {_duration(proc['uptime'])}"] if proc["state"] == "RUNNING" else []
            if proc.get("restarts") is not None:
                details.append(f"restarts {proc['restarts']}")
            out.append(f"  {proc['name']:<18} {proc['state']:<9} {', '.join(details)}".rstrip())
            # What --json shows too: each worker's own conditions (discovery "reconnecting…").
            worker = report.workers.get(proc["name"], {})
            for cond in worker.get("conditions", []):
                if cond.get("detail"):
                    mark = "ok" if cond.get("ok") else "NOT OK"
                    out.append(f"    {cond['key']}: {cond['detail']} ({mark})")
    return "\n".join(out)
