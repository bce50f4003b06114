"""Small helpers shared by tests."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Path of an external tool; skip (or fail under WGRELAY_REQUIRE_SYSTEM=1) if absent."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("WGRELAY_REQUIRE_SYSTEM") == "1":
            pytest.fail(f"{name} is not installed (WGRELAY_REQUIRE_SYSTEM=1)")
        pytest.skip(f"{name} is not installed")
    return path
