"""Which relayed peers use port mode, and whether it latched (sans-I/O).

A relay in port mode gives our side of each session a port (relay/ports.py).
Pointing WireGuard's endpoint straight at ``relay:port`` removes the proxy and
the 10-byte header, but the relay forwards only once our side latched, and it
latches only to a WireGuard *handshake* from WireGuard's own socket. So:

* A session comes with a port: port mode is tried (TRYING): the endpoint
  moves to the port (the peer restarted, below) and the proxy holds any
  framed frame (WireGuard would roam back to the proxy on the first one).
* Proof within ``latch_s``: a handshake newer than the switch, or bytes
  received, with the endpoint on the port -> PORT. None -> FRAMED for this
  session (a NAT that sends WireGuard's packets from another public IP than
  the agent's, say): the endpoint goes back to the proxy, which relays framed.
* The daemon *restarts* the peer (removes it and adds it back, ``restart``):
  WireGuard forgets any session and handshakes through the port at once, at
  the price of one round trip. Without it, a current session (a failover, a
  relay restart) would send transport messages, which do not latch, until
  its next handshake; and without a session WireGuard sends one initiation
  per 5 s at most, so one it sent towards the configured endpoint just
  before would delay the one through the port that long. If port mode already
  failed once through that relay address (its NAT, say, sends WireGuard's
  packets from another IP), the session is framed (said why), no restart.

The daemon asks ``endpoint(peer)`` where a relayed peer's WireGuard should
point and feeds every interface snapshot to ``observe``; ``status`` says the
mode per peer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.keys import PublicKey
from wgrelay.mesh.backend.base import PeerInfo

log = logging.getLogger(__name__)

LATCH_S = 11.0
"""How long a port may take to show a handshake: two of WireGuard's tries.
It sends at most one initiation per REKEY_TIMEOUT (5 s, plus up to 1/3 s of
jitter), so when a direct attempt started one just before, the one through
the port follows that long after, and on a lossy path that one may be lost
too. (Only a NAT that never lets the port latch pays the whole wait.)"""
MAPPING_REFRESH_S = 20.0
"""Longest WireGuard may stay silent towards a relay port. Its NAT maps
WireGuard's own socket now, and a NAT forgets an idle mapping (RFC 4787 asks
for 2 min at least; many keep 30-60 s) unless packets go *out*: WireGuard's
persistent keepalive restarts on any packet received, so on an idle tunnel
one side only receives and would lose its mapping. In framed mode the agent's
heartbeats kept it; here the agent makes WireGuard send a keepalive."""
RELATCH_INTERVAL_S = 5.0
"""At most one restart per peer this often on the relay's PORT_NOT_LATCHED."""
FAILED_FOR_S = 600.0
RETIRED_FOR_S = 600.0
"""How long a session port we left still counts as a relay path."""


class Mode(StrEnum):
    TRYING = "latching"
    PORT = "port"
    FRAMED = "framed"


@dataclass(slots=True)
class PortPath:
    endpoint: Endpoint
    mode: Mode
    reason: str
    session_id: bytes = b""
    restart: bool = False
    """WireGuard has a current session: restart the peer to get a handshake."""
    since: float = 0.0
    handshake_before: float | None = None
    rx_before: int = 0
    rx_seen: int = -1
    tx_seen: int = -1
    tx_moved_at: float = 0.0
    relatched_at: float = float("-inf")


