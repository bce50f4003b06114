"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable

import pytest


def require_tool(name: str) -> str:
    """Path of an external tool; skip (or fail under WGRELAY_REQUIRE_SYSTEM=1) if absent."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("WGRELAY_REQUIRE_SYSTEM") == "1":
            pytest.fail(f"{name} is not installed (WGRELAY_REQUIRE_SYSTEM=1)")
        pytest.skip(f"{name} is not installed")
    return path


WG_TRANSPORT_HEADER = b"\x04\x00\x00\x00"
"""WireGuard's transport-data type (4, little endian u32): relays forward only
datagrams that can be WireGuard messages, at least 32 bytes long."""


def wg_packet(body: bytes = b"") -> bytes:
    """A datagram shaped like WireGuard transport data carrying ``body``."""
    return WG_TRANSPORT_HEADER + body.ljust(28, b"\0")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` (checked every few milliseconds); fail after ``timeout``.

    For state that fires no event of its own (a relay core's counters): the
    wait ends when the condition holds, not after a guessed delay.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (nothing to wait on but the state itself)
            await asyncio.sleep(0.005)
