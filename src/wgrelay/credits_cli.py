"""``wgrelay credits``: a member's balance, and operator claims.

``wgrelay credits [MEMBER_KEY]`` asks a relay (``--relay HOST:PORT
--relay-key KEY``, or the relays the agent knows, bootstrap relays first)
for the member's balance and how it came about, over the same machinery
``wgrelay doctor`` uses: the agent's sans-I/O link to one relay on a UDP
socket (sealing, cookies, retransmission), without registering. The query
is made with ``--key`` (a WireGuard private key file: the relay's access
policy must allow its public key) or a throwaway key (enough for an
``--open`` relay). Without MEMBER_KEY the member is ``--key``'s public key.

``wgrelay credits claim --key WG_PRIVATE_KEY_FILE --relay RELAY_PUBKEY``
writes the member's signed claim that it runs that relay, for ``start-relay
--operator-claim FILE``: the relay endorses it with its own key and spreads
it with its receipts, so the relay's earnings count for the member.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import ConfigError, InvalidKey, RemoteProtocolError, WgRelayError
from wgrelay.keys import PrivateKey, PublicKey, load_key_file, relay_x25519_public

if TYPE_CHECKING:  # (the parser is built for every command: keep its imports light)
    from wgrelay.client.events import LinkEvent
    from wgrelay.discovery.registry import KnownRelay
    from wgrelay.proto.receipts import Claim, CreditReport

CLAIM_MARK = "# wgrelay operator claim"
ANSWER_TIMEOUT_S = 5.0
MAX_RELAYS_ASKED = 4

Add = Callable[[str, str], argparse.ArgumentParser]


def add_credits_parser(add: Add) -> None:
    sp = add("credits", "show a member's credit balance, or sign an operator claim")
    sp.add_argument(
        "member",
        nargs="?",
        metavar="MEMBER_KEY",
        help="the member's WireGuard public key (default: --key's); or 'claim' to sign "
        "a claim that you run a relay (with --key and --relay RELAY_PUBKEY)",
    )
    sp.add_argument(
        "--relay",
        metavar="HOST:PORT",
        help="the relay to ask (default: the relays the agent knows); with claim: "
        "the relay's public key",
    )
    sp.add_argument("--relay-key", metavar="PUB_KEY", help="the key of the --relay to ask")
    sp.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help="a WireGuard private key file: ask with it (the relay must allow its key; "
        "default: a throwaway key), or sign the claim with it",
    )
    sp.add_argument("--out", type=Path, metavar="FILE", help="claim: write here, not to stdout")
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_credits(args: argparse.Namespace) -> int:
    # one subcommand, two uses: an option of the other use would be ignored
    if args.member == "claim":
        if args.json or args.relay_key is not None:
            raise ConfigError("credits claim takes --key, --relay and --out only")
        return _cmd_claim(args)
    if args.out is not None:
        raise ConfigError("--out is for credits claim (a balance is printed)")
    key = _load_wg_key(args.key) if args.key is not None else None
    if args.member is not None:
        member = PublicKey.from_base64(args.member, "MEMBER_KEY")
    elif key is not None:
        member = key.public_key()
    else:
        raise ConfigError("give MEMBER_KEY, or --key to show that key's balance")
    relays = _relays_to_ask(args)
    report, relay = asyncio.run(query_credits(member, key or PrivateKey.generate(), relays))
    if args.json:
        print(json.dumps(report_json(report, relay), indent=2))
    else:
        print(report_text(report, relay))
    return 0


# ------------------------------------------------------------ claims


def _load_wg_key(path: Path) -> PrivateKey:
    text = load_key_file(path, "key file")
    if text.relay:
        raise InvalidKey(f"key file {path} is a relay key; give a WireGuard private key")
    return PrivateKey(text.raw)


def _cmd_claim(args: argparse.Namespace) -> int:
    from wgrelay.proto.receipts import make_claim

    if args.key is None or args.relay is None:
        raise ConfigError("credits claim needs --key WG_PRIVATE_KEY_FILE and --relay RELAY_PUBKEY")
    key = _load_wg_key(args.key)
    relay = PublicKey.from_base64(args.relay, "--relay (the relay's public key)")
    relay_x25519_public(relay)  # a WireGuard key given by mistake is (almost) never one
    claim = make_claim(key, relay, int(time.time() * 1000))
    text = claim_text(claim)
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text, encoding="ascii")
        except OSError as e:
            raise ConfigError(f"cannot write {args.out}: {e.strerror}") from None
        print(f"claim: member {claim.member} runs relay {relay}; written to {args.out}")
    return 0


def claim_text(claim: Claim) -> str:
    return (
        f"{CLAIM_MARK}: member {claim.member} runs relay {claim.relay}\n"
        f"{base64.b64encode(claim.signed_claim()).decode('ascii')}\n"
    )


def load_claim_file(path: Path, relay: PublicKey) -> Claim:
    """A claim file for ``start-relay --operator-claim``: signed by its
    member, naming this relay; ``ConfigError`` with one line otherwise."""
    from wgrelay.proto.receipts import decode_signed_claim

    what = f"operator claim {path}"
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not a claim file (not text)") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}") from None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != 2 or not lines[0].startswith(CLAIM_MARK):
        raise ConfigError(f"{what} is not a claim file (make one with: wgrelay credits claim)")
    try:
        claim = decode_signed_claim(base64.b64decode(lines[1], validate=True))
    except (binascii.Error, ValueError, RemoteProtocolError):
        raise ConfigError(f"{what}: the claim line is damaged") from None
    if claim.relay != relay:
        raise ConfigError(f"{what} names relay {claim.relay}, but this relay is {relay}")
    if not claim.member_signed():
        raise ConfigError(f"{what}: the member's signature does not verify (edited?)")
    return claim


# ------------------------------------------------------------ asking a relay


def _relays_to_ask(args: argparse.Namespace) -> list[KnownRelay]:
    from wgrelay.discovery.registry import KnownRelay, RegistryStore
    from wgrelay.relay.app import parse_endpoint

    if args.relay is not None or args.relay_key is not None:
        if args.relay is None or args.relay_key is None:
            raise ConfigError("--relay HOST:PORT and --relay-key KEY go together")
        endpoint = parse_endpoint(args.relay, "--relay")
        key = PublicKey.from_base64(args.relay_key, "--relay-key")
        relay_x25519_public(key)
        return [KnownRelay(key, (endpoint,), bootstrap=True)]
    db = Path(args.state_dir) / "relays.db"  # what the agent knows
    if not db.exists():
        raise ConfigError(
            f"no relay to ask: {db} does not exist (give --relay HOST:PORT --relay-key KEY)"
        )
    store = RegistryStore(db)
    try:
        registry = store.load()
    finally:
        store.close()
    relays = registry.get_available_relays(int(time.time() * 1000))
    relays.sort(key=lambda r: not r.bootstrap)
    if not relays:
        raise ConfigError(f"no relay to ask: {db} lists none (give --relay and --relay-key)")
    return relays[:MAX_RELAYS_ASKED]


async def query_credits(
    member: PublicKey, key: PrivateKey, relays: list[KnownRelay]
) -> tuple[CreditReport, KnownRelay]:
    """The first answer of ``relays``, asked in turn; ``WgRelayError`` if none."""
    from wgrelay.client.events import CreditReported
    from wgrelay.client.udp import resolve_endpoint
    from wgrelay.doctor.gather import ProbeSocket, probe_endpoint
    from wgrelay.transport.udp import AsyncioRuntime

    rt = AsyncioRuntime()
    failures: list[str] = []
    for relay in relays:
        endpoint = probe_endpoint(relay)
        try:
            family, addr = resolve_endpoint(endpoint)
        except OSError as e:
            failures.append(f"{endpoint_str(endpoint)}: {e.strerror or e}")
            continue
        sock = ProbeSocket(rt, "::" if family == socket.AF_INET6 else "0.0.0.0", time.time)
        try:
            probe = sock.add(relay, endpoint, addr, key)
            qid = probe.link.credit_query(member, rt.now())
            sock.pump(probe)
            try:
                ev = await probe.wait(_answer_to(qid), ANSWER_TIMEOUT_S)
            except TimeoutError:
                failures.append(_why_silent(endpoint, probe.link.counters.drops))
                continue
            if isinstance(ev, CreditReported):
                return ev.report, relay
            failures.append(f"{endpoint_str(endpoint)} does not allow key {key.public_key()}")
        finally:
            sock.close()
    raise WgRelayError("no relay answered the credit query: " + "; ".join(failures))


def _answer_to(qid: int) -> Callable[[LinkEvent], bool]:
    from wgrelay.client.events import CreditReported, LinkRejected

    def pred(e: LinkEvent) -> bool:
        return isinstance(e, LinkRejected) or (
            isinstance(e, CreditReported) and e.report.query_id == qid
        )

    return pred


def _why_silent(endpoint: Endpoint, drops: dict[str, int]) -> str:
    where = endpoint_str(endpoint)
    if drops.get("wrong_sender") or drops.get("authentication_failed"):
        return f"{where}: answers do not come from that relay key"
    return f"{where}: no answer (not a relay with credits, or our key is not allowed there)"


# ------------------------------------------------------------ output


def report_json(report: CreditReport, relay: KnownRelay) -> dict[str, Any]:
    return {
        "member": str(report.member),
        "asked": {"relay": str(relay.key), "endpoint": endpoint_str(relay.endpoint)},
        "window_days": report.window_days,
        "balance_bytes": report.balance,
        "earned_bytes": report.earned,
        "used_bytes": report.used,
        "used_receipts": report.used_receipts,
        "relays_operated": [
            {"relay": str(e.relay), "bytes_relayed": e.nbytes, "receipts": e.receipts}
            for e in report.relays
        ],
    }


def _size(n: int) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{n} B"


def report_text(report: CreditReport, relay: KnownRelay) -> str:
    lines = [
        f"member {report.member}",
        f"balance: {_size(report.balance)} over the last {report.window_days} days"
        f" (as relay {relay.key.short()} at {endpoint_str(relay.endpoint)} knows it)",
        f"  earned: {_size(report.earned)} relayed for others by the relays it runs",
    ]
    lines.extend(
        f"    relay {e.relay}: {_size(e.nbytes)} in {e.receipts} receipts" for e in report.relays
    )
    if not report.relays:
        lines.append("    (runs no relay with an operator claim)")
    lines.append(f"  used: {_size(report.used)} in {report.used_receipts} receipts it signed")
    return "\n".join(lines)
