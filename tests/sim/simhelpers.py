"""Helpers shared by the simulator's tests."""

from __future__ import annotations

from wgrelay.keys import PrivateKey, clamp
from wgrelay.sim import Simulation
from wgrelay.transport.base import Addr


class Recorder:
    """A ``DatagramReceiver`` that remembers what arrived, when, and the batches."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.got: list[tuple[float, bytes, Addr]] = []
        self.batches: list[int] = []
        self._in_batch = 0

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.got.append((self.sim.now(), data, addr))
        self._in_batch += 1

    def batch_done(self) -> None:
        self.batches.append(self._in_batch)
        self._in_batch = 0

    @property
    def payloads(self) -> list[bytes]:
        return [data for _, data, _ in self.got]

    @property
    def sources(self) -> list[Addr]:
        return [addr for _, _, addr in self.got]


def key(n: int) -> PrivateKey:
    """A fixed private key, so traces do not depend on random key generation."""
    return PrivateKey(clamp(bytes([n]) * 32))
