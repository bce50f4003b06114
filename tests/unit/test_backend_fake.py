"""FakeBackend: the in-memory WireGuard the agent's tests run against."""

from __future__ import annotations

import asyncio

import pytest

from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.backend import FakeBackend, SetEndpointCall, WireGuardBackend

OWN = PrivateKey.generate()
ALICE = PrivateKey.generate().public_key()
BOB = PrivateKey.generate().public_key()


def mesh() -> FakeBackend:
    fake = FakeBackend()
    fake.add_interface("wg0", private_key=OWN, listen_port=51820, mtu=1420)
    fake.add_peer(
        "wg0", ALICE, endpoint=("198.51.100.1", 51820), allowed_ips=["10.0.0.2/32"],
        persistent_keepalive=25,
    )  # fmt: skip
    fake.add_peer("wg0", BOB, allowed_ips=["10.0.0.3/32", "fd00::3/128"])
    return fake


def test_read_reports_the_configured_interface() -> None:
    backend: WireGuardBackend = mesh()
    info = backend.read("wg0")
    assert backend.name == "fake"
    assert info.private_key == OWN
    assert info.public_key == OWN.public_key()
    assert info.listen_port == 51820
    alice = info.peer(ALICE)
    assert alice is not None
    assert alice.endpoint == ("198.51.100.1", 51820)
    assert alice.latest_handshake is None
    assert alice.persistent_keepalive == 25
    bob = info.peer(BOB)
    assert bob is not None
    assert bob.endpoint is None
    assert [p.public_key.raw for p in info.peers] == sorted([ALICE.raw, BOB.raw])


def test_set_endpoint_changes_only_that_endpoint_and_is_recorded() -> None:
    fake = mesh()
    before = fake.read("wg0")
    fake.set_endpoint("wg0", ALICE, ("0:0::1", 40000))
    after = fake.read("wg0")
    alice_before, alice_after = before.peer(ALICE), after.peer(ALICE)
    assert alice_before is not None
    assert alice_after is not None
    assert alice_after.endpoint == ("::1", 40000)  # canonical, as a real backend reads back
    assert alice_after.allowed_ips == alice_before.allowed_ips
    assert alice_after.persistent_keepalive == alice_before.persistent_keepalive
    assert after.peer(BOB) == before.peer(BOB)
    assert fake.set_endpoint_calls == (SetEndpointCall("wg0", ALICE, ("0:0::1", 40000)),)


def test_set_endpoint_refuses_unknown_peer_and_interface() -> None:
    fake = mesh()
    stranger = PrivateKey.generate().public_key()
    with pytest.raises(BackendError, match="not on interface wg0"):
        fake.set_endpoint("wg0", stranger, ("127.0.0.1", 1))
    with pytest.raises(BackendError, match="wg9 not found"):
        fake.set_endpoint("wg9", ALICE, ("127.0.0.1", 1))
    with pytest.raises(BackendError, match="not an IP address"):
        fake.set_endpoint("wg0", ALICE, ("relay.example", 1))
    assert fake.read("wg0").peer(stranger) is None
    assert len(fake.set_endpoint_calls) == 3  # failed calls are recorded too


def test_handshakes_and_counters() -> None:
    fake = mesh()
    fake.set_handshake("wg0", ALICE, 1_700_000_000.25)
    fake.set_transfer("wg0", ALICE, rx_bytes=100, tx_bytes=200)
    alice = fake.read("wg0").peer(ALICE)
    assert alice is not None
    assert alice.latest_handshake == 1_700_000_000.25
    assert (alice.rx_bytes, alice.tx_bytes) == (100, 200)
    fake.set_handshake("wg0", ALICE, None)
    alice = fake.read("wg0").peer(ALICE)
    assert alice is not None
    assert alice.latest_handshake is None
    with pytest.raises(ValueError, match="never negative"):
        fake.set_transfer("wg0", ALICE, rx_bytes=-1, tx_bytes=0)


def test_roaming_changes_endpoint_without_a_recorded_call() -> None:
    fake = mesh()
    fake.set_peer_endpoint("wg0", BOB, ("203.0.113.9", 1234))
    bob = fake.read("wg0").peer(BOB)
    assert bob is not None
    assert bob.endpoint == ("203.0.113.9", 1234)
    assert fake.set_endpoint_calls == ()


def test_hook_can_complete_a_handshake() -> None:
    proxy = ("127.0.0.1", 40000)

    def handshake_via_proxy(fake: FakeBackend, call: SetEndpointCall) -> None:
        if call.endpoint == proxy:
            fake.set_handshake(call.interface, call.peer, 1_700_000_123.0)

    fake = mesh()
    fake.on_set_endpoint = handshake_via_proxy
    fake.set_endpoint("wg0", ALICE, ("203.0.113.1", 1))
    alice = fake.read("wg0").peer(ALICE)
    assert alice is not None
    assert alice.latest_handshake is None
    fake.set_endpoint("wg0", ALICE, proxy)
    alice = fake.read("wg0").peer(ALICE)
    assert alice is not None
    assert alice.latest_handshake == 1_700_000_123.0


def test_fail_with_simulates_a_dead_daemon() -> None:
    fake = mesh()
    fake.fail_with(BackendError("UAPI wg0: daemon not running"))
    with pytest.raises(BackendError, match="daemon not running"):
        fake.read("wg0")
    with pytest.raises(BackendError, match="daemon not running"):
        fake.exists("wg0")
    with pytest.raises(BackendError, match="daemon not running"):
        fake.set_endpoint("wg0", ALICE, ("127.0.0.1", 1))
    assert fake.mtu("wg0") is None
    fake.fail_with(None)
    assert fake.mtu("wg0") == 1420
    assert fake.exists("wg0")


def test_exists_mtu_and_removal() -> None:
    fake = mesh()
    assert fake.exists("wg0")
    assert not fake.exists("wg1")
    assert fake.mtu("wg0") == 1420
    assert fake.mtu("wg1") is None
    fake.remove_peer("wg0", BOB)
    assert fake.read("wg0").peer(BOB) is None
    fake.remove_interface("wg0")
    assert not fake.exists("wg0")
    with pytest.raises(BackendError, match="wg0 not found"):
        fake.read("wg0")


def test_duplicates_are_test_bugs() -> None:
    fake = mesh()
    with pytest.raises(ValueError, match="already exists"):
        fake.add_interface("wg0")
    with pytest.raises(ValueError, match="already on wg0"):
        fake.add_peer("wg0", ALICE)


def test_usable_from_worker_threads_like_the_agent() -> None:
    async def agent_step(fake: FakeBackend, peer: PublicKey) -> float | None:
        await asyncio.to_thread(fake.set_endpoint, "wg0", peer, ("127.0.0.1", 40000))
        info = await asyncio.to_thread(fake.read, "wg0")
        found = info.peer(peer)
        assert found is not None
        return found.latest_handshake

    async def main(fake: FakeBackend) -> tuple[float | None, float | None]:
        async with asyncio.timeout(10):
            return await asyncio.gather(agent_step(fake, ALICE), agent_step(fake, BOB))

    fake = mesh()
    fake.set_handshake("wg0", BOB, 5.0)
    results = asyncio.run(main(fake))
    assert list(results) == [None, 5.0]
    assert len(fake.set_endpoint_calls) == 2
