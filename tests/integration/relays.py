"""Real relays for loopback tests: in this process (same event loop) or as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wgrelay.client.fallback import FallbackConfig
from wgrelay.client.link import LinkConfig
from wgrelay.client.manager import ManagerEvent, RelayManager
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.relay.access import AccessPolicy, OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.transport.udp import AsyncioRuntime

READY = re.compile(r"relay (\S+) listening on (\S+):(\d+)")


@dataclass
class InProcRelay:
    server: RelayServer
    core: RelayCore
    key: PublicKey
    endpoint: tuple[str, int]
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def inproc_relay(
    config: RelayConfig | None = None,
    policy: AccessPolicy | None = None,
    identity: RelayIdentity | None = None,
    port: int = 0,
    region: str = "",
) -> AsyncIterator[InProcRelay]:
    identity = identity or RelayIdentity.generate()
    runtime = AsyncioRuntime()
    core = RelayCore(
        identity,
        config or RelayConfig(),
        policy or OpenPolicy(),
        now=runtime.now(),
        wall=runtime.wall(),
        region=region,
    )
    server = RelayServer(core, runtime, [BindAddress("127.0.0.1", port)], policy_refresh_s=0)
    server.open()
    endpoint = ("127.0.0.1", server.port)
    core.announce_endpoints = (endpoint,)
    ready = asyncio.Event()
    task = asyncio.create_task(server.serve(ready.set))
    await ready.wait()
    try:
        yield InProcRelay(server, core, identity.public, endpoint, task)
    finally:
        server.stop()
        await task


@dataclass
class RelayProcess:
    proc: subprocess.Popen[str]
    key: PublicKey
    endpoint: tuple[str, int]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_relay_process(state_dir: Path, *args: str, port: int = 0) -> RelayProcess:
    log = state_dir / f"relay-{time.monotonic_ns()}.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    errf = log.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wgrelay",
            "start-relay",
            "--state-dir",
            str(state_dir),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=errf,
        text=True,
    )
    errf.close()
    deadline = time.monotonic() + 15
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = READY.search(line)
    if m is None or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"relay did not start: {line!r} {log.read_text()}")
    return RelayProcess(proc, PublicKey.from_base64(m.group(1)), (m.group(2), int(m.group(3))), log)


@contextlib.contextmanager
def relay_process(state_dir: Path, *args: str, port: int = 0) -> Iterator[RelayProcess]:
    rp = start_relay_process(state_dir, *args, port=port)
    try:
        yield rp
    finally:
        rp.stop()


class Peer:
    """An agent's relay manager on this loop, with what it hears recorded
    (events, frames' payloads) and an event set on each."""

    def __init__(
        self,
        relays: list[tuple[PublicKey, tuple[str, int]]],
        link_config: LinkConfig | None = None,
        fallback: FallbackConfig | None = None,
    ) -> None:
        self.key = PrivateKey.generate()
        reg = RelayRegistry()
        for key, ep in relays:
            reg.add_bootstrap(key, ep)
        self.events: list[ManagerEvent] = []
        self.frames: list[bytes] = []
        self.changed = asyncio.Event()
        self.manager = RelayManager(
            self.key,
            reg,
            accept_peer=lambda _k: True,
            on_event=self._event,
            on_data=self._frame,
            link_config=link_config,
            fallback=fallback,
        )

    def _frame(self, _peer: PublicKey, frame: bytes) -> None:
        self.frames.append(frame[10:])
        self.changed.set()

    def _event(self, ev: ManagerEvent) -> None:
        self.events.append(ev)
        self.changed.set()

    @property
    def pub(self) -> PublicKey:
        return self.key.public_key()

    async def wait(
        self, pred: Callable[[ManagerEvent], bool], timeout: float = 10.0
    ) -> ManagerEvent:
        async with asyncio.timeout(timeout):
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                self.changed.clear()
                await self.changed.wait()
