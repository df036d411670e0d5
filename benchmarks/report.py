"""One command, one report: every measurement of issue 14 on this machine -> docs/benchmarks.md.

    make report                                  (the full run; builds what it needs)
    python -m benchmarks.report --quick          (a short run of every section, ~15 min)
    python -m benchmarks.report --render-only    (re-write the report from docs/bench/results.json)
    python -m benchmarks.report --rerun --sections start --why "..."
                                                 (measure sections again after a fix; the
                                                 report names them, when and why)

Owns the orchestration and the report: it builds the image (e2e/build-image.sh) and the
simulated LAN's image, runs the sections in turn -- image size, data plane
(benchmarks/dataplane.py), start and footprint (benchmarks/stackbench.py), event to map and
outage per size (benchmarks/bench_latency.py), the burst of simultaneous restarts, the bus at
idle and under the load of the event-to-map run (benchmarks/bench_bus.py) -- each section
holding the shared Docker lock (/tmp/anchord-e2e.lock) only while it runs, so other users of
the machine interleave, and records the load average before and after each. Then it writes the
Markdown report (conditions, figures, ratios, MET / MISSED per target with the profile of a
miss) and the PNG plots under docs/bench/, and the raw results as docs/bench/results.json.

Root is needed (namespaces, nsenter, dockerd). Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import bench_bus, bench_latency, dataplane, stackbench
from benchmarks.common import conditions, docker_lock, load, median, pct

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
PARTIAL: Path | None = None  # results.json, re-written after each section


# --- running -----------------------------------------------------------------------------


def section(results: dict[str, Any], name: str, fn: Callable[[], Any], lock: bool = True) -> None:
    """Run one section (under the Docker lock if it uses Docker), with its load averages."""
    print(f"== {name}", file=sys.stderr, flush=True)
    waited = 0.0
    t0 = time.monotonic()
    try:
        if lock:
            with docker_lock(name) as waited:
                before = load()
                value = fn()
        else:
            before = load()
            value = fn()
        results[name] = {"value": value, "load_before": before, "load_after": load(),
                         "seconds": time.monotonic() - t0 - waited, "lock_wait": waited}
    except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
        print(f"== {name} FAILED: {exc!r}", file=sys.stderr, flush=True)
        results[name] = {"error": repr(exc), "load_before": load(), "load_after": load()}
    if PARTIAL is not None:  # a crash later loses nothing measured so far
        PARTIAL.write_text(json.dumps(results, indent=1, default=str))


def build(image: str) -> dict[str, Any]:
    t0 = time.monotonic()
    subprocess.run(["bash", str(ROOT / "e2e/build-image.sh"), "-t", image], check=True)
    from e2e.stack_support import build_lan_image
    build_lan_image()
    return {"seconds": time.monotonic() - t0}


def bus_under_load(store: dict[str, Any]) -> Callable[[], None]:
    def go() -> None:
        try:
            store["value"] = bench_bus.run()
        except Exception as exc:  # noqa: BLE001 - reported in the section
            store["error"] = repr(exc)
    return go


def bus_summary(data: dict[str, Any]) -> dict[str, float]:
    got, sent = data["got"], data["sent"]
    flood = got["flood"]
    span = flood["last"] - flood["first"]
    return {"hop_p50": pct(got["hops"], .5), "hop_p99": pct(got["hops"], .99),
            "hop_n": len(got["hops"]),
            "t10000_p50": pct(got["tables"].get("bench-10000", []), .5),
            "t10000_p99": pct(got["tables"].get("bench-10000", []), .99),
            "rate": flood["received"] / span if span > 0 else 0.0,
            "sent_rate": sent["flood_sent"] / sent["flood_send_seconds"]}


# Keys of run_all's results that are not sections.
RUN_KEYS = ("conditions", "quick", "started", "params", "finished", "load_end", "build")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"conditions": conditions(), "quick": args.quick,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "params": vars(args)}
    want = set(args.sections.split(",")) if args.sections else None

    def on(name: str) -> bool:
        return want is None or name in want

    if not args.no_build:
        # Builds make images of our own tags and start no container: no lock.
        section(results, "build", lambda: build(args.image), lock=False)
    if on("image"):
        section(results, "image", lambda: stackbench.image_size(args.image), lock=False)
    if on("dataplane"):
        section(results, "dataplane", lambda: dataplane.run(args.image, args.seconds, args.reps,
                                                            args.connects))
    if on("start"):
        section(results, "start", lambda: stackbench.start_times(args.image, args.start_reps))
    if on("footprint"):
        section(results, "footprint", lambda: stackbench.footprint(
            args.image, args.churn_seconds, args.idle_minutes))
    if on("bus"):
        section(results, "bus_idle", bench_bus.run, lock=False)
    if on("latency"):
        sizes = [int(s) for s in args.sizes.split(",")]
        for size in sizes:
            store: dict[str, Any] = {}
            during = bus_under_load(store) if size == max(sizes) and on("bus") else None
            section(results, f"latency_{size}",
                    lambda size=size, during=during: asdict(  # type: ignore[misc]
                        bench_latency.run_size(size, args.restarts, during=during)))
            if during is not None:
                results["bus_loaded"] = {"value": store.get("value"),
                                         "error": store.get("error"),
                                         **{k: results[f"latency_{size}"].get(k)
                                            for k in ("load_before", "load_after")}}
    if on("burst"):
        section(results, "burst", lambda: asdict(bench_latency.run_burst(50, args.burst_rounds)))
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results["load_end"] = load()
    return results


# --- the report --------------------------------------------------------------------------


class Doc:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, bool, str]] = []  # section, target, met, figure

    def __call__(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, head: list[str], rows: list[list[str]]) -> None:
        self.lines.append("| " + " | ".join(head) + " |")
        self.lines.append("|" + "---|" * len(head))
        for r in rows:
            self.lines.append("| " + " | ".join(r) + " |")
        self.lines.append("")

    def target(self, sect: str, what: str, met: bool, figure: str) -> str:
        self.targets.append((sect, what, met, figure))
        return f"**{'MET' if met else 'MISSED'}** — {what}: {figure}"


def la(x: Any) -> str:
    return " / ".join(f"{v:.2f}" for v in x) if x else "?"


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def loadline(sec: dict[str, Any]) -> str:
    busy = ""
    before, after = sec.get("load_before") or (0, 0, 0), sec.get("load_after") or (0, 0, 0)
    if max(before[0], after[0]) > 1.0:
        busy = (" — **run under load**: the machine was shared with other test runs "
                "(a 1-minute load above 1 on 2 vCPUs)")
    return (f"*Load average (1/5/15 min) before {la(before)}, after {la(after)}; "
            f"{sec.get('seconds', 0):.0f} s, after {sec.get('lock_wait', 0):.0f} s waiting for "
            f"the Docker lock{busy}.*")


def plot_dataplane(dp: dict[str, Any], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [("tcp1", "TCP 1 stream\nGbit/s"), ("tcp4", "TCP 4 streams\nGbit/s"),
               ("rr", "fresh connections\nper s"), ("udp", "UDP 64 B\ndatagrams/s")]
    sums = {k: dataplane.summary(v) for k, v in dp["paths"].items()}
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.2
    for i, key in enumerate(dataplane.PATHS):
        ratios = [sums[key][m] / sums["d"][m] if sums["d"][m] else 0 for m, _ in metrics]
        bars = ax.bar([j + (i - 1.5) * width for j in range(len(metrics))], ratios, width,
                      label=f"({key}) {dataplane.PATHS[key]}")
        for b, (m, _) in zip(bars, metrics, strict=True):
            v = sums[key][m]
            txt = f"{v:.1f}" if m.startswith("tcp") else f"{v / 1000:.0f}k"
            ax.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylabel("ratio to (d) host networking (medians)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.set_title("Data plane: a LAN client to one service (labels: absolute medians)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_latency(lat: dict[int, dict[str, Any]], burst: dict[str, Any] | None,
                 out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for size, r in sorted(lat.items()):
        xs = sorted(x * 1000 for x in r["latency"])
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=f"{size:,} elements")
    if burst and burst.get("last"):
        xs = sorted(x * 1000 for x in burst["last"])
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], "o-",
                label="burst of 50: last element")
    ax.axvline(50, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("Docker event -> nftables committed (ms, log)")
    ax.set_ylabel("fraction of transitions")
    ax.legend(fontsize=8)
    ax.set_title("Event to map (CDF)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_footprint(fp: dict[str, Any], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted(fp["idle"], key=lambda n: -fp["idle"][n]["pss"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    idle = [fp["idle"][n]["pss"] * 1024 / MB for n in names]
    churn = [fp["churn"].get(n, {"pss": 0})["pss"] * 1024 / MB for n in names]
    ax.bar([i - 0.2 for i in range(len(names))], idle, 0.4, label="idle")
    ax.bar([i + 0.2 for i in range(len(names))], churn, 0.4, label="churn (highest)")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("PSS (MB)")
    ax.legend()
    ax.set_title("network-anchor: PSS per process")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


DP_HEADER = ["path", "TCP 1 stream Gbit/s", "TCP 4 streams Gbit/s", "fresh connections/s",
             "connection p50 / p99 ms", "UDP datagrams/s received",
             "host CPU (cores) tcp1/tcp4/rr/udp", "service saw the client's address"]


def dp_rows(paths: dict[str, Any], sums: dict[str, dict[str, float]],
            names: dict[str, str]) -> list[list[str]]:
    """One table row per path; ratios to that run's (d)."""
    rows = []
    dd = sums["d"]
    for k, name in names.items():
        s, r = sums[k], paths[k]

        def rat(m: str, s: dict[str, float] = s) -> str:
            return f"{s[m] / dd[m]:.2f}x" if dd[m] else "-"
        rows.append([f"({k}) {name}", f"{s['tcp1']:.2f} ({rat('tcp1')})",
                     f"{s['tcp4']:.2f} ({rat('tcp4')})",
                     f"{s['rr']:,.0f} ({rat('rr')})",
                     f"{ms(s['rr_p50'])} / {ms(s['rr_p99'])}",
                     f"{s['udp']:,.0f} ({rat('udp')}), loss {median(r['udp_loss']):.0f} %",
                     " / ".join(f"{median(r['cpu'].get(t, [0])):.2f}"
                                for t in ("tcp1", "tcp4", "rr", "udp")),
                     ("yes " if r["real_address"] else "**no** ")
                     + f"({', '.join(r['peers'])})"])
    return rows


