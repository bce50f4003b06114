"""``wgrelay status --watch``: a live view of the running agents, per peer.

Each refresh reads the same documents as ``wgrelay status`` (``collect_status``:
the agents' status files) and draws one frame: per peer its path, relay and
mode, the handshake's age, and receive/send rates.

Rates come from WireGuard's byte counters in two successive *versions* of the
document, divided by the time between the agent's writes (its ``updated``
stamp), not by the time between our refreshes: an agent rewrites its file at
once when a path changes but its byte counters only every few seconds (the
status file is not rewritten every second to spare the disk), so a rate over
our own one-second refreshes would read zero, then a spike. The rate shown is
therefore that of the agent's last interval, and "-" until two versions were
seen. Handshake ages are counted against our own clock at every frame.

On a terminal each frame replaces the previous one (cursor home, clear
screen). When stdout is not a terminal (a pipe, a log file) frames are printed
one after another, plain text, each starting with a ``--- <time>`` line, so
``status --watch | tee`` records a history. Ctrl-C or SIGTERM ends it with
exit status 0. ``--json`` is not combined with ``--watch``: the status file
itself is the machine-readable source to poll.

The rendering (``WatchRates``, ``render_frame``) is pure: the tests feed it
recorded documents.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from wgrelay.mesh.status import collect_status

MIN_INTERVAL_S = 0.1
CLEAR_SCREEN = "\x1b[H\x1b[2J"
"""ANSI: cursor home, erase the screen (only ever written to a terminal)."""


def watch_interval(text: str) -> float:
    """argparse type of ``--interval``: seconds, at least MIN_INTERVAL_S."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= MIN_INTERVAL_S or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least {MIN_INTERVAL_S} s, got {text}")
    return value


@dataclass(frozen=True, slots=True)
class _Sample:
    updated: float
    rx: int
    tx: int


@dataclass(slots=True)
class WatchRates:
    """Per (interface, peer): the last version of its counters seen and the
    rate between the last two versions (bytes per second)."""

    _last: dict[tuple[str, str], _Sample] = field(default_factory=dict)
    rates: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def update(self, doc: Mapping[str, Any]) -> None:
        seen: set[tuple[str, str]] = set()
        for iface in doc["interfaces"]:
            updated = iface.get("updated")
            if not isinstance(updated, int | float):
                continue
            for p in iface.get("peers") or []:
                rx, tx = p.get("rx_bytes"), p.get("tx_bytes")
                if not isinstance(rx, int) or not isinstance(tx, int):
                    continue
                k = (str(iface["interface"]), str(p["public_key"]))
                seen.add(k)
                now = _Sample(float(updated), rx, tx)
                before = self._last.get(k)
                if before is not None and now.updated <= before.updated:
                    continue  # the same version again: keep the rate we have
                self._last[k] = now
                if before is None or rx < before.rx or tx < before.tx:
                    # first sight, or counters restarted (peer re-added): no rate yet
                    self.rates.pop(k, None)
                    continue
                dt = now.updated - before.updated
                self.rates[k] = ((rx - before.rx) / dt, (tx - before.tx) / dt)
        for k in set(self._last) - seen:  # peers that left
            del self._last[k]
            self.rates.pop(k, None)


def _rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    value = bps * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "bit/s" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} Gbit/s"


def _age(t: object, now: float) -> str:
    if not isinstance(t, int | float) or t <= 0:
        return "never"
    s = max(0.0, now - t)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"


def _path(p: Mapping[str, Any]) -> tuple[str, str]:
    """(path with mode, where it goes)."""
    if p["path"] == "relayed" and p.get("relay"):
        mode = str(p.get("relay_mode") or "framed").split()[0]
        return f"relayed ({mode})", f"{str(p['relay'])[:8]}.. {p.get('relay_endpoint') or ''}"
    return str(p["path"]), str(p.get("direct_endpoint") or p.get("endpoint") or "-")


def render_frame(doc: Mapping[str, Any], rates: WatchRates, now: float, interval_s: float) -> str:
    """One frame of the live view (``now``: Unix time, for handshake ages)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [f"wgrelay status --watch   {stamp}   every {interval_s:g}s, Ctrl-C to stop"]
    if not doc["interfaces"]:
        lines.append("no agent has written a status file (start one with `wgrelay up`)")
    for iface in doc["interfaces"]:
        name = str(iface["interface"])
        state = "running" if iface.get("agent_running") else "NOT running"
        home = iface.get("home_relay")
        where = f"{str(home)[:8]}.. at {iface.get('home_relay_endpoint')}" if home else "none"
        lines.append("")
        lines.append(f"{name}: agent {state}; home relay {where}")
        peers = iface.get("peers") or []
        if not peers:
            lines.append("  (no peers)")
            continue
        lines.append(
            f"  {'PEER':12} {'PATH':17} {'VIA':32} {'HANDSHAKE':>9} {'RX RATE':>13} "
            f"{'TX RATE':>13}  RX/TX TOTAL"
        )
        for p in peers:
            path, via = _path(p)
            rx_rate, tx_rate = rates.rates.get((name, str(p["public_key"])), (None, None))
            total = f"{_bytes(p.get('rx_bytes'))}/{_bytes(p.get('tx_bytes'))}"
            lines.append(
                f"  {str(p['public_key'])[:10] + '..':12} {path:17} {via[:32]:32} "
                f"{_age(p.get('latest_handshake'), now):>9} {_rate(rx_rate):>13} "
                f"{_rate(tx_rate):>13}  {total}"
            )
    return "\n".join(lines) + "\n"


def _bytes(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def watch(
    state_dir: Path,
    interface: str | None,
    interval_s: float,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.time,
) -> int:
    """Draw a frame every ``interval_s`` until Ctrl-C or SIGTERM; exit status 0."""
    stop = threading.Event()
    terminal = out.isatty()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    rates = WatchRates()
    try:
        while not stop.is_set():
            doc = collect_status(state_dir, interface)
            rates.update(doc)
            frame = render_frame(doc, rates, clock(), interval_s)
            if terminal:
                out.write(CLEAR_SCREEN + frame)
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock()))
                out.write(f"--- {stamp}\n{frame}\n")
            out.flush()
            stop.wait(interval_s)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a live view ends
    except BrokenPipeError:
        # `status --watch | head`: the reader left. Point the descriptor at
        # /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    if terminal:
        out.write("\n")  # the shell's prompt below the last frame
    return 0
