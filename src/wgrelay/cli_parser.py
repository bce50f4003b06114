"""The ``wgrelay`` command line's parser: every command and option, with its help.

The commands themselves are in cli.py; this module only describes them, so a
reader finds every flag in one place.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

from wgrelay import __version__
from wgrelay import cli_types as argtype
from wgrelay.credits_cli import add_credits_parser
from wgrelay.keys import PublicKey
from wgrelay.mesh.backend.detect import BACKEND_NAMES
from wgrelay.mesh.status_watch import watch_interval
from wgrelay.relay.config import DEFAULT_PORT_RANGE

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that keeps its one-line error but uses our exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"wgrelay: error: {message}\n")


def _common_options(suppress: bool) -> _Parser:
    """Options every command takes, before or after the command name.

    The copy given to subcommands has SUPPRESS defaults, so ``wgrelay -q demo``
    and ``wgrelay demo -q`` both work (a plain default would overwrite the value
    parsed before the command name).
    """
    d = argparse.SUPPRESS if suppress else None
    common = _Parser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=argtype.state_dir,
        default=d,
        help="directory for all state (default: $WGRELAY_STATE_DIR, /var/lib/wgrelay as root)",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=d if suppress else 0, help="more output"
    )
    common.add_argument(
        "-q", "--quiet", action="count", default=d if suppress else 0, help="less output"
    )
    return common


def _peer_key(text: str) -> PublicKey:
    return PublicKey.from_base64(text, "--private-peer")


def _config_option(sp: argparse.ArgumentParser, example: str) -> None:
    sp.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file setting any of these options by its long name (e.g. {example}; "
        "the command line wins; SIGHUP reads it again: docs/OPERATIONS.md)",
    )


def _capacity(text: str) -> int:
    """``--capacity``: a rate (relay/contention.py), one clear line if not."""
    from wgrelay.relay.contention_options import parse_capacity

    try:
        return parse_capacity(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _min_share(text: str) -> float:
    from wgrelay.relay.contention_options import parse_min_share

    try:
        return parse_min_share(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The whole parser; ``handlers`` maps each command name to its function."""
    common = _common_options(suppress=False)
    sub_common = _common_options(suppress=True)

    p = _Parser(
        prog="wgrelay",
        description="Decentralized TURN-style relays for WireGuard meshes.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"wgrelay {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, parents=[sub_common])
        sp.set_defaults(handler=handlers[name])
        return sp

    sp = add("keygen", "generate a private key (like wg genkey)")
    sp.add_argument(
        "--relay", action="store_true", help="a relay identity key (Ed25519, with a header line)"
    )
    sp.add_argument("--out", help="write to FILE (mode 0600) and print the public key")
    sp.add_argument("--force", action="store_true", help="replace an existing --out file")

    sp = add("pubkey", "print the public key of a private key (like wg pubkey)")
    sp.add_argument(
        "--relay",
        action="store_true",
        help="a key without header is a relay key (wgrelay 0.1); with one, it is anyway",
    )
    sp.add_argument("--key-file", help="read the private key from FILE instead of stdin")

    sp = add("list-relays", "list known relay nodes")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument(
        "--refresh",
        action="store_true",
        help="ask the known relays for the current set first (and remember it)",
    )
    sp.add_argument(
        "--region",
        type=argtype.region,
        default="",
        help="only relays announcing this region (with --refresh, only those are asked for)",
    )
    sp = add("start-relay", "run a relay node")
    _config_option(sp, "/etc/wgrelay/relay.toml")
    sp.add_argument(
        "--max-connections",
        type=argtype.positive,
        default=100,
        metavar="N",
        help="relayed sessions at once (default 100)",
    )
    sp.add_argument(
        "--max-bandwidth",
        type=argtype.non_negative,
        default=1000,
        metavar="KBPS",
        help="per connection and direction, KB/s; 0 = unlimited (default 1000)",
    )
    sp.add_argument("--port", type=argtype.port, default=51821, help="UDP port (default 51821)")
    sp.add_argument(
        "--bind",
        action="append",
        metavar="ADDR",
        help="address to listen on (repeatable; default 0.0.0.0 and ::)",
    )
    sp.add_argument(
        "--key-file",
        metavar="FILE",
        help="relay key (default STATE_DIR/relay.key, generated on first start)",
    )
    pol = sp.add_mutually_exclusive_group()
    pol.add_argument("--open", action="store_true", help="serve any peer key")
    pol.add_argument("--allow-file", metavar="FILE", help="serve the keys listed in FILE")
    pol.add_argument(
        "--allow-peers-of", metavar="IFACE", help="serve the peers of this WireGuard interface"
    )
    sp.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics here")
    sp.add_argument("--region", default="", help="region label for announcements")
    sp.add_argument(
        "--bootstrap",
        action="append",
        metavar="ENDPOINT=PUB_KEY",
        help="another relay to join the federation through (repeatable; remembered)",
    )
    sp.add_argument(
        "--announce",
        action="append",
        metavar="ADDR:PORT",
        help="public endpoint to announce (repeatable)",
    )
    sp.add_argument(
        "--port-range",
        type=argtype.port_range,
        default=DEFAULT_PORT_RANGE,
        metavar="LOW-HIGH",
        help="session ports for port mode, two per session, or off "
        f"(default {DEFAULT_PORT_RANGE[0]}-{DEFAULT_PORT_RANGE[1]})",
    )
    sp.add_argument(
        "--kernel-offload",
        choices=("auto", "on", "off"),
        default="auto",
        help="forward port-mode sessions in the kernel (nftables): auto uses it when "
        "the relay may (CAP_NET_ADMIN, forwarding on), on refuses to start without it "
        "(default auto)",
    )
    stream = sp.add_argument_group("stream transports (for agents whose network blocks UDP)")
    stream.add_argument(
        "--tcp-port",
        type=argtype.port_or_off,
        metavar="PORT",
        help="also accept agents over TCP on this port, or off (default: the --port number)",
    )
    stream.add_argument(
        "--tls-port",
        type=argtype.port_or_off,
        metavar="PORT",
        help="port for TLS, with --tls-cert/--tls-key or --tls-self-signed (default 443)",
    )
    stream.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM)")
    stream.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    stream.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve TLS with a self-signed certificate kept in the state directory "
        "(agents authenticate the relay by its key, not by the certificate)",
    )
    sp.add_argument("--max-sessions-per-peer", type=argtype.positive, default=32, metavar="N")
    sp.add_argument(
        "--leg-relay",
        action="append",
        type=argtype.relay_key,
        metavar="PUB_KEY",
        help="run multi-hop legs with this relay (repeatable; both relays must list "
        "each other): agents that reach only one of them reach peers at the other "
        "(default: none, no multi-hop)",
    )
    sp.add_argument(
        "--budget",
        type=argtype.budget,
        metavar="SIZE/PERIOD",
        help="bytes to relay per UTC day, week or month, e.g. 500GB/month (SI units); "
        "once spent, the relay carries no session until the next period and says so "
        "in its announcement (default: none)",
    )
    sp.add_argument(
        "--operator-claim",
        type=Path,
        metavar="FILE",
        help="the claim of the mesh member who runs this relay (wgrelay credits claim): "
        "what it relays earns that member credit (default: none)",
    )
    sp.add_argument(
        "--capacity",
        type=_capacity,
        default=0,
        metavar="RATE",
        help="what all sessions together may relay, e.g. 100Mbit/s or 12MB/s (a bare "
        "number is KB/s); above it sessions share it by their members' credit, none "
        "below a minimum share (default: off)",
    )
    sp.add_argument(
        "--min-share",
        type=_min_share,
        default=0.25,
        metavar="FRACTION",
        help="of the session slots and of --capacity, what the lowest-credit members keep "
        "when the relay is full (0.25 or 25%%, at most 50%%; default 25%%)",
    )
    sp.add_argument(
        "--idle-timeout",
        type=argtype.positive,
        default=180,
        metavar="SECONDS",
        help="close sessions idle this long (default 180)",
    )
    sp = add("add-bootstrap-relay", "add a bootstrap relay")
    sp.add_argument("endpoint", metavar="ENDPOINT", help="relay address, IP:PORT or [IPv6]:PORT")
    sp.add_argument("pub_key", metavar="PUB_KEY", help="the relay's public key (base64)")
    sp = add("configure-relay", "enable or disable relay fallback")
    onoff = sp.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--enable", action="store_true", help="allow relay fallback")
    onoff.add_argument("--disable", action="store_true", help="never use relays")
    sp.add_argument(
        "interface",
        nargs="?",
        metavar="INTERFACE",
        help="only this interface (default: every interface without its own setting)",
    )
    sp = add("up", "run the agent beside a WireGuard interface")
    sp.add_argument("interface", metavar="INTERFACE", help="the WireGuard interface")
    _config_option(sp, "/etc/wgrelay/INTERFACE.toml")
    sp.add_argument(
        "--relay",
        action="append",
        metavar="ENDPOINT=PUB_KEY",
        help="a bootstrap relay for this run (repeatable; also remembered)",
    )
    sp.add_argument(
        "--backend", choices=BACKEND_NAMES, help="WireGuard backend (default: detected)"
    )
    sp.add_argument(
        "--keepalive",
        type=argtype.keepalive,
        default=25,
        metavar="SECONDS",
        help="persistent keepalive on managed peers; 0 leaves it alone (default 25)",
    )
    sp.add_argument(
        "--direct-timeout",
        type=argtype.direct_timeout,
        default=3.0,
        metavar="SECONDS",
        help="how long each direct candidate may take when no relay carries the peer (default 3)",
    )
    sp.add_argument(
        "--geoip-db",
        type=Path,
        metavar="FILE",
        help="MaxMind-format City database: estimates the RTT to relays not yet measured",
    )
    sp.add_argument(
        "--framed-only",
        action="store_true",
        help="never point WireGuard straight at a relay's session port (port mode); "
        "relay every packet through the agent's local proxy",
    )
    sp.add_argument(
        "--private",
        action="store_true",
        help="a relayed path to any peer uses two relays, neither learning both peers' "
        "keys (docs/SECURITY.md); no such path: no relayed path (direct still works)",
    )
    sp.add_argument(
        "--private-peer",
        action="append",
        type=_peer_key,
        metavar="PUB_KEY",
        help="the same as --private for this peer only (repeatable)",
    )
    sp.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics here (docs/METRICS.md)",
    )
    sp = add("status", "show per-peer paths of running agents")
    sp.add_argument("interface", nargs="?", metavar="INTERFACE", help="only this interface")
    view = sp.add_mutually_exclusive_group()
    view.add_argument("--json", action="store_true", help="stable machine-readable output")
    view.add_argument(
        "--watch",
        action="store_true",
        help="a live view, redrawn every --interval until Ctrl-C "
        "(not a terminal: plain frames one after another)",
    )
    sp.add_argument(
        "--interval",
        type=watch_interval,
        metavar="SECONDS",
        help="with --watch: seconds between frames (default 1)",
    )
    sp = add("doctor", "diagnose relays, NAT, MTU, clock and why each peer is direct or relayed")
    sp.add_argument(
        "interface",
        nargs="?",
        metavar="INTERFACE",
        help="also diagnose this WireGuard interface, its agent and its peers",
    )
    sp.add_argument(
        "--json", action="store_true", help="stable machine-readable output (docs/DOCTOR.md)"
    )
    add_credits_parser(add)
    sp = add("demo", "a relayed WireGuard tunnel coming up (namespaces, or simulated)")
    sp.add_argument(
        "--simulated",
        action="store_true",
        help="tell the story in the network simulator (no root needed; the default without root)",
    )
    sp.add_argument(
        "--matrix",
        action="store_true",
        help="with --simulated: print the NAT-pair matrix (docs/NAT_MATRIX.md) instead",
    )
    sp.add_argument(
        "--speed",
        type=argtype.speed,
        metavar="FACTOR",
        help="simulated seconds per real second; 0 runs flat out"
        " (default: 10 on a terminal, else 0)",
    )
    return p
