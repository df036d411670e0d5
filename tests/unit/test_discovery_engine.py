"""Unit tests of the discovery engine and of reading Docker's documents, with fakes.

No Docker here: a fake API returns inspect documents shaped like Docker's, a fake pump
hands over event-thread reports, a fake clock drives the poll timer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from anchord.config import NetworkAnchorConfig
from anchord.docker_events import PumpReport
from anchord.docker_inspect import (
    NetworkFacts,
    choose_transit,
    event_time,
    find_self,
    parse_time,
    relevant_container,
    transition_time,
)
from anchord.docker_reach import DockerUnavailable
from workers.discovery import Discovery

P = "proj"


def info(cid: str, name: str, *, created: str = "2026-01-01T00:00:00.1Z",
         labels: Mapping[str, str] | None = None, running: bool = True,
         networks: Mapping[str, tuple[str, str, str]] | None = None, health: str = "",
         mode: str = "", started: str = "2026-01-01T00:00:01Z",
         project: str = P) -> dict[str, Any]:
    state: dict[str, Any] = {"Running": running, "Paused": False, "Restarting": False,
                             "StartedAt": started, "FinishedAt": "0001-01-01T00:00:00Z"}
    if health:
        state["Health"] = {"Status": health}
    return {
        "Id": cid, "Name": "/" + name, "Created": created, "State": state,
        "Config": {"Labels": {"com.docker.compose.project": project,
                              "com.docker.compose.service": name, **(labels or {})}},
        "HostConfig": {"NetworkMode": mode or "bridge"},
        "NetworkSettings": {"Networks": {
            n: {"IPAddress": ip if running else "", "GlobalIPv6Address": ip6 if running else "",
                "IPPrefixLen": 24 if ip else 0, "GlobalIPv6PrefixLen": 64 if ip6 else 0,
                "MacAddress": mac, "NetworkID": "id-" + n}
            for n, (ip, ip6, mac) in (networks or {}).items()}},
    }


ANCHORD = info("a" * 64, "proj-anchord-1", networks={
    "proj_lan": ("192.168.1.2", "", "02:42:00:00:00:01"),
    "proj_transit": ("10.0.0.2", "fd00::2", "02:42:00:00:00:02")})


def web(ip: str = "10.0.0.3", **kw: Any) -> dict[str, Any]:
    return info("b" * 64, "proj-web-1", labels={"anchord.expose": "tcp/443"},
                networks={"proj_transit": (ip, "", "02:42:00:00:00:03")}, **kw)


class FakeApi:
    def __init__(self, *infos: dict[str, Any]) -> None:
        self.docs = {i["Id"]: i for i in infos}
        self.down = False
        self.inspects = 0

    def _check(self) -> None:
        if self.down:
            raise DockerUnavailable("unix:///fake.sock: connection refused")

    def list_project(self) -> dict[str, Any]:
        self._check()
        return {k: v for k, v in self.docs.items()
                if v["Config"]["Labels"]["com.docker.compose.project"] == P}

    def inspect(self, cid: str) -> dict[str, Any] | None:
        self._check()
        self.inspects += 1
        return self.docs.get(cid)

    def network_facts(self, network_id: str) -> NetworkFacts | None:
        self._check()
        return NetworkFacts(
            labels={"com.docker.compose.network": network_id.removeprefix("id-proj_")},
            internal=True, gateway_free=False)

    def close(self) -> None:
        pass


class FakePump:
    def __init__(self) -> None:
        self.reports: list[PumpReport] = []

    def drain(self) -> list[PumpReport]:
        out, self.reports = self.reports, []
        return out

    def fileno(self) -> int:
        return -1

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True


class Rig:
    def __init__(self, *infos: dict[str, Any], vlan_parent: str = "lan",
                 run_dir: Path | None = None) -> None:
        self.now = 1000.0
        self.api = FakeApi(*infos)
        self.pump = FakePump()
        self.changes = 0
        # Discovery keeps its route reports in the run directory; without one given, a path
        # that does not exist (nothing read, nothing written: memory only).
        cfg = NetworkAnchorConfig(project=P, vlan_parent=vlan_parent, poll_interval=30.0,
                                  run_dir=run_dir or Path("/nonexistent/anchord-test-run"))
        self.d = Discovery(cfg, on_change=self._changed, hostname="nothing",
                           macs=lambda: {"02:42:00:00:00:02"}, clock=lambda: self.now)
        self.d.api = self.api  # type: ignore[assignment]
        self.d.pump = self.pump  # type: ignore[assignment]
        self.d.start()

    def _changed(self) -> None:
        self.changes += 1

    def subscribe(self) -> None:
        self.pump.reports.append(PumpReport("subscribed"))
        self.d.step()

    def event(self, cid: str, action: str, t: float, kind: str = "container",
              project: str = P, network: str = "proj_transit") -> None:
        # As Docker sends them: a network event's actor is the network.
        actor = {"ID": cid, "Attributes": {"com.docker.compose.project": project}} \
            if kind == "container" else \
            {"ID": "id-" + network, "Attributes": {"container": cid, "name": network}}
        self.pump.reports.append(PumpReport("event", event={
            "Type": kind, "Action": action, "Actor": actor, "timeNano": int(t * 1e9)}))
        self.d.step()


def test_first_list_after_subscription_then_events() -> None:
    r = Rig(ANCHORD, web())
    assert r.d.desired is None
    r.subscribe()
    d = r.d.desired
    assert d is not None
    assert d.cause == "poll"
    assert d.event_time == 0.0
    assert [(e.address, e.first) for e in d.entries] == [("10.0.0.3", 443)]
    assert (d.transit_network, d.transit_v4, d.transit_v6) == (
        "proj_transit", "10.0.0.2", "fd00::2")
    assert r.d.self_id == ANCHORD["Id"]  # found by MAC
    nm = r.d.network_map
    assert nm is not None
    assert {(n.alias, n.mac) for n in nm.networks} == {
        ("lan", "02:42:00:00:00:01"), ("transit", "02:42:00:00:00:02")}

    # The backend moves: one event, a new generation carrying that event's time.
    r.api.docs[web()["Id"]] = web("10.0.0.9")
    r.event(web()["Id"], "start", 1234.5)
    d2 = r.d.desired
    assert d2 is not None
    assert d2.generation > d.generation
    assert d2.cause == "event"
    assert d2.event_time == pytest.approx(1234.5)
    assert d2.entries[0].address == "10.0.0.9"


def test_nothing_changed_means_no_new_generation() -> None:
    r = Rig(ANCHORD, web())
    r.subscribe()
    gen, changes = r.d.desired.generation, r.changes  # type: ignore[union-attr]
    r.event(web()["Id"], "update", 1.0)  # same document
    r.now += 31  # the safety-net poll finds the same state too
    r.d.step()
    assert r.d.polls == 2
    assert r.d.desired.generation == gen  # type: ignore[union-attr]
    assert r.changes == changes


def test_api_loss_keeps_the_table_and_recovers() -> None:
    r = Rig(ANCHORD, web())
    r.subscribe()
    before = r.d.desired
    r.api.down = True
    r.pump.reports.append(PumpReport("lost", error="the event stream ended"))
    r.d.step()
    r.now += 31
    r.d.step()  # poll fails
    assert r.d.desired is before
    assert not r.d.connected
    assert r.d.errors == 2
    cond, found = r.d.conditions()
    assert cond.ok
    assert "reconnecting" in cond.detail
    assert found.key == "self", found
    assert found.ok, found
    assert r.d.counters().connected is False
    # Retries back off, but stay within seconds.
    assert 0 < r.d.timeout() <= 10
    del r.api.docs[web()["Id"]]
    r.api.down = False
    r.subscribe()
    assert r.d.connected
    assert r.d.desired is not None
    assert r.d.desired.entries == ()


def test_not_finding_itself_is_not_ready() -> None:
    """A wrong project name: Docker answers, anchord is not among the project's containers."""
    r = Rig(web())
    r.subscribe()
    docker, found = r.d.conditions()
    assert docker.ok
    assert docker.detail == "connected"
    assert found.key == "self", found
    assert not found.ok, found
    assert "not among the containers of project 'proj'" in found.detail, found
    assert "no container of the project has a MAC" in found.detail, found


