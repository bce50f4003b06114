"""The error hierarchy, grouped by what the caller can do about it.

* ``LocalProtocolError``: we misused an API (a bug in our code or a caller's).
* ``RemoteProtocolError``: a peer sent something we cannot accept. The data path
  never raises these out of its receive loop: it counts them by ``reason`` and
  drops the datagram.
* ``ConfigError``: the operator gave us something unusable (bad flag, key file,
  state directory). The CLI prints it as one line and exits non-zero.
* ``RelayUnavailable``: no relay could be reached or none accepted us.
"""

from __future__ import annotations


class WgRelayError(Exception):
    """Base class of every error wgrelay raises on purpose."""


class ProtocolError(WgRelayError):
    """Something about a protocol exchange was wrong."""


class LocalProtocolError(ProtocolError):
    """We tried to encode or send something invalid (a programming error)."""


class RemoteProtocolError(ProtocolError):
    """A received datagram was rejected; ``reason`` names the drop counter."""

    reason: str = "malformed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class Truncated(RemoteProtocolError):
    reason = "truncated"


class Oversize(RemoteProtocolError):
    reason = "oversize"


class UnknownType(RemoteProtocolError):
    reason = "unknown_type"


class UnsupportedVersion(RemoteProtocolError):
    reason = "bad_version"


class Malformed(RemoteProtocolError):
    reason = "malformed"


class AuthenticationFailed(RemoteProtocolError):
    """Decryption or signature verification failed (tampered or wrong key)."""

    reason = "auth_failed"


class Replayed(RemoteProtocolError):
    reason = "replayed"


class StaleTimestamp(RemoteProtocolError):
    """The sender's timestamp lies outside the accepted clock-skew window."""

    reason = "stale_timestamp"


class ConfigError(WgRelayError):
    """Operator input (flags, files, state directory) is unusable."""


class InvalidKey(ConfigError):
    """A key string or key file is unusable."""


class RelayUnavailable(WgRelayError):
    """No relay could be reached, or none would serve us."""


class BackendError(WgRelayError):
    """The WireGuard backend (kernel or userspace) failed or is absent."""
