"""NatTraverse: try a peer's candidate endpoints one by one (the seed's nat.rs), sans-I/O.

For every peer still ``remaining``, one candidate endpoint at a time is made the
peer's WireGuard endpoint and a handshake is kicked (``TryDirect``). The attempt
succeeds when WireGuard shows proof that the path works - a handshake completed
after the attempt began, or bytes received from the peer while the endpoint was
the candidate - and fails when ``step_s`` passes without it. Then the next
candidate is tried. Candidates arrive best first (``ConnectionCache``'s score)
and **each one is tried**: the Rust attempt advanced its iterator twice per step
and silently skipped two of every three.

``step()`` advances the attempts; ``step_with_relay()`` returns the peers for
which direct attempts are exhausted (or which the connection cache says should
use a relay now) so the caller can relay them; ``mark_connected()`` removes a
peer (direct success, or a relayed path that came up); ``is_finished()`` is true
when no peer remains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wgrelay.endpoint import Endpoint, is_loopback
from wgrelay.keys import PublicKey


@dataclass(frozen=True, slots=True)
class Observation:
    """What the backend showed of one peer at one moment."""

    endpoint: Endpoint | None
    latest_handshake: float | None
    rx_bytes: int


@dataclass(frozen=True, slots=True)
class TryDirect:
    """Make ``endpoint`` the peer's WireGuard endpoint and kick a handshake."""

    peer: PublicKey
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class DirectSucceeded:
    peer: PublicKey
    endpoint: Endpoint
    latency_ms: float | None
    """Kick to completed handshake, when the backend's clock resolution allows."""
    proof: str


@dataclass(frozen=True, slots=True)
class DirectFailed:
    peer: PublicKey
    endpoint: Endpoint


@dataclass(slots=True)
class _Attempt:
    candidates: list[Endpoint]
    index: int
    started: float
    started_wall: float
    deadline: float
    step_s: float
    rx_at_start: int | None = None

    @property
    def current(self) -> Endpoint | None:
        return self.candidates[self.index] if self.index < len(self.candidates) else None


class NatTraverse:
    def __init__(self, step_s: float, relay_path: Callable[[Endpoint], bool] | None = None) -> None:
        """``relay_path``: whether an endpoint is one of our relay paths (a
        proxy, or a relay's session port in port mode): WireGuard roaming
        there is the relay answering, never a direct path."""
        self.step_s = step_s
        self.remaining: dict[PublicKey, _Attempt] = {}
        self._relay_path = relay_path or (lambda _ep: False)

    def add(
        self,
        peer: PublicKey,
        candidates: list[Endpoint],
        now: float,
        wall: float,
        rx_bytes: int | None = None,
        step_s: float | None = None,
    ) -> list[TryDirect]:
        """Start (or restart) trying ``candidates`` in order for ``peer``.

        ``rx_bytes`` is the peer's receive counter now: growth beyond it while
        the candidate is the endpoint proves the path. ``step_s``: each
        candidate's time, if not the default (a try while relayed is short).
        """
        unique = list(dict.fromkeys(candidates))  # order kept, duplicates out
        step = self.step_s if step_s is None else step_s
        att = _Attempt(unique, 0, now, wall, now + step, step, rx_bytes)
        self.remaining[peer] = att
        return [TryDirect(peer, unique[0])] if unique else []

    def exhausted(self, peer: PublicKey) -> bool:
        att = self.remaining.get(peer)
        return att is not None and att.current is None

    def current(self, peer: PublicKey) -> Endpoint | None:
        att = self.remaining.get(peer)
        return att.current if att is not None else None

    def step(
        self, now: float, wall: float, seen: Mapping[PublicKey, Observation]
    ) -> tuple[list[TryDirect], list[DirectSucceeded | DirectFailed]]:
        actions: list[TryDirect] = []
        results: list[DirectSucceeded | DirectFailed] = []
        for peer, att in list(self.remaining.items()):
            cand = att.current
            obs = seen.get(peer)
            if cand is None or obs is None:
                continue
            if att.rx_at_start is None:
                att.rx_at_start = obs.rx_bytes
            proof = self._proof(att, cand, obs)
            if proof is not None:
                latency = None
                hs = obs.latest_handshake
                if hs is not None and hs >= att.started_wall and hs % 1 and obs.endpoint == cand:
                    latency = (hs - att.started_wall) * 1000
                where = cand if obs.endpoint is None else obs.endpoint
                results.append(DirectSucceeded(peer, where, latency, proof))
                del self.remaining[peer]
                continue
            if now >= att.deadline:
                results.append(DirectFailed(peer, cand))
                att.index += 1
                nxt = att.current
                att.started, att.started_wall = now, wall
                att.deadline = now + att.step_s
                att.rx_at_start = obs.rx_bytes
                if nxt is not None:
                    actions.append(TryDirect(peer, nxt))
        return actions, results

    def _proof(self, att: _Attempt, cand: Endpoint, obs: Observation) -> str | None:
        hs = obs.latest_handshake
        ep = obs.endpoint
        if hs is not None and hs >= att.started_wall and ep == cand:
            return "handshake"
        rx_grew = att.rx_at_start is not None and obs.rx_bytes > att.rx_at_start
        # an established session needs no new handshake: data from the peer
        # while WireGuard still points at the candidate proves the path too
        if rx_grew and ep == cand:
            return "traffic"
        # the peer got through to us from an address of its own while we tried,
        # and WireGuard followed it (roaming): that path works as well
        if rx_grew and ep is not None and not is_loopback(ep) and not self._relay_path(ep):
            return "peer reached us directly"
        return None

    def step_with_relay(
        self, should_try_relay: Callable[[PublicKey], bool] = lambda _p: False
    ) -> list[PublicKey]:
        """Peers to relay now: their direct attempts are exhausted.

        ``should_try_relay`` (the connection cache's rule) is asked only for
        peers whose *current* candidate has had its full time: a running attempt
        is never cut short, or a peer the cache already doubts would never get
        a real try.
        """
        return [
            peer
            for peer, att in self.remaining.items()
            if att.current is None or (att.index > 0 and should_try_relay(peer))
        ]

    def mark_connected(self, peer: PublicKey) -> None:
        self.remaining.pop(peer, None)

    def is_finished(self) -> bool:
        return not self.remaining

    def next_timer(self) -> float:
        """When the next candidate's time is up (inf: nothing in progress)."""
        return min((att.deadline for att in self.remaining.values()), default=float("inf"))
