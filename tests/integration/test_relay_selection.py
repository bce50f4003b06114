"""The seed's "high latency relay selection": the nearest relay becomes home.

Two real relays on 127.0.0.1; one sits behind a userspace shim that delays
every datagram (netem is not available in this kernel). The manager measures
both and must choose the fast one; when that one dies it must fall back to the
slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from tests.integration.relays import inproc_relay
from wgrelay.client.events import HomeChanged
from wgrelay.client.link import LinkConfig
from wgrelay.client.manager import ManagerEvent, RelayManager
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey

pytestmark = pytest.mark.timeout(60)

DELAY_S = 0.040


class DelayShim:
    """A UDP forwarder that delays each datagram by ``delay_s`` in both directions."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = delay_s
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.front.setblocking(False)
        self.backs: dict[tuple[str, int], socket.socket] = {}

    @property
    def endpoint(self) -> tuple[str, int]:
        host, port = self.front.getsockname()
        return str(host), int(port)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.front.fileno(), self._from_client)

    def _later(self, sock: socket.socket, data: bytes, dst: tuple[str, int]) -> None:
        asyncio.get_running_loop().call_later(self.delay_s, sock.sendto, data, dst)

    def _from_client(self) -> None:
        while True:
            try:
                data, client = self.front.recvfrom(65535)
            except BlockingIOError:
                return
            back = self.backs.get(client)
            if back is None:  # one socket per client, so replies find their way
                back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                back.bind(("127.0.0.1", 0))
                back.setblocking(False)
                self.backs[client] = back
                asyncio.get_running_loop().add_reader(back.fileno(), self._from_relay, back, client)
            self._later(back, data, self.target)

    def _from_relay(self, back: socket.socket, client: tuple[str, int]) -> None:
        while True:
            try:
                data, _ = back.recvfrom(65535)
            except BlockingIOError:
                return
            self._later(self.front, data, client)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for s in [self.front, *self.backs.values()]:
            loop.remove_reader(s.fileno())
            s.close()


def test_lowest_latency_relay_is_chosen_and_the_other_takes_over() -> None:
    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            near = await stack.enter_async_context(inproc_relay())
            far = await stack.enter_async_context(inproc_relay())
            shim = DelayShim(far.endpoint, DELAY_S)
            shim.start()
            stack.callback(shim.close)
            reg = RelayRegistry()
            # the slow one first, so order of configuration cannot be the reason
            reg.add_bootstrap(far.key, shim.endpoint)
            reg.add_bootstrap(near.key, near.endpoint)
            homes: list[ManagerEvent] = []
            changed = asyncio.Event()

            def on_event(ev: ManagerEvent) -> None:
                if isinstance(ev, HomeChanged):
                    homes.append(ev)
                    changed.set()

            m = RelayManager(
                PrivateKey.generate(), reg, accept_peer=lambda _k: True,
                on_event=on_event, on_data=lambda _p, _f: None,
                link_config=LinkConfig(lost_after_s=2.0),
            )  # fmt: skip
            await m.start()
            assert m.home == near.key
            rtt_near, rtt_far = reg.get(near.key).rtt_ms, reg.get(far.key).rtt_ms  # type: ignore[union-attr]
            assert rtt_near is not None
            assert rtt_far is not None
            assert rtt_far >= 2 * DELAY_S * 1000 > rtt_near
            changed.clear()
            near.server.stop()  # the near relay dies
            await near.task
            async with asyncio.timeout(20):
                while m.home != far.key:
                    changed.clear()
                    await changed.wait()
            await m.close()

    asyncio.run(scenario())
