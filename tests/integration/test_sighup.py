"""SIGHUP on a real ``wgrelay start-relay`` process: the config file is read
again and what can change does, at once; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.relays import RelayProcess, relay_process
from wgrelay.client.udp import RelayClient
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey

pytestmark = pytest.mark.timeout(60)


def wait_for_log(rp: RelayProcess, text: str, count: int = 1, timeout: float = 15.0) -> str:
    """The relay's log once ``text`` is in it ``count`` times (it is written
    by the process; nothing else to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        log = rp.log.read_text()
        if log.count(text) >= count:
            return log
        assert rp.proc.poll() is None, f"relay exited:\n{log}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the relay's log:\n{log}")
        time.sleep(0.02)


def test_sighup_applies_policy_and_limits_and_keeps_a_broken_file_out(tmp_path: Path) -> None:
    a, b, c, stranger = (PrivateKey.generate() for _ in range(4))
    allow = tmp_path / "allow"
    allow.write_text("".join(f"{k.public_key()}\n" for k in (a, b, c)))
    conf = tmp_path / "relay.toml"
    conf.write_text(f'allow-file = "{allow}"\nmax-connections = 1\nregion = "eu"\n')

    with relay_process(tmp_path / "state", "--config", str(conf)) as rp:

        async def before() -> None:
            ca, cb, cc = (RelayClient(k, rp.key, rp.endpoint) for k in (a, b, c))
            for cl in (ca, cb, cc):
                await cl.wait_registered()
            await ca.open_session(b.public_key())
            with pytest.raises(RelayUnavailable, match="RESOURCE_LIMIT"):
                await ca.open_session(c.public_key())  # max-connections = 1
            cs = RelayClient(stranger, rp.key, rp.endpoint)
            with pytest.raises(RelayUnavailable, match="refused"):
                await cs.wait_registered(timeout=5)
            for cl in (ca, cb, cc, cs):
                await cl.close()

        asyncio.run(before())

        conf.write_text('open = true\nmax-connections = 2\nregion = "us"\nverbose = 1\n')
        os.kill(rp.pid, signal.SIGHUP)
        log = wait_for_log(rp, "reloaded:")
        assert "--max-connections 1 -> 2" in log
        assert f"access allow-file {allow} -> open" in log
        assert "log level DEBUG" in log
        assert f"--region changed in {conf}: needs a restart" in log

        async def after() -> None:
            ca, cb, cc, cs = (RelayClient(k, rp.key, rp.endpoint) for k in (a, b, c, stranger))
            await cs.wait_registered()  # newly allowed
            for cl in (ca, cb, cc):
                await cl.wait_registered()
            await ca.open_session(b.public_key())
            await ca.open_session(c.public_key())  # a second session fits now
            with pytest.raises(RelayUnavailable, match="RESOURCE_LIMIT"):
                await cs.open_session(b.public_key())  # and a third does not
            for cl in (ca, cb, cc, cs):
                await cl.close()

        asyncio.run(after())

        conf.write_text('open = true\n"max-conections" = 5\n')
        os.kill(rp.pid, signal.SIGHUP)
        log = wait_for_log(rp, "config not reloaded")
        assert f'{conf}:2: unknown key "max-conections" (did you mean "max-connections"?)' in log
        assert rp.proc.poll() is None
        assert log.count("reloaded:") == 1

        # back to the allow list: the stranger's registration ends at once
        conf.write_text(f'allow-file = "{allow}"\nmax-connections = 2\nregion = "eu"\n')

        async def dropped() -> None:
            cs = RelayClient(stranger, rp.key, rp.endpoint)
            await cs.wait_registered()
            os.kill(rp.pid, signal.SIGHUP)
            await asyncio.to_thread(wait_for_log, rp, "reloaded:", 2)
            await cs.close()

        asyncio.run(dropped())
        log = rp.log.read_text()
        assert f"access open -> allow-file {allow}" in log
        assert f"{stranger.public_key().short()} no longer allowed" in log
