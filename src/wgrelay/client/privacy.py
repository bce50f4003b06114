"""Which peers get private paths (``wgrelay up --private``, ``--private-peer``)."""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.keys import PublicKey


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """A relayed path to a covered peer always uses two relays, neither of
    which learns both peers (relay/private_legs.py); a peer for which no
    such path exists gets no relayed path at all (direct paths still work)."""

    all_peers: bool = False
    """``--private``: every peer."""
    peers: frozenset[PublicKey] = frozenset()
    """``--private-peer KEY``, repeatable."""

    def covers(self, peer: PublicKey) -> bool:
        return self.all_peers or peer in self.peers

    @property
    def enabled(self) -> bool:
        return self.all_peers or bool(self.peers)
