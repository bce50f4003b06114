"""SIGHUP on a running agent (over a FakeBackend interface, real relays on
127.0.0.1): keepalive, direct timeout and new relays apply; the rest is
logged as needing a restart; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import until
from tests.integration.relays import inproc_relay
from wgrelay import cli
from wgrelay.config_file import Reloadable, parse_args
from wgrelay.discovery.registry import RegistryStore
from wgrelay.keys import PrivateKey
from wgrelay.mesh.backend.fake import FakeBackend
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.daemon import Agent

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def sighup_ignored() -> Iterator[None]:
    """SIGHUP is ignored outside the agent's handler (its default would end
    the test run if it came while no handler is installed)."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, old)


def test_sighup_reloads_the_agent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with inproc_relay() as r1, inproc_relay() as r2:
            key = PrivateKey.generate()
            backend = FakeBackend()
            backend.add_interface("wg0", private_key=key, listen_port=51820)
            backend.add_peer(
                "wg0",
                PrivateKey.generate().public_key(),
                endpoint=("198.51.100.1", 51820),
                allowed_ips=["10.0.0.9/32"],
            )
            state = tmp_path / "state"
            state.mkdir()
            conf = tmp_path / "wg0.toml"
            spec1 = f"{r1.endpoint[0]}:{r1.endpoint[1]}={r1.key}"
            spec2 = f"{r2.endpoint[0]}:{r2.endpoint[1]}={r2.key}"
            conf.write_text(f'relay = ["{spec1}"]\nkeepalive = 25\n')
            argv = ["up", "wg0", "--config", str(conf), "--state-dir", str(state)]
            args = parse_args(cli.build_parser(), argv)
            opts = cli.agent_options(args)
            opts.reload = Reloadable(args, cli.agent_options, cli.log_level)
            store = RegistryStore(state / "relays.db")
            registry = store.load()
            registry.add_bootstrap(r1.key, r1.endpoint)
            info = backend.read("wg0")
            agent = Agent(opts, backend, info, registry, store, ConnectionCache(None))
            ready = asyncio.Event()
            task = asyncio.create_task(agent.run(ready.set))
            try:
                await ready.wait()
                conf.write_text(
                    f'relay = ["{spec1}", "{spec2}"]\nkeepalive = 5\ndirect-timeout = 1.5\n'
                    "framed-only = true\n"
                )
                os.kill(os.getpid(), signal.SIGHUP)
                await until(lambda: "reloaded:" in caplog.text, timeout=10)
                assert agent.core.config.keepalive_s == 5
                assert agent.core.config.direct_probe_s == 1.5
                assert agent.core.nat.step_s == 1.5
                r2_known = registry.get(r2.key)
                assert r2_known is not None
                assert r2_known.bootstrap
                # remembered, as a --relay on the command line is
                saved = RegistryStore(state / "relays.db")
                assert saved.load().get(r2.key) is not None
                saved.close()
                assert "--keepalive 25 -> 5; --direct-timeout 3 -> 1.5; 1 relay(s) added" in (
                    caplog.text
                )
                assert f"--framed-only changed in {conf}: needs a restart" in caplog.text
                assert agent.port_mode.enabled  # still as it started

                conf.write_text("keepalive = 99999\n")
                os.kill(os.getpid(), signal.SIGHUP)
                await until(lambda: "config not reloaded" in caplog.text, timeout=10)
                assert f"{conf}:1: keepalive: '99999' is not 0-65535 seconds" in caplog.text
                assert agent.core.config.keepalive_s == 5
            finally:
                agent.stop()
                await task

    with sighup_ignored():
        asyncio.run(scenario())