def test_never_answered_is_not_ready() -> None:
    r = Rig(ANCHORD)
    r.api.down = True
    r.now += 3
    r.d.step()
    (cond,) = r.d.conditions()
    assert cond.key == "docker"
    assert not cond.ok
    assert "connection refused" in cond.detail
    assert r.d.desired is None


def test_other_projects_are_not_inspected_twice() -> None:
    stranger = info("c" * 64, "other-web-1", project="other",
                    labels={"anchord.expose": "tcp/80"},
                    networks={"proj_transit": ("10.0.0.7", "", "02:42:00:00:00:07")})
    r = Rig(ANCHORD, stranger)
    r.subscribe()
    r.event(stranger["Id"], "start", 1.0, project="other")  # container event: label filter
    assert r.api.inspects == 0
    r.event(stranger["Id"], "connect", 2.0, kind="network")  # network event: read once
    r.event(stranger["Id"], "disconnect", 3.0, kind="network")
    assert r.api.inspects == 1
    assert r.d.desired is not None
    assert r.d.desired.entries == ()


def test_network_events_of_unknown_containers_elsewhere_are_not_inspected() -> None:
    """A busy host connects containers to networks all the time: an unknown container
    joining a network the anchord container is not on is none of discovery's business
    (an inspect would wait for that container's whole start)."""
    stranger = info("c" * 64, "other-web-1", project="other",
                    networks={"other_net": ("10.9.0.7", "", "02:42:00:00:00:07")})
    mine = web()
    r = Rig(ANCHORD, stranger, mine)
    r.subscribe()
    before = r.api.inspects
    r.event(stranger["Id"], "connect", 2.0, kind="network", network="other_net")
    assert r.api.inspects == before
    assert r.d.events == 0
    # A known container is followed on any network; an unknown one joining ours is read.
    r.event(mine["Id"], "connect", 3.0, kind="network", network="other_net")
    r.event("d" * 64, "connect", 4.0, kind="network", network="proj_transit")
    assert r.api.inspects == before + 2
    assert r.d.events == 2


