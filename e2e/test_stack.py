"""Full stack under Compose: a LAN with a real DHCP server, one project, LAN clients.

Owns the first acceptance scenarios of SPEC as a LAN host sees them: S-1 (cold start: the
labelled service reachable from the LAN within 10 s of ``compose up`` returning, with the
image's own healthcheck settings; the DHCP server's lease table naming the project), S-2 (the
app sees the LAN client's own address, TCP and UDP, IPv4 and IPv6), S-7 (one anchor, three
ports), S-8 (IPv6 mirroring, and ``anchord.expose.v6: off``), F-9 (a port nobody exposes is
closed), F-8a (hairpin), F-10 (egress leaves with the project's address, v4 and v6) and F-20
(``anchord status`` and ``--json`` show the lease, the ports and the workers).

Compose file: e2e/compose/stack/compose.yaml (dnsmasq for DHCPv4 + RA/DHCPv6 + DNS, anchord,
two service-anchors with apps that answer with the peer address, a LAN client), started once
for the module by e2e/stack_support.py; every test reads it and changes nothing. All traffic
stays on the project's two ``internal: true`` bridges.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from e2e import stack_support
from e2e.harness import parse_supervisor_status, wait_until
from e2e.stack_support import CLIENT_V4, CLIENT_V6, Stack, reply

# SPEC S-1: reachable from another LAN host within 10 s of `compose up` returning, with the
# image's own healthcheck settings (exposure does not wait for a healthcheck). Asserted.
SPEC_COLD_START = 10.0
COLD_START_BUDGET = SPEC_COLD_START
WORKERS = ("bus", "discovery", "dhcp", "nat-writer", "conntrack-flusher", "metrics")
MAIL_PORTS = (25, 465, 587)


@pytest.fixture(scope="module")
def stack(anchord_image: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    stack_support.build_lan_image()
    started = stack_support.start_stack(anchord_image)
    failed_before = request.session.testsfailed
    yield started
    if request.session.testsfailed != failed_before:
        print(started.project.dump())  # shown under "Captured stdout teardown"
    started.project.down()


@pytest.fixture(scope="module")
def v4(stack: Stack) -> str:
    return stack.project_address(4)


@pytest.fixture(scope="module")
def v6(stack: Stack) -> str:
    # The stateful DHCPv6 lease follows the RA, a moment after the v4 one; the server writes
    # its lease table at the Reply, and the address is then tentative on anchord-ext for up to
    # ~2 s (duplicate address detection). Wait until a LAN host can use it.
    address = wait_until(
        lambda: stack.project_address(6),
        20,
        interval=0.5,
        message="the project's DHCPv6 lease in dnsmasq's lease table",
    )
    wait_until(
        lambda: "reply" in stack.query("client", "tcp", address, 8080, timeout=1.0),
        20,
        interval=0.3,
        message=f"tcp/8080 answering on the project's IPv6 address {address}",
    )
    return address


def test_s1_cold_start_reachable_and_lease_names_the_project(
    stack: Stack, v4: str
) -> None:
    verdict = stack.cold_start_verdict
    assert verdict.startswith(f"the app saw you as {CLIENT_V4};"), verdict
    assert verdict.endswith(f"the project got {v4} from DHCP"), verdict
    print(
        f"cold start: reachable {stack.cold_start_seconds:.2f}s after compose up returned"
        f" (SPEC S-1: {SPEC_COLD_START:g}s, asserted here: {COLD_START_BUDGET:g}s)"
    )
    assert stack.cold_start_seconds <= COLD_START_BUDGET, (
        f"reachable only {stack.cold_start_seconds:.1f}s after compose up returned"
    )
    leases = [lease for lease in stack.leases() if lease.family == 4]
    mine = [lease for lease in leases if lease.hostname == stack.hostname]
    assert len(mine) == 1, leases
    # The MAC is the project's (SPEC F-2: 02:42 + sha256(project)[:4]).
    assert mine[0].identifier.startswith("02:42:"), mine


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_s2_app_sees_the_lan_client_v4(stack: Stack, v4: str, proto: str) -> None:
    result = stack.query("client", proto, v4, 8080)
    answer = reply(result)
    assert answer["service"] == "web", result
    assert answer["peer"] == CLIENT_V4 == result["local"], result


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_s2_app_sees_the_lan_client_v6(stack: Stack, v6: str, proto: str) -> None:
    result = stack.query("client", proto, v6, 8080)
    answer = reply(result)
    assert answer["service"] == "web", result
    assert answer["peer"] == CLIENT_V6 == result["local"], result


@pytest.mark.parametrize("port", MAIL_PORTS)
def test_s7_one_anchor_three_ports_with_real_sources(stack: Stack, v4: str, port: int) -> None:
    result = stack.query("client", "tcp", v4, port)
    answer = reply(result)
    assert (answer["service"], answer["port"]) == ("mail", port), result
    assert answer["peer"] == CLIENT_V4, result


def test_s8_v6_mirrors_v4_to_the_same_container(stack: Stack, v4: str, v6: str) -> None:
    over_v4 = reply(stack.query("client", "tcp", v4, 8080))
    over_v6 = reply(stack.query("client", "tcp", v6, 8080))
    assert over_v4["host"] == over_v6["host"], (over_v4, over_v6)
    assert (over_v4["peer"], over_v6["peer"]) == (CLIENT_V4, CLIENT_V6)


@pytest.mark.parametrize("port", MAIL_PORTS)
def test_s8_expose_v6_off_leaves_v6_closed(stack: Stack, v6: str, port: int) -> None:
    result = stack.query("client", "tcp", v6, port)
    assert "ConnectionRefused" in result.get("error", ""), result


@pytest.mark.parametrize(("proto", "port"), [("tcp", 8081), ("udp", 8081), ("udp", 25)])
def test_f9_unexposed_port_is_closed_like_on_a_real_server(
    stack: Stack, v4: str, proto: str, port: int
) -> None:
    # TCP: reset; UDP: ICMP port unreachable. Both show as "connection refused", at once.
    result = stack.query("client", proto, v4, port)
    assert "ConnectionRefused" in result.get("error", ""), result


@pytest.mark.parametrize(("service", "proto"), [("web", "tcp"), ("web", "udp"), ("mail", "tcp")])
def test_f10_egress_leaves_with_the_project_address_v4(
    stack: Stack, v4: str, service: str, proto: str
) -> None:
    result = stack.query(service, proto, CLIENT_V4, 9000)
    answer = reply(result)
    assert answer["service"] == "client", result
    assert answer["peer"] == v4, result


@pytest.mark.parametrize(("service", "proto"), [("web", "tcp"), ("web", "udp"), ("mail", "tcp")])
def test_f10_egress_leaves_with_the_project_address_v6(
    stack: Stack, v6: str, service: str, proto: str
) -> None:
    result = stack.query(service, proto, CLIENT_V6, 9000)
    answer = reply(result)
    assert answer["service"] == "client", result
    assert answer["peer"] == v6, result


def test_f8a_hairpin_app_reaches_another_service_on_the_project_address(
    stack: Stack, v4: str
) -> None:
    answer = reply(stack.query("web", "tcp", v4, 25))
    assert (answer["service"], answer["port"]) == ("mail", 25), answer


def _ports(status: dict[str, Any]) -> set[tuple[int, str, int, int, str]]:
    return {
        (p["family"], p["proto"], p["first"], p["last"], p["service"]) for p in status["ports"]
    }


def test_f20_status_json_shows_lease_ports_and_running_workers(
    stack: Stack, v4: str, v6: str
) -> None:
    # The v6 lease reached the DHCP server; wait until anchord's status has caught up too.
    status = wait_until(
        lambda: (s := stack.status_json())["leases"].get("ipv6") and s,
        10,
        interval=0.5,
        message="an ipv6 lease in anchord status --json",
    )
    assert status["ready"] is True, status["unmet"]
    lease4 = status["leases"]["ipv4"]
    assert lease4["address"].split("/")[0] == v4, lease4
    assert lease4["hostname"] == stack.hostname, lease4
    assert lease4["source"] == "dhcp", lease4
    assert 0 < lease4["remaining"] <= lease4["lease_time"], lease4
    assert status["leases"]["ipv6"]["address"].split("/")[0] == v6, status["leases"]
    ports = _ports(status)
    expected = {(4, "tcp", 8080, 8080, "web-anchor"), (4, "udp", 8080, 8080, "web-anchor"),
                (6, "tcp", 8080, 8080, "web-anchor"), (6, "udp", 8080, 8080, "web-anchor")}
    expected |= {(4, "tcp", p, p, "mail-anchor") for p in MAIL_PORTS}
    assert ports == expected, status["ports"]
    assert status["rejections"] == [], status["rejections"]
    states = {p["name"]: p["state"] for p in status["processes"]}
    assert all(states.get(w) == "RUNNING" for w in WORKERS), states


def test_f20_status_text_and_supervisorctl(stack: Stack, v4: str) -> None:
    text = stack.status_text()
    assert v4 in text, text
    for port in ("tcp/8080", "udp/8080", "tcp/25", "tcp/465", "tcp/587"):
        assert port in text, text
    for worker in WORKERS:
        assert any(
            line.split()[:2] == [worker, "RUNNING"] for line in text.splitlines()
        ), f"{worker} RUNNING not in:\n{text}"
    states = parse_supervisor_status(stack.exec("anchord", "supervisorctl", "status", check=False))
    assert {w: states.get(w) for w in WORKERS} == dict.fromkeys(WORKERS, "RUNNING"), states
