"""Faults under traffic (issue 12, section 2) and the bounded soak (section 3), on the real
image under real Compose.

Every fault runs under the same steady load (e2e/fault_support.py's ``FaultLoad``: a LAN
client holding a long TCP stream and opening a new connection every 50 ms, a UDP flow, and the
app's egress to the LAN) and reports its figures in the run's figures section:

- the Docker API gone (the project's ``docker-proxy`` stopped) for ANCHORD_FAULT_API_OUTAGE
  seconds (15 by default; the issue's 60 is ``ANCHORD_FAULT_API_OUTAGE=60``) while a backend
  restarts with a new transit address: the maps unchanged while it is gone and no flow of the
  load touched, the map correct within 1 s of the proxy's return;
- the DHCP server (Kea, a 30 s lease, T1 8 s, T2 16 s) gone across T1 and T2: the address kept,
  REBINDING logged; the server back before expiry: the same lease goes on and nothing of the
  load fails; gone past expiry: the address dropped at expiry, not before, and back with the
  server: a fresh lease and traffic within the start target (S-1's 10 s);
- the VLAN parent (anchord's interface on the LAN bridge) down and up, then deleted and
  re-created (``docker network disconnect`` / ``connect``): recovered, the outage reported;
- ``docker compose restart anchord``: the same address, traffic back (target 5 s);
- the soak, bounded (``benchmarks/soak.py``: backend restarts and worker kills, RSS and
  descriptors of every program, map elements, conntrack entries flat).

Compose file: e2e/compose/faults/compose.yaml, one fresh project per test. All traffic stays on
the project's ``internal: true`` bridges.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from benchmarks import soak
from e2e import fault_support as fs
from e2e import harness
from e2e import lifecycle_support as ls
from e2e.fault_support import FaultLoad, FaultStack, hold
from e2e.harness import wait_until

SCENARIO = "issue 12"
# How long the Docker API stays away. CI keeps it short; the figure is 60 s.
API_OUTAGE = float(os.environ.get("ANCHORD_FAULT_API_OUTAGE", "15"))
# The map follows a backend within 1 s of the API's return (F-13 once the API answers).
API_RETURN_BUDGET = 1.0
# How long the parent stays down, and away, in the parent faults.
PARENT_OUTAGE = 3.0
# `docker compose restart anchord`: the start target for a restart is 5 s; the
# assertion is S-1's 10 s (the figure shows the real time).
RESTART_TARGET = 5.0
# The bounded soak of `make test`; the long one is `python -m benchmarks.soak`.
SOAK_ROUNDS = int(os.environ.get("ANCHORD_SOAK_ROUNDS", "12"))


@pytest.fixture
def fault_stack(
    anchord_image: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultStack]]:
    """Factory of fault stacks (``server="kea"`` and Compose variables as keywords); taken
    down after the test, dumped first if it failed."""
    stacks: list[FaultStack] = []

    def make(server: str = "dnsmasq", **env: str) -> FaultStack:
        hint = request.node.name.removeprefix("test_")[:20]
        stack = fs.start_fault_stack(anchord_image, hint, server=server, **env)
        stacks.append(stack)
        return stack

    yield make
    failed = harness.node_failed(request.node)
    for stack in stacks:
        if failed:
            print(stack.project.dump())
        fs.down(stack)


# --- the Docker API ----------------------------------------------------------------------------
def test_docker_api_gone_while_a_backend_restarts(fault_stack: Callable[..., FaultStack]) -> None:
    """Docker API gone while a backend moves: maps unchanged, nothing of the load fails, the
    map correct within 1 s of the API's return."""
    stack = fault_stack()
    v4 = stack.project_address(4)
    maps_before = stack.maps()
    spare_old = stack.transit4("spare-anchor")
    assert maps_before["4/tcp"][fs.SPARE_PORT] == spare_old, maps_before
    checks = 0
    changed: list[dict[str, dict[int, str]]] = []
    placeholder: ls.Placeholder | None = None
    try:
        with FaultLoad(stack, v4) as load:
            gone = time.monotonic()
            stack.project.compose("stop", "-t", "2", "docker-proxy")
            wait_until(lambda: not stack.status_json()["workers"]["discovery"]["conditions"][0]
                       ["detail"].startswith("connected"), 20, interval=0.2,
                       message="discovery reporting the API lost")
            # The backend restarts with its address taken meanwhile: the map must change, and
            # nobody can tell anchord while the API is gone.
            harness.run(["docker", "stop", "-t", "1", stack.cid("spare-anchor")])
            placeholder = ls.Placeholder(stack.project)
            harness.run(["docker", "start", stack.cid("spare-anchor")])
            spare_new = stack.transit4("spare-anchor")
            assert spare_new != spare_old, spare_new
            wait_until(lambda: stack.healthy("spare-anchor"), 30, interval=0.3,
                       message="spare-anchor healthy again")

            def outage_over() -> bool:
                nonlocal checks
                maps = stack.maps()
                checks += 1
                if maps != maps_before:
                    changed.append(maps)
                return time.monotonic() - gone >= API_OUTAGE

            wait_until(outage_over, API_OUTAGE + 30, interval=0.5, message="the API outage")
            stack.project.compose("start", "docker-proxy")
            back = ls.started_at(stack.project, "docker-proxy")
            wait_until(lambda: stack.dnat_map(4).get(fs.SPARE_PORT) == spare_new, 30,
                       interval=0.05, message=f"tcp/{fs.SPARE_PORT} mapped to {spare_new}")
            took = time.time() - back
            hold(0.5)
    finally:
        if placeholder is not None:
            placeholder.remove()
    result = load.result
    assert result is not None
    harness.figure(
        f"docker API gone {API_OUTAGE:.0f}s while a backend moved {spare_old} -> {spare_new}: "
        f"maps unchanged over {checks} checks ({len(changed)} changed); map correct "
        f"{took:.2f}s after the proxy started (target {API_RETURN_BUDGET:g}s); load: "
        f"{result.summary()}")
    assert changed == [], changed[:1]
    assert result.stream_broke_at() is None, result.tcp.stream_error
    assert result.failures() == {"tcp": 0, "udp": 0, "egress": 0}, (
        result.tcp.failed[:5], result.udp.failed[:5], result.egress.failed[:5])
    assert took <= API_RETURN_BUDGET + 0.5, took  # the poll and exec add up to ~0.2 s
    # Everything else as it was: the only change is the moved backend.
    want = {k: dict(v) for k, v in maps_before.items()}
    want["4/tcp"][fs.SPARE_PORT] = spare_new
    assert {k: v for k, v in stack.maps().items() if k != "6/tcp"} == \
        {k: v for k, v in want.items() if k != "6/tcp"}


