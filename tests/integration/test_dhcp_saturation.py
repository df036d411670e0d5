"""A lease renews while the link is saturated (issue 11, section 1).

A LAN bed with ISC Kea (a 12 s lease, T1 4 s, T2 8 s) and the dhcp worker; a load namespace
on the same bridge runs iperf3 against an iperf3 server bound to the project address for
14 s, two TCP streams as fast as the kernel goes. Every renewal that falls in that time must
be taken: the worker's REQUEST goes out and Kea's ACK comes back through the saturated path
into the filtered raw socket (the data plane never reaches it, so it never crowds the ACK
out of the socket buffer), the lease stays and no renewal has to fall back to REBINDING.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dhcp_servers import LAN_V4, Kea4, Lan, Worker, lan, stop
from tests.netns import wait_until

LOAD_SECONDS = 14


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Lan]:
    with lan(tmp_path) as b:
        yield b


def _renewals(worker: Worker) -> int:
    return worker.log_text().count("dhcpv4 renewing -> bound")


def test_a_lease_renews_while_iperf3_saturates_the_address(bed: Lan) -> None:
    server = bed.server_ns("srv", 1)
    Kea4(bed, server, "kea4", valid=12, renew=4, rebind=8)
    load = bed.topo.netns("load")
    bed.plug(load, "eth0", f"{LAN_V4}.20/24")
    worker = Worker(bed).start()
    address = worker.wait_lease(4)["lease"]["address"]
    ip = address.split("/")[0]

    iperf_server = bed.start(bed.anchor, ["iperf3", "-s", "-1", "-B", ip],
                             bed.tmp / "iperf3-server.log")
    wait_until(lambda: f"{ip}:5201" in bed.anchor.run("ss", "-ltn"), 10, what="iperf3 listening")
    before = _renewals(worker)
    started = time.monotonic()
    client = load.popen(["iperf3", "-c", ip, "-t", str(LOAD_SECONDS), "-P", "2", "-J"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = client.communicate(timeout=LOAD_SECONDS + 30)
    elapsed = time.monotonic() - started
    stop(iperf_server)
    assert client.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    gbits = result["end"]["sum_received"]["bits_per_second"] / 1e9
    after = _renewals(worker)
    print(f"iperf3: {gbits:.2f} Gbit/s for {elapsed:.1f} s; renewals during the load: "
          f"{after - before}")

    # The load was real (a veth + bridge + macvlan path does Gbit/s here; TESTBED.md), and it
    # lasted through T1 three times over: each renewal in that time was taken at once.
    assert gbits > 0.5
    assert after - before >= LOAD_SECONDS // 4 - 1
    log = worker.log_text()
    assert "renewing -> rebinding" not in log
    assert "lease expired" not in log
    assert worker.addresses(4) == [address]
    assert worker.lease(4) is not None
    assert worker.stop() == 0