def idle_stack_cpu(ic: dict[str, Any]) -> float:
    """The idle project's CPU in cores: the host's during the window less the host's with
    the demo's LAN alone; from the parts (containers, shims, daemons) for results taken before
    that baseline was."""
    base = ic.get("baseline")
    if base:
        return max(0.0, float(ic["host"]) - float(base["host"]))
    return float(sum(ic["containers"].values()) + ic["shims"] + ic["daemons"])


def render(results: dict[str, Any], out: Path, plots: Path) -> None:
    d = Doc()
    c = results["conditions"]
    quick = results.get("quick")
    d("# Benchmarks", "",
      "Written by `python -m benchmarks.report` (`make report`; "
      + ("**quick mode** (`--quick`: short runs, few repetitions — indicative only)"
         if quick else "the full run") +
      f"), {results['started']} to {results.get('finished', '?')}. Every figure below comes from "
      "that one run on this machine; nothing is copied from elsewhere. Re-run it to refresh "
      "this page.", "")
    for rr in results.get("reruns", []):
        d(f"**Re-run afterwards** (`--rerun --sections {','.join(rr['sections'])}`), "
          f"{rr['started']} to {rr['finished']}, on commit {rr['commit']}: "
          + ", ".join(f"`{x}`" for x in rr["sections"]) + " — those figures are from that "
          f"run, the rest from the first. Why: {rr['why']}", "")
    d("## Conditions", "")
    d.table(["", ""], [
        ["CPU", f"{c['cpu']}, {c['vcpus']} vCPUs, {c['memory_gib']} GiB"],
        ["kernel", c["kernel"]], ["Docker", f"{c['docker']} (Compose {c['compose']})"],
        ["nftables", c["nft"]], ["Python", c["python"]], ["iperf3", c["iperf3"]],
        ["load average (1/5/15 min)",
         f"{la(c['load'])} at the start; {la(results.get('load_end'))} at the end"],
    ])
    d("The machine is shared: other test runs use its 2 vCPUs and its dockerd at the same "
      "time. Each section below records the load average before and after it; a section "
      "run with a 1-minute load above 1 says so. Sections use Docker under the shared lock "
      "(`/tmp/anchord-e2e.lock`), taken per section.", "")
    p = results.get("params", {})

    # 1. data plane
    d("## 1. Data plane", "")
    sec = results.get("dataplane", {})
    if "value" in sec:
        dp = sec["value"]
        sums = {k: dataplane.summary(v) for k, v in dp["paths"].items()}
        d(f"From a LAN client to one service, medians over {dp['reps']} runs of "
          f"{dp['seconds']:g} s (iperf3) and {dp['reps']} x {dp['connects']:,} sequential fresh "
          "connections (request/response: connect, 1 byte, the server answers with the peer "
          "address it saw and closes). Runs of the four paths are interleaved. Ratios are to "
          "(d).", "")
        d("- (a) anchord: a namespace plugged into the stack's LAN bridge "
          "(e2e/compose/stack/compose.yaml: dnsmasq, the real image as network-anchor with "
          "its macvlan child and DNAT, web-anchor) → the project's DHCP address, tcp+udp/8080 "
          "→ the service in web-anchor's namespace.",
          "- (b) `ports:` with the userland proxy (dockerd's default, on here): a client in "
          "the host namespace → 127.0.0.1:P. dockerd hands loopback connections to "
          "`docker-proxy`, which opens a second connection to the container.",
          "- (c) `ports:` without it: a namespace on a veth to the host → the host's address "
          ":P; an external client's packets take dockerd's iptables DNAT, never the proxy — "
          "the path a daemon with `userland-proxy: false` gives every client. The shared "
          "daemon's configuration is not changed: (b) and (c) are the two paths one daemon "
          "already has, told apart by where the client sits.",
          "- (d) the service in the host namespace (host networking), the same namespace "
          "client as (c): the ceiling.", "",
          "The servers (iperf3, the request/response server) are the same programs in every "
          "path, started in the service's namespace; only the path differs.", "")
        d.table(DP_HEADER, dp_rows(dp["paths"], sums, dataplane.PATHS))
        a = dp["paths"]["a"]
        cli = max(max(r["rr_client_cpu"], default=0) for r in dp["paths"].values())
        srv = max(max(r["rr_server_cpu"], default=0) for r in dp["paths"].values())
        d(f"The request/response client (Python, stdlib sockets) used at most {cli:.0%} of a "
          f"core and the server at most {srv:.0%}: "
          + ("**one of them is near a full core: the connection rates are bounded by the Python "
             "programs, not only by the path** — they still compare the paths (the same programs "
             "everywhere), and the per-connection p50/p99 carries the path's cost."
             if max(cli, srv) > 0.85 else "neither is saturated; the rate is the path's.")
          + " Failed connections: "
          + ", ".join(f"({k}) {r['rr_failures']}" for k, r in dp["paths"].items()) + ". "
          "iperf3 is C; its own CPU figures are in results.json.", "")
        idle_rate = a["dhcp_idle"] / dp["seconds"]
        dh = {t: median(v) / (dp["seconds"] if t != "rr" else 1) for t, v in a["dhcp_cpu"].items()}
        rr_wall = dp["connects"] / sums["a"]["rr"] if sums["a"]["rr"] else 1
        dh["rr"] = median(a["dhcp_cpu"].get("rr", [0])) / rr_wall
        d(f"The dhcp worker's CPU during (a), in CPU-seconds per second: idle {idle_rate:.4f}; "
          + ", ".join(f"{t} {v:.4f}" for t, v in dh.items()) + ".", "")
        plot_dataplane(dp, plots / "dataplane.png")
        d("![data plane](bench/dataplane.png)", "")
        for m, label in (("tcp1", "TCP 1 stream"), ("tcp4", "TCP 4 streams"),
                         ("rr", "fresh connections/s"), ("udp", "UDP datagrams/s")):
            ratio = sums["a"][m] / sums["d"][m] if sums["d"][m] else 0
            ahead = sums["a"][m] >= max(sums["b"][m], sums["c"][m])
            d("- " + d.target("1", f"(a) ≥ 0.9 x (d) and ahead of (b), (c): {label}",
                              ratio >= 0.9 and ahead,
                              f"{ratio:.2f}x (d); (b) {sums['b'][m] / sums['d'][m]:.2f}x, "
                              f"(c) {sums['c'][m] / sums['d'][m]:.2f}x"))
        extra = max(dh.values(), default=0) - idle_rate
        d("- " + d.target("1", "the dhcp worker's CPU flat with traffic (≤ +0.01 core over "
                               "idle)", extra <= 0.01, f"+{extra:.4f} core at most"), "")
        rh = dp.get("realhost") or {}
        if "paths" in rh:
            rs = {k: dataplane.summary(v) for k, v in rh["paths"].items()}
            d("Phase 2, the README's real-host topology (e2e/compose/realhost, with udp/8080 "
              "exposed too): the LAN client is a namespace on a veth whose host end is the "
              "macvlan child's parent, as a NIC is on a real host, so no LAN bridge; the "
              "transit network as the README builds it, at bridge-nf-call-iptables=1 (a stock "
              "Docker host: bridged frames also pass the host's iptables). Phase 1's stack was "
              "taken down first; (d) is measured again, interleaved with (e), and (e)'s ratios "
              f"are to it. Load average {la(rh['load_before'])} → {la(rh['load_after'])}.", "")
            d.table(DP_HEADER, dp_rows(rh["paths"], rs, dataplane.REALHOST_PATHS))
            for m, label in (("tcp1", "TCP 1 stream"), ("tcp4", "TCP 4 streams"),
                             ("rr", "fresh connections/s"), ("udp", "UDP datagrams/s")):
                ratio = rs["e"][m] / rs["d"][m] if rs["d"][m] else 0
                others = max(sums["b"][m] / sums["d"][m], sums["c"][m] / sums["d"][m])
                d("- " + d.target("1", f"(e) ≥ 0.9 x (d) and ahead of (b), (c): {label}",
                                  ratio >= 0.9 and ratio >= others,
                                  f"{ratio:.2f}x its (d); (b), (c) at most {others:.2f}x "
                                  "theirs"))
            d("")
        elif rh:
            d(f"Phase 2 (the README's real-host topology) failed: {rh.get('error')}", "")
        prof = dp.get("dhcp_profile")
        if prof:
            d("py-spy of the dhcp worker during (a) TCP 1 stream (top sampled stacks):", "",
              "```", *prof[:12], "```", "")
        d(loadline(sec), "")
    else:
        d(f"Not measured: {sec.get('error', 'section not run')}.", "")

    # 2. footprint
    d("## 2. Footprint", "")
    sec = results.get("footprint", {})
    if "value" in sec:
        fp = sec["value"]
        names = sorted(fp["idle"], key=lambda n: -fp["idle"][n]["pss"])
        rows = [[n, f"{fp['idle'][n]['pss'] * 1024 / MB:.1f}",
                 f"{fp['idle'][n]['rss'] * 1024 / MB:.1f}",
                 f"{fp['churn'].get(n, {}).get('pss', 0) * 1024 / MB:.1f}",
                 f"{fp['churn'].get(n, {}).get('rss', 0) * 1024 / MB:.1f}"] for n in names]
        tot = sum(v["pss"] for v in fp["idle"].values()) * 1024 / MB
        tot_c = sum(v["pss"] for v in fp["churn"].values()) * 1024 / MB
        rows.append(["**total**", f"**{tot:.1f}**",
                     f"{sum(v['rss'] for v in fp['idle'].values()) * 1024 / MB:.1f}",
                     f"**{tot_c:.1f}**",
                     f"{sum(v['rss'] for v in fp['churn'].values()) * 1024 / MB:.1f}"])
        d("The network-anchor of the README's stack (e2e/compose/demo/compose.yaml), every "
          "process of its container (/proc/<pid>/smaps_rollup; MB = 10⁶ bytes): at idle, and "
          f"the highest seen while web-anchor was restarted {fp['churn_restarts']} times "
          f"(events, map changes; {p.get('churn_seconds', '?')} s).", "")
        d.table(["process", "PSS idle MB", "RSS idle MB", "PSS churn MB", "RSS churn MB"], rows)
        sa_rss = sum(fp["service_anchor"].values()) * 1024 / MB
        d(f"service-anchor (web-anchor's container): RSS {sa_rss:.1f} MB "
          f"({', '.join(f'{k} {v * 1024 / MB:.1f}' for k, v in fp['service_anchor'].items())}).",
          "")
        plot_footprint(fp, plots / "footprint.png")
        d("![footprint](bench/footprint.png)", "")
        ic = fp["idle_cpu"]
        stack_cpu = idle_stack_cpu(ic)
        base = ic.get("baseline")
        d(f"Idle CPU of the README's stack over {ic['seconds'] / 60:.1f} min, in % of one "
          "core: the whole host "
          f"{ic['host'] * 100:.2f} %"
          + (f" against {base['host'] * 100:.2f} % over {base['seconds'] / 60:.1f} min with the "
             "project's containers stopped and the demo's LAN alone running (its DHCP server "
             "and client, which a user does not run); the project's share, the difference, "
             f"**{stack_cpu * 100:.2f} %**" if base else "")
          + ". Where it goes: the stack's containers (their cgroups, healthcheck processes "
          "included) "
          + ", ".join(f"{k} {v * 100:.2f}" for k, v in ic["containers"].items())
          + f"; containerd shims with their children (`runc` per exec; the reaped healthcheck "
          f"processes, which the cgroups also count) {ic['shims'] * 100:.2f}; dockerd + "
          f"containerd {ic['daemons'] * 100:.2f}. Load average over the window: "
          f"{la(ic['load_before'])} → {la(ic['load_after'])}.", "")
        d("- " + d.target("2", "network-anchor ≤ 120 MB PSS (idle)", tot <= 120,
                          f"{tot:.1f} MB ({tot_c:.1f} MB under churn)"),
          "- " + d.target("2", "service-anchor ≤ 20 MB RSS", sa_rss <= 20, f"{sa_rss:.1f} MB"),
          "- " + d.target("2", "idle CPU of the README's stack ≤ 2 % of a core (the host's, "
                               "less the host with the demo's LAN alone)",
                          stack_cpu <= 0.02, f"{stack_cpu * 100:.2f} %"), "")
        if tot > 120 or sa_rss > 20:
            d("Profile of the miss: `python -X importtime -c 'import <module>'` of each "
              "program in its container: per top-level package, its modules' own import time "
              "(ms) and how many modules it loads — what each program carries, used or not:",
              "")
            d.table(["program", "heaviest packages: ms (modules)"],
                    [[n, ", ".join(f"{m} {us / 1000:.0f} ({k})" for m, us, k in tops)]
                     for n, tops in fp["imports"].items()])
        d(loadline(sec), "")
    else:
        d(f"Not measured: {sec.get('error', 'section not run')}.", "")

    # 3. image
    d("## 3. Image", "")
    sec = results.get("image", {})
    if "value" in sec:
        im = sec["value"]
        d(f"`{p.get('image', '?')}`: compressed (`docker save | gzip -c | wc -c`) "
          f"**{im['compressed'] / MB:.1f} MB**, uncompressed (Docker's size) "
          f"{im['uncompressed'] / MB:.1f} MB.", "")
        d("- " + d.target("3", "compressed ≤ 50 MB", im["compressed"] <= 50 * MB,
                          f"{im['compressed'] / MB:.1f} MB"), "")
        if im["compressed"] > 50 * MB:
            d("Where the bytes are (largest directories, uncompressed, summed over the "
              "layers):", "", "```",
              *im["largest_dirs"], "```", "")
        d(loadline(sec), "")
    else:
        d(f"Not measured: {sec.get('error', 'section not run')}.", "")

    # 4. start
    d("## 4. Start", "")
    sec = results.get("start", {})
    if "value" in sec:
        st = sec["value"]
        rows = []
        for kind, label in (("fresh", "fresh (`compose up -d`, no lease)"),
                            ("stored", "stored lease (`compose start anchord`, INIT-REBOOT)")):
            runs = st[kind]
            rows.append([label, str(len(runs))] + [
                f"{median([r[k] for r in runs]):.2f} / {max(r[k] for r in runs):.2f}"
                for k in ("compose_up", "ready", "lan", "bind")])
        d("Seconds from the command issued; median / worst of the runs. `/readyz` polled "
          "every 20 ms inside the network-anchor's namespace; the LAN host (a namespace on the "
          "LAN bridge) asks dnsmasq for the project's name and connects to tcp/8080 every "
          "20 ms; the bind time is the dhcp worker's first DHCPv4 transition → `bound`, from "
          "its own log lines. The image's own healthcheck settings; before a fresh start the "
          "LAN's DHCP server is up and healthy (a LAN's server is up before the servers on "
          "it), so its healthcheck is not counted.", "")
        d.table(["start", "runs", "compose returned", "/readyz 200", "first LAN answer",
                 "DHCP bind"], rows)
        worst_ready = max(r["ready"] for k in ("fresh", "stored") for r in st[k])
        worst_lan = max(r["lan"] for k in ("fresh", "stored") for r in st[k])
        d("- " + d.target("4", "ready ≤ 3 s", worst_ready <= 3, f"worst {worst_ready:.2f} s"),
          "- " + d.target("4", "reachable from the LAN ≤ 5 s", worst_lan <= 5,
                          f"worst {worst_lan:.2f} s"), "")
        d(loadline(sec), "")
    else:
        d(f"Not measured: {sec.get('error', 'section not run')}.", "")

    # 5 + 6. event to map, outage
    lat = {int(k.split("_")[1]): v["value"] for k, v in results.items()
           if k.startswith("latency_") and "value" in v}
    d("## 5. Event to map", "")
    if lat:
        d("Docker event → the nat-writer's `NatApplied` published right after the nftables "
          "commit (benchmarks/bench_latency.py: real dockerd, the workers as supervisord starts "
          f"them, {p.get('restarts', '?')} restarts of one backend per size, two transitions "
          "each).", "")
        rows = []
        for size, r in sorted(lat.items()):
            rows.append([f"{size:,}", str(len(r["latency"])), ms(pct(r["latency"], .5)),
                         ms(pct(r["latency"], .99)), ms(max(r["latency"])),
                         ms(pct(r["discovery"], .5)), ms(pct(r["discovery"], .99)),
                         ms(pct(r["duration"], .5)), ms(pct(r["duration"], .99)),
                         la(r["load"])])
        d.table(["elements", "n", "p50 ms", "p99 ms", "max ms", "discovery p50",
                 "discovery p99", "apply p50", "apply p99", "load at start"], rows)
        base = min(lat)
        d("Ratios to the smallest size (p50 / p99): " + "; ".join(
            f"{s:,}: {median(r['latency']) / median(lat[base]['latency']):.2f}x / "
            f"{pct(r['latency'], .99) / pct(lat[base]['latency'], .99):.2f}x"
            for s, r in sorted(lat.items()) if s != base) + ".", "")
        for size, r in sorted(lat.items()):
            d("- " + d.target("5", f"p99 ≤ 50 ms at {size:,} elements",
                              pct(r["latency"], .99) <= 0.05,
                              f"{ms(pct(r['latency'], .99))} ms "
                              f"(discovery {ms(pct(r['discovery'], .99))}, apply "
                              f"{ms(pct(r['duration'], .99))})"))
        d("")
    b = results.get("burst", {})
    if "value" in b:
        bv = b["value"]
        if bv.get("teardown_error"):
            d("After the rounds, removing the burst's rig failed (figures unaffected): "
              f"`{bv['teardown_error']}` — dockerd 20.10 kept a phantom endpoint on the "
              "network after the concurrent restarts; a dockerd restart cleared it.", "")
        d(f"Burst: 50 backends (one port each) restarted at once (`docker restart -t 0` in 50 "
          f"threads), {len(bv['last'])} rounds: from the last Docker `start` event to the "
          "commit of a map holding all 50 again, answering that event: p50 "
          f"{ms(pct(bv['last'], .5))} ms, p99 {ms(pct(bv['last'], .99))} ms. Docker itself "
          f"spread the 50 restarts over p50 {pct(bv['spread'], .5):.2f} s (first `die` → last "
          f"`start`); first `die` → map whole again p50 {pct(bv['whole'], .5):.2f} s.", "")
        d("- " + d.target("5", "burst of 50: last element ≤ 250 ms", pct(bv["last"], .99) <= 0.25,
                          f"p99 {ms(pct(bv['last'], .99))} ms"), "")
        d(loadline(b), "")
    elif "error" in b:
        d(f"Burst not measured: {b['error']}.", "")
    if lat:
        plot_latency(lat, b.get("value"), plots / "event_to_map.png")
        d("![event to map](bench/event_to_map.png)", "")
        for size, _ in sorted(lat.items()):
            d(f"{size:,}: " + loadline(results[f"latency_{size}"]), "")

    d("## 6. Outage per backend restart", "")
    if lat:
        d("What a LAN client connecting every 10 ms sees when the backend restarts (SIGKILL "
          "stop, start), split as docs/nat.md does: the gap (last success before → first "
          "after), the backend's own down time (stop requested → its server listens again), "
          "the map's share (new address committed after the server was ready, else 0) and the "
          "client's own retry (server ready and map committed → its first success). ms.", "")
        rows = []
        for size, r in sorted(lat.items()):
            rows.append([f"{size:,}", str(len(r["outage"])),
                         f"{ms(pct(r['outage'], .5))} / {ms(pct(r['outage'], .99))}",
                         f"{ms(pct(r['backend_down'], .5))} / {ms(pct(r['backend_down'], .99))}",
                         f"{ms(pct(r['map_wait'], .5))} / {ms(pct(r['map_wait'], .99))}",
                         f"{ms(pct(r['client'], .5))} / {ms(pct(r['client'], .99))}",
                         f"{r['timeouts']}/{len(r['outage'])}"])
        d.table(["elements", "n", "gap p50 / p99", "backend down p50 / p99",
                 "map's share p50 / p99", "client retry p50 / p99", "client timeouts"], rows)
        for size, r in sorted(lat.items()):
            gap99, map99 = pct(r["outage"], .99), pct(r["map_wait"], .99)
            d("- " + d.target("6", f"outage ≤ 1 s p99, or anchord's share shown ({size:,})",
                              gap99 <= 1 or map99 <= 0.05,
                              f"gap p99 {ms(gap99)} ms, of which the map's share p99 "
                              f"{ms(map99)} ms"))
        d("")

    d("## 7. Bus", "")
    bi, bl = results.get("bus_idle", {}), results.get("bus_loaded", {})
    if bi.get("value"):
        rows = []
        for label, src in (("idle", bi), ("under the load of 5 (largest size)", bl)):
            if not src.get("value"):
                continue
            s = bus_summary(src["value"])
            rows.append([label, f"{ms(s['hop_p50'])} / {ms(s['hop_p99'])}",
                         f"{ms(s['t10000_p50'])} / {ms(s['t10000_p99'])}",
                         f"{s['rate']:,.0f}", f"{la(src.get('load_before'))}"])
        d("benchmarks/bench_bus.py (the real broker, a publisher and a subscriber process): "
          "one hop of a small event paced at 1 kHz, one hop of a 10 000-entry "
          "`BackendsDesired`, and messages/s received at saturation; at idle, and again while "
          "section 5 restarted backends at its largest size.", "")
        d.table(["when", "small hop p50 / p99 ms", "10 000-entry hop p50 / p99 ms",
                 "saturation msg/s", "load before"], rows)
        if len(rows) == 2:
            i0, i1 = bus_summary(bi["value"]), bus_summary(bl["value"])
            d(f"Loaded / idle: hop p99 {i1['hop_p99'] / i0['hop_p99']:.2f}x, saturation "
              f"{i1['rate'] / i0['rate']:.2f}x.", "")
    else:
        d(f"Not measured: {bi.get('error', 'section not run')}.", "")

    d("## Summary", "", *summary(results), "")
    d("## Targets", "")
    d.table(["section", "target", "verdict", "figure"],
            [[s, w, "MET" if m else "**MISSED**", f] for s, w, m, f in d.targets])
    d("## Closing note", "")
    missed = [(s, w) for s, w, m, _ in d.targets if not m]
    if missed:
        d("Missed here: " + "; ".join(f"{w} (§{s})" for s, w in missed) + ".", "")
        for sect in sorted({s for s, _ in missed}):
            d(f"- {NOTES[sect]}")
    else:
        d("Every target was met in this run.")
    d("", "Raw figures: [bench/results.json](bench/results.json).")
    out.write_text("\n".join(d.lines) + "\n")


