"""Discovery as a library against a real dockerd: what it sees, decides and survives.

Each test makes its own Compose-labelled project (networks and containers) and removes
it. Discovery runs in a thread as the worker would; the test changes Docker and waits,
with a deadline, for the published table to follow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import docker
import pytest

from bus.events import BackendsDesired
from tests.integration.discovery_support import (
    Driver,
    Project,
    SocketProxy,
    config,
)
from tests.netns import wait_until

# docker-py's connection pool sometimes drops a finished event-stream socket to the garbage
# collector instead of closing it; under load that ResourceWarning lands in a random test.
# It is a test-client artefact (the worker runs in its own process and is checked there).
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def anchord(p: Project, *networks: str) -> str:
    """The container that plays the anchord container of the project."""
    return p.container("anchord", networks=networks)


def by_container(d: BackendsDesired | None) -> dict[str, set[tuple[int, str, int, int, str]]]:
    out: dict[str, set[tuple[int, str, int, int, str]]] = {}
    for e in d.entries if d else ():
        out.setdefault(e.container, set()).add((e.family, e.proto, e.first, e.last, e.address))
    return out


def test_sees_its_own_project_only_and_reports_transit(proj: Project,
                                                       api: docker.APIClient) -> None:
    transit = proj.network("transit", ipv6=True)
    lan = proj.network("lan")
    me = anchord(proj, lan, transit)
    web = proj.container("web", networks=(transit,), expose="tcp/80, tcp/8000-8010")
    quiet = proj.container("quiet", networks=(transit,), expose="udp/53",
                           labels={"anchord.expose.v6": "off"})
    proj.container("plain", networks=(transit,))
    # Another project's labelled container on the very same network must be ignored.
    other = proj.container("intruder", networks=(transit,), expose="tcp/25",
                           project=proj.name + "x")
    with Driver(config(proj.name), me) as drv:
        d = drv.wait(lambda d: d is not None and len(d.entries) == 5, what="first table")
        web4, web6 = proj.address(web, transit), proj.address(web, transit, 6)
        assert web6, "the transit network has IPv6"
        assert by_container(d) == {
            proj.name_of(web): {(4, "tcp", 80, 80, web4), (4, "tcp", 8000, 8010, web4),
                                (6, "tcp", 80, 80, web6), (6, "tcp", 8000, 8010, web6)},
            proj.name_of(quiet): {(4, "udp", 53, 53, proj.address(quiet, transit))},
        }
        assert d.rejections == ()
        assert d.transit_network == transit
        assert d.transit_v4 == proj.address(me, transit)
        assert d.transit_v6 == proj.address(me, transit, 6)
        assert proj.name_of(other) not in {e.container for e in d.entries}
        # The LAN parent is a Compose network: discovery maps it to the anchord MAC on it.
        nm = drv.discovery.network_map
        assert nm is not None
        lan_att = next(n for n in nm.networks if n.alias == "lan")
        mine = api.inspect_container(me)["NetworkSettings"]["Networks"]
        assert lan_att.network == lan
        assert lan_att.mac == mine[lan]["MacAddress"]
        assert {n.alias for n in nm.networks} == {"lan", "transit"}
        assert drv.discovery.conditions()[0].ok
        assert drv.discovery.counters().connected


def test_transit_is_the_network_shared_with_labelled_containers(proj: Project) -> None:
    a, b = proj.network("aaa"), proj.network("zzz")
    me = anchord(proj, a, b)
    # "zzz" sorts last but is the one the labelled containers share with anchord.
    proj.container("one", networks=(b,), expose="tcp/1")
    proj.container("two", networks=(b, a), expose="tcp/2")
    proj.container("app", networks=(a,))
    with Driver(config(proj.name), me) as drv:
        d = drv.wait(lambda d: d is not None and len(d.entries) == 2, what="table")
        assert d.transit_network == b


def test_follows_restarts_and_address_changes(proj: Project, api: docker.APIClient) -> None:
    transit = proj.network("transit", subnet=True)
    me = anchord(proj, transit)
    web = proj.container("web", networks=(transit,), expose="tcp/443")
    with Driver(config(proj.name), me) as drv:
        name = proj.name_of(web)
        drv.wait(lambda d: d and by_container(d).get(name), what="web exposed")
        gen = drv.desired.generation  # type: ignore[union-attr]

        api.stop(web)  # SIGKILL stop signal: immediate
        drv.wait(lambda d: d.entries == (), timeout=2, what="web gone after stop")
        assert drv.desired.cause == "event"  # type: ignore[union-attr]
        assert drv.desired.event_time > 0  # type: ignore[union-attr]
        assert drv.desired.generation > gen  # type: ignore[union-attr]
        api.start(web)
        drv.wait(lambda d: by_container(d).get(name) == {
            (4, "tcp", 443, 443, proj.address(web, transit))}, timeout=2, what="back")

        api.restart(web, timeout=0)
        drv.wait(lambda d: by_container(d).get(name) == {
            (4, "tcp", 443, 443, proj.address(web, transit))}, timeout=3, what="restarted")

        # Move it to another address on the same network: disconnect, connect with a new IP.
        old = proj.address(web, transit)
        subnet = api.inspect_network(transit)["IPAM"]["Config"][0]["Subnet"]
        new = subnet.rsplit(".", 1)[0] + ".200"
        assert new != old
        api.disconnect_container_from_network(web, transit)
        api.connect_container_to_network(web, transit, ipv4_address=new)
        drv.wait(lambda d: by_container(d).get(name) == {(4, "tcp", 443, 443, new)},
                 timeout=2, what="the new address")

        api.remove_container(web, force=True)
        drv.wait(lambda d: d.entries == (), timeout=2, what="web destroyed")


def test_health_gates_exposure(proj: Project, api: docker.APIClient) -> None:
    transit = proj.network("transit")
    me = anchord(proj, transit)
    db = proj.container("db", networks=(transit,), expose="tcp/5432", healthcheck=True)
    with Driver(config(proj.name), me) as drv:
        drv.wait(lambda d: d is not None and d.generation > 0, what="first table")
        wait_until(lambda: api.inspect_container(db)["State"]["Health"]["Status"] != "starting",
                   timeout=5, what="first health verdict")
        assert drv.desired.entries == ()  # type: ignore[union-attr]
        ex = api.exec_create(db, ["/usr/bin/touch", "/tmp/healthy"])
        api.exec_start(ex)
        drv.wait(lambda d: len(d.entries) == 1, timeout=5, what="healthy -> exposed")
        assert drv.desired.cause == "event"  # type: ignore[union-attr]
        ex = api.exec_create(db, ["/usr/bin/rm", "/tmp/healthy"])
        api.exec_start(ex)
        drv.wait(lambda d: d.entries == (), timeout=5, what="unhealthy -> withdrawn")


def test_conflict_first_created_keeps_the_port(proj: Project, api: docker.APIClient) -> None:
    transit = proj.network("transit")
    me = anchord(proj, transit)
    first = proj.container("first", networks=(transit,), expose="tcp/25", start=False)
    second = proj.container("second", networks=(transit,), expose="tcp/25,tcp/587")
    with Driver(config(proj.name), me) as drv:
        n1, n2 = proj.name_of(first), proj.name_of(second)
        # Only the second runs: it has the port.
        drv.wait(lambda d: by_container(d).get(n2) and len(d.entries) == 2, what="second")
        # The first-created starts later: it takes tcp/25, the other is rejected, reported.
        api.start(first)
        d = drv.wait(lambda d: by_container(d).get(n1), timeout=2, what="first wins")
        assert by_container(d) == {n1: {(4, "tcp", 25, 25, proj.address(first, transit))},
                                   n2: {(4, "tcp", 587, 587, proj.address(second, transit))}}
        (r,) = d.rejections
        assert r.kind == "conflict"
        assert r.container == n2
        assert "tcp/25" in r.reason
        assert n1 in r.reason
        # Restarting the loser (the latest writer) changes nothing: no last-writer-wins.
        api.restart(second, timeout=0)
        wait_until(lambda: api.inspect_container(second)["State"]["Running"], timeout=5)
        back = drv.wait(lambda d: by_container(d).get(n2), timeout=2, what="second back")
        assert {e.container for e in back.entries if e.first == 25} == {n1}
        assert [r.kind for r in back.rejections] == ["conflict"]


def test_bad_label_reported_and_others_unaffected(proj: Project) -> None:
    transit = proj.network("transit")
    me = anchord(proj, transit)
    good = proj.container("good", networks=(transit,), expose="tcp/80")
    bad = proj.container("bad", networks=(transit,), expose="tcp/81, udp/0")
    worse = proj.container("worse", networks=(transit,), expose="tcp/90",
                           labels={"anchord.expose.v6": "maybe"})
    with Driver(config(proj.name), me) as drv:
        d = drv.wait(lambda d: d is not None and len(d.rejections) == 2, what="rejections")
        assert set(by_container(d)) == {proj.name_of(good)}
        reasons = {r.container: r for r in d.rejections}
        assert reasons[proj.name_of(bad)].kind == "label"
        assert "'udp/0'" in reasons[proj.name_of(bad)].reason
        assert proj.name_of(bad) in reasons[proj.name_of(bad)].reason
        assert "anchord.expose.v6" in reasons[proj.name_of(worse)].reason


def test_label_without_transit_address_is_reported(proj: Project) -> None:
    transit, elsewhere = proj.network("transit"), proj.network("backend")
    me = anchord(proj, transit)
    owner = proj.container("web-anchor", networks=(transit,), expose="tcp/443")
    # The usual mistake: the label on the app that joined the anchor's namespace.
    app = proj.container("app", expose="tcp/8080", network_mode=f"container:{owner}")
    # And a labelled container on a network anchord is not on.
    lost = proj.container("lost", networks=(elsewhere,), expose="tcp/9000")
    with Driver(config(proj.name), me) as drv:
        d = drv.wait(lambda d: d is not None and len(d.rejections) == 2, what="rejections")
        assert set(by_container(d)) == {proj.name_of(owner)}
        r = {r.container: r for r in d.rejections}
        assert r[proj.name_of(app)].kind == "no-transit"
        assert "belongs on the namespace owner" in r[proj.name_of(app)].reason
        assert proj.name_of(owner) in r[proj.name_of(app)].reason
        assert r[proj.name_of(lost)].kind == "no-transit"
        assert transit in r[proj.name_of(lost)].reason


def test_docker_api_loss_keeps_last_table_and_recovers(proj: Project,
                                                       api: docker.APIClient) -> None:
    transit = proj.network("transit")
    me = anchord(proj, transit)
    web = proj.container("web", networks=(transit,), expose="tcp/80")
    mail = proj.container("mail", networks=(transit,), expose="tcp/25")
    with tempfile.TemporaryDirectory() as tmp:
        proxy = SocketProxy(Path(tmp))
        proxy.start()
        try:
            # A short poll interval: failing polls must not empty the table either.
            cfg = config(proj.name, docker_host=proxy.docker_host, poll_interval=0.3)
            with Driver(cfg, me) as drv:
                before = drv.wait(lambda d: d is not None and len(d.entries) == 2, what="table")
                proxy.stop()
                wait_until(lambda: not drv.discovery.connected, timeout=5, what="loss noticed")
                errors = drv.discovery.errors
                # Several failed polls later the table is still the last good one.
                wait_until(lambda: drv.discovery.errors >= errors + 3, timeout=10,
                           what="more failed attempts")
                assert drv.desired == before
                assert drv.discovery.conditions()[0].ok  # answered once: still ready
                # The world changes while the proxy is down ...
                api.stop(mail)
                proxy.start()
                # ... and discovery catches up once the API answers again.
                d = drv.wait(lambda d: set(by_container(d)) == {proj.name_of(web)},
                             timeout=15, what="recovery after the proxy returned")
                assert d.generation > before.generation
                wait_until(lambda: drv.discovery.connected, timeout=5, what="connected")
                # And events flow again on the new stream (the 0.3 s poll may publish the
                # change first, so look at the event counter rather than the cause).
                seen = drv.discovery.events
                api.start(mail)
                drv.wait(lambda d: len(d.entries) == 2, timeout=3, what="mail back")
                wait_until(lambda: drv.discovery.events > seen, timeout=3,
                           what="events after recovery")
        finally:
            proxy.stop()


def test_no_answer_at_start_is_not_ready_and_publishes_nothing(proj: Project) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(proj.name, docker_host=f"unix://{tmp}/nothing.sock", poll_interval=0.2)
        with Driver(cfg, "0" * 12) as drv:
            wait_until(lambda: drv.discovery.errors >= 3, timeout=10, what="failed attempts")
            assert drv.desired is None
            (cond,) = drv.discovery.conditions()
            assert cond.key == "docker"
            assert not cond.ok
            assert "nothing.sock" in cond.detail
