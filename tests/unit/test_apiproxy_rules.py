"""The scoped Docker API proxy's rules, as pure functions (anchord/apiproxy.py)."""

from __future__ import annotations

import json

from anchord.apiproxy import event_allowed, scoped_filters, scrub_container, split_path

P = "mail"
LABEL = "com.docker.compose.project"


def test_split_path_takes_the_version_prefix_and_query() -> None:
    assert split_path("/v1.41/containers/json?all=1") == (
        "/v1.41", "/containers/json", {"all": ["1"]})
    assert split_path("/_ping") == ("", "/_ping", {})


def test_the_project_label_is_forced_into_every_listing() -> None:
    assert json.loads(scoped_filters({}, P)) == {"label": [f"{LABEL}={P}"]}
    asked = {"filters": [json.dumps({"label": [f"{LABEL}=other", "x=1"], "status": ["running"]})]}
    assert json.loads(scoped_filters(asked, P)) == {
        "label": ["x=1", f"{LABEL}={P}"], "status": ["running"]}
    old_form = {"filters": [json.dumps({"label": {f"{LABEL}=other": True}})]}
    assert json.loads(scoped_filters(old_form, P)) == {"label": [f"{LABEL}={P}"]}
    for garbage in ("[1]", "not json", ""):
        assert json.loads(scoped_filters({"filters": [garbage]}, P)) == {
            "label": [f"{LABEL}={P}"]}


def test_an_inspect_loses_environment_and_mounts() -> None:
    doc = {"Id": "x", "Config": {"Env": ["KEY=secret"], "Labels": {LABEL: P}},
           "Mounts": [{"Source": "/srv"}], "HostConfig": {"Binds": ["/srv:/srv"],
                                                          "NetworkMode": "default"},
           "NetworkSettings": {"Networks": {}}}
    out = scrub_container(doc)
    assert "Env" not in out["Config"]
    assert "Mounts" not in out
    assert "Binds" not in out["HostConfig"]
    assert out["HostConfig"]["NetworkMode"] == "default"
    assert out["Config"]["Labels"] == {LABEL: P}
    assert "NetworkSettings" in out


def test_events_of_the_project_only() -> None:
    networks = {"n1": P, "n2": "other"}
    mine = {"Type": "container", "Actor": {"ID": "c1", "Attributes": {LABEL: P}}}
    theirs = {"Type": "container", "Actor": {"ID": "c2", "Attributes": {LABEL: "other"}}}
    unlabelled = {"Type": "container", "Actor": {"ID": "c3", "Attributes": {}}}
    net_mine = {"Type": "network", "Actor": {"ID": "n1", "Attributes": {"container": "c9"}}}
    net_theirs = {"Type": "network", "Actor": {"ID": "n2", "Attributes": {}}}
    image = {"Type": "image", "Actor": {"ID": "sha", "Attributes": {LABEL: P}}}
    allowed = [event_allowed(e, P, networks.get)
               for e in (mine, theirs, unlabelled, net_mine, net_theirs, image)]
    assert allowed == [True, False, False, True, False, False]
    assert not event_allowed({"Type": "container", "Actor": "garbage"}, P, networks.get)
