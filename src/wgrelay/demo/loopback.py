"""The no-root demo: a real relay and two real clients on 127.0.0.1.

No WireGuard interface and no NAT here (both need root): two peers register at
a relay on loopback, one asks for a session, the other is told and accepts,
packets flow both ways through the relay, and the relay's own counters are
printed. Nothing is simulated; it is the same code the agent runs, minus the
WireGuard interface.
"""

from __future__ import annotations

import asyncio
import time

from wgrelay.client.udp import RelayClient
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.transport.udp import AsyncioRuntime

PACKETS = 2000


def say(msg: str) -> None:
    print(msg, flush=True)


async def run_loopback_demo() -> int:
    identity = RelayIdentity.generate()
    runtime = AsyncioRuntime()
    core = RelayCore(identity, RelayConfig(), OpenPolicy(), now=runtime.now(), wall=runtime.wall())
    server = RelayServer(core, runtime, [BindAddress("127.0.0.1", 0)], policy_refresh_s=0)
    server.open()
    ready = asyncio.Event()
    task = asyncio.create_task(server.serve(ready.set))
    await ready.wait()
    endpoint = ("127.0.0.1", server.port)
    say(f"relay {identity.public} listening on 127.0.0.1:{endpoint[1]}")
    a, b = PrivateKey.generate(), PrivateKey.generate()
    received: dict[str, int] = {"a": 0, "b": 0}
    done = asyncio.Event()

    def sink(name: str) -> object:
        def on_data(peer: PublicKey, frame: bytes) -> None:
            received[name] += 1
            if received["a"] == PACKETS and received["b"] == PACKETS:
                done.set()

        return on_data

    ca = RelayClient(a, identity.public, endpoint, on_data=sink("a"))  # type: ignore[arg-type]
    cb = RelayClient(b, identity.public, endpoint, on_data=sink("b"))  # type: ignore[arg-type]
    try:
        for name, c in (("A", ca), ("B", cb)):
            reg = await c.wait_registered()
            say(
                f"peer {name} {c.link.state.value} at the relay; relay sees it as "
                f"{reg.observed[0]}:{reg.observed[1]}"
            )
        t0 = time.monotonic()
        sid = await ca.open_session(b.public_key())
        say(
            f"peer A asked for a session to B; B accepted; session {sid.hex()} "
            f"in {1000 * (time.monotonic() - t0):.1f} ms"
        )
        rtt = await ca.ping()
        say(f"control round trip A <-> relay: {rtt * 1e6:.0f} us")
        for i in range(PACKETS):
            # shaped like WireGuard transport data (type 4): relays carry nothing else
            packet = b"\x04\x00\x00\x00" + i.to_bytes(4, "little") + bytes(136)
            ca.send(b.public_key(), packet)
            cb.send(a.public_key(), packet)
            if i % 100 == 99:  # stay under the relay's default 1000 KB/s per connection
                await asyncio.sleep(0.02)
        try:
            async with asyncio.timeout(5):
                await done.wait()
        except TimeoutError:
            say("not every packet arrived within 5 s (see the drop counters below)")
        st = core.get_stats()
        say(
            f"{PACKETS} packets each way through the relay: A got {received['a']}, "
            f"B got {received['b']}"
        )
        say(
            f"relay counters: {st.packets_forwarded} frames / {st.bytes_forwarded} bytes "
            f"forwarded, {st.sessions_active} session, {st.registrations} registrations, "
            f"drops {dict(st.drops) or 'none'}"
        )
    finally:
        await ca.close()
        await cb.close()
        server.stop()
        await task
    return 0


__all__ = ["run_loopback_demo"]
