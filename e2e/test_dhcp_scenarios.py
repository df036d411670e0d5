"""DHCP acceptance scenarios under real Compose, against dnsmasq and ISC Kea (+ radvd).

Owns SPEC S-11 (the five DHCP scenarios: v4-only, v6-only by SLAAC, both, none, stateful
DHCPv6 — each with dnsmasq and with Kea), S-4 (lease rotation: the server hands out another
address, inbound and egress follow within one renewal, nothing restarted) and S-5 (two
anchord projects on one LAN: distinct MACs and leases, the same port reaching each project's
own app, one project stopping leaves the other serving with its lease).

Topology (e2e/compose/dhcp/, e2e/dhcp_support.py): the LAN is a Compose project of its own
(an ``internal: true`` bridge, the DHCP server, a LAN client), and every anchord project joins
its network as an external one, the way separate projects share a VLAN. All traffic stays on
bridges the test made.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from e2e import dhcp_support
from e2e.dhcp_support import APP_PORT, ECHO_PORT, LAN_V4, LAN_V6, DhcpBed, Project, eui64
from e2e.harness import node_failed, wait_until
from e2e.stack_support import CLIENT_V4, CLIENT_V6, reply

SERVERS = ("dnsmasq", "kea")
MODES = ("v4", "slaac", "both", "none", "stateful")
# Generous for a loaded 2-core machine; the lease itself comes within seconds when idle.
LEASE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def dhcp_image(anchord_image: str) -> str:
    return dhcp_support.build_dhcp_image()


@pytest.fixture
def testbed(
    anchord_image: str, dhcp_image: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[], DhcpBed]]:
    """Factory of this test's one DhcpBed, taken down (and dumped on failure) afterwards."""
    beds: list[DhcpBed] = []

    def make() -> DhcpBed:
        bed = DhcpBed(anchord_image, hint=request.node.name)
        beds.append(bed)
        return bed

    yield make
    failed = node_failed(request.node)
    for bed in beds:
        bed.close(failed)