def test_rebuild_time_is_the_transition_not_an_earlier_idle_event() -> None:
    stopped = web(running=False)
    r = Rig(ANCHORD, stopped)
    r.subscribe()
    # A "stop" read late: the inspect already shows the container started again at 50.0.
    r.api.docs[stopped["Id"]] = web(started="1970-01-01T00:00:50Z")
    r.event(stopped["Id"], "stop", 40.0)
    d = r.d.desired
    assert d is not None
    assert len(d.entries) == 1
    assert d.event_time == pytest.approx(50.0)


def test_die_withdraws_at_once_without_waiting_on_an_inspect() -> None:
    """A "die" is proof enough: no inspect (it would wait for Docker's whole stop), the
    table loses the entry with the die's time; the "stop" after it re-reads and agrees."""
    running = web()
    r = Rig(ANCHORD, running)
    r.subscribe()
    assert r.d.desired is not None
    assert len(r.d.desired.entries) == 1
    generation, before = r.d.desired.generation, r.api.inspects
    r.event(running["Id"], "kill", 59.0)
    r.event(running["Id"], "die", 60.0)
    d = r.d.desired
    assert r.api.inspects == before
    assert d.generation > generation
    assert d.entries == ()
    assert d.event_time == pytest.approx(60.0)
    r.api.docs[running["Id"]] = web(running=False)
    r.event(running["Id"], "stop", 60.5)
    assert r.api.inspects == before + 1
    assert r.d.desired.generation == d.generation


def test_self_not_found_reports_and_later_keeps_the_last_table() -> None:
    r = Rig(ANCHORD, web())
    r.d._macs = set  # nothing matches: not our namespace
    r.subscribe()
    d = r.d.desired
    assert d is not None
    assert d.entries == ()
    assert d.transit_network == ""
    assert [x.kind for x in d.rejections] == ["no-transit"]
    r.d._macs = lambda: {"02:42:00:00:00:02"}
    r.now += 31
    r.d.step()
    good = r.d.desired
    assert good is not None
    assert len(good.entries) == 1
    # Our own container vanishing from a list (a glitch) must not replace a good table.
    del r.api.docs[ANCHORD["Id"]]
    r.now += 31
    r.d.step()
    assert r.d.desired is good


def test_vlan_parent_network_is_never_transit() -> None:
    # The labelled container is on the LAN network only: it is not a transit candidate.
    lan_web = info("d" * 64, "proj-lanweb-1", labels={"anchord.expose": "tcp/80"},
                   networks={"proj_lan": ("192.168.1.9", "", "02:42:00:00:00:09")})
    r = Rig(ANCHORD, lan_web)
    r.subscribe()
    d = r.d.desired
    assert d is not None
    assert d.transit_network == "proj_transit"
    assert [x.kind for x in d.rejections] == ["no-transit"]


# --- reading Docker's documents --------------------------------------------------------------


def test_find_self_by_mac_then_by_host_name() -> None:
    other = info("e" * 64, "proj-x-1", networks={"proj_transit": ("10.0.0.5", "", "02:aa")})
    found, why = find_self([other, ANCHORD], {"02:42:00:00:00:01"}, "whatever")
    assert found is ANCHORD
    assert "MAC 02:42:00:00:00:01" in why
    found, why = find_self([other, ANCHORD], set(), "a" * 12)
    assert found is ANCHORD
    assert "host name" in why
    found, why = find_self([other, ANCHORD], set(), "anchord")  # custom hostname, no MAC
    assert found is None
    assert "anchord" in why


