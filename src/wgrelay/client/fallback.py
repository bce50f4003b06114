"""When UDP is blocked, reach relays over TCP, then TLS; come back when it is not (sans-I/O).

Hotel, corporate and some mobile networks drop UDP entirely. The signal is
simple and cheap: the agent keeps sending control messages to relays over UDP
(registration, measurement, heartbeats, carrier probes) and hears nothing back
over UDP from any relay for ``udp_silence_s``. Then every relay the agent
talks to is also tried over a stream: TCP to the relay's TCP port, and where
that fails, TLS (443 by default, what such networks let out). A relay whose
stream comes up carries that link from then on: the shell sends its datagrams
as frames on the stream (``carrier(addr)``), and the link resends what is
outstanding at once (``Moved``).

A single dead relay looks the same from here as blocked UDP, but it does not
accept a stream either, so nothing moves; and a relay that answers over UDP
while its stream is still connecting wins (the connect is abandoned).

While on streams, UDP is tried again with backoff (``udp_retry_s`` doubling to
``udp_retry_max_s``): one PING per stream relay over UDP (``ProbeUdp``). Any
answer over UDP means the network lets UDP through again: every link moves
back (``Moved`` to UDP: the shell re-announces the link from its UDP address),
and each stream is closed ``switch_grace_s`` later, once the relay has
learnt the new address, so nothing in flight on it is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from wgrelay.endpoint import Endpoint


class Carrier(StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    enabled: bool = True
    udp_silence_s: float = 2.0
    """Sending to relays over UDP and hearing none of them this long: UDP is blocked."""
    udp_retry_s: float = 5.0
    """First wait before trying UDP again from streams; doubles each miss."""
    udp_retry_max_s: float = 60.0
    stream_retry_s: float = 10.0
    """A relay refused both TCP and TLS: try its streams again this much later."""
    switch_grace_s: float = 3.0
    """Back on UDP: the stream stays open this long for what is still on it."""
    tcp_connect_timeout_s: float = 2.0
    """Short: a network that drops TCP to that port gives no other sign, and
    TLS on 443 is tried only after it (a whole TCP wait would delay every
    HTTPS-only agent's tunnel by it)."""
    tls_connect_timeout_s: float = 6.0
    """A TCP connect, the TLS handshake, and an HTTP proxy's CONNECT."""


@dataclass(frozen=True, slots=True)
class Connect:
    addr: Endpoint
    carrier: Carrier
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Disconnect:
    addr: Endpoint


@dataclass(frozen=True, slots=True)
class ProbeUdp:
    addr: Endpoint


@dataclass(frozen=True, slots=True)
class Moved:
    """The link to the relay at ``addr`` now goes over ``carrier``."""

    addr: Endpoint
    carrier: Carrier


FallbackAction = Connect | Disconnect | ProbeUdp | Moved


@dataclass(slots=True)
class _Path:
    carrier: Carrier = Carrier.UDP
    """What carries the link now."""
    connecting: Carrier | None = None
    up: Carrier | None = None
    """The stream that is connected (it may not carry the link yet, or any more)."""
    retry_at: float = 0.0
    last_sent: float = float("-inf")
    close_at: float = float("inf")
    errors: list[str] = field(default_factory=list)


class StreamFallback:
    def __init__(self, config: FallbackConfig | None = None) -> None:
        self.config = config or FallbackConfig()
        self.udp_blocked = False
        self._silent_since: float | None = None
        self._paths: dict[Endpoint, _Path] = {}
        self._probe_at = float("inf")
        self._probe_interval = self.config.udp_retry_s
        self._actions: list[FallbackAction] = []
        self.fallbacks = 0
        """Times UDP was found blocked (status, metrics)."""

    # ------------------------------------------------------------ views

    @property
    def listening(self) -> bool:
        """Whether hearing over UDP matters now (the shell tells only then)."""
        return self.udp_blocked or self._silent_since is not None

    def carrier(self, addr: Endpoint) -> Carrier:
        path = self._paths.get(addr)
        return path.carrier if path is not None else Carrier.UDP

    def last_error(self, addr: Endpoint) -> str | None:
        path = self._paths.get(addr)
        return path.errors[-1] if path is not None and path.errors else None

    def actions(self) -> list[FallbackAction]:
        out = self._actions
        self._actions = []
        return out

    # ------------------------------------------------------------ what happened

    def sent_udp(self, addr: Endpoint, now: float) -> None:
        """A request the relay at ``addr`` answers (REGISTER, HEARTBEAT, PING,
        ...) left over UDP. Messages nobody answers must not be told: a
        SESSION_CLOSE's silence says nothing about UDP."""
        if not self.config.enabled:
            return
        path = self._paths.get(addr)
        if path is None:
            path = self._paths[addr] = _Path()
        path.last_sent = now
        if not self.udp_blocked:
            if self._silent_since is None:
                self._silent_since = now
        elif path.connecting is None and path.up is None and now >= path.retry_at:
            self._connect(addr, path, Carrier.TCP)

    def heard_udp(self, now: float) -> None:
        """Anything from a relay arrived over UDP: UDP works (called per datagram)."""
        self._silent_since = None
        if self.udp_blocked:
            self._udp_back(now)

    def connected(self, addr: Endpoint, carrier: Carrier, now: float) -> None:
        path = self._paths.get(addr)
        if path is None or path.connecting != carrier:
            self._actions.append(Disconnect(addr))  # not wanted any more
            return
        path.connecting = None
        path.up = carrier
        path.errors.clear()
        if self.udp_blocked:
            path.carrier = carrier
            self._actions.append(Moved(addr, carrier))
            if self._probe_at == float("inf"):
                self._probe_at = now + self._probe_interval
        else:
            path.close_at = now  # UDP came back while connecting
            self._actions.append(Disconnect(addr))

    def closed(self, addr: Endpoint, carrier: Carrier, now: float, error: str | None) -> None:
        """A stream failed to connect, or ended."""
        path = self._paths.get(addr)
        if path is None:
            return
        if error is not None:
            path.errors.append(f"{carrier}: {error}")
            del path.errors[:-4]
        if path.connecting == carrier:
            path.connecting = None
            if carrier == Carrier.TCP and self.udp_blocked:
                self._connect(addr, path, Carrier.TLS)  # networks that let only 443 out
            else:
                path.retry_at = now + self.config.stream_retry_s
            return
        if path.up == carrier:
            path.up = None
            path.close_at = float("inf")
            if path.carrier == carrier:
                path.carrier = Carrier.UDP
                self._actions.append(Moved(addr, Carrier.UDP))
                if self.udp_blocked:
                    self._connect(addr, path, carrier)  # the same way again at once

    # ------------------------------------------------------------ timers

    def next_timer(self) -> float:
        when = self._probe_at if self.udp_blocked else float("inf")
        if self._silent_since is not None and not self.udp_blocked:
            when = min(when, self._silent_since + self.config.udp_silence_s)
        for path in self._paths.values():
            when = min(when, path.close_at)
        return when

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        if (
            not self.udp_blocked
            and self._silent_since is not None
            and now >= self._silent_since + cfg.udp_silence_s
        ):
            self.udp_blocked = True
            self.fallbacks += 1
            self._probe_interval = cfg.udp_retry_s
            self._probe_at = float("inf")
            recent = now - 2 * cfg.udp_silence_s
            for addr, path in self._paths.items():
                if path.last_sent >= recent and path.connecting is None and path.up is None:
                    self._connect(addr, path, Carrier.TCP)
        if self.udp_blocked and now >= self._probe_at:
            for addr, path in self._paths.items():
                if path.carrier != Carrier.UDP:
                    self._actions.append(ProbeUdp(addr))
            self._probe_interval = min(self._probe_interval * 2, cfg.udp_retry_max_s)
            self._probe_at = now + self._probe_interval
        for addr, path in self._paths.items():
            if now >= path.close_at:
                path.close_at = float("inf")
                if path.up is not None and path.carrier == Carrier.UDP:
                    path.up = None
                    self._actions.append(Disconnect(addr))
        self._forget_idle(now)

    # ------------------------------------------------------------ internals

    def _connect(self, addr: Endpoint, path: _Path, carrier: Carrier) -> None:
        path.connecting = carrier
        cfg = self.config
        timeout = cfg.tls_connect_timeout_s if carrier == Carrier.TLS else cfg.tcp_connect_timeout_s
        self._actions.append(Connect(addr, carrier, timeout))

    def _udp_back(self, now: float) -> None:
        self.udp_blocked = False
        self._probe_at = float("inf")
        self._probe_interval = self.config.udp_retry_s
        for addr, path in self._paths.items():
            if path.connecting is not None:
                path.connecting = None
                self._actions.append(Disconnect(addr))
            if path.carrier != Carrier.UDP:
                path.carrier = Carrier.UDP
                self._actions.append(Moved(addr, Carrier.UDP))
                path.close_at = now + self.config.switch_grace_s

    def _forget_idle(self, now: float) -> None:
        """Relays not written to for a long time and without a stream."""
        stale = now - 600.0
        for addr in [
            a
            for a, p in self._paths.items()
            if p.last_sent < stale and p.up is None and p.connecting is None
        ]:
            del self._paths[addr]
