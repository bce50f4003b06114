"""The ``wgrelay`` command line.

Conventions for every command: ``--state-dir DIR`` (or ``$WGRELAY_STATE_DIR``)
holds all state; ``-v``/``-q`` set verbosity; an error is one line on stderr and
a non-zero exit (1 for operator errors, 2 for usage, 70 for a bug), never a
traceback unless ``-v -v`` asks for one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wgrelay import cli_parser, config_file
from wgrelay import cli_types as argtype
from wgrelay.errors import ConfigError, WgRelayError
from wgrelay.keys import (
    PrivateKey,
    RelayIdentity,
    load_key_file,
    parse_key_text,
    relay_key_text,
    relay_seed,
    write_key_file,
)
from wgrelay.state import default_state_dir

if TYPE_CHECKING:
    from wgrelay.discovery.registry import RelayRegistry
    from wgrelay.mesh.daemon import AgentOptions
    from wgrelay.relay.app import RelayOptions

log = logging.getLogger("wgrelay")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUG = 70

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------- keys


def cmd_keygen(args: argparse.Namespace) -> int:
    # A relay key is written with its header line, on stdout too: then
    # `wgrelay keygen --relay > relay.key` is a file that `pubkey` and
    # `start-relay` agree on (keys.py). A peer key is exactly what wg writes.
    if args.relay:
        ident = RelayIdentity.generate()
        raw, text, public = ident.seed, relay_key_text(ident), ident.public
    else:
        peer = PrivateKey.generate()
        raw, text, public = peer.raw, f"{peer}\n", peer.public_key()
    if args.out:
        path = Path(args.out)
        if path.exists() and not args.force:
            raise ConfigError(f"{path} exists; use --force to replace it")
        try:
            write_key_file(path, raw, text)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror}") from None
        print(public)
    else:
        print(text, end="")
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    if args.key_file:
        what = f"key file {args.key_file}"
        key = load_key_file(Path(args.key_file))
    else:
        what = "private key on stdin"
        key = parse_key_text(sys.stdin.read(4096), what)
    if key.relay or args.relay:
        # exactly the identity start-relay would run with this key, or its refusal
        print(RelayIdentity.from_seed(relay_seed(key, what)).public)
    else:
        print(PrivateKey(key.raw).public_key())  # byte for byte what wg pubkey prints
    return 0


# ---------------------------------------------------------------- relay


def _hold_reloads() -> None:
    # SIGHUP's default ends the process: a reload asked for (systemctl
    # reload) before the daemon listens for it must not stop the service
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def cmd_start_relay(args: argparse.Namespace) -> int:
    from wgrelay.relay.app import run_relay

    _hold_reloads()
    opts = relay_options(args)
    opts.reload = config_file.Reloadable(args, relay_options, log_level)
    return run_relay(opts)


def relay_options(args: argparse.Namespace) -> RelayOptions:
    from wgrelay.relay.app import RelayOptions
    from wgrelay.relay.config import RelayConfig

    config = RelayConfig(
        max_connections=args.max_connections,
        max_bandwidth_kbps=args.max_bandwidth,
        max_sessions_per_peer=args.max_sessions_per_peer,
        session_idle_timeout_s=args.idle_timeout,
        port_range=args.port_range,
        budget=args.budget,
        leg_relays=frozenset(k.raw for k in args.leg_relay or ()),
        capacity_bytes_per_s=args.capacity,
        min_share=args.min_share,
    )
    return RelayOptions(
        state_dir=args.state_dir,
        port=args.port,
        binds=args.bind or [],
        key_file=Path(args.key_file) if args.key_file else None,
        open=args.open,
        allow_file=Path(args.allow_file) if args.allow_file else None,
        allow_peers_of=args.allow_peers_of,
        metrics=args.metrics,
        region=args.region,
        announce=args.announce or [],
        bootstrap=args.bootstrap or [],
        config=config,
        kernel_offload=args.kernel_offload,
        tcp_port=args.tcp_port,
        tls_port=args.tls_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_self_signed=args.tls_self_signed,
        operator_claim=args.operator_claim,
    )


# ---------------------------------------------------------------- agent and relays


def cmd_up(args: argparse.Namespace) -> int:
    from wgrelay.mesh.daemon import run_agent

    _hold_reloads()
    opts = agent_options(args)
    opts.reload = config_file.Reloadable(args, agent_options, log_level)
    return run_agent(opts)


def agent_options(args: argparse.Namespace) -> AgentOptions:
    from wgrelay.client.plan import PlanConfig
    from wgrelay.client.privacy import PrivacyConfig
    from wgrelay.mesh.agent import AgentConfig
    from wgrelay.mesh.daemon import AgentOptions
    from wgrelay.relay.app import parse_endpoint

    relays = [argtype.relay_arg(r) for r in args.relay or []]
    config = AgentConfig(
        keepalive_s=args.keepalive,
        direct_probe_s=args.direct_timeout,
    )
    return AgentOptions(
        interface=args.interface,
        state_dir=args.state_dir,
        backend=args.backend,
        relays=[(ep, key) for ep, key in relays],
        config=config,
        geoip_db=args.geoip_db,
        port_mode=not args.framed_only,
        metrics=parse_endpoint(args.metrics, "--metrics") if args.metrics else None,
        plan_config=PlanConfig(
            private=PrivacyConfig(args.private, frozenset(args.private_peer or ()))
        ),
    )


def cmd_add_bootstrap_relay(args: argparse.Namespace) -> int:
    from wgrelay.discovery.registry import RegistryStore
    from wgrelay.relay.app import parse_destination
    from wgrelay.state import ensure_state_dir

    endpoint = parse_destination(args.endpoint, "ENDPOINT")
    key = argtype.relay_key(args.pub_key)
    store = RegistryStore(ensure_state_dir(args.state_dir) / "relays.db")
    try:
        registry = store.load()
        registry.add_bootstrap(key, endpoint)
        store.save(registry)
    finally:
        store.close()
    print(f"bootstrap relay {key} at {args.endpoint} added")
    return 0


def cmd_list_relays(args: argparse.Namespace) -> int:
    import json
    import time

    from wgrelay.discovery.registry import RegistryStore
    from wgrelay.discovery.selection import relay_score
    from wgrelay.endpoint import endpoint_str
    from wgrelay.state import ensure_state_dir

    store = RegistryStore(ensure_state_dir(args.state_dir) / "relays.db")
    try:
        registry = store.load()
        if args.refresh:
            try:
                _refresh_relays(registry, args.region)
            finally:  # what the pages that did come taught us is kept
                store.save(registry)
    finally:
        store.close()
    now_ms = int(time.time() * 1000)
    relays = sorted(
        (
            r
            for r in registry.get_available_relays(now_ms)
            if not args.region or r.region == args.region
        ),
        key=relay_score,
    )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "public_key": str(r.key),
                        "endpoints": [endpoint_str(e) for e in r.endpoints],
                        "bootstrap": r.bootstrap,
                        "source": "bootstrap" if r.bootstrap else "gossip",
                        "region": r.region,
                        "capabilities": r.capabilities,
                        "load_pct": r.load_pct,
                        "max_sessions": r.max_sessions,
                        "rtt_ms": r.rtt_ms,
                        "failures": r.failures,
                        "successes": r.successes,
                        "last_seen": r.issued_ms / 1000 if r.issued_ms is not None else None,
                        "score": relay_score(r),
                    }
                    for r in relays
                ],
                indent=2,
            )
        )
        return 0
    if not relays:
        print("no relays known; add one with: wgrelay add-bootstrap-relay ENDPOINT PUB_KEY")
        return 0
    print(
        f"{'RELAY':44}  {'ENDPOINT':22}  {'SOURCE':9}  {'LOAD':>4}  {'RTT':>8}  "
        f"{'OK/FAIL':>7}  {'SEEN':>6}  REGION"
    )
    for r in relays:
        ep = endpoint_str(r.endpoint)
        rtt = f"{r.rtt_ms:.1f}ms" if r.rtt_ms is not None else "-"
        src = "bootstrap" if r.bootstrap else "gossip"
        load = f"{r.load_pct}%" if r.load_pct is not None else "-"
        seen = _ago(now_ms - r.issued_ms) if r.issued_ms is not None else "-"
        print(
            f"{r.key!s:44}  {ep:22}  {src:9}  {load:>4}  {rtt:>8}  "
            f"{f'{r.successes}/{r.failures}':>7}  {seen:>6}  {r.region or '-'}"
        )
    return 0


def _ago(ms: int) -> str:
    s = max(0, ms // 1000)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _refresh_relays(registry: RelayRegistry, region: str) -> None:
    """``--refresh``: ask the known relays for the current set (a few seconds;
    only those of ``region`` if one is given: relays filter their answer)."""
    import asyncio

    from wgrelay.discovery.refresh import refresh_registry
    from wgrelay.transport.udp import AsyncioRuntime

    async def run() -> None:
        result = await refresh_registry(registry, AsyncioRuntime(), region=region)
        if result.answered_by is None:
            raise ConfigError(
                "no known relay answered"
                + (f" ({'; '.join(result.failures)})" if result.failures else "")
            )
        log.info("relay %s listed %d new relays", result.answered_by[:8], result.learned)

    asyncio.run(run())


def cmd_configure_relay(args: argparse.Namespace) -> int:
    from wgrelay.settings import check_interface_name, load_settings, save_settings
    from wgrelay.state import ensure_state_dir

    state = ensure_state_dir(args.state_dir)
    settings = load_settings(state)
    enabled = bool(args.enable)
    if args.interface:
        settings.interfaces[check_interface_name(args.interface)] = enabled
        what = f"interface {args.interface}"
    else:
        settings.relay_enabled = enabled
        what = "interfaces without their own setting"
    save_settings(state, settings)
    print(
        f"relay fallback {'enabled' if enabled else 'disabled'} for {what}"
        " (a running agent applies it within a second)"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from wgrelay.mesh.status import collect_status, render_status

    if args.watch:
        from wgrelay.mesh.status_watch import watch

        return watch(args.state_dir, args.interface, args.interval or 1.0)
    if args.interval is not None:
        raise ConfigError("--interval goes with --watch")
    doc = collect_status(args.state_dir, args.interface)
    if args.json:
        import json

        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_status(doc), end="")
    if not any(i["agent_running"] for i in doc["interfaces"]):
        which = args.interface or "any interface"
        raise ConfigError(f"no agent is running for {which} (start one with `wgrelay up`)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from wgrelay.doctor import run_doctor

    return run_doctor(args.state_dir, args.interface, as_json=args.json)


def cmd_credits(args: argparse.Namespace) -> int:
    from wgrelay.credits_cli import cmd_credits as run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from wgrelay.demo.simulated import print_nat_matrix, run_simulated_demo

    if args.matrix:
        return print_nat_matrix()
    speed = args.speed if args.speed is not None else (10.0 if sys.stdout.isatty() else 0.0)
    if args.simulated:
        return run_simulated_demo(speed=speed, verbose=args.verbose)
    missing = _netns_demo_missing()
    if missing is None:
        from wgrelay.demo.netns import run_netns_demo

        return run_netns_demo()
    print(
        f"wgrelay demo: the WireGuard/NAT namespace demo {missing}; telling the same story "
        "in the simulator instead (wgrelay demo --simulated)",
        flush=True,
    )
    return run_simulated_demo(speed=speed, verbose=args.verbose)


def _netns_demo_missing() -> str | None:
    from wgrelay.testbed.requirements import missing_prerequisite

    missing = missing_prerequisite()
    if missing is not None and missing != "needs root":
        missing += " (run `make demo` as root to install it)"
    return missing


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser(
        {
            "keygen": cmd_keygen,
            "pubkey": cmd_pubkey,
            "list-relays": cmd_list_relays,
            "start-relay": cmd_start_relay,
            "add-bootstrap-relay": cmd_add_bootstrap_relay,
            "configure-relay": cmd_configure_relay,
            "up": cmd_up,
            "status": cmd_status,
            "doctor": cmd_doctor,
            "credits": cmd_credits,
            "demo": cmd_demo,
        }
    )


def log_level(args: argparse.Namespace) -> int:
    level: int = logging.INFO + 10 * (args.quiet - args.verbose)
    return max(logging.DEBUG, min(level, logging.CRITICAL))


def _setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=log_level(args),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _finish(args: argparse.Namespace) -> None:
    if args.state_dir is None:
        args.state_dir = default_state_dir()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:  # the command line, with a --config file's settings under it
        args = config_file.parse_args(parser, sys.argv[1:] if argv is None else argv, _finish)
    except WgRelayError as e:
        print(f"wgrelay: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args)
    try:
        return int(args.handler(args))
    except WgRelayError as e:
        print(f"wgrelay: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line, the traceback only on request
        if args.verbose >= 2:
            raise
        print(f"wgrelay: internal error: {type(e).__name__}: {e} (rerun with -vv)", file=sys.stderr)
        return EXIT_BUG