def test_choose_transit_by_count_then_name() -> None:
    me = info("f" * 64, "me", networks={"p_a": ("1", "", "m1"), "p_b": ("2", "", "m2"),
                                        "p_lan": ("3", "", "m3")})

    def lab(cid: str, *nets: str) -> dict[str, Any]:
        return info(cid, cid, labels={"anchord.expose": "tcp/1"},
                    networks={n: ("9", "", "m") for n in nets})

    assert choose_transit(me, [lab("1", "p_b"), lab("2", "p_a", "p_b")], ["p_lan"])[0] == "p_b"
    assert choose_transit(me, [lab("1", "p_b"), lab("2", "p_a")], ["p_lan"])[0] == "p_a"
    # Labelled containers on the LAN only do not make it transit.
    assert choose_transit(me, [lab("1", "p_lan")], ["p_lan"])[0] == ""
    alone = info("g" * 64, "me", networks={"p_a": ("1", "", "m1"), "p_lan": ("3", "", "m3")})
    name, why = choose_transit(alone, [], ["p_lan"])
    assert name == "p_a"
    assert "only network" in why


def test_relevant_events() -> None:
    def ev(kind: str, action: str, **attrs: str) -> dict[str, Any]:
        return {"Type": kind, "Action": action, "Actor": {"ID": "x", "Attributes": attrs}}

    mine = {"com.docker.compose.project": P}
    for action in ("start", "die", "stop", "destroy", "health_status: healthy", "pause"):
        assert relevant_container(ev("container", action, **mine), P) == "x"
    assert relevant_container(ev("container", "exec_start: sh -c true", **mine), P) is None
    assert relevant_container(ev("container", "kill", **mine), P) is None  # "die" follows
    assert relevant_container(ev("container", "start"), P) is None
    assert relevant_container(ev("network", "connect", container="c1"), P) == "c1"
    assert relevant_container(ev("network", "create"), P) is None
    assert relevant_container(ev("image", "pull"), P) is None


def test_times() -> None:
    assert parse_time("1970-01-01T00:00:01.5Z") == 1.5
    assert parse_time("1970-01-01T00:01:00.000000001Z") == pytest.approx(60.000000001)
    assert parse_time("0001-01-01T00:00:00Z") == 0.0
    assert parse_time("garbage") == 0.0
    assert event_time({"timeNano": 1_500_000_000, "time": 1}) == 1.5
    assert event_time({"time": 7}) == 7.0
    running = web(started="1970-01-01T00:00:05Z")
    assert transition_time(web(running=False), running) == 5.0
    assert transition_time(running, running) == 0.0
    assert transition_time(running, None) == 0.0


def test_failed_event_read_relists_soon() -> None:
    r = Rig(ANCHORD, web())
    r.subscribe()
    assert r.d.timeout() == pytest.approx(30.0)
    r.api.down = True
    r.api.docs[web()["Id"]] = web("10.0.0.8")
    r.event(web()["Id"], "start", 5.0)
    assert r.d.timeout() <= 0.5  # not 30 s: the missed change comes back quickly
    r.api.down = False
    r.now += 0.5
    r.d.step()
    assert r.d.desired is not None
    assert r.d.desired.entries[0].address == "10.0.0.8"


def test_a_backend_address_outside_the_transit_subnet_is_rejected() -> None:
    """F-22: a value from Docker is checked before it reaches the kernel."""
    r = Rig(ANCHORD, web(ip="172.16.9.9"))
    r.subscribe()
    d = r.d.desired
    assert d is not None
    assert d.entries == ()
    assert [(x.container, x.kind) for x in d.rejections] == [("proj-web-1", "no-transit")]
    ok = Rig(ANCHORD, web(ip="10.0.0.3"))
    ok.subscribe()
    assert ok.d.desired is not None
    assert [e.address for e in ok.d.desired.entries] == ["10.0.0.3"]


def test_route_reports_expose_before_health_and_survive_a_restart(tmp_path: Path) -> None:
    """A service-anchor's route report exposes its family while Docker still says "starting";
    a restarted discovery knows it at once (kept in the run directory), and a restart of the
    container voids it."""
    starting = web(health="starting")
    r = Rig(ANCHORD, starting, run_dir=tmp_path)
    r.subscribe()
    assert r.d.desired is not None
    assert r.d.desired.entries == ()
    r.d.route_ready("10.0.0.3")
    exposed = r.d.desired
    assert exposed is not None
    assert [e.address for e in exposed.entries] == ["10.0.0.3"]

    again = Rig(ANCHORD, starting, run_dir=tmp_path)  # discovery restarted
    again.subscribe()
    assert again.d.desired is not None
    assert [e.address for e in again.d.desired.entries] == ["10.0.0.3"]

    restarted = web(health="starting")
    restarted["State"]["StartedAt"] = "2026-11-30T10:00:00.000000000Z"
    later = Rig(ANCHORD, restarted, run_dir=tmp_path)
    later.subscribe()
    assert later.d.desired is not None
    assert later.d.desired.entries == ()
