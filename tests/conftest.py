"""Shared test configuration.

System tests need root, network namespaces and wireguard-go. Where those are
missing they are skipped with the reason, except when WGRELAY_REQUIRE_SYSTEM=1
(set by .ci/run): then a missing prerequisite fails the run instead of quietly
skipping the tests that matter most.
"""

from __future__ import annotations

import os

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
