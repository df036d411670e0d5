"""Fixtures of the Compose end-to-end suite (everything under e2e/ is marked ``e2e``).

Owns the session setup (host prepared with e2e/prepare-host.sh, the image ``anchord:test``
built once from the working tree, leftovers of a killed run removed) and the per-test
``compose`` factory, which gives each test uniquely named projects and always takes them down
(``down -v --remove-orphans``), dumping their state and logs into the report when a test fails;
and the scenario report printed at the end of a run: one line per e2e test with its SPEC
scenario (from the test name: ``test_s3_...`` is S-3, ``test_f8a_...`` F-8a; otherwise the
module's ``SCENARIO`` string), what it asserts (the docstring's first line, or the test name),
passed/failed/skipped and the seconds it took including its share of fixtures.

Environment: ``ANCHORD_E2E_IMAGE`` (tag, default anchord:test); ``ANCHORD_E2E_NO_BUILD=1``
uses that image as it is instead of rebuilding it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e import harness
from e2e.harness import ComposeFactory, ComposeProject

E2E_ROOT = Path(__file__).resolve().parent
_SCENARIO_NAME = re.compile(r"^test_([sf])(\d+[a-z]?)_(.*)$")


@dataclass
class _ReportLine:
    scenario: str
    assertion: str
    outcome: str = "passed"
    seconds: float = 0.0


# nodeid -> line, in the order the tests ran; filled by the hooks below.
_REPORT: dict[str, _ReportLine] = {}


def _describe(item: pytest.Item) -> _ReportLine:
    function = getattr(item, "function", None)
    name = getattr(function, "__name__", item.name)
    match = _SCENARIO_NAME.match(name)
    module = getattr(item, "module", None)
    if match:
        scenario = f"{match.group(1).upper()}-{match.group(2)}"
        words = match.group(3)
    else:
        scenario = str(getattr(module, "SCENARIO", Path(str(item.path)).stem.removeprefix("test_")))
        words = name.removeprefix("test_")
    doc = (getattr(function, "__doc__", None) or "").strip().splitlines()
    assertion = doc[0] if doc else words.replace("_", " ")
    params = getattr(item, "callspec", None)
    if params is not None:
        assertion += f" [{params.id}]"
    return _ReportLine(scenario, assertion)


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
    if E2E_ROOT not in Path(str(item.path)).resolve().parents:
        return
    line = _REPORT.setdefault(item.nodeid, _describe(item))
    line.seconds += report.duration
    if report.failed:
        line.outcome = "failed" if report.when == "call" else f"error ({report.when})"
    elif report.skipped and line.outcome == "passed":
        line.outcome = "skipped"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The scenario report: what each e2e test asserted, its result and its time."""
    if not _REPORT:
        return
    lines = list(_REPORT.values())
    terminalreporter.section("anchord e2e scenario report")
    width = max(len(line.scenario) for line in lines)
    for line in lines:
        terminalreporter.write_line(
            f"{line.scenario:<{width}}  {line.outcome:<8} {line.seconds:7.1f}s  {line.assertion}"
        )
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.outcome] = counts.get(line.outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    total = sum(line.seconds for line in lines)
    terminalreporter.write_line(f"e2e: {summary}; {total:.0f} s ({total / 60:.1f} min)")
    if harness.FIGURES:
        terminalreporter.section("anchord e2e figures")
        for figure in harness.FIGURES:
            terminalreporter.write_line(figure)


@pytest.fixture(scope="session")
def anchord_image() -> Iterator[str]:
    """Host prepared, stale projects removed, image built: yields the image tag. At the end of
    the session, anything of this run still there (containers, networks, namespaces) is an
    error: a run leaves nothing behind."""
    if os.geteuid() != 0:
        pytest.skip("the e2e suite needs root (dockerd, sysctls)")
    harness.prepare_host()
    for name in harness.stale_projects():
        harness.remove_project(name)
    if os.environ.get("ANCHORD_E2E_NO_BUILD") == "1":
        harness.run(["docker", "image", "inspect", harness.IMAGE])
    else:
        harness.build_image(harness.IMAGE)
    yield harness.IMAGE
    left = harness.leftovers(os.getpid())
    assert not left, f"the e2e run left these behind: {left}"


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

    failed = harness.node_failed(request.node)
    for project in projects:
        if failed:
            print(project.dump())  # shown under "Captured stdout teardown"
        project.down()