# --- the DHCP server ---------------------------------------------------------------------------
LEASE, T1, T2 = 30, 8, 16


def test_dhcp_server_gone_across_t1_and_t2(fault_stack: Callable[..., FaultStack]) -> None:
    """DHCP server gone across T1 and T2: address kept, REBINDING; back before expiry: the
    lease goes on, nothing fails; back after expiry: a fresh lease, traffic within 10 s."""
    stack = fault_stack(server="kea", LEASE_TIME=str(LEASE), T1=str(T1), T2=str(T2))
    v4 = stack.project_address(4)
    kept: list[bool] = []

    def watch_address() -> None:
        kept.append(v4 in stack.addresses(4))

    with FaultLoad(stack, v4) as load:
        # 1. Gone across T1 and T2, back before expiry.
        a_start = time.time()
        stack.project.compose("stop", "-t", "2", "dhcp")
        expiry = stack.status_json()["leases"]["ipv4"]["expiry"]

        def rebinding() -> bool:
            watch_address()
            return bool(stack.logged("dhcpv4 renewing -> rebinding"))

        wait_until(rebinding, LEASE + 10, interval=0.5, message="REBINDING logged")
        assert time.time() < expiry - 3, (time.time(), expiry)  # room to come back
        stack.project.compose("start", "dhcp")

        def rebound() -> bool:
            watch_address()
            return bool(stack.logged("dhcpv4 rebinding -> bound"))

        wait_until(rebound, LEASE, interval=0.3, message="the lease rebound")
        a_end = time.time()
        assert all(kept), kept
        assert stack.project_address(4) == v4
        a_expired = stack.logged("dhcpv4 lease expired")
        kept.clear()

        # 2. Gone past expiry, then back.
        stack.project.compose("stop", "-t", "2", "dhcp")
        expiry = stack.status_json()["leases"]["ipv4"]["expiry"]
        present: list[tuple[float, bool]] = []

        def expired() -> bool:
            present.append((time.time(), v4 in stack.addresses(4)))
            return bool(stack.logged("dhcpv4 lease expired"))

        wait_until(expired, LEASE + 15, interval=0.3, message="the lease expired")
        dropped = next((t for t, here in present if not here), time.time())
        stack.project.compose("start", "dhcp")
        back = ls.started_at(stack.project, "dhcp")
        # The child's address, not the server's table: Kea's lease file still lists the
        # expired lease until it is reclaimed.
        fresh = wait_until(lambda: stack.addresses(4), 30, interval=0.2,
                           message="a fresh lease on the child")[0]
        wait_until(lambda: stack.answers(fresh), 30, interval=0.1,
                   message=f"tcp/{fs.APP_PORT} on {fresh} answering again")
        traffic_back = time.time() - back
    result = load.result
    assert result is not None
    harness.figure(
        f"DHCP server gone across T1/T2 (lease {LEASE}s, T1 {T1}s, T2 {T2}s), back before "
        f"expiry: REBINDING logged, address kept, failures {result.failures(a_start, a_end)}, "
        f"stream {'intact' if (result.stream_broke_at() or 1e12) > a_end else 'broken'}; "
        f"gone past expiry: address dropped {dropped - expiry:+.1f}s from expiry, fresh lease "
        f"{fresh} ({'same' if fresh == v4 else 'new'} address), traffic back "
        f"{traffic_back:.2f}s after the server started (target {fs.START_TARGET:g}s); "
        f"load: {result.summary()}")
    assert a_expired == [], a_expired
    assert result.failures(a_start, a_end) == {"tcp": 0, "udp": 0, "egress": 0}, (
        result.tcp.failed[:5], result.udp.failed[:5], result.egress.failed[:5])
    broke = result.stream_broke_at()
    assert broke is None or broke > a_end, result.tcp.stream_error
    # Kept until the lease really expired, not dropped at T1 or T2 (0.5 s: the poll's step).
    assert dropped >= expiry - 0.5, (dropped, expiry, present[:3])
    assert traffic_back <= fs.START_TARGET, traffic_back


