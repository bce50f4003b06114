"""Shared test configuration.

System tests need root, network namespaces and wireguard-go. Where those are
missing they are skipped with the reason, except when WGRELAY_REQUIRE_SYSTEM=1
(set by .ci/run): then a missing prerequisite fails the run instead of quietly
skipping the tests that matter most.
"""

from __future__ import annotations

import os
import shutil

import pytest


def system_prerequisites_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "wg", "wireguard-go", "conntrack", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture(autouse=True)
def _system_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("system") is None:
        return
    missing = system_prerequisites_missing()
    if missing is None:
        return
    if os.environ.get("WGRELAY_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"system test cannot run: {missing} (WGRELAY_REQUIRE_SYSTEM=1)")
    pytest.skip(f"system test {missing}")
