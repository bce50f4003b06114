"""Small pieces several benches share; no wgrelay import here.

The harness drivers (``shared_driver.py``, ``port_mode_driver.py``) run under
the harness's own ``python3`` before they can import wgrelay, and the
namespace launcher (``port_mode_relay.py``) never needs it, so what they share
with the other benches lives here rather than in ``relay_pair.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
VENV_PYTHON = BENCH.parent / ".venv" / "bin" / "python"
REEXEC_MARK = "WGRELAY_BENCH_DRIVER_REEXEC"


# ---------------------------------------------------------------- harness drivers


def ensure_wgrelay_importable(script: str, who: str) -> None:
    """Re-exec ``script`` under the project's venv if this interpreter has no wgrelay
    (the harness runs drivers with its own ``python3``)."""
    if importlib.util.find_spec("wgrelay") is not None:
        return
    if os.environ.get(REEXEC_MARK) or not VENV_PYTHON.exists():
        sys.exit(f"{who}: no wgrelay in {sys.executable} and no usable {VENV_PYTHON}")
    os.environ[REEXEC_MARK] = "1"  # a venv without wgrelay must not loop forever
    argv = [str(VENV_PYTHON), str(Path(script).resolve()), *sys.argv[1:]]
    os.execv(VENV_PYTHON, argv)  # noqa: S606  (our own venv interpreter, fixed argv)


def parse_driver_args(
    description: str, default_state_dir: str, state_dir_help: str
) -> tuple[argparse.Namespace, list[str]]:
    """The harness's driver calling convention: ``--relay HOST:PORT [--state-dir D]
    -- udpgen MODE ARGS...``; returns the options and the udpgen command."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--relay", required=True, help="127.0.0.1:PORT the relay listens on")
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("WGRELAY_BENCH_STATE_DIR", default_state_dir)),
        help=state_dir_help,
    )
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- udpgen MODE ARGS...")
    args = ap.parse_args()
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no udpgen command after --")
    return args, cmd


# ---------------------------------------------------------------- child processes


def wait_for_line(
    p: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout_s: float
) -> re.Match[str]:
    """Read the child's stdout until ``pattern`` matches (its 'ready' line)."""
    assert p.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and p.poll() is None:
        ready, _, _ = select.select([p.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            m = pattern.search(buf.decode(errors="replace"))
            if m is not None:
                return m
    raise RuntimeError(f"{p.args!r} did not become ready; stdout: {buf[-300:]!r}")


# ---------------------------------------------------------------- kernel offload table

_OUT_CHAIN = re.compile(r"^p\d+_(ab|ba)_out$")


def offload_table(netns: str) -> dict[str, Any] | None:
    """``nft -j list table inet wgrelay`` in ``netns``; None when there is no table."""
    res = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", "wgrelay"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if res.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def mapped_ports(table: dict[str, Any] | None, within: tuple[int, int] | None = None) -> set[int]:
    """Every port number in the keys of the table's verdict maps (only those in the
    inclusive range ``within``, if given)."""
    found: set[int] = set()
    for item in (table or {}).get("nftables", []):
        for elem in (item.get("map") or {}).get("elem", []) or []:
            key = elem[0] if isinstance(elem, list) else None
            parts = key.get("concat", []) if isinstance(key, dict) else []
            found.update(
                p
                for p in parts
                if isinstance(p, int) and (within is None or within[0] <= p <= within[1])
            )
    return found


def forwarded_packets(table: dict[str, Any] | None) -> int:
    """Packets the offload's session chains sent on, both directions."""
    total = 0
    for item in (table or {}).get("nftables", []):
        rule = item.get("rule")
        if not rule or not _OUT_CHAIN.match(str(rule.get("chain", ""))):
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                total += int(expr["counter"].get("packets", 0))
    return total
