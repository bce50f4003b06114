"""``wgrelay status``: what the running agents are doing, per peer.

Each agent writes ``STATE_DIR/status-IFACE.json`` whenever something changes
(atomically: temporary file, then rename). ``collect_status`` reads those files,
checks that the agent that wrote each is still alive, adds the configured relay
setting, and returns one document; ``render_status`` makes the table.

``status --json`` schema (stable; fields are only ever added)::

    {"interfaces": [{
        "interface": str, "backend": str, "agent_running": bool, "pid": int | null,
        "relay_enabled": bool, "home_relay": str | null, "home_relay_endpoint": str | null,
        "standby_relay": str | null,                  # registered too, for failover
        "home_relay_carrier": "udp" | "tcp" | "tls" | null,  # what reaches the home
        "udp_blocked": bool,                          # a relay is reached over TCP/TLS
        "updated": float | null,                      # Unix time of the agent's last write
        "peers": [{
            "public_key": str,
            "path": "direct" | "relayed" | "probing" | "relay-pending",
            "endpoint": str | null,                   # WireGuard's endpoint now
            "direct_endpoint": str | null,            # in use, or where it goes back to
            "relay": str | null, "relay_endpoint": str | null,   # when relayed
            "exit_relay": str | null,                 # over two relays: the second
            "relay_mode": "port" | "latching" | "framed" | "tcp" | "tls" | null,
            "relay_mode_reason": str | null,          # (tcp, tls: framed over a stream)
            "latest_handshake": float | null,         # Unix time
            "rtt_ms": float | null, "rtt_source": str | null,    # null: not measured
            "rx_bytes": int | null, "tx_bytes": int | null,
            "reason": str, "since": float, "history": [str],     # why this path
            "nat": {"ours": str, "peer": str,         # "unknown" | "independent" |
                    "ours_mapping": str | null,       #   "dependent" (NAT mapping, as
                    "peer_mapping": str | null},      #   the relay saw WireGuard's)
            "candidates": [str],                      # direct ones, best first
            "upgrade_tries": int,                     # direct tries while relayed
            "last_upgrade": str | null                # the latest: when, what came of it
        }]
    }]}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from wgrelay.settings import load_settings


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_status(state_dir: Path, interface: str | None = None) -> dict[str, Any]:
    settings = load_settings(state_dir)
    files = sorted(state_dir.glob("status-*.json")) if state_dir.is_dir() else []
    out: list[dict[str, Any]] = []
    for f in files:
        name = f.name[len("status-") : -len(".json")]
        if interface is not None and name != interface:
            continue
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        doc["agent_running"] = _alive(doc.get("pid"))
        doc.setdefault("relay_enabled", settings.relay_enabled_for(name))
        out.append(doc)
    if interface is not None and not out:
        out.append(
            {
                "interface": interface,
                "backend": None,
                "agent_running": False,
                "pid": None,
                "relay_enabled": settings.relay_enabled_for(interface),
                "home_relay": None,
                "home_relay_endpoint": None,
                "standby_relay": None,
                "updated": None,
                "peers": [],
            }
        )
    return {"interfaces": out}


def _ago(t: object, now: float) -> str:
    if not isinstance(t, int | float) or t <= 0:
        return "never"
    s = max(0.0, now - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.0f}h ago"


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def render_status(doc: dict[str, Any]) -> str:
    now = time.time()
    lines: list[str] = []
    for iface in doc["interfaces"]:
        state = "running" if iface["agent_running"] else "NOT running"
        relay = "enabled" if iface.get("relay_enabled") else "DISABLED (configure-relay)"
        home = iface.get("home_relay")
        home_txt = f"{home[:8]}.. at {iface.get('home_relay_endpoint')}" if home else "none"
        if iface.get("standby_relay"):
            home_txt += f" (standby {iface['standby_relay'][:8]}..)"
        lines.append(
            f"interface {iface['interface']}: agent {state}"
            + (f" ({iface['backend']} backend)" if iface.get("backend") else "")
            + f"; relay fallback {relay}; home relay {home_txt}"
        )
        peers = iface.get("peers") or []
        if not peers:
            lines.append("  (no peers)")
            continue
        head = ("PEER", "PATH", "VIA", "HANDSHAKE", "RTT", "RX/TX")
        lines.append(
            f"  {head[0]:10} {head[1]:16} {head[2]:34} {head[3]:10} {head[4]:>9} {head[5]:>17}"
            "  REASON"
        )
        for p in peers:
            path = p["path"]
            if path == "relayed" and p.get("relay") and p.get("exit_relay"):
                # two relays: ours, then the peer's (no room for an endpoint)
                via = f"relays {p['relay'][:8]}.. > {p['exit_relay'][:8]}.."
            elif path == "relayed" and p.get("relay"):
                via = f"relay {p['relay'][:8]}.. {p.get('relay_endpoint') or ''}"
                # "relayed (port)", "relayed (framed)": whether WireGuard talks
                # to the relay itself or through our proxy
                path = f"relayed ({(p.get('relay_mode') or 'framed').split()[0]})"
            else:
                via = p.get("direct_endpoint") or p.get("endpoint") or "-"
            rtt = f"{p['rtt_ms']:.1f}ms" if isinstance(p.get("rtt_ms"), int | float) else "-"
            rxtx = f"{_size(p.get('rx_bytes'))}/{_size(p.get('tx_bytes'))}"
            lines.append(
                f"  {p['public_key'][:8] + '..':10} {path:16} {via[:34]:34} "
                f"{_ago(p.get('latest_handshake'), now):10} {rtt:>9} {rxtx:>17}  {p['reason']}"
            )
            nat = p.get("nat") or {}
            if nat.get("ours_mapping") or nat.get("peer_mapping"):
                lines.append(
                    f"  {'':10} NAT: ours {nat.get('ours')} ({nat.get('ours_mapping') or '-'}), "
                    f"peer's {nat.get('peer')} ({nat.get('peer_mapping') or '-'}); "
                    f"candidates {', '.join(p.get('candidates') or []) or '-'}"
                )
            if p.get("last_upgrade"):
                lines.append(
                    f"  {'':10} direct tries: {p.get('upgrade_tries', 0)}, last {p['last_upgrade']}"
                )
    return "\n".join(lines) + "\n"
