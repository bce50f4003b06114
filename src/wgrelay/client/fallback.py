"""When UDP is blocked, reach relays over TCP, then TLS; come back when it is not (sans-I/O).

Hotel, corporate and some mobile networks drop UDP entirely. The signal is
per relay and cheap: the agent keeps sending requests to relays over UDP
(registration, measurement, heartbeats, carrier probes), each of which the
relay answers; a relay that has had ``min_unanswered`` of them and sent
nothing back over UDP for ``udp_silence_s`` is tried over a stream: TCP to
its TCP port, and where that fails, TLS (443 by default, what such networks
let out). A stream that comes up carries that relay's link from then on: the
shell sends its datagrams as frames on the stream (``carrier(addr)``), and the
link resends what is outstanding at once (``Moved``).

A dead relay looks the same from here as blocked UDP, but it does not accept
a stream either, so nothing moves (and the relay the agent fails over to
answers over UDP, so it is never tried over a stream). A relay that answers
over UDP while its stream is still connecting wins: the connect is abandoned.

While any link runs over a stream (``on_streams``), UDP is tried again with
backoff (``udp_retry_s`` doubling to ``udp_retry_max_s``): one PING per
stream relay over UDP (``ProbeUdp``). Any answer over UDP means the network
lets UDP through again: every link moves back (``Moved`` to UDP: the shell
re-announces the link from its UDP address), and each stream is closed
``switch_grace_s`` later, once the relay has learnt the new address, so
nothing in flight on it is lost.
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
    """Requests to a relay over UDP and nothing back this long: try it over a stream."""
    min_unanswered: int = 3
    """...and at least this many requests in that time (a retransmitted one
    counts again): one or two lost datagrams on a lossy path are not a block."""
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
    up_since: float = 0.0
    retry_at: float = 0.0
    last_sent: float = float("-inf")
    silent_since: float | None = None
    """The first request since the last datagram from this relay over UDP."""
    unanswered: int = 0
    close_at: float = float("inf")
    errors: list[str] = field(default_factory=list)


class StreamFallback:
    def __init__(self, config: FallbackConfig | None = None) -> None:
        self.config = config or FallbackConfig()
        self._paths: dict[Endpoint, _Path] = {}
        self._probe_at = float("inf")
        self._probe_interval = self.config.udp_retry_s
        self._actions: list[FallbackAction] = []
        self._udp_heard_at = float("-inf")
        """When something authentic last came over UDP from any relay."""
        self.fallbacks = 0
        """Links moved to a stream (status, metrics)."""

    # ------------------------------------------------------------ views

    @property
    def udp_blocked(self) -> bool:
        """Whether this network drops UDP, as far as we can tell: a link runs
        over a stream, and no relay has answered over UDP since it came up (a
        relay whose own UDP is filtered while others answer is not a reason
        to stop direct tries, nor to tell the user the network blocks UDP)."""
        ups = [p.up_since for p in self._paths.values() if p.carrier != Carrier.UDP]
        return bool(ups) and self._udp_heard_at < min(ups)

    @property
    def on_streams(self) -> bool:
        """Whether any link runs over a stream (UDP probes are due)."""
        return any(p.carrier != Carrier.UDP for p in self._paths.values())

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
        path.unanswered += 1
        if path.silent_since is None:
            path.silent_since = now

    def heard_udp(self, addrs: set[Endpoint], now: float) -> bool:
        """Datagrams came in over UDP from the relays at ``addrs`` (once per
        batch: this runs on the data path). True if there are actions now."""
        if addrs:
            self._udp_heard_at = now
        for addr in addrs:
            path = self._paths.get(addr)
            if path is None:
                continue
            path.silent_since, path.unanswered = None, 0
            if path.connecting is not None:  # UDP answered first: no stream
                path.connecting = None
                self._actions.append(Disconnect(addr))
            if path.carrier != Carrier.UDP:  # a probe answered: back to UDP
                self._back_to_udp(addr, path, now)
        if self._actions and not self.on_streams:
            self._probe_at = float("inf")
            self._probe_interval = self.config.udp_retry_s
        return bool(self._actions)

    def connected(self, addr: Endpoint, carrier: Carrier, now: float) -> None:
        path = self._paths.get(addr)
        if path is None or path.connecting != carrier:
            self._actions.append(Disconnect(addr))  # not wanted any more
            return
        path.connecting = None
        path.up = carrier
        path.up_since = now
        path.errors.clear()
        if not self.on_streams:
            self.fallbacks += 1
            self._probe_interval = self.config.udp_retry_s
        path.carrier = carrier
        self._actions.append(Moved(addr, carrier))
        if self._probe_at == float("inf"):
            self._probe_at = now + self._probe_interval

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
            if carrier == Carrier.TCP and path.silent_since is not None:
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
                if path.silent_since is None:
                    return
                if now - path.up_since >= self.config.stream_retry_s:
                    self._connect(addr, path, carrier)  # it worked: the same way again at once
                elif carrier == Carrier.TCP:
                    # cut off as soon as it was up (a relay at its stream
                    # limit, a middlebox): a failed connect, not a dropped
                    # stream, or the agent reconnects in a tight loop
                    self._connect(addr, path, Carrier.TLS)
                else:
                    path.retry_at = now + self.config.stream_retry_s

    # ------------------------------------------------------------ timers

    def next_timer(self) -> float:
        when = self._probe_at if self.on_streams else float("inf")
        for path in self._paths.values():
            when = min(when, path.close_at, self._stream_due(path))
        return when

    def _stream_due(self, path: _Path) -> float:
        """When the relay's silence calls for a stream (inf: it does not, or
        not until something else happens, such as another request sent)."""
        cfg = self.config
        if (
            path.silent_since is None
            or path.unanswered < cfg.min_unanswered
            or path.connecting is not None
            or path.up is not None
        ):
            return float("inf")
        due = max(path.silent_since + cfg.udp_silence_s, path.retry_at)
        # a relay we stopped writing to (dead, or not needed) is left alone
        return due if due <= path.last_sent + 2 * cfg.udp_silence_s else float("inf")

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        # grace ends first: a relay silent again while its old stream was
        # still up is due a stream now, and must get it in this same call
        # (else next_timer() stays in the past: a shell waking for nothing)
        for addr, path in self._paths.items():
            if now >= path.close_at:
                path.close_at = float("inf")
                if path.up is not None and path.carrier == Carrier.UDP:
                    path.up = None
                    self._actions.append(Disconnect(addr))
        for addr, path in self._paths.items():
            if now >= self._stream_due(path):
                self._connect(addr, path, Carrier.TCP)
        if self.on_streams and now >= self._probe_at:
            for addr, path in self._paths.items():
                if path.carrier != Carrier.UDP:
                    self._actions.append(ProbeUdp(addr))
            self._probe_interval = min(self._probe_interval * 2, cfg.udp_retry_max_s)
            self._probe_at = now + self._probe_interval
        elif not self.on_streams:
            self._probe_at = float("inf")
        self._forget_idle(now)

    # ------------------------------------------------------------ internals

    def _connect(self, addr: Endpoint, path: _Path, carrier: Carrier) -> None:
        path.connecting = carrier
        cfg = self.config
        timeout = cfg.tls_connect_timeout_s if carrier == Carrier.TLS else cfg.tcp_connect_timeout_s
        self._actions.append(Connect(addr, carrier, timeout))

    def _back_to_udp(self, addr: Endpoint, path: _Path, now: float) -> None:
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
