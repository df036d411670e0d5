"""Layering, checked: what each package may import.

- ``bus`` imports nothing from ``workers`` or ``anchord`` (it is the shared contract), except
  ``anchord.backoff``, a leaf that imports only the standard library;
- workers never import each other;
- only ``anchord/nft.py`` speaks nftables (loads libnftables or runs ``nft``);
- nothing imports docker-py (or requests, urllib3): Docker is spoken with
  ``anchord.dockerhttp``, on the standard library;
- no product module imports scapy (it is the tests' oracle and traffic generator, in the
  ``test`` extra only), and the dhcp worker's process does not load it;
- the service-anchor imports nothing heavy (it runs once per exposed service);
- the entry process loads no zmq, xmlrpc, supervisor or click module (it lives as long as
  the container);
- the long-running programs that serve no metrics map neither libssl nor libcrypto
  (``anchord.noopenssl``), and ``anchord.entry`` blocks OpenSSL for exactly those;
- the conntrack-flusher's process loads no pyroute2 (its ctnetlink codec is ``anchord.nfct``).
- no module of ``anchord`` or ``workers`` imports pyroute2 (rtnetlink is ``anchord.rtnl``,
  ctnetlink ``anchord.nfct``, both on ``anchord.netlink``): the dhcp worker's process loads none.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for pkg in ("anchord", "bus", "workers") for p in (ROOT / pkg).rglob("*.py"))


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_sources_found() -> None:
    assert len(SOURCES) > 20


# Modules of ``anchord`` the bus may use: leaves without project imports.
BUS_MAY_IMPORT = {"anchord.backoff", "anchord.backoff.Backoff"}


@pytest.mark.parametrize("path", [p for p in SOURCES if p.parts[-2] == "bus"], ids=rel)
def test_bus_imports_no_worker(path: Path) -> None:
    bad = {m for m in imports(path) if m.split(".")[0] in ("workers", "anchord")} - BUS_MAY_IMPORT
    assert not bad, f"{rel(path)} imports {bad}"


def test_what_the_bus_may_import_is_a_leaf() -> None:
    for module in {m for m in BUS_MAY_IMPORT if (ROOT / (m.replace(".", "/") + ".py")).exists()}:
        mods = imports(ROOT / (module.replace(".", "/") + ".py"))
        assert not {m for m in mods if m.split(".")[0] in ("workers", "anchord", "bus")}, module


@pytest.mark.parametrize("path", [p for p in SOURCES if p.parts[-2] == "workers"], ids=rel)
def test_workers_do_not_import_each_other(path: Path) -> None:
    bad = {m for m in imports(path) if m.startswith("workers")}
    assert not bad, f"{rel(path)} imports {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=rel)
def test_only_nft_module_speaks_nftables(path: Path) -> None:
    if rel(path) == "anchord/nft.py":
        return
    text = path.read_text()
    assert "libnftables" not in text, rel(path)
    assert '"nft"' not in text, rel(path)
    assert "'nft'" not in text, rel(path)
    assert not any(m == "anchord.nft" or m.startswith("anchord.nft.") for m in imports(path)) \
        or rel(path) == "workers/natwriter.py", f"{rel(path)} imports anchord.nft"


@pytest.mark.parametrize("path", SOURCES, ids=rel)
def test_heavy_libraries_stay_in_their_module(path: Path) -> None:
    mods = imports(path)
    if any(m.split(".")[0] == "scapy" for m in mods):
        assert rel(path).startswith("anchord/dhcp/"), rel(path)
    # Docker is spoken with anchord.dockerhttp (standard library only): docker-py, and the
    # requests and urllib3 it brings, are for the tests, not in the image.
    assert not {m for m in mods if m.split(".")[0] in ("docker", "requests", "urllib3")}, \
        rel(path)


@pytest.mark.parametrize("path", [p for p in SOURCES
                                  if rel(p).split("/")[0] in ("anchord", "workers")], ids=rel)
def test_no_product_module_imports_scapy(path: Path) -> None:
    """The image does not carry scapy (setup.cfg: the ``test`` extra); the dhcp worker writes
    and reads its frames with anchord/dhcp/frames.py, packets.py and packets6.py. A lazy import
    inside a function counts too (ast.walk sees it)."""
    assert not {m for m in imports(path) if m.split(".")[0] == "scapy"}, rel(path)


def test_dhcp_worker_process_loads_no_scapy() -> None:
    """What the process loads, not what its files say: the worker and both packet modules
    imported in a fresh interpreter leave no scapy module behind."""
    probe = ("import sys, workers.dhcp, anchord.dhcp.packets, anchord.dhcp.packets6\n"
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "", f"scapy modules loaded: {out.stdout.strip()}"


def test_service_anchor_stays_light() -> None:
    mods = (imports(ROOT / "workers/service_anchor.py") | imports(ROOT / "anchord/routes.py")
            | imports(ROOT / "anchord/netlink.py"))
    heavy = {m for m in mods if m.split(".")[0] in ("scapy", "docker", "zmq", "pyroute2", "bus")}
    assert not heavy


def loaded(modules: str, roots: tuple[str, ...]) -> str:
    """What a fresh interpreter ends up with after ``import <modules>``: the loaded modules
    whose top-level package is one of ``roots``, lazy and transitive imports included."""
    probe = (f"import sys, {modules}\n"
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{roots!r})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_entry_process_loads_no_zmq_and_no_xmlrpc() -> None:
    """The network-anchor's entry process (``anchord.supervise``) lives as long as the
    container: it prepares the run directory without zmq (``bus.rundir``) and asks supervisord
    its state without xmlrpc.client (``anchord.supervisorrpc``). What a fresh interpreter loads,
    lazy imports included, as the entry runs them (``_poke`` imported supervisor's transport)."""
    found = loaded("anchord.supervise", ("zmq", "xmlrpc", "supervisor"))
    assert found == "", f"loaded: {found}"
    mods = imports(ROOT / "anchord/supervise.py")
    assert not {m for m in mods if m.split(".")[0] in ("zmq", "xmlrpc", "supervisor")}, mods


def test_the_entry_process_path_loads_no_click() -> None:
    """``anchord`` with no argument runs the network-anchor from ``anchord.entry``: what that
    path imports (its project check and the supervising loop) brings no click."""
    found = loaded("anchord.entry, anchord.config, anchord.logsetup, anchord.selfproject, "
                   "anchord.supervise", ("click",))
    assert found == "", f"loaded: {found}"


# What each long-running program imports, as anchord.entry runs it (apiproxy: the Docker proxy).
WITHOUT_OPENSSL = {
    "entry": ("anchord.entry", "anchord.supervise", "anchord.selfproject"),
    "bus": ("anchord.runner", "bus.broker"),
    "dhcp": ("anchord.runner", "workers.dhcp"),
    "discovery": ("anchord.runner", "workers.discovery"),
    "nat-writer": ("anchord.runner", "workers.natwriter"),
    "conntrack-flusher": ("anchord.runner", "workers.conntrack_flusher"),
    "docker-proxy": ("anchord.apiproxy", "anchord.selfproject"),
}


@pytest.mark.parametrize("program", sorted(WITHOUT_OPENSSL))
def test_long_running_programs_map_no_openssl(program: str) -> None:
    """After ``noopenssl.block()``, the program's modules import (the standard library takes
    the no-OpenSSL paths) and the process maps neither libssl nor libcrypto: read from
    /proc/self/maps, what the kernel says, not what the modules say."""
    modules = ", ".join(WITHOUT_OPENSSL[program])
    probe = ("import sys\nfrom anchord import noopenssl\nassert noopenssl.block()\n"
             f"import {modules}\n"
             "maps = open('/proc/self/maps').read()\n"
             "print(' '.join(lib for lib in ('libssl', 'libcrypto') if lib in maps))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{program} maps {out.stdout.strip()}"


def test_without_the_block_the_docker_client_would_map_openssl() -> None:
    """The check above can fail: http.client alone maps both libraries."""
    probe = ("import anchord.dockerhttp\nmaps = open('/proc/self/maps').read()\n"
             "print(' '.join(lib for lib in ('libssl', 'libcrypto') if lib in maps))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["libssl", "libcrypto"]


@pytest.mark.parametrize(("argv", "env_mode", "blocked"), [
    ([], "", True),
    (["network-anchor"], "", True),
    (["worker", "bus"], "", True),
    (["worker", "discovery"], "", True),
    (["worker", "metrics"], "", False),
    (["service-anchor"], "", False),
    ([], "service-anchor", False),
])
def test_entry_blocks_openssl_for_the_programs_without_metrics(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], env_mode: str, blocked: bool) -> None:
    from anchord import entry, noopenssl

    calls: list[str] = []

    def note(what: str) -> int:
        calls.append(what)
        return 0

    monkeypatch.setenv("ANCHORD_MODE", env_mode)
    monkeypatch.setattr(noopenssl, "block", lambda: note("block") == 0)
    for name in ("run_network_anchor", "run_service_anchor"):
        monkeypatch.setattr(entry, name, lambda name=name: note(name))
    monkeypatch.setattr(entry, "run_worker", lambda w: note(f"worker {w}"))
    with pytest.raises(SystemExit):
        entry.main(argv)
    assert ("block" in calls) == blocked, calls
    assert calls[-1] != "block", calls  # blocked before the program runs, not after
    assert len(calls) == 1 + blocked, calls


def test_conntrack_flusher_imports_no_pyroute2() -> None:
    """What the process really loads, not what its files say: a fresh interpreter imports the
    worker and lists the modules it ended up with (a transitive import counts too)."""
    found = loaded("workers.conntrack_flusher", ("pyroute2",))
    assert found == "", f"pyroute2 modules loaded: {found}"


PRODUCT = [p for p in SOURCES if p.relative_to(ROOT).parts[0] in ("anchord", "workers")]


def test_product_sources_found() -> None:
    assert any(rel(p) == "anchord/rtnl.py" for p in PRODUCT)
    assert any(rel(p) == "workers/dhcp.py" for p in PRODUCT)


@pytest.mark.parametrize("path", PRODUCT, ids=rel)
def test_the_product_imports_no_pyroute2(path: Path) -> None:
    """pyroute2 is a test dependency only: importing it cost the dhcp worker ~12 MB of RSS."""
    text = path.read_text()
    bad = {m for m in imports(path) if m.split(".")[0] == "pyroute2"}
    # A lazy ``importlib.import_module("pyroute2")`` or ``__import__`` would slip past the AST.
    assert not bad, f"{rel(path)} imports {bad}"
    assert 'import_module("pyroute2' not in text, rel(path)
    assert '__import__("pyroute2' not in text, rel(path)


def test_dhcp_worker_loads_no_pyroute2() -> None:
    """The process, transitively: a fresh interpreter imports the dhcp worker."""
    probe = ("import sys, workers.dhcp\n"
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "", f"pyroute2 modules loaded: {out.stdout.strip()}"