def summary(results: dict[str, Any]) -> list[str]:
    """The headline figures, one bullet each (the README's Performance section quotes them)."""
    out = []
    dp = results.get("dataplane", {}).get("value")
    if dp:
        s = {k: dataplane.summary(v) for k, v in dp["paths"].items()}
        out.append(
            f"- Data plane, LAN client → service: TCP 1 stream {s['a']['tcp1']:.1f} Gbit/s "
            f"through anchord = {s['a']['tcp1'] / s['d']['tcp1']:.2f}x host networking "
            f"(`ports:` {s['c']['tcp1'] / s['d']['tcp1']:.2f}x with iptables DNAT, "
            f"{s['b']['tcp1'] / s['d']['tcp1']:.2f}x through the userland proxy); fresh "
            f"connections {s['a']['rr'] / s['d']['rr']:.2f}x; UDP datagrams "
            f"{s['a']['udp'] / s['d']['udp']:.2f}x. The service sees the client's own address "
            f"through anchord: {'yes' if dp['paths']['a']['real_address'] else 'no'}; through "
            f"the userland proxy: {'yes' if dp['paths']['b']['real_address'] else 'no'}.")
        rh = dp.get("realhost") or {}
        if "paths" in rh:
            e = {k: dataplane.summary(v) for k, v in rh["paths"].items()}
            out.append(
                f"- The same through the README's real-host topology (no LAN bridge; a stock "
                f"host's bridge-nf-call-iptables=1): TCP 1 stream {e['e']['tcp1']:.1f} Gbit/s = "
                f"{e['e']['tcp1'] / e['d']['tcp1']:.2f}x host networking, 4 streams "
                f"{e['e']['tcp4'] / e['d']['tcp4']:.2f}x, fresh connections "
                f"{e['e']['rr'] / e['d']['rr']:.2f}x, UDP datagrams "
                f"{e['e']['udp'] / e['d']['udp']:.2f}x; the client's own address: "
                f"{'yes' if rh['paths']['e']['real_address'] else 'no'}.")
    fp = results.get("footprint", {}).get("value")
    if fp:
        tot = sum(v["pss"] for v in fp["idle"].values()) * 1024 / MB
        ic = fp["idle_cpu"]
        out.append(f"- Network-anchor memory: {tot:.0f} MB PSS in total at idle; "
                   f"service-anchor {sum(fp['service_anchor'].values()) * 1024 / MB:.0f} MB "
                   f"RSS; the demo stack's idle CPU {idle_stack_cpu(ic) * 100:.1f} % of a core "
                   f"(the host's, less the host with the demo's LAN alone; "
                   f"{ic['seconds'] / 60:.0f} min).")
    im = results.get("image", {}).get("value")
    if im:
        out.append(f"- Image: {im['compressed'] / MB:.1f} MB compressed, "
                   f"{im['uncompressed'] / MB:.0f} MB uncompressed.")
    st = results.get("start", {}).get("value")
    if st:
        f, r = st["fresh"], st["stored"]
        out.append(f"- Start (median): fresh `compose up` → ready "
                   f"{median([x['ready'] for x in f]):.1f} s, → first LAN answer "
                   f"{median([x['lan'] for x in f]):.1f} s; with a stored lease → ready "
                   f"{median([x['ready'] for x in r]):.1f} s, → LAN "
                   f"{median([x['lan'] for x in r]):.1f} s.")
    lat = {int(k.split("_")[1]): v["value"] for k, v in results.items()
           if k.startswith("latency_") and "value" in v}
    if lat:
        out.append("- Docker event → nftables map p99: " + ", ".join(
            f"{ms(pct(r['latency'], .99))} ms at {n:,}" for n, r in sorted(lat.items()))
            + " elements" + (
            f"; the last of a burst of 50 restarts p99 "
            f"{ms(pct(results['burst']['value']['last'], .99))} ms"
            if results.get("burst", {}).get("value") else "") + ".")
        big = lat[max(lat)]
        out.append(f"- Outage a LAN client sees per backend restart ({max(lat):,} elements): "
                   f"p99 {ms(pct(big['outage'], .99))} ms, of which the map's share p99 "
                   f"{ms(pct(big['map_wait'], .99))} ms.")
    return out


