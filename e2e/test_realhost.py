"""The real-host topology end to end (F-6d): anchord's VLAN parent is a host interface.

Owns SPEC F-6d as a LAN host sees it. The host side is made by e2e/realhost_support.py: a LAN
network namespace joined to the host (root) namespace by a veth pair whose host end plays a
real server's ``eth0.42``, with dnsmasq (DHCPv4) and a TCP/UDP listener in the LAN namespace,
and a handle of the host's namespace (``ip netns attach``; ``/proc/1/ns/net`` on a real host).
The project (e2e/compose/realhost/compose.yaml) is anchord with only the README's capabilities
and ``ANCHORD_VLAN_PARENT=/run/host-netns/net:<host veth>``, one service-anchor labelled
``anchord.expose: tcp/8080`` and an app in its namespace that answers with the peer address.

Checked: the project's lease comes from the LAN namespace's dnsmasq (its hostname in the lease
file); the macvlan child lives in the container's namespace with its lower device the host's
veth; a LAN host reaches the app on the project address and the app sees that host's own
address; a port the app serves but no label exposes is refused; egress from the app reaches the
LAN with the project address (TCP and UDP), v4 and v6; ``compose restart anchord`` keeps the
address (INIT-REBOOT, no DISCOVER) and inbound comes back; ``docker compose stop`` keeps the
lease (no DHCPRELEASE) and the child goes (logged, and the host veth has no macvlan port left).
The host runs at bridge-nf-call-iptables=1, as Docker leaves it. One project for the module;
the stop test runs last. All traffic stays on the veth, the LAN namespace and the project's
transit network (no host address on its bridge).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import harness, stack_support
from e2e.realhost_support import (
    LAN_ADDRESS,
    LAN_ADDRESS6,
    LAN_PREFIX,
    LISTEN_PORT,
    RealHostLan,
    RealHostProject,
    remove_stale,
    start_project,
)
from e2e.stack_support import reply

SCENARIO = "F-6d"  # for the scenario report (e2e/conftest.py)

APP_PORT = 8080


@pytest.fixture(scope="module")
def realhost(anchord_image: str, request: pytest.FixtureRequest) -> Iterator[RealHostProject]:
    lan_image = stack_support.build_lan_image()
    remove_stale()
    lan = RealHostLan()
    try:
        lan.start()
        started = start_project(lan, anchord_image, lan_image)
        harness.figure(f"real host: reachable {started.cold_start_seconds:.2f}s after compose up"
                       " returned")
        failed_before = request.session.testsfailed
        try:
            yield started
        finally:
            if request.session.testsfailed != failed_before:
                print(started.project.dump())  # shown under "Captured stdout teardown"
                print(lan.dnsmasq_log())
            started.project.down()
    finally:
        lan.close()


def test_lease_comes_from_the_host_lans_dhcp_server(realhost: RealHostProject) -> None:
    mine = realhost.my_leases()
    assert len(mine) == 1, realhost.lan.leases()
    lease = mine[0]
    assert lease.address == realhost.address, mine
    assert lease.address.startswith(f"{LAN_PREFIX}."), mine
    assert lease.identifier.startswith("02:42:"), mine  # the project's MAC (SPEC F-2)
    log = realhost.lan.dnsmasq_log()
    assert f"DHCPACK({realhost.lan.lan_iface}) {lease.address} {lease.identifier} " \
        f"{realhost.hostname}" in log, log

    def status_lease() -> str:
        status = json.loads(realhost.exec("anchord", "anchord", "status", "--json"))
        return str(status["leases"]["ipv4"]["address"]).split("/")[0]

    # anchord's own view agrees (its status follows the bus: allow it a heartbeat).
    harness.wait_until(lambda: status_lease() == lease.address, 10,
                       message=f"anchord status --json showing {lease.address}")


def test_child_is_in_the_container_with_the_host_veth_below(realhost: RealHostProject) -> None:
    anchord = realhost.project.inspect("anchord")
    host_config = anchord["HostConfig"]
    assert host_config["NetworkMode"] != "host", host_config
    assert not host_config["Privileged"], host_config
    caps = sorted(cap.removeprefix("CAP_") for cap in host_config["CapAdd"])
    assert caps == ["KILL", "NET_ADMIN", "NET_RAW", "SETGID", "SETUID"], host_config["CapAdd"]
    assert [cap.removeprefix("CAP_") for cap in host_config["CapDrop"]] == ["ALL"], host_config
    # What the entry process really holds: nothing beyond those (CAP_KILL is bit 5, CAP_SETGID
    # 6, CAP_SETUID 7, CAP_NET_ADMIN 12, CAP_NET_RAW 13); each program holds less
    # (e2e/test_privileges.py).
    status = realhost.exec("anchord", "cat", "/proc/1/status")
    effective = next(line.split()[1] for line in status.splitlines()
                     if line.startswith("CapEff:"))
    assert int(effective, 16) == sum(1 << cap for cap in (5, 6, 7, 12, 13)), status
    child = realhost.child_link()
    parent = realhost.lan.parent_link()
    lease = realhost.my_leases()[0]
    assert child["linkinfo"]["info_kind"] == "macvlan", child
    assert child["linkinfo"]["info_data"]["mode"] == "bridge", child
    assert child["address"] == lease.identifier, (child, lease)
    # Its lower device is the host veth: an index in another namespace (the host's).
    assert "link_netnsid" in child, child
    assert child["link_index"] == parent["ifindex"], (child, parent)
    # The host veth carries the child's MAC as a macvlan port (hence promiscuous).
    assert parent["promiscuity"] >= 1, parent


def test_lan_host_reaches_the_app_and_the_app_sees_its_address(
    realhost: RealHostProject,
) -> None:
    result = realhost.lan.query("tcp", realhost.address, APP_PORT)
    answer = reply(result)
    assert (answer["service"], answer["port"]) == ("web", APP_PORT), result
    assert answer["peer"] == LAN_ADDRESS == result["local"], result


def test_host_keeps_dockers_bridge_netfilter_settings(realhost: RealHostProject) -> None:
    """The topology runs at bridge-nf-call-ip(6)tables=1, as on every stock Docker host."""
    assert harness.bridge_nf_call() == (1, 1)


def project_address6(realhost: RealHostProject) -> str:
    return harness.wait_until(realhost.address6, 30, interval=0.3,
                              message="a SLAAC address on the project's child")


def test_lan_host_reaches_the_app_over_ipv6_with_its_own_address(
    realhost: RealHostProject,
) -> None:
    address6 = project_address6(realhost)
    def answered() -> dict[str, Any]:
        r = realhost.lan.query("tcp", address6, APP_PORT, 2.0)
        return r if "reply" in r else {}

    result = harness.wait_until(answered, 30, interval=0.3,
                                message=f"tcp/{APP_PORT} answering on [{address6}]")
    answer = reply(result)
    assert (answer["service"], answer["port"]) == ("web", APP_PORT), result
    # The app sees the LAN host's own source address (the one its socket sent from).
    assert answer["peer"] == result["local"] == LAN_ADDRESS6, result


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_egress_over_ipv6_leaves_with_the_project_address(
    realhost: RealHostProject, proto: str
) -> None:
    address6 = project_address6(realhost)
    result = realhost.app_query(proto, LAN_ADDRESS6, LISTEN_PORT)
    answer = reply(result)
    assert answer["service"] == "lan", result
    assert answer["peer"] == address6, result


def test_transit_gateway_is_anchords_and_the_host_has_no_address_there(
    realhost: RealHostProject,
) -> None:
    """Docker's gateway on the transit network is anchord's: a container still on Docker's
    default route leaves through anchord, and the host's bridge has no IPv4 to leave by."""
    project = realhost.project
    network = json.loads(harness.run(
        ["docker", "network", "inspect", f"{project.name}_transit"]).stdout)[0]
    gateway = next(c["Gateway"] for c in network["IPAM"]["Config"] if "." in c["Subnet"])
    bridge = "br-" + network["Id"][:12]
    assert harness.run(["ip", "-4", "-o", "addr", "show", "dev", bridge]).stdout == "", bridge
    harness.wait_until(
        lambda: f"inet {gateway}/32" in realhost.exec("anchord", "ip", "-4", "-o", "addr"),
        15, message=f"anchord holding the transit gateway {gateway}")
    # Put the app's namespace back on Docker's route (what every container has before its
    # service-anchor acts): egress still reaches the LAN from the project address.
    realhost.exec("web-anchor", "ip", "route", "replace", "default", "via", gateway)
    result = realhost.app_query("tcp", LAN_ADDRESS, LISTEN_PORT)
    assert reply(result)["peer"] == realhost.address, result
    # anchord itself routes only through its child: no default route via the transit network.
    routes = realhost.exec("anchord", "ip", "-4", "route", "show", "default")
    assert routes.count("default") == 1, routes
    assert "anchord-ext" in routes, routes


