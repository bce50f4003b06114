"""SIGHUP for ``wgrelay start-relay``: read the config file again and apply
what a running relay can change.

Applied at once:

* the access policy (``--open`` / ``--allow-file`` / ``--allow-peers-of``):
  a changed choice builds the new policy, an unchanged one re-reads its allow
  file or interface now (as the periodic refresh would within seconds). Peers
  the new policy refuses lose their registration and sessions at once; peers
  it allows newly may register from then on.
* ``--max-connections`` and ``--max-sessions-per-peer``: checked when a
  session is asked for, so they apply to new sessions; sessions above a
  lowered limit are not closed.
* ``--max-bandwidth``: new sessions get the new rate. Established sessions
  keep the rate they started with (their agents were told it), except that
  a port-mode session handed to the kernel after the reload is limited there
  at the new rate.
* ``--idle-timeout``: every session, at the next housekeeping (each second).
* ``--capacity`` and ``--min-share``: every session, at the next
  housekeeping (the shares are recomputed each second; relay/contention.py),
  and the next full relay's choice of whose slot a request takes.
* ``-v``/``-q`` (``verbose``/``quiet``): the log level.

Everything else (ports, binds, the key, metrics, announcements, stream
transports, new options) is logged as "needs a restart" and keeps running
with its value from the start. A file with an error is not applied at all:
the relay says why and keeps every running setting.
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
from wgrelay.relay.access import AccessPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore

if TYPE_CHECKING:
    from wgrelay.config_file import Reloadable, Reread
    from wgrelay.relay.app import RelayOptions
    from wgrelay.relay.server import RelayServer

log = logging.getLogger(__name__)

POLICY_DESTS = frozenset({"open", "allow_file", "allow_peers_of"})
CONFIG_FIELDS = {
    "max_connections": "max_connections",
    "max_bandwidth": "max_bandwidth_kbps",
    "max_sessions_per_peer": "max_sessions_per_peer",
    "idle_timeout": "session_idle_timeout_s",
    "capacity": "capacity_bytes_per_s",
    "min_share": "min_share",
}
"""Reloadable option dest -> the RelayConfig field it sets."""
RELOADABLE = POLICY_DESTS | set(CONFIG_FIELDS) | {"verbose", "quiet"}


def use_config(core: RelayCore, config: RelayConfig) -> None:
    """Swap the relay's limits (the config is frozen: replaced, not changed)."""
    core.reconfigure(config=config)


def use_policy(core: RelayCore, policy: AccessPolicy) -> None:
    core.reconfigure(policy=policy)


def reloaded_config(running: RelayConfig, new: RelayConfig) -> RelayConfig:
    """The running config with the reloadable limits of ``new``."""
    return replace(running, **{f: getattr(new, f) for f in CONFIG_FIELDS.values()})


class RelayReloader:
    """Runs one reload per SIGHUP (one at a time; a SIGHUP during a reload
    runs another after it, so the last edit is always applied)."""

    def __init__(
        self, source: Reloadable[RelayOptions], core: RelayCore, server: RelayServer
    ) -> None:
        self.source = source
        self.core = core
        self.server = server
        self.runner = SerialRunner(self.reload, log)
        self._applied = source.args
        """The options the running policy was made from (``new.changed``
        compares with the start: what needs a restart)."""

    async def reload(self) -> None:
        from wgrelay.relay.app import build_policy

        try:
            # the file, an allow file or an interface: reads that block
            new = await asyncio.to_thread(self.source.reread)
            policy = None
            if any(getattr(new.args, d) != getattr(self._applied, d) for d in POLICY_DESTS):
                policy = await asyncio.to_thread(build_policy, new.options)
            else:
                await asyncio.to_thread(self.core.policy.refresh)
        except ConfigError as e:
            log.error("SIGHUP: config not reloaded, the running settings stay: %s", e)
            return
        self._apply(new, policy)

    def _apply(self, new: Reread[RelayOptions], policy: AccessPolicy | None) -> None:
        core = self.core
        old_config = core.config
        config = reloaded_config(old_config, new.options.config)
        use_config(core, config)
        applied = [
            f"{new.flag(dest)} {getattr(old_config, field)} -> {getattr(config, field)}"
            for dest, field in CONFIG_FIELDS.items()
            if getattr(old_config, field) != getattr(config, field)
        ]
        if policy is not None and policy.description != core.policy.description:
            applied.append(f"access {core.policy.description} -> {policy.description}")
        if policy is not None:
            use_policy(core, policy)
        # peers the policy no longer allows go now, and are told
        core.policy_changed(self.server.runtime.now())
        self.server.flush()
        level_changed = logging.getLogger().level != new.log_level
        if level_changed:
            applied.append(f"log level {logging.getLevelName(new.log_level)}")
        restart = [flag for dest, flag in new.changed.items() if dest not in RELOADABLE]
        for flag in restart:
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
        self._applied = new.args
        if level_changed:  # after saying so: a quieter level would hide it
            logging.getLogger().setLevel(new.log_level)


@contextlib.asynccontextmanager
async def reloads_on_sighup(
    source: Reloadable[RelayOptions] | None, core: RelayCore, server: RelayServer
) -> AsyncIterator[None]:
    """SIGHUP reloads while the block runs (nothing without a source)."""
    if source is None:
        yield
        return
    reloader = RelayReloader(source, core, server)
    async with serially_on_signal(RELOAD_SIGNAL, reloader.runner):
        yield
