"""A relay remembers the relays it knows, in ``STATE_DIR/relays.db``.

The same SQLite store as an agent's registry (discovery/registry.py, with its
merge-on-save and never-lose-the-operator rules): the bootstrap relays given
with ``start-relay --bootstrap`` (kept for later starts), and the signed
announcements the relay learned, saved every ``SAVE_INTERVAL_S`` and at exit.
A restarted relay contacts them all again, not only its bootstrap relays, so
it rejoins the federation even if those are gone; an announcement that
expired meanwhile is refused when read back, as any other, but its relay is
still contacted at the endpoint it gave, like a bootstrap relay.
"""

from __future__ import annotations

import logging

from wgrelay.discovery.registry import RegistryStore, RelayRegistry
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.relay.core import RelayCore

log = logging.getLogger(__name__)

MAX_LAPSED_CONTACTS = 32
SAVE_INTERVAL_S = 5.0
"""How often what the federation learned is merged into ``relays.db`` (only
changed rows are written): a ``kill -9`` loses seconds of it, not the run."""


def load_known_relays(
    store: RegistryStore, core: RelayCore, bootstrap: list[tuple[Endpoint, PublicKey]], now: float
) -> RelayRegistry:
    """Merge the command line's bootstrap relays into the store, then hand
    every known relay to the relay core. Returns the registry to save into."""
    registry = store.load()
    for endpoint, key in bootstrap:
        registry.add_bootstrap(key, endpoint)
    if bootstrap:
        store.save(registry)
    own = core.identity.public
    lapsed = []
    for relay in registry.all():
        if relay.key == own:
            continue
        learned = relay.announcement is not None and core.federation.learn(relay.announcement, now)
        if relay.bootstrap:
            core.add_bootstrap(relay.key, relay.endpoint)
        elif not learned:
            lapsed.append(relay)
    # A relay whose announcement lapsed while we were down is still worth a
    # try: contacted like a bootstrap relay (this run only) at the endpoint
    # we last knew, it answers with a fresh announcement (whose endpoints are
    # used from then on). Else a relay down for longer than an announcement
    # lives, its bootstrap relays gone, never rejoins. The most recent few.
    lapsed.sort(key=lambda r: r.issued_ms or 0, reverse=True)
    for relay in lapsed[:MAX_LAPSED_CONTACTS]:
        core.add_bootstrap(relay.key, relay.endpoint)
    return registry


def save_known_relays(store: RegistryStore, registry: RelayRegistry, core: RelayCore) -> int:
    """What the federation learned since the last save, merged into the store."""
    changed = 0
    for member in core.federation.directory.members():
        changed += registry.register_relay(member.announcement)  # verified on arrival
    if changed:
        store.save(registry)
    return changed
