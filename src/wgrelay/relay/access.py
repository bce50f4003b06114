"""Who may use a relay: everyone, an allow-list file, or the peers of an interface.

Both ends of a session must be allowed. The policy answers from memory; the
asyncio shell calls ``refresh()`` periodically so edits to the allow file or to
the WireGuard interface take effect without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from wgrelay.errors import ConfigError, InvalidKey
from wgrelay.keys import PublicKey

log = logging.getLogger(__name__)


class AccessPolicy(Protocol):
    description: str

    def allows(self, key: bytes) -> bool: ...

    def refresh(self) -> None: ...


class OpenPolicy:
    """Any key may register and open sessions (a public relay)."""

    description = "open"

    def allows(self, key: bytes) -> bool:
        return True

    def refresh(self) -> None:
        return None


def parse_allow_file(text: str, source: str) -> frozenset[bytes]:
    """One base64 key per line; '#' starts a comment; blank lines are ignored."""
    keys: set[bytes] = set()
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            keys.add(PublicKey.from_base64(item).raw)
        except InvalidKey as e:
            raise ConfigError(f"{source}:{n}: {e}") from None
    return frozenset(keys)


class AllowFilePolicy:
    """Keys listed in a file. A broken edit keeps the previous list (and says so)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"allow-file {path}"
        self._mtime_ns = -1
        self._keys: frozenset[bytes] = frozenset()
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            st = self.path.stat()
            if st.st_mtime_ns == self._mtime_ns:
                return
            keys = parse_allow_file(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, ConfigError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if strict:
                raise ConfigError(f"cannot load allow file {self.path}: {msg}") from None
            log.warning(
                "allow file %s not reloaded, keeping %d keys: %s", self.path, len(self._keys), msg
            )
            return
        if not keys and strict:
            # a relay that serves nobody looks healthy and helps no one
            raise ConfigError(
                f"allow file {self.path} lists no keys, so the relay would serve nobody"
                " (one base64 public key a line; or use --open)"
            )
        self._mtime_ns = st.st_mtime_ns
        if keys != self._keys:
            if keys:
                log.info("allow file %s: %d keys", self.path, len(keys))
            else:  # an operator may empty it on purpose to shut the relay; still say so
                log.warning("allow file %s lists no keys: the relay now serves nobody", self.path)
        self._keys = keys

    def allows(self, key: bytes) -> bool:
        return key in self._keys

    def refresh(self) -> None:
        self._load(strict=False)


class PeersOfInterfacePolicy:
    """The peers of a WireGuard interface on the relay host (mesh membership)."""

    def __init__(self, interface: str, read_peers: Callable[[], frozenset[bytes]]) -> None:
        self.interface = interface
        self.description = f"peers of {interface}"
        self._read_peers = read_peers
        self._keys = read_peers()

    def allows(self, key: bytes) -> bool:
        return key in self._keys

    def refresh(self) -> None:
        try:
            keys = self._read_peers()
        except Exception as e:  # the interface may be down for a moment; keep serving
            log.warning(
                "cannot re-read peers of %s, keeping %d: %s", self.interface, len(self._keys), e
            )
            return
        if keys != self._keys:
            log.info("interface %s: %d peers allowed", self.interface, len(keys))
        self._keys = keys
