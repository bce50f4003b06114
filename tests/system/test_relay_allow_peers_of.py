"""`start-relay --allow-peers-of IFACE` against a real wireguard-go interface."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.relays import relay_process
from wgrelay.client.udp import RelayClient
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey
from wgrelay.testbed import Testbed

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def test_members_of_the_interface_are_served_others_refused_and_changes_follow(
    tmp_path: Path,
) -> None:
    member, other_member, stranger = (PrivateKey.generate() for _ in range(3))
    with Testbed() as tb:
        host = tb.add_peer("host", nat="cone")  # a mesh member with a WireGuard interface
        wg = host.wireguard()
        wg.add_peer(member.public_key(), allowed_ips=["10.99.1.1/32"])
        wg.add_peer(other_member.public_key(), allowed_ips=["10.99.1.2/32"])
        # the UAPI socket directory is shared by all namespaces, so a relay in
        # this one reads the interface's peers just as one on the host would
        with relay_process(tmp_path / "relay", "--allow-peers-of", wg.name) as rp:

            async def scenario() -> None:
                cm = RelayClient(member, rp.key, rp.endpoint)
                co = RelayClient(other_member, rp.key, rp.endpoint)
                await cm.wait_registered()
                await co.wait_registered()
                await cm.open_session(other_member.public_key())
                cs = RelayClient(stranger, rp.key, rp.endpoint)
                with pytest.raises(RelayUnavailable, match="refused"):
                    await cs.wait_registered(timeout=5)
                await cs.close()
                # the operator adds the stranger to the mesh: served within a refresh
                wg.add_peer(stranger.public_key(), allowed_ips=["10.99.1.3/32"])
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15
                while True:
                    cs = RelayClient(stranger, rp.key, rp.endpoint)
                    try:
                        await cs.wait_registered(timeout=3)
                        break
                    except RelayUnavailable:
                        if loop.time() > deadline:
                            raise
                    finally:
                        await cs.close()
                # and removing a member drops it (and its session) again
                wg.remove_peer(other_member.public_key())
                ended = cm.expect(lambda e: type(e).__name__ == "SessionEnded")
                async with asyncio.timeout(15):
                    await ended
                await cm.close()
                await co.close()

            asyncio.run(scenario())
            assert rp.proc.poll() is None