class PortModePaths:
    def __init__(self, enabled: bool = True, latch_s: float = LATCH_S) -> None:
        self.enabled = enabled
        self.latch_s = latch_s
        self.paths: dict[PublicKey, PortPath] = {}
        self.retired: dict[Endpoint, float] = {}
        """Session ports no longer ours, and since when (``_retire``)."""
        self.failed: dict[tuple[PublicKey, str], float] = {}
        """(peer, relay host) where port mode did not latch, and when: framed
        there for ``FAILED_FOR_S`` (the network that broke it may change)."""

    def offered(
        self, peer: PublicKey, relay_endpoint: Endpoint | None, port: int, info: PeerInfo | None,
        now: float, wall: float, session_id: bytes = b"",
    ) -> None:  # fmt: skip
        """A relayed session for ``peer``: its port (0: none) at the relay,
        whose address our link uses is ``relay_endpoint``."""
        old = self.paths.get(peer)
        if old is not None and session_id and old.session_id == session_id:
            # the same session announced again: nothing changes, unless it
            # comes without its port now (our link to the relay went to a
            # stream, where WireGuard's UDP cannot follow)
            if not port:
                self.to_framed(peer, "framed: the relay link runs over a stream now")
            return
        self._retire(self.paths.pop(peer, None), now)
        if not self.enabled or not port or relay_endpoint is None:
            return
        host = str(relay_endpoint[0])
        ep: Endpoint = (host, port)
        failed_at = self.failed.get((peer, host))
        if failed_at is not None and now - failed_at < FAILED_FOR_S:
            self.paths[peer] = PortPath(
                ep, Mode.FRAMED, f"framed: port mode did not latch at {host} lately",
                session_id=session_id,
            )  # fmt: skip
            return
        # restarted either way: with a current session WireGuard would send
        # transport messages (they do not latch) until its next handshake;
        # without one, its next initiation may still wait up to 5 s (it
        # sends one per REKEY_TIMEOUT, and may have just sent one towards
        # the configured endpoint). Restarted, it handshakes now.
        self.paths[peer] = PortPath(
            ep, Mode.TRYING, "port mode: waiting for a handshake", restart=True,
            session_id=session_id,
        )  # fmt: skip

    def needs_restart(self, peer: PublicKey) -> bool:
        """Whether the peer must be restarted to handshake through the port
        (once: the restart is then done)."""
        pp = self.paths.get(peer)
        if pp is None or pp.mode is not Mode.TRYING or not pp.restart:
            return False
        pp.restart = False
        return True

    def endpoint(self, peer: PublicKey) -> Endpoint | None:
        """Where WireGuard should send: the relay port, or None (the proxy)."""
        pp = self.paths.get(peer)
        if pp is None or pp.mode is Mode.FRAMED:
            return None
        return pp.endpoint

    def switched(self, peer: PublicKey, info: PeerInfo | None, now: float) -> None:
        """WireGuard's endpoint was just set to the port: the latch clock starts."""
        pp = self.paths.get(peer)
        if pp is None or pp.mode is not Mode.TRYING:
            return
        pp.since = now
        pp.handshake_before = info.latest_handshake if info is not None else None
        pp.rx_before = info.rx_bytes if info is not None else 0

    def observe(self, peer: PeerInfo, now: float) -> bool:
        """A fresh snapshot of a peer; True if port mode just failed (the
        endpoint must go back to the proxy)."""
        pp = self.paths.get(peer.public_key)
        if pp is None or pp.mode is not Mode.TRYING or pp.since == 0.0:
            return False
        if peer.endpoint == pp.endpoint:
            hs = peer.latest_handshake
            new_hs = hs is not None and (pp.handshake_before is None or hs > pp.handshake_before)
            if new_hs or peer.rx_bytes > pp.rx_before:
                pp.mode = Mode.PORT
                pp.reason = (
                    f"port mode: WireGuard talks to the relay at {endpoint_str(pp.endpoint)}"
                )
                log.info("peer %s: %s", peer.public_key.short(), pp.reason)
                return False
        if now - pp.since < self.latch_s:
            return False
        pp.mode = Mode.FRAMED
        pp.reason = (
            f"framed: no handshake through relay port {endpoint_str(pp.endpoint)} "
            f"within {self.latch_s:.0f} s"
        )
        self.failed[(peer.public_key, str(pp.endpoint[0]))] = now
        log.info("peer %s: %s", peer.public_key.short(), pp.reason)
        return True

    def needs_refresh(self, peer: PeerInfo, now: float) -> bool:
        """Whether WireGuard has sent nothing to the port for
        ``MAPPING_REFRESH_S`` (its NAT mapping must be refreshed: kick it)."""
        pp = self.paths.get(peer.public_key)
        if pp is None or pp.mode is not Mode.PORT or peer.endpoint != pp.endpoint:
            return False
        if pp.tx_moved_at == 0.0 or _moved(peer.tx_bytes, pp.tx_seen):
            pp.tx_moved_at = now
            return False
        if now - pp.tx_moved_at < MAPPING_REFRESH_S:
            return False
        pp.tx_moved_at = now
        return True

    def traffic(self, peer: PeerInfo) -> tuple[bool, bool]:
        """(sent, heard) through the relay port since the last snapshot. In
        port mode our traffic never passes the agent, so the relay link learns
        from these that it carries traffic and whether answers come (its
        carrier check notices a dead relay in seconds, as in framed mode)."""
        pp = self.paths.get(peer.public_key)
        if pp is None or pp.mode is Mode.FRAMED or peer.endpoint != pp.endpoint:
            return False, False
        sent = _moved(peer.tx_bytes, pp.tx_seen)
        heard = _moved(peer.rx_bytes, pp.rx_seen)
        pp.tx_seen, pp.rx_seen = peer.tx_bytes, peer.rx_bytes
        return sent, heard

    def relatch(self, peer: PublicKey, now: float) -> Endpoint | None:
        """The relay port to restart the peer at, when the relay says our
        WireGuard's packets come from an unlatched source (None: not now, at
        most once per ``RELATCH_INTERVAL_S``, and only in port mode)."""
        pp = self.paths.get(peer)
        if pp is None or pp.mode is not Mode.PORT or now - pp.relatched_at < RELATCH_INTERVAL_S:
            return None
        pp.relatched_at = now
        return pp.endpoint

    def to_framed(self, peer: PublicKey, reason: str) -> bool:
        """This session goes framed from now on (its relay link moved to a
        stream: WireGuard's UDP cannot reach the port). True if it changed."""
        pp = self.paths.get(peer)
        if pp is None or pp.mode is Mode.FRAMED:
            return False
        pp.mode, pp.reason = Mode.FRAMED, reason
        log.info("peer %s: %s", peer.short(), reason)
        return True

    def at_host(self, host: str) -> list[PublicKey]:
        """Peers whose session port is at relay address ``host``."""
        return [k for k, pp in self.paths.items() if str(pp.endpoint[0]) == host]

    def carrying(self) -> bool:
        """Whether some WireGuard peer talks to a relay port (not the proxy)."""
        return any(pp.mode is not Mode.FRAMED for pp in self.paths.values())

    def session_id(self, peer: PublicKey) -> bytes:
        """The relay session the peer's port belongs to (b"": none)."""
        pp = self.paths.get(peer)
        return pp.session_id if pp is not None else b""

    def forget(self, peer: PublicKey, now: float) -> None:
        self._retire(self.paths.pop(peer, None), now)

    def _retire(self, pp: PortPath | None, now: float) -> None:
        """A session port we no longer use stays a relay path for a while:
        its session may still forward a packet or two (the other side's
        WireGuard sends there until it moves too), and WireGuard, roaming
        to it, must not be taken for a peer reached directly."""
        if pp is not None:
            self.retired[pp.endpoint] = now

    def endpoints(self) -> set[Endpoint]:
        """The session ports in use."""
        return {pp.endpoint for pp in self.paths.values()}

    def retired_endpoints(self, now: float) -> set[Endpoint]:
        """The session ports left in the last ``RETIRED_FOR_S``."""
        for ep in [e for e, t in self.retired.items() if now - t > RETIRED_FOR_S]:
            del self.retired[ep]
        return set(self.retired) - self.endpoints()

    def holding(self, peer: PublicKey) -> bool:
        """Whether the proxy must hold framed frames (WireGuard is on the port)."""
        pp = self.paths.get(peer)
        return pp is not None and pp.mode is not Mode.FRAMED

    def describe(self, peer: PublicKey) -> tuple[str | None, str | None]:
        """(mode, why) for ``status``; (None, None) for a peer without a port."""
        pp = self.paths.get(peer)
        return (pp.mode.value, pp.reason) if pp is not None else (None, None)


def _moved(now: int, seen: int) -> bool:
    """Whether a byte counter moved since ``seen`` (-1: not seen yet). A
    restarted peer's counters start again at 0: below ``seen`` but not 0 moved."""
    return seen >= 0 and (now > seen or 0 < now < seen)
