"""Fixtures for the simulator's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wgrelay.sim import Simulation


@pytest.fixture
def sim() -> Iterator[Simulation]:
    with Simulation(seed=1) as s:
        yield s