def test_a_project_variable_naming_another_project_is_refused(
    realhost: RealHostProject, anchord_image: str
) -> None:
    """ANCHORD_PROJECT that is not the container's own Compose project: exit 2, one line."""
    name = f"{realhost.project.name}-wrong"
    try:
        harness.run([
            "docker", "run", "-d", "--name", name, "--cap-add", "NET_ADMIN",
            "--label", f"com.docker.compose.project={realhost.project.name}",
            "-e", "ANCHORD_PROJECT=someone-else", "-e", "ANCHORD_VLAN_PARENT=eth0",
            "-v", "/var/run/docker.sock:/var/run/docker.sock:ro", anchord_image])
        harness.wait_until(
            lambda: json.loads(harness.run(["docker", "inspect", name]).stdout)[0]["State"][
                "Status"] == "exited", 30, message=f"{name} exiting")
        state = json.loads(harness.run(["docker", "inspect", name]).stdout)[0]["State"]
        assert state["ExitCode"] == 2, state
        logs = harness.run(["bash", "-c", f"docker logs {name} 2>&1"]).stdout
        lines = harness.json_log_lines(logs)
        assert len(lines) == 1, logs
        assert lines[0]["message"].startswith(
            f"ANCHORD_PROJECT='someone-else' is not this container's Compose project "
            f"'{realhost.project.name}'"), lines
    finally:
        harness.run(["docker", "rm", "-f", name], check=False)