def same_ip(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def answered(
    query: Callable[[], dict[str, Any]], what: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The first answer ``query`` gets. The first packets may race the DNAT map or, for
    IPv6, duplicate address detection and the neighbour caches, so it is polled."""

    def attempt() -> dict[str, Any] | None:
        result = query()
        return result if "reply" in result else None

    return wait_until(attempt, timeout, interval=0.3, message=what)


def assert_reachable(bed: DhcpBed, project: Project, address: str) -> None:
    """A LAN client reaches the project's app on ``address`` (TCP and UDP) and the app sees the
    client's own address; the app's egress to the LAN leaves with ``address``."""
    client = CLIENT_V6 if ":" in address else CLIENT_V4
    for proto in ("tcp", "udp"):
        result = answered(
            partial(bed.query, proto, address),
            f"{proto}/{APP_PORT} answering on {address}",
        )
        answer = reply(result)
        assert answer["service"] == project.app_name, result
        assert answer["peer"] == client == result["local"], result
        egress = reply(
            answered(
                partial(project.query, "web", proto, client, ECHO_PORT),
                f"{proto} egress from the app to the LAN client",
            )
        )
        assert egress["service"] == "client", egress
        assert same_ip(egress["peer"], address), (egress, address)


def assert_dnat_installed(project: Project) -> None:
    """tcp/8080 maps to web-anchor's transit addresses in both of anchord's tables. Readiness
    may come first: a service-anchor is exposed once Docker calls it healthy."""
    expected = {4: {APP_PORT: project.backend(4)}, 6: {APP_PORT: project.backend(6)}}
    wait_until(
        lambda: {family: project.dnat_map(family) for family in (4, 6)} == expected,
        30,
        interval=0.3,
        message=f"the DNAT maps {expected}",
    )


# --- S-11 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("server", SERVERS)
def test_s11_dhcp_scenario(testbed: Callable[[], DhcpBed], server: str, mode: str) -> None:
    """Offered families leased and reachable with real sources, the others absent, ready.

    Ready and DNAT installed whatever the LAN offers; each offered family leased (hostname in
    the server's table), reachable with the client's source, egress leaving with it; with no
    server, the worker keeps asking."""
    bed = testbed()
    lan = bed.start_lan(server, mode)
    # none: a short backoff cap, so that the retries are seen within seconds.
    extra = {"ANCHORD_DHCP_BACKOFF_MAX": "3s"} if mode == "none" else {}
    project = bed.start_project("web", **extra)
    hostname = project.hostname
    has_v4 = mode in ("v4", "both")
    has_v6 = mode in ("slaac", "both", "stateful")

    # Ready whatever the LAN offers (a missing lease never blocks readiness), DNAT installed.
    wait_until(project.healthcheck, LEASE_TIMEOUT, interval=0.5, message="anchord healthcheck")
    code, body = project.readyz()
    assert code == 200, body
    assert_dnat_installed(project)
    assert project.child_mac() == project.mac

    if has_v4:
        v4 = project.wait_address(4, LEASE_TIMEOUT)
        leases = wait_until(
            lambda: lan.leases_of(hostname, 4), 10, message=f"{hostname} in the v4 lease table"
        )
        assert [(lease.address, lease.identifier) for lease in leases] == [(v4, project.mac)]
        assert_reachable(bed, project, v4)

    if mode in ("slaac", "both"):
        expected = eui64(project.mac)
        v6 = wait_until(
            lambda: [a for a in project.addresses(6) if ipaddress.ip_address(a) == expected],
            LEASE_TIMEOUT,
            interval=0.3,
            message=f"the SLAAC address {expected} on anchord-ext",
        )[0]
        assert [ipaddress.ip_address(a) for a in project.addresses(6)] == [expected]
        assert_reachable(bed, project, v6)
    elif mode == "stateful":
        leases = wait_until(
            lambda: lan.leases_of(hostname, 6),
            LEASE_TIMEOUT,
            interval=0.5,
            message=f"{hostname} in the v6 lease table",
        )
        assert len(leases) == 1, leases
        leased = ipaddress.ip_address(leases[0].address)
        assert leased in LAN_V6, leases
        v6 = wait_until(
            lambda: [a for a in project.addresses(6) if ipaddress.ip_address(a) == leased],
            20,
            interval=0.3,
            message=f"the leased {leased} on anchord-ext",
        )[0]
        # Only the leased address (no SLAAC: the RA's prefix has no A flag), as a /128.
        assert [ipaddress.ip_address(a) for a in project.addresses(6)] == [leased]
        assert project.prefixlens(6) == [128]
        assert_reachable(bed, project, v6)

    if mode == "none":
        # The dhcp worker keeps trying: DHCPv4 requests from the project's MAC keep coming
        # (at most the 3 s backoff cap apart), and it stays running.
        seen = lan.dhcp_requests(project.mac, want=2, deadline=30)
        assert len(seen) == 2, seen
        assert project.worker_pids().get("dhcp"), project.worker_pids()
        status = project.status_json()
        assert status["ready"] is True, status
        assert not status["leases"].get("ipv4"), status
        assert not status["leases"].get("ipv6"), status

    # The families the LAN does not offer stay absent (checked last: by now the others bound
    # and the worker has been asking for a while).
    if not has_v4:
        assert project.addresses(4) == []
        assert lan.leases_of(hostname, 4) == []
    if not has_v6:
        assert project.addresses(6) == []


# --- S-4 -------------------------------------------------------------------------------------
# T1 of the rotation test: short, so that "within one renewal" is seconds (dnsmasq's shortest
# lease is 120 s; T1 brings the renewal forward, as on any real server).
ROTATION_T1 = 8
# The reserved address: outside both servers' pools (.100-.199), so never the one held.
NEW_V4 = f"{LAN_V4}.250"


def conntrack_mentions(text: str, address: str) -> list[str]:
    """The conntrack lines with ``address`` as a source or destination."""
    wanted = {f"src={address}", f"dst={address}"}
    return [line for line in text.splitlines() if wanted & set(line.split())]


@pytest.mark.parametrize("server", SERVERS)
def test_s4_lease_rotation_moves_inbound_and_egress_within_one_renewal(
    testbed: Callable[[], DhcpBed], server: str
) -> None:
    """Moved reservation: inbound and egress on the new address within one renewal.

    The old address and its conntrack entries are gone, nothing was restarted."""
    bed = testbed()
    lan = bed.start_lan(server, "v4", LEASE_TIME="120", T1=str(ROTATION_T1), T2="100")
    project = bed.start_project("web")
    old = project.wait_address(4, LEASE_TIMEOUT)
    assert old != NEW_V4
    # Flows on the old address, inbound (DNAT) and egress (masquerade), TCP and UDP: what the
    # conntrack-flusher must forget once the address is gone.
    assert_reachable(bed, project, old)
    assert conntrack_mentions(project.conntrack(), old), project.conntrack()
    started_at = project.project.state("anchord")["StartedAt"]
    pids = project.worker_pids()

    # The administrator moves the reservation of the project's MAC and reloads the server:
    # the next renewal of the old address is refused (DHCPNAK), the client starts over
    # (DISCOVER) and gets the reserved one. This is what a real server does; a lease that is
    # simply not renewed would take until its expiry (minutes) instead of one renewal.
    reloaded = time.monotonic()
    lan.reserve(project.mac, NEW_V4)
    wait_until(
        lambda: project.addresses(4) == [NEW_V4],
        ROTATION_T1 + 30,
        interval=0.2,
        message=f"anchord-ext moved from {old} to {NEW_V4}",
    )
    moved = time.monotonic() - reloaded
    print(f"S-4 {server}: {old} -> {NEW_V4} {moved:.1f}s after the reload (T1 {ROTATION_T1}s)")

    # No flow of the old address left (inbound TIME_WAIT and egress UDP entries would
    # otherwise stay for minutes).
    wait_until(
        lambda: not conntrack_mentions(project.conntrack(), old),
        10,
        interval=0.3,
        message=f"no conntrack entry of the old address {old}",
    )
    # Inbound on the new address with the client's real source, egress leaving with it.
    assert_reachable(bed, project, NEW_V4)
    assert [lease.address for lease in lan.leases_of(project.hostname, 4)] == [NEW_V4]
    assert project.addresses(4) == [NEW_V4]
    # Nothing was restarted: the same container, every worker with its pid.
    assert project.project.state("anchord")["StartedAt"] == started_at
    assert project.worker_pids() == pids


# --- S-5 -------------------------------------------------------------------------------------
def test_s5_two_projects_on_one_lan_are_independent(testbed: Callable[[], DhcpBed]) -> None:
    """Two projects on one LAN: distinct MACs and leases, each port reaches its own app.

    Stopping one project leaves the other serving with its lease."""
    bed = testbed()
    lan = bed.start_lan("dnsmasq", "both")
    alpha = bed.start_project("alpha")
    beta = bed.start_project("beta")

    # Distinct MACs (derived from the project names) and distinct leases.
    assert alpha.mac != beta.mac
    a4, b4 = alpha.wait_address(4, LEASE_TIMEOUT), beta.wait_address(4, LEASE_TIMEOUT)
    assert a4 != b4
    for project, address in ((alpha, a4), (beta, b4)):
        assert project.child_mac() == project.mac
        leases = wait_until(
            lambda project=project: lan.leases_of(project.hostname, 4),  # type: ignore[misc]
            10,
            message=f"{project.hostname} in the lease table",
        )
        assert [(lease.address, lease.identifier) for lease in leases] == [(address, project.mac)]
    a6, b6 = str(eui64(alpha.mac)), str(eui64(beta.mac))

    # The same port in both projects: each address reaches its own project's app (by name),
    # with the client's real source; each project's egress leaves with its own address.
    for project, v4, v6 in ((alpha, a4, a6), (beta, b4, b6)):
        wait_until(
            lambda project=project, v6=v6: [  # type: ignore[misc]
                a for a in project.addresses(6) if same_ip(a, v6)
            ],
            LEASE_TIMEOUT,
            interval=0.3,
            message=f"{v6} on {project.hostname}",
        )
        assert_reachable(bed, project, v4)
        assert_reachable(bed, project, v6)
        # Independent NAT state: each anchord maps the port to its own backend.
        assert_dnat_installed(project)
    assert alpha.backend(4) != beta.backend(4)

    # Stopping one project leaves the other serving, with its lease intact; the stopped one
    # keeps its lease at the server for its next start (F-6) but answers no more.
    alpha.project.stop()
    assert "error" in bed.query("tcp", a4), "the stopped project's address still answers"
    assert [lease.address for lease in lan.leases_of(alpha.hostname, 4)] == [a4]
    assert_reachable(bed, beta, b4)
    assert_reachable(bed, beta, b6)
    assert beta.addresses(4) == [b4]
    assert [lease.address for lease in lan.leases_of(beta.hostname, 4)] == [b4]


# --- S-6 / F-6, F-6b: the address survives restarts, with each server ------------------------
# What each server logs once per new acquisition (an answered DISCOVER / SOLICIT): a client that
# re-requests its stored lease (INIT-REBOOT, DHCPv6 Renew) never draws one.
NEW_ACQUISITION = {
    ("dnsmasq", 4): "DHCPOFFER",
    ("dnsmasq", 6): "DHCPADVERTISE",
    ("kea", 4): "DHCP4_LEASE_ADVERT",
    ("kea", 6): "DHCP6_LEASE_ADVERT",
}


def down_and_up(project: Project) -> None:
    project.project.compose("down", timeout=120)
    project.project.up()


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("server", SERVERS)
def test_s6_the_address_survives_restart_recreate_and_down_up(
    testbed: Callable[[], DhcpBed], server: str, family: int
) -> None:
    """`compose restart anchord`, `up --force-recreate anchord`, `down` + `up` (the state
    volume kept): the same address each time, re-requested, never acquired anew; after
    `anchord release`, a stop gives it back."""
    bed = testbed()
    lan = bed.start_lan(server, "v4" if family == 4 else "stateful")
    project = bed.start_project("web")
    hostname = project.hostname
    address = wait_until(
        lambda: [lease.address for lease in lan.leases_of(hostname, family)
                 if lease.address in project.addresses(family)],
        LEASE_TIMEOUT,
        interval=0.5,
        message=f"{hostname}'s IPv{family} lease on anchord-ext",
    )[0]
    marker = NEW_ACQUISITION[server, family]

    def bound() -> bool:
        # Bound as anchord says (a DHCPv6 address is bound, and stored, only once the kernel's
        # duplicate address detection passed; on the child it shows before that).
        lease = (project.status_json().get("leases") or {}).get(f"ipv{family}") or {}
        return str(lease.get("address") or "").split("/")[0] == address

    wait_until(bound, LEASE_TIMEOUT, interval=0.5, message=f"{address} bound")

    def acquisitions() -> int:
        return lan.project.logs("dhcp").count(marker)

    before = acquisitions()
    assert before >= 1, f"{marker!r} never logged: {lan.project.logs('dhcp')[-3000:]}"
    steps: list[tuple[str, Callable[[], object]]] = [
        ("compose restart anchord",
         lambda: project.project.compose("restart", "anchord", timeout=120)),
        ("compose up -d --force-recreate anchord",
         lambda: project.project.compose("up", "-d", "--no-build", "--pull", "never",
                                         "--force-recreate", "anchord", timeout=180)),
        # `down` without -v: the anchord-state volume stays, as it does for a user.
        ("compose down + up", partial(down_and_up, project)),
    ]
    for what, step in steps:
        step()
        project.forget_containers()
        wait_until(lambda: address in project.addresses(family), LEASE_TIMEOUT, interval=0.3,
                   message=f"{address} back on anchord-ext after {what}")
        assert project.addresses(family) == [address], (what, project.addresses(family))
        wait_until(bound, LEASE_TIMEOUT, interval=0.5, message=f"{address} bound after {what}")
        assert acquisitions() == before, (
            f"after {what}: the server handed out a new lease\n"
            f"{lan.project.logs('dhcp')[-3000:]}")
        assert [lease.address for lease in lan.leases_of(hostname, family)] == [address], what
    assert_reachable(bed, project, address)

    # Asked to (`anchord release`, then a stop): the lease goes back to the server.
    out = project.exec("anchord", "anchord", "release")
    assert "released when this container stops" in out, out
    project.project.stop("anchord", timeout=60)
    wait_until(lambda: not lan.leases_of(hostname, family), 10,
               message=f"{hostname}'s IPv{family} lease gone from the server's table")
