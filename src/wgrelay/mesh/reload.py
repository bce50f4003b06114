"""SIGHUP for ``wgrelay up``: read the config file again and apply what a
running agent can change.

Applied at once:

* ``--keepalive``: every persistent keepalive the agent sets from then on
  (a path change, a direct try, a new relay session); a peer keeps the value
  it has until the agent next sets it.
* ``--direct-timeout``: direct tries that start from then on (a try under way
  keeps its step).
* ``--relay``: relays listed newly are added to the known relays as bootstrap
  relays (and remembered, as on the command line); if no home relay is
  registered yet, choosing one starts again at once. A relay removed from the
  list stays known (the registry remembers every relay it learned).
* ``-v``/``-q`` (``verbose``/``quiet``): the log level.

Everything else (the backend, port mode, metrics, the GeoIP database, the
state directory, new options) is logged as "needs a restart". A file with an
error is not applied at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from wgrelay.aio import RELOAD_SIGNAL, SerialRunner, serially_on_signal
from wgrelay.errors import ConfigError

if TYPE_CHECKING:
    from wgrelay.config_file import Reloadable, Reread
    from wgrelay.mesh.daemon import Agent, AgentOptions

log = logging.getLogger(__name__)

RELOADABLE = frozenset({"keepalive", "direct_timeout", "relay", "verbose", "quiet"})


class AgentReloader:
    """One reload per SIGHUP, one at a time (a SIGHUP during a reload runs
    another after it)."""

    def __init__(self, source: Reloadable[AgentOptions], agent: Agent) -> None:
        self.source = source
        self.agent = agent
        self.runner = SerialRunner(self.reload, log)

    async def reload(self) -> None:
        try:
            new = await asyncio.to_thread(self.source.reread)
        except ConfigError as e:
            log.error("SIGHUP: config not reloaded, the running settings stay: %s", e)
            return
        self.apply(new)

    def apply(self, new: Reread[AgentOptions]) -> None:
        agent = self.agent
        old = agent.core.config
        config = replace(
            old,
            keepalive_s=new.options.config.keepalive_s,
            direct_probe_s=new.options.config.direct_probe_s,
        )
        # the core, its direct tries and the shutdown's restore all read these
        agent.core.config = config
        agent.opts.config = config
        agent.core.nat.step_s = config.direct_probe_s
        applied = []
        if config.keepalive_s != old.keepalive_s:
            applied.append(f"--keepalive {old.keepalive_s} -> {config.keepalive_s}")
        if config.direct_probe_s != old.direct_probe_s:
            applied.append(f"--direct-timeout {old.direct_probe_s:g} -> {config.direct_probe_s:g}")
        added = [r for r in new.options.relays if r not in agent.opts.relays]
        agent.opts.relays = list(new.options.relays)
        if added:
            for endpoint, key in added:
                agent.registry.add_bootstrap(key, endpoint)
            if agent.store is not None:
                try:
                    agent.store.save(agent.registry)
                except Exception as e:  # still used in this run
                    log.warning("could not save the relay registry: %s", e)
            applied.append(f"{len(added)} relay(s) added")
            if agent.manager.home is None and agent.core.relay_enabled:
                agent.manager.begin()
        level_changed = logging.getLogger().level != new.log_level
        if level_changed:
            applied.append(f"log level {logging.getLevelName(new.log_level)}")
        for dest, flag in new.changed.items():
            if dest not in RELOADABLE:
                log.warning(
                    "SIGHUP: %s changed in %s: needs a restart (the running value stays)",
                    flag,
                    new.config_file,
                )
        log.info(
            "SIGHUP: config %s reloaded: %s",
            new.config_file,
            "; ".join(applied) if applied else "nothing to change",
        )
        if level_changed:  # after saying so: a quieter level would hide it
            logging.getLogger().setLevel(new.log_level)


@contextlib.asynccontextmanager
async def reloads_on_sighup(
    source: Reloadable[AgentOptions] | None, agent: Agent
) -> AsyncIterator[None]:
    """SIGHUP reloads while the block runs (nothing without a source)."""
    if source is None:
        yield
        return
    reloader = AgentReloader(source, agent)
    async with serially_on_signal(RELOAD_SIGNAL, reloader.runner):
        yield