# --- the VLAN parent ---------------------------------------------------------------------------
def parent_of(stack: FaultStack) -> str:
    parent = stack.status_json()["link"]["parent"]
    assert parent, stack.status_json()["link"]
    return str(parent)


def test_vlan_parent_down_up_deleted_recreated(fault_stack: Callable[..., FaultStack]) -> None:
    """The VLAN parent down and up, then deleted and re-created: recovered, the same address,
    the outage reported."""
    stack = fault_stack()
    v4 = stack.project_address(4)
    parent = parent_of(stack)
    lan = f"{stack.project.name}_lan"
    with FaultLoad(stack, v4) as load:
        # 1. Down and up (`ip link set down` in anchord's namespace, as a flapping NIC does).
        down_at = time.time()
        stack.exec("anchord", "ip", "link", "set", parent, "down")
        hold(PARENT_OUTAGE)
        stack.exec("anchord", "ip", "link", "set", parent, "up")
        up_at = time.time()
        wait_until(lambda: stack.answers(v4), 30, interval=0.1, message="traffic after up")
        up_back = time.time() - up_at
        hold(1.0)
        # 2. Deleted and re-created: the container leaves the LAN network and joins it again
        # (its interface there is destroyed, and a new one made, maybe under another name).
        gone_at = time.time()
        harness.run(["docker", "network", "disconnect", lan, stack.cid("anchord")])
        hold(PARENT_OUTAGE)
        harness.run(["docker", "network", "connect", lan, stack.cid("anchord")])
        again_at = time.time()
        wait_until(lambda: stack.answers(v4), 30, interval=0.1, message="traffic after re-create")
        again_back = time.time() - again_at
        new_parent = parent_of(stack)
        hold(1.0)
    result = load.result
    assert result is not None
    down_outage = result.outage("tcp", down_at, up_at + up_back)
    gone_outage = result.outage("tcp", gone_at, again_at + again_back)
    harness.figure(
        f"VLAN parent down {PARENT_OUTAGE:g}s: new connections back {up_back:.2f}s after up "
        f"(outage {down_outage:.2f}s); deleted {PARENT_OUTAGE:g}s and re-created ({parent} -> "
        f"{new_parent}): back {again_back:.2f}s after (outage {gone_outage:.2f}s); "
        f"load: {result.summary()}")
    assert stack.project_address(4) == v4
    assert v4 in stack.addresses(4)
    assert up_back <= fs.START_TARGET, up_back
    assert again_back <= fs.START_TARGET, again_back
    # Nothing fails outside the two faults.
    assert result.failures(0, down_at)["tcp"] == 0
    assert result.failures(up_at + up_back + 1, gone_at)["tcp"] == 0


# --- compose restart ---------------------------------------------------------------------------
def test_compose_restart_anchord_same_address_traffic_back(
    fault_stack: Callable[..., FaultStack],
) -> None:
    """`docker compose restart anchord`: the same address, traffic back (target 5 s)."""
    stack = fault_stack()
    v4 = stack.project_address(4)
    with FaultLoad(stack, v4) as load:
        issued = time.time()
        stack.project.compose("restart", "anchord", timeout=120)
        started = ls.started_at(stack.project, "anchord")
        wait_until(lambda: stack.answers(v4), 30, interval=0.1, message="traffic after restart")
        hold(1.0)
    result = load.result
    assert result is not None
    first = result.first_ok_after(started)
    assert first is not None, result.summary()
    back = first - started
    outage = result.outage("tcp", issued, first)
    harness.figure(
        f"compose restart anchord: first new connection {back:.2f}s after the container "
        f"started (target {RESTART_TARGET:g}s), {first - issued:.2f}s after the command; "
        f"clients saw {outage:.2f}s without a new connection; same address "
        f"{stack.project_address(4) == v4}; load: {result.summary()}")
    assert stack.project_address(4) == v4
    assert v4 in stack.addresses(4)
    assert back <= fs.START_TARGET, back


# --- the soak ----------------------------------------------------------------------------------
def test_soak_bounded_flat(fault_stack: Callable[..., FaultStack]) -> None:
    """Backend restarts and worker kills in a row: RSS, descriptors, map elements and conntrack
    entries flat (benchmarks/soak.py, bounded)."""
    stack = fault_stack()
    report = soak.run(stack, backend_restarts=SOAK_ROUNDS, kills=SOAK_ROUNDS,
                      sample_every=max(1, SOAK_ROUNDS // 4))
    for line in report.lines():
        harness.figure(f"soak: {line}")
    assert report.flat(), "\n".join(report.lines())
