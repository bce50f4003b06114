"""The relay's own signed announcement, signed as rarely as it can be.

Signing costs an Ed25519 operation and discovery queries can come 20 a second
per key, so the same bytes are handed out until what they say changes (load,
endpoints) or they age past ``RESIGN_AFTER_S``.
"""

from __future__ import annotations

from wgrelay.keys import RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement

ANNOUNCEMENT_TTL_S = 600
"""How long others may use an announcement of ours."""
RESIGN_AFTER_S = 60.0


class Announcer:
    def __init__(self, identity: RelayIdentity) -> None:
        self.identity = identity
        self._cached: tuple[RelayNodeInfo, float, bytes] | None = None

    def sign(self, info: RelayNodeInfo, wall: float, fresh: bool = False) -> bytes:
        """``fresh``: newer than any before, even if nothing changed (a relay
        refutes a notice of its death with a newer announcement)."""
        cached = self._cached
        if (
            not fresh
            and cached is not None
            and cached[0] == info
            and wall - cached[1] < RESIGN_AFTER_S
        ):
            return cached[2]
        issued_ms = int(wall * 1000)
        if cached is not None and issued_ms <= int(cached[1] * 1000):
            issued_ms = int(cached[1] * 1000) + 1  # strictly newer, whatever the clock did
            wall = issued_ms / 1000
        raw = encode_announcement(info, issued_ms, ANNOUNCEMENT_TTL_S, self.identity)
        self._cached = (info, wall, raw)
        return raw