NOTES = {
    "1": "Data plane: anchord's path is longer than (c)'s by design. The DNAT happens in "
         "the network-anchor's namespace, not the host's, so a packet crosses one namespace "
         "more: the macvlan child, the network-anchor's routing and conntrack, its transit "
         "veth and the transit bridge, the service's veth; (c) has the host's routing, "
         "docker0 and the container's veth. Per-packet work (64-byte datagrams, the handshake "
         "of every fresh connection) shows the difference; bulk TCP, in large GRO segments, "
         "hardly. In phase 1 the demo's LAN bridge adds a veth pair and a bridge; phase 2, "
         "the README's real-host topology, has no LAN bridge, but a stock host's "
         "bridge-nf-call-iptables=1 sends every frame on the transit bridge through the "
         "host's iptables as well. anchord's Python is not on the data path (the dhcp "
         "worker's CPU line above). Closing the gap takes a shorter path, not faster "
         "workers: the service reached without the transit bridge (a veth or ipvlan straight "
         "from the network-anchor into each service-anchor), or the DNAT done in the host's "
         "namespace; both change the design the README documents.",
    "2": "Footprint: memory is what each program imports (the table of imports in §2); idle "
         "CPU is Docker's cost per healthcheck (~75 ms of host CPU in dockerd, containerd "
         "and runc per run, whatever the check runs) at the service-anchors' 5 s interval, "
         "which apps gate on (Docker 20.10 has no start interval; on Docker ≥ 25, "
         "`start_interval: 1s` with a 30 s interval keeps the gate fast at a sixth of the "
         "cost), plus the workers' own ticks (eight Python processes, each waking twice a "
         "second and republishing its state every 5 s: ~0.1-0.5 % of a core each).",
    "3": "Image: the Debian Python standard library and shared libraries are most of it "
         "(the largest directories in §3).",
    "4": "Start: the share that is anchord's is the bind time (DHCP's exchange plus the "
         "RFC 5227 probe) and the program start; compose's own time and the LAN host's "
         "lookup of the new name are not anchord's.",
    "5": "Event to map: the discovery / apply split in §5 says which side the tail is on; "
         "a burst is bounded by Docker delivering the events of 50 restarts.",
    "6": "Outage: the table splits the gap into the backend's own down time, the map's "
         "share and the client's retry; only the map's share is anchord's.",
}


