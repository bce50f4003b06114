"""The relay's one timer on uvloop: deadlines under half a millisecond.

uvloop's ``call_at``/``call_later`` returns a plain ``Handle`` (no ``.when()``)
when the delay rounds to zero milliseconds. The server used to call
``.when()`` on it: under a flood of control packets the exception escaped the
receive path and could kill the task that reloads the access policy. The
server now keeps its own deadline.
"""

from __future__ import annotations

import asyncio

import pytest

from wgrelay.keys import RelayIdentity
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.transport.udp import AsyncioRuntime

uvloop = pytest.importorskip("uvloop")


def test_sub_millisecond_deadlines_on_uvloop_never_raise() -> None:
    async def scenario() -> int:
        runtime = AsyncioRuntime()
        core = RelayCore(
            RelayIdentity.generate(),
            RelayConfig(),
            OpenPolicy(),
            now=runtime.now(),
            wall=runtime.wall(),
        )
        server = RelayServer(core, runtime, [BindAddress("127.0.0.1", 0)], policy_refresh_s=0)
        server.open()
        fired = 0
        real = core.handle_timer

        def handle_timer(now: float) -> None:
            nonlocal fired
            fired += 1
            real(now)

        core.handle_timer = handle_timer  # type: ignore[method-assign]
        errors: list[BaseException | None] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, ctx: errors.append(ctx.get("exception"))
        )
        try:
            for _ in range(200):
                core._next_housekeeping = runtime.now() + 0.0001  # under 0.5 ms
                server._arm_timer()  # the armed one is later: cancel, re-arm
                server._flush()  # re-arm while a sub-ms Handle is armed
                await asyncio.sleep(0)
            done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.01, done.set_result, None)
            await done
        finally:
            server.close_transports()
        assert errors == []
        return fired

    assert uvloop.run(scenario()) > 0
