"""Shared test configuration.

System tests need root, network namespaces and wireguard-go. Where those are
missing they are skipped with the reason, except when WGRELAY_REQUIRE_SYSTEM=1
(set by .ci/run): then a missing prerequisite fails the run instead of quietly
skipping the tests that matter most.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import os
from collections.abc import Iterator

import pytest

from wgrelay.testbed.requirements import missing_prerequisite


@pytest.fixture(autouse=True)
def _system_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("system") is None:
        return
    missing = missing_prerequisite()
    if missing is None:
        return
    if os.environ.get("WGRELAY_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"system test cannot run: {missing} (WGRELAY_REQUIRE_SYSTEM=1)")
    pytest.skip(f"system test {missing}")


@pytest.fixture(autouse=True)
def _no_task_left_running(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test's event loop must end with no task still running.

    ``asyncio.run`` cancels whatever is left when the main coroutine returns,
    which would hide a task the code under test forgot (a leak in a daemon).
    The check wraps that cancellation and fails the test that left tasks.
    """
    leftovers: list[str] = []
    original = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]

    def cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
        leftovers.extend(repr(t) for t in asyncio.all_tasks(loop) if not t.done())
        original(loop)

    monkeypatch.setattr(asyncio.runners, "_cancel_all_tasks", cancel_all_tasks)
    yield
    assert not leftovers, f"tasks left running at the end of the test: {leftovers}"