# --- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs of every section")
    parser.add_argument("--image", default=os.environ.get("ANCHORD_IMAGE", "anchord:bench"))
    parser.add_argument("--no-build", action="store_true", help="use the images as they are")
    parser.add_argument("--sections", default="",
                        help="comma list of image,dataplane,start,footprint,bus,latency,burst")
    parser.add_argument("--seconds", type=float, help="iperf3 run length")
    parser.add_argument("--reps", type=int, help="repetitions per data-plane test")
    parser.add_argument("--connects", type=int, help="fresh connections per repetition")
    parser.add_argument("--start-reps", type=int)
    parser.add_argument("--churn-seconds", type=float)
    parser.add_argument("--idle-minutes", type=float)
    parser.add_argument("--restarts", type=int, help="backend restarts per size")
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--burst-rounds", type=int)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--rerun", action="store_true",
                        help="measure --sections again into the committed results.json; the "
                             "report names them (with --why)")
    parser.add_argument("--why", default="", help="with --rerun: the reason, for the report")
    parser.add_argument("--render-only", action="store_true",
                        help="re-write the report from docs/bench/results.json")
    args = parser.parse_args()
    defaults = ({"seconds": 2.0, "reps": 3, "connects": 3000, "start_reps": 2,
                 "churn_seconds": 15.0, "idle_minutes": 1.0, "restarts": 30, "burst_rounds": 3}
                if args.quick else
                {"seconds": 5.0, "reps": 5, "connects": 30_000, "start_reps": 5,
                 "churn_seconds": 60.0, "idle_minutes": 10.0, "restarts": 500,
                 "burst_rounds": 20})
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = Path(args.out)
    plots = out.parent / "bench"
    plots.mkdir(parents=True, exist_ok=True)
    raw = plots / "results.json"
    if args.render_only:
        render(json.loads(raw.read_text()), out, plots)
        return 0
    if args.rerun and not (args.sections and args.why):
        sys.exit("--rerun needs --sections (what to measure again) and --why")
    if os.geteuid() != 0:
        sys.exit("run as root: namespaces, nsenter, dockerd")
    for tool in ("iperf3", "nsenter", "docker", "gzip"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (e2e/prepare-host.sh installs the host's tools; "
                     "apt-get install iperf3)")
    global PARTIAL
    base = json.loads(raw.read_text()) if args.rerun else None
    PARTIAL = None if args.rerun else raw
    results = run_all(args)
    if base is not None:
        # The named sections replace the first run's; the report says which, when and why.
        redone = [k for k in results if k not in RUN_KEYS]
        base.update({k: results[k] for k in redone})
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
        # An earlier re-run of the same sections is superseded: its figures are gone.
        base["reruns"] = [r for r in base.get("reruns", [])
                          if not set(r["sections"]) <= set(args.sections.split(","))]
        base["reruns"].append({
            "sections": args.sections.split(","), "keys": redone, "why": args.why,
            "started": results["started"], "finished": results["finished"],
            "commit": commit or "?"})
        results = base
    raw.write_text(json.dumps(results, indent=1, default=str))
    render(results, out, plots)
    print(f"wrote {out} and {plots}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda a: print(f"thread: {a.exc_value!r}", file=sys.stderr)
    sys.exit(main())