def _open_ports(lan: RealHostLan, *argv: str) -> set[str]:
    """``port/proto`` nmap finds open from the LAN namespace (greppable output)."""
    out = harness.run(["ip", "netns", "exec", lan.lan_ns, "nmap", "-n", "-Pn", "-oG", "-",
                       *argv], timeout=600).stdout
    found = set()
    for line in out.splitlines():
        if "Ports:" in line:
            for item in line.split("Ports:", 1)[1].split(","):
                fields = item.strip().split("/")
                if len(fields) > 2 and fields[1] == "open":
                    found.add(f"{fields[0]}/{fields[2]}")
    return found


def test_a_lan_scan_finds_exactly_the_exposed_port(realhost: RealHostProject) -> None:
    """All 65 535 TCP ports and the common UDP ones of the project's addresses (the app
    listens on tcp+udp/8080, only tcp/8080 is labelled; anchord's own listeners), from the LAN:
    exactly tcp/8080 answers. (SPEC F-9)"""
    address6 = project_address6(realhost)
    for target, extra in ((realhost.address, ()), (address6, ("-6",))):
        tcp = _open_ports(realhost.lan, *extra, "-sT", "-p-", "--max-retries", "1", target)
        assert tcp == {"8080/tcp"}, (target, tcp)
        udp = _open_ports(realhost.lan, *extra, "-sU", "--top-ports", "50", "-p", "U:8080",
                          "--max-retries", "1", target)
        assert udp == set(), (target, udp)


def test_port_the_app_serves_but_no_label_exposes_is_refused(realhost: RealHostProject) -> None:
    # The app answers udp/8080 too, inside its namespace; only tcp/8080 is labelled.
    result = realhost.lan.query("udp", realhost.address, APP_PORT)
    assert "ConnectionRefused" in result.get("error", ""), result


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_egress_reaches_the_lan_with_the_project_address(
    realhost: RealHostProject, proto: str
) -> None:
    result = realhost.app_query(proto, LAN_ADDRESS, LISTEN_PORT)
    answer = reply(result)
    assert answer["service"] == "lan", result
    assert answer["peer"] == realhost.address, result
    assert result["local"] != realhost.address, result  # the app's own transit address


