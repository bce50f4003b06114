"""The relay's asyncio shell: sockets, timers, signals, metrics. The logic is in core.py.

The data path does not use asyncio's datagram transport: that transport reads
every datagram into a fresh 256 KiB buffer, which alone makes a relay several
times slower. Instead each UDP socket is registered with ``loop.add_reader`` and
drained in a loop of plain ``recvfrom`` calls sized for our largest frame; data
frames go straight to ``RelayCore.forward_data`` and back out with ``sendto``,
control messages go through the core's full pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.aio import stop_on_signals
from wgrelay.errors import ConfigError
from wgrelay.net import datagram_socket
from wgrelay.proto.constants import MsgType
from wgrelay.proto.data import MAX_DATA_FRAME
from wgrelay.relay.core import Addr, RelayCore

log = logging.getLogger(__name__)

RECV_SIZE = MAX_DATA_FRAME + 1  # one byte more, so an oversize frame is seen as such
DRAIN_BATCH = 512
"""Datagrams handled per wake-up before yielding to the event loop (fairness)."""
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
POLICY_REFRESH_S = 5.0
_DATA = int(MsgType.DATA)


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def open_udp_socket(bind: BindAddress) -> socket.socket:
    try:
        return datagram_socket(bind.host, bind.port, SOCKET_BUFFER_BYTES)
    except OSError as e:
        raise ConfigError(f"cannot bind UDP {bind}: {e.strerror}") from None


class RelayServer:
    def __init__(
        self,
        core: RelayCore,
        sockets: list[socket.socket],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sockets:
            raise ConfigError("no socket to listen on")
        self.core = core
        self.sockets = sockets
        self._clock = clock
        self._by_family = {s.family: s for s in sockets}
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.send_errors = 0

    def local_addresses(self) -> list[str]:
        out = []
        for s in self.sockets:
            host, port = s.getsockname()[:2]
            out.append(f"[{host}]:{port}" if s.family == socket.AF_INET6 else f"{host}:{port}")
        return out

    # ------------------------------------------------------------ data path

    def _make_reader(self, sock: socket.socket) -> Callable[[], None]:
        recvfrom = sock.recvfrom
        own_send = sock.sendto
        other = [s.sendto for s in self.sockets if s is not sock]
        other_send = other[0] if other else own_send
        own_len = 2 if sock.family == socket.AF_INET else 4
        core = self.core
        forward = core.forward_data
        receive_control = core.receive_control
        clock = self._clock
        flush = self._flush

        def on_readable() -> None:
            now = clock()
            control = False
            for _ in range(DRAIN_BATCH):
                try:
                    data, addr = recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # e.g. a queued ICMP error; the socket is fine
                if data and data[0] == _DATA:
                    dst = forward(data, addr, now)
                    if dst is not None:
                        try:
                            (own_send if len(dst) == own_len else other_send)(data, dst)
                        except OSError:
                            self.send_errors += 1
                else:
                    receive_control(data, addr, now)
                    control = True
            if control:
                flush()

        return on_readable

    def _send(self, data: bytes, dst: Addr) -> None:
        fam = socket.AF_INET6 if len(dst) == 4 else socket.AF_INET
        sock = self._by_family.get(fam)
        if sock is None:
            return
        try:
            sock.sendto(data, dst)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("send to %s failed: %s", dst, e)
            self.send_errors += 1

    def _flush(self) -> None:
        for data, dst in self.core.datagrams_to_send():
            self._send(data, dst)
        self._arm_timer()

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        when = self.core.next_timer()
        if self._timer is not None:
            if self._timer.when() <= when + 1e-3 and not self._timer.cancelled():
                return
            self._timer.cancel()
        # the core's clock and the loop's clock are both monotonic; convert
        delay = max(0.0, when - self._clock())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._clock())
        self._flush()

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    async def _refresh_policy(self) -> None:
        while True:
            await asyncio.sleep(POLICY_REFRESH_S)
            try:
                await asyncio.to_thread(self.core.policy.refresh)
            except Exception as e:  # never let a policy glitch kill the relay
                log.warning("access policy refresh failed: %s", e)
                continue
            self.core.policy_changed()
            self._flush()

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._make_reader(sock))
        self._arm_timer()
        refresher = asyncio.create_task(self._refresh_policy())
        if on_ready is not None:
            on_ready()
        try:
            with stop_on_signals(self._stop.set):
                await self._stop.wait()
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            log.info("shutting down: telling sessions and registrations")
            self.core.shutdown()
            for data, dst in self.core.datagrams_to_send():
                self._send(data, dst)
            if self._timer is not None:
                self._timer.cancel()
            for sock in self.sockets:
                loop.remove_reader(sock.fileno())
                sock.close()
