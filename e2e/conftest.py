"""Fixtures of the Compose end-to-end suite (everything under e2e/ is marked ``e2e``).

Owns the session setup (host prepared with e2e/prepare-host.sh, the image ``anchord:test``
built once from the working tree, leftovers of a killed run removed) and the per-test
``compose`` factory, which gives each test uniquely named projects and always takes them down
(``down -v --remove-orphans``), dumping their state and logs into the report when a test fails.

Environment: ``ANCHORD_E2E_IMAGE`` (tag, default anchord:test); ``ANCHORD_E2E_NO_BUILD=1``
uses that image as it is instead of rebuilding it.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import harness
from e2e.harness import ComposeFactory, ComposeProject

E2E_ROOT = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: Compose end-to-end test (root, dockerd, builds the anchord image)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_ROOT in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    # Keep each phase's report on the item so fixtures can tell whether the test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def anchord_image() -> str:
    """Host prepared, stale projects removed, image built: returns the image tag."""
    if os.geteuid() != 0:
        pytest.skip("the e2e suite needs root (dockerd, sysctls)")
    harness.prepare_host()
    for name in harness.stale_projects():
        harness.remove_project(name)
    if os.environ.get("ANCHORD_E2E_NO_BUILD") == "1":
        harness.run(["docker", "image", "inspect", harness.IMAGE])
    else:
        harness.build_image(harness.IMAGE)
    return harness.IMAGE


@pytest.fixture
def compose(anchord_image: str, request: pytest.FixtureRequest) -> Iterator[ComposeFactory]:
    """Factory: ``compose("smoke", ANCHORD_X="...")`` -> a new, uniquely named project of
    ``e2e/compose/smoke/compose.yaml`` (not started). All are taken down after the test."""
    projects: list[ComposeProject] = []

    def make(scenario: str, **env: str) -> ComposeProject:
        compose_file = harness.COMPOSE_DIR / scenario / "compose.yaml"
        if not compose_file.is_file():
            raise FileNotFoundError(compose_file)
        project = ComposeProject(
            compose_file=compose_file,
            name=harness.unique_project_name(f"{scenario}-{request.node.name}"),
            env={"ANCHORD_IMAGE": anchord_image, **env},
        )
        projects.append(project)
        return project

    yield make

    failed = any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    for project in projects:
        if failed:
            print(project.dump())  # shown under "Captured stdout teardown"
        project.down()
