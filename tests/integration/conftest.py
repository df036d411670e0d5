"""Fixtures several integration modules share.

- ``net``: the inbound topology of ``inbound_topo`` (a LAN client, the anchord namespace, two
  backends), built fresh for each test and removed with everything it started;
- ``api`` / ``proj``: a client of the real dockerd (one per module) and a throwaway project of
  containers on it, removed after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.integration import inbound_topo as it
from tests.integration.discovery_support import Project, ensure_dockerd, project
from tests.netns import topology


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[it.Inbound]:
    # The namespaces' prefix tells which module made them (test_inbound_restart: "ir").
    words = request.module.__name__.rsplit(".", 1)[-1].split("_")[1:]
    with topology("".join(w[0] for w in words)) as topo:
        try:
            yield it.build(topo, n_backends=2)
        finally:
            it.stop_all()


@pytest.fixture(scope="module")
def api() -> Iterator[docker.APIClient]:
    client = ensure_dockerd()
    yield client
    client.close()


@pytest.fixture
def proj(api: docker.APIClient) -> Iterator[Project]:
    with project(api) as p:
        yield p
