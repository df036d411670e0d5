"""Generated input against every parser of outside input: nothing but a clear rejection.

A label, an environment variable or a lease file is input like any packet: each parser either
accepts a value or rejects it with its own error (``LabelError``, ``ConfigError``, a warning
and ``{}``), and never raises anything else — an uncaught exception crash-loops a worker and
freezes the maps for every container. Valid generated labels come back exactly.

``ANCHORD_FUZZ_EXAMPLES`` sets the cases per test (default 2 000, what ``make test`` runs); the
long run is ``ANCHORD_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest
tests/unit/test_fuzz_inputs.py``.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchord import config
from anchord.dhcp.leasefile import LeaseFile
from anchord.labels import LabelError, PortRange, parse_expose

EXAMPLES = int(os.environ.get("ANCHORD_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

LABEL_ALPHABET = string.ascii_letters + string.digits + " ,/-\t\u0663\uff10\x00\u00e9"


@FUZZ
@given(st.one_of(st.text(alphabet=LABEL_ALPHABET, max_size=60), st.text(max_size=40),
                 st.from_regex(r"(tcp|udp|TCP|sctp)/[0-9]{1,7}(-[0-9]{1,7})?", fullmatch=True),
                 st.builds(lambda d, k: f"tcp/{d * k}", st.sampled_from("0179"),
                           st.integers(min_value=1, max_value=6000))))
def test_a_label_is_parsed_or_rejected_with_its_reason(value: str) -> None:
    try:
        ranges = parse_expose(value)
    except LabelError as exc:
        assert str(exc)
        return
    assert ranges
    assert all(1 <= r.first <= r.last <= 65535 for r in ranges)


ports = st.integers(min_value=1, max_value=65535)
single = st.builds(lambda proto, port: PortRange(proto, port, port),
                   st.sampled_from(("tcp", "udp")), ports)
span = st.builds(lambda proto, a, b: PortRange(proto, min(a, b), max(a, b)),
                 st.sampled_from(("tcp", "udp")), ports, ports)


@FUZZ
@given(st.lists(st.one_of(single, span), min_size=1, max_size=12),
       st.sampled_from((",", ", ", " , ")))
def test_a_valid_label_comes_back_exactly(ranges: list[PortRange], sep: str) -> None:
    distinct: list[PortRange] = []
    for r in ranges:
        if not any(r.overlaps(d) for d in distinct):
            distinct.append(r)
    assert parse_expose(sep.join(map(str, distinct))) == tuple(distinct)


VARIABLES = ("ANCHORD_POLL_INTERVAL", "ANCHORD_DHCP_BACKOFF_MAX", "ANCHORD_METRICS_ADDR",
             "ANCHORD_EXT_MAC", "ANCHORD_EXT_IFACE", "ANCHORD_PROJECT", "ANCHORD_DHCP_HOSTNAME",
             "ANCHORD_LOG_LEVEL", "ANCHORD_RUN_DIR", "ANCHORD_STATE_DIR", "DOCKER_HOST",
             "ANCHORD_VLAN_PARENT")
DURATION_LIKE = st.from_regex(r"[0-9]{0,12}(\.[0-9]{0,12})?(ms|s|m|h|d|)", fullmatch=True)


@FUZZ
@given(st.sampled_from(VARIABLES),
       st.one_of(st.text(max_size=40), DURATION_LIKE,
                 st.sampled_from(("inf", "nan", "0.000001ms", "1e309", "/", "/proc/x", "..",
                                  "tcp://", "unix://rel", "-1", "0"))))
def test_an_environment_value_is_accepted_or_refused_in_one_line(variable: str,
                                                                value: str) -> None:
    env = {"ANCHORD_PROJECT": "proj", "ANCHORD_VLAN_PARENT": "eth0", variable: value}
    try:
        cfg = config.load(env, mode="network-anchor")
    except config.ConfigError as exc:
        assert "\n" not in str(exc)
        assert variable in str(exc)
        return
    assert isinstance(cfg, config.NetworkAnchorConfig)
    assert 1.0 <= cfg.poll_interval <= 3600
    assert 1.0 <= cfg.dhcp_backoff_max <= 86400
    assert str(cfg.run_dir) != "/"
    assert str(cfg.state_dir) != "/"


MAC = "02:42:aa:bb:cc:dd"
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20)
LEASE_KEYS = ("family", "address", "prefixlen", "server", "router", "lease_time", "t1", "t2",
              "acquired", "iaid", "preferred", "server_mac")
lease_like = st.fixed_dictionaries({}, optional={k: json_values for k in LEASE_KEYS}) | st.builds(
    lambda v: {"family": 4, "address": "192.0.2.5", "prefixlen": 24, "lease_time": v,
               "t1": 1, "t2": 2, "acquired": 1.0},
    st.one_of(st.floats(allow_nan=True, allow_infinity=True),
              st.integers(min_value=-(2**70), max_value=2**70)))
documents = st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda leases: json.dumps({"format": 1, "iface": "anchord-ext", "mac": MAC,
                                         "leases": leases}), st.lists(lease_like, max_size=3)),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(('{"format": 1, "leases": [{"lease_time": NaN}]}', "1e309", "")),
)


@FUZZ
@given(documents)
def test_a_lease_file_is_loaded_or_ignored(tmp_path_factory: pytest.TempPathFactory,
                                           text: str) -> None:
    state = tmp_path_factory.mktemp("lease")
    (state / "anchord-ext.lease").write_text(text, encoding="utf-8", errors="surrogatepass")
    leases = LeaseFile(state, "anchord-ext", MAC).load()
    for family, lease in leases.items():
        assert lease.family == family
        for value in (lease.lease_time, lease.t1, lease.t2, lease.acquired, lease.preferred):
            assert 0 <= value <= 0xFFFFFFFF * 2


def test_deep_nesting_and_symlinks_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "anchord-ext.lease"
    path.write_text("[" * 100000 + "]" * 100000)
    assert LeaseFile(tmp_path, "anchord-ext", MAC).load() == {}
    target = tmp_path / "elsewhere"
    good: dict[str, Any] = {"format": 1, "iface": "anchord-ext", "mac": MAC, "leases": [
        {"family": 4, "address": "192.0.2.5", "prefixlen": 24, "server": "192.0.2.1",
         "router": "", "lease_time": 600, "t1": 300, "t2": 525, "acquired": 1.0}]}
    target.write_text(json.dumps(good))
    path.unlink()
    path.symlink_to(target)
    assert LeaseFile(tmp_path, "anchord-ext", MAC).load() == {}
    path.unlink()
    path.write_text(json.dumps(good))
    assert set(LeaseFile(tmp_path, "anchord-ext", MAC).load()) == {4}
