"""--private with real WireGuard in namespaces (issue 14's acceptance).

Three relays listing each other for legs: b's router forwards nothing but
to and from r2 (so the pair cannot go direct, and r2 is b's relay); a's
forwards to and from r1 and r3 only (one is its entry relay, the other the
relay it asks where b is). Both agents run with --private, every relay
with debug logging and /metrics. The tunnel must come up over two relays,
carry pings, and the entry relay's whole output and its metrics page must
never show b's key (base64, its 8-character short form, hex), nor r2's a's.
"""

from __future__ import annotations

import base64

import pytest

from tests.system.test_metrics_ns import scrape
from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.multihop import add_bootstrap, only_to, relay_key
from wgrelay.testbed.nat import BLOCK_CHAIN, NAT_TABLE
from wgrelay.testbed.scenario import MeshScenario, RunningRelay, two_peers
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

METRICS = "127.0.0.1:9823"


def _only_to_two(peer: Peer, one: Relay, two: Relay) -> None:
    """``peer``'s router forwards nothing but to and from ``one`` and ``two``."""
    allowed = f"{{ {one.address}, {two.address} }}"
    peer.router.ns.nft(
        f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"
        f"add rule ip {NAT_TABLE} {BLOCK_CHAIN} ip daddr != {allowed} "
        f"ip saddr != {allowed} drop\n"
    )
    peer.router.flush_conntrack()


def _forms(key: str) -> dict[str, str]:
    raw = base64.b64decode(key)
    return {"base64": key, "short": key[:8], "hex": raw.hex()}


def _leaks(text: str, key: str) -> list[str]:
    return [name for name, form in _forms(key).items() if form in text]


def test_private_tunnel_entry_relay_never_shows_b_exit_relay_never_a() -> None:
    with Testbed() as tb:
        [r1, r2, r3], a, b = two_peers(tb, "symmetric", relays=("r1", "r2", "r3"))
        _only_to_two(a, r1, r3)
        only_to(b, r2)
        sc = MeshScenario(tb)
        keys = {r.name: relay_key(sc, r) for r in (r1, r2, r3)}

        def start(r: Relay, *extra: str) -> RunningRelay:
            others = [x for name, k in keys.items() if name != r.name for x in ("--leg-relay", k)]
            return sc.start_relay(r, "-vv", "--metrics", METRICS, *others, *extra)

        first = start(r1)
        boot = ("--bootstrap", f"{first.endpoint}={first.key}")
        running = {"r1": first, "r2": start(r2, *boot), "r3": start(r3, *boot)}
        add_bootstrap(sc, a, "r1")
        add_bootstrap(sc, a, "r3")
        add_bootstrap(sc, b, "r2")
        for p in (a, b):
            sc.start_agent(p, "--private", relays=[])
        try:
            took = sc.wait_ping(a, b, timeout=45.0)
            assert took is not None, sc.agent_log(a)[-3000:] + sc.agent_log(b)[-3000:]
            print(f"private tunnel up: first ping answered after {took:.1f} s")
            for _ in range(3):
                assert a.ping(b.tunnel_address, timeout=2.0)

            def entry_key() -> str | None:
                st = sc.status(a)
                peers: list[dict[str, str]] = st["peers"] if st else []  # type: ignore[assignment]
                return peers[0]["relay"] if peers else None

            assert wait_until(lambda: entry_key() is not None, 10), sc.status(a)
            entry_name = next(n for n, r in running.items() if str(r.key) == entry_key())
            assert entry_name in ("r1", "r3"), entry_name  # never b's relay
            st_a = sc.status(a)
            assert st_a is not None
            assert st_a["peers"][0]["private"] is True  # type: ignore[index]
            entry, exit_ = running[entry_name], running["r2"]
            a_key, b_key = str(a.wireguard().public_key), str(b.wireguard().public_key)
            e_log, x_log = entry.process.read_log(), exit_.process.read_log()
            e_metrics, x_metrics = scrape(entry.relay, METRICS), scrape(exit_.relay, METRICS)
            # the output is the debug log, and it shows what the relay holds
            assert " DEBUG " in e_log, e_log[-2000:]
            assert "a private peer" in e_log
            assert "a private peer" in x_log
            assert a_key[:8] in e_log
            assert b_key[:8] in x_log
            assert 'wgrelay_legs{role="entry"} 1.0' in e_metrics, e_metrics[-1500:]
            assert 'wgrelay_legs{role="exit"} 1.0' in x_metrics, x_metrics[-1500:]
            assert _leaks(e_log + e_metrics, b_key) == [], "the entry relay shows b's key"
            assert _leaks(x_log + x_metrics, a_key) == [], "the exit relay shows a's key"
        finally:
            for name, proc in sc.agents.items():
                if proc.running():
                    print(f"--- agent {name} log ---\n{proc.log_tail(30)}")