def test_a_restarted_service_anchor_is_exposed_without_waiting_for_its_healthcheck(
    realhost: RealHostProject,
) -> None:
    """The image's healthcheck runs every 5 s, first 5 s after the start: IPv4 exposure does
    not wait for it (the transit gateway is anchord's), so the LAN reaches the app as soon as
    the anchor and its app run again (S-3 with the image's own settings)."""
    from e2e.lifecycle_support import started_at

    harness.run(["docker", "restart", realhost.project.container_id("web-anchor")])
    # The app joined the old namespace: it must be restarted to join the new one (README).
    harness.run(["docker", "restart", "-t", "1", realhost.project.container_id("web")])
    result = harness.wait_until(
        lambda: realhost.lan.query("tcp", realhost.address, APP_PORT, 1.0).get("reply"),
        30, interval=0.05, message="tcp/8080 answering after the restart")
    answered = time.time()
    running = max(started_at(realhost.project, "web-anchor"),
                  started_at(realhost.project, "web"))
    health = realhost.project.state("web-anchor").get("Health", {}).get("Status")
    harness.figure(f"real host: service-anchor restart: tcp/8080 answered "
                   f"{answered - running:.2f}s after anchor and app ran again (its health: "
                   f"{health})")
    assert result, (answered - running, health)
    assert answered - running < 3.0, (answered - running, health)


def test_compose_restart_keeps_the_address_and_inbound_comes_back(
    realhost: RealHostProject,
) -> None:
    """`compose restart anchord`: the same address by INIT-REBOOT (no DISCOVER), inbound back."""
    lan = realhost.lan
    (lease,) = realhost.my_leases()
    discovers = lan.dnsmasq_log().count("DHCPDISCOVER")
    started = time.monotonic()
    realhost.project.compose("restart", "anchord", timeout=120)
    returned = time.monotonic() - started
    # Short tries: a SYN sent before the address is back is retransmitted only after 1 s, and
    # a 1 s try would count that timer instead of anchord's restart.
    harness.wait_until(lambda: "reply" in lan.query("tcp", lease.address, APP_PORT, 0.3), 60,
                       interval=0.05, message="tcp/8080 answering again after the restart")
    harness.figure(f"real host: `compose restart anchord` returned after {returned:.2f}s; "
                   f"inbound back {time.monotonic() - started:.2f}s after it was run")
    assert lan.dnsmasq_log().count("DHCPDISCOVER") == discovers, lan.dnsmasq_log()[-2000:]
    assert "DHCPRELEASE" not in lan.dnsmasq_log()
    assert [x.address for x in realhost.my_leases()] == [lease.address]


def test_compose_stop_keeps_the_lease_and_removes_the_child(
    realhost: RealHostProject,
) -> None:
    lan = realhost.lan
    lease = realhost.my_leases()[0]
    assert lan.parent_link()["promiscuity"] >= 1  # the child is still there
    seconds = realhost.project.stop()
    harness.figure(f"real host: compose stop took {seconds:.2f}s")
    state = realhost.project.state("anchord")
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    # The child went with the container's namespace: no macvlan port left on the host veth.
    harness.wait_until(lambda: lan.parent_link()["promiscuity"] == 0, 10,
                       message="the host veth without the child")
    # A real server that reboots keeps its address: no release, the server keeps the lease.
    assert "DHCPRELEASE" not in lan.dnsmasq_log()
    assert [x.address for x in realhost.my_leases()] == [lease.address]
    lines = harness.json_log_lines(realhost.project.logs("anchord"))
    said = [line["message"] for line in lines]
    assert any(m.startswith("container shutdown: removing the child; the leases are kept")
               for m in said), said[-20:]
    stopped = [m for m in said if m == "anchord stopped"]
    assert len(stopped) == 2, stopped  # the restart above, and this stop
