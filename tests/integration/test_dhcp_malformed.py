"""Untrusted input: a corpus of malformed DHCPv4/DHCPv6/RA frames plus random mutations,
sent at a live worker with its own transaction ids. It must drop them all and still bind."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dhcp_servers import MAC, Dnsmasq, Lan, Worker, lan


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


@pytest.mark.parametrize("seed", [1, 2])
def test_malformed_corpus_and_mutations_never_crash(bed: Lan, seed: int) -> None:
    fuzz_ns = bed.topo.netns("fz")
    bed.plug(fuzz_ns, "eth0")
    worker = Worker(bed, backoff_max=2.0)
    worker.spec["debug"] = True
    worker.start()
    out = fuzz_ns.run(sys.executable, "-m", "tests.integration.dhcp_servers", "fuzz", MAC,
                      "400", str(seed), timeout=60)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sent"] > 400
    assert worker.proc is not None, worker.log_text()[-3000:]
    assert worker.proc.poll() is None, worker.log_text()[-3000:]
    log = worker.log_text()
    assert "Traceback" not in log
    # Every bad frame was dropped with a reason (debug lines), none was bound.
    assert log.count("packet dropped") >= 20
    assert worker.lease(4) is None
    # Still alive and well: a real server appears, the worker binds.
    server = bed.server_ns("srv", 1)
    Dnsmasq(bed, server, "dnsmasq")
    worker.wait_lease(4, timeout=20)
    assert worker.stop() == 0
    log = worker.log_text()
    assert "Traceback" not in log
    stats = json.loads(log.split("dhcp worker stopping ", 1)[1].splitlines()[0])
    # Each frame is accounted for by a drop reason (the socket lost none of them).
    assert sum(stats["dropped_v4"].values()) >= summary["sent_v4"]
    assert sum(stats["dropped_v6"].values()) >= 100
    assert {"truncated", "bad_option_length", "wrong_xid", "wrong_mac",
            "missing_end"} <= set(stats["dropped_v4"])
