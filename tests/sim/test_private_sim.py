"""--private on the simulator: the tunnel comes up over two relays, and the
entry relay never holds or logs B's key, the exit relay never A's.

Five relays, all listing each other for legs (``--leg-relay``). Roles are
chosen from the keys so that nothing but the private path could put a key
where it must not be: the entry relay E (A's home) is not one of the
relays that hold B's location record, the exit relay X (B's home) not one
that holds A's; L, the relay A asks where B is, is a third one. B's network
lets UDP out to X only, so the pair cannot go direct. Both agents run with
``--private``.

What is inspected: everything reachable from each relay's core (tables,
legs, pending requests, private state, federation, admission caches,
statistics), its /metrics page, and every log record (DEBUG) emitted while
one of its objects was on the stack.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from types import FrameType

import pytest
from prometheus_client import generate_latest

from wgrelay.client.link_private import PrivateLink
from wgrelay.client.plan import PlanConfig
from wgrelay.client.privacy import PrivacyConfig
from wgrelay.discovery.rendezvous import DEFAULT_REPLICAS, holders
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, clamp
from wgrelay.mesh.daemon import status_path
from wgrelay.proto.sealed import LegOpenSealed
from wgrelay.relay.core import RelayCore
from wgrelay.relay.credits import ASK_INTERVAL_S
from wgrelay.relay.ledger import Ledger
from wgrelay.relay.metrics import make_registry
from wgrelay.sim import LinkSpec, Simulation
from wgrelay.sim.mesh import INTERFACE, SimMesh, SimPeer, SimRelay
from wgrelay.sim.nat import Dependence, NatBehavior

SEED = 14
NAMES = ("relay1", "relay2", "relay3", "relay4", "relay5")
_APDM = Dependence.ADDRESS_AND_PORT_DEPENDENT
_PRIVATE = PlanConfig(private=PrivacyConfig(all_peers=True))


# ---------------------------------------------------------------- what a relay holds


def _walk(obj: object, out: list[bytes], seen: set[int], depth: int = 0) -> None:
    """Every bytes and str reachable from ``obj`` through containers and
    wgrelay objects (attributes, slots, dataclass fields)."""
    if depth > 12 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, bytes | bytearray | memoryview):
        out.append(bytes(obj))
    elif isinstance(obj, str):
        out.append(obj.encode())
    elif isinstance(obj, dict):
        for k, v in list(obj.items()):
            _walk(k, out, seen, depth + 1)
            _walk(v, out, seen, depth + 1)
    elif isinstance(obj, list | tuple | set | frozenset) or type(obj).__name__ == "deque":
        for v in list(obj):  # type: ignore[call-overload]
            _walk(v, out, seen, depth + 1)
    elif type(obj).__module__.startswith("wgrelay"):
        if isinstance(obj, PublicKey):
            out.append(obj.raw)
            return
        names: list[str] = []
        if is_dataclass(obj):
            names += [f.name for f in fields(obj)]
        names += list(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            names += list(getattr(cls, "__slots__", ()))
        for name in dict.fromkeys(names):
            v = getattr(obj, name, None)
            if v is not None and not callable(v):
                _walk(v, out, seen, depth + 1)


def relay_state(core: RelayCore) -> bytes:
    out: list[bytes] = []
    _walk(core, out, set())
    out.append(repr(core.get_stats()).encode())
    out.append(generate_latest(make_registry(core.get_stats)))
    return b"\x00".join(out)


def forms(key: PublicKey) -> dict[str, bytes]:
    return {
        "raw": key.raw,
        "base64": str(key).encode(),
        "short": key.short().encode(),
        "hex": key.raw.hex().encode(),
    }


def found(blob: bytes, key: PublicKey) -> list[str]:
    return [name for name, form in forms(key).items() if form in blob]


class RelayLogs(logging.Handler):
    """Log records by the relay whose object is on the stack when emitted."""

    def __init__(self, relays: dict[str, SimRelay]) -> None:
        super().__init__(logging.DEBUG)
        self.relays = relays
        self.by_relay: dict[str, list[str]] = defaultdict(list)

    def _owner(self) -> str | None:
        owned: dict[int, str] = {}
        for name, r in self.relays.items():
            core = r.core
            if core is None:
                continue
            objs: list[object] = [core, r.server, core.federation, core.table]
            objs += [core._admission, core.federation.locations]
            owned.update({id(o): name for o in objs if o is not None})
        f: FrameType | None = sys._getframe(2)
        while f is not None:
            me = f.f_locals.get("self")
            if me is not None and id(me) in owned:
                return owned[id(me)]
            f = f.f_back
        return None

    def emit(self, record: logging.LogRecord) -> None:
        owner = self._owner()
        if owner is not None:
            self.by_relay[owner].append(record.getMessage())


@pytest.fixture
def captured() -> Iterator[list[RelayLogs]]:
    root = logging.getLogger("wgrelay")
    level = root.level
    handlers: list[RelayLogs] = []
    root.setLevel(logging.DEBUG)
    try:
        yield handlers
    finally:
        for h in handlers:
            root.removeHandler(h)
        root.setLevel(level)


# ---------------------------------------------------------------- the world


def _relay_key(sim: Simulation, name: str) -> PublicKey:
    """The key SimRelay will draw for ``name`` (derived from the seed)."""
    return RelayIdentity.from_seed(
        sim.network.derive_rng(f"mesh/relay/{name}").randbytes(32)
    ).public


def _peer_key(sim: Simulation, name: str) -> PublicKey:
    rng = sim.network.derive_rng(f"mesh/peer/{name}")
    return PrivateKey(clamp(rng.randbytes(32))).public_key()


def _roles(sim: Simulation) -> tuple[str, str, str]:
    """(entry, exit, lookup): the entry relay holds no record of B, the exit
    none of A (else they would hold those keys for the location service,
    which has nothing to do with the session)."""
    keys = {_relay_key(sim, n): n for n in NAMES}
    of_a = {keys[k] for k in holders(_peer_key(sim, "a"), keys, DEFAULT_REPLICAS)}
    of_b = {keys[k] for k in holders(_peer_key(sim, "b"), keys, DEFAULT_REPLICAS)}
    for e in NAMES:
        for x in NAMES:
            if e != x and e not in of_b and x not in of_a:
                lookup = next(n for n in NAMES if n not in (e, x))
                return e, x, lookup
    raise AssertionError("no roles for this seed")


class World:
    def __init__(self, mesh: SimMesh) -> None:
        self.mesh = mesh
        sim = mesh.sim
        self.entry_name, self.exit_name, self.lookup_name = _roles(sim)
        delay = {self.entry_name: 0.005, self.lookup_name: 0.010}
        first: SimRelay | None = None
        for name in NAMES:
            r = mesh.add_relay(
                name,
                link=LinkSpec(delay_s=delay.get(name, 0.020)),
                bootstrap=[first] if first is not None else [],
            )
            first = first or r
        everyone = frozenset(r.key.raw for r in mesh.relays.values())
        for r in mesh.relays.values():
            r.config = replace(r.config, leg_relays=everyone - {r.key.raw})
            assert r.core is not None
            r.core.reconfigure(config=r.config)
        self.entry = mesh.relays[self.entry_name]
        self.exit = mesh.relays[self.exit_name]
        self.lookup = mesh.relays[self.lookup_name]

    def peers(self) -> tuple[SimPeer, SimPeer]:
        m = self.mesh
        only_exit = NatBehavior(
            mapping=_APDM,
            filtering=_APDM,
            port_preservation=False,
            tcp_blocked=True,
            udp_only_to=frozenset({self.exit.host.address}),
        )
        a = m.add_peer("a", link=LinkSpec(delay_s=0.010), relays=[self.entry, self.lookup])
        b = m.add_peer("b", behind=only_exit, link=LinkSpec(delay_s=0.010), relays=[self.exit])
        assert a.public == _peer_key(m.sim, "a")
        assert b.public == _peer_key(m.sim, "b")
        for p in (a, b):
            p.plan_config = _PRIVATE
        return a, b

    def converge(self) -> None:
        """Every relay knows every other before the agents start (so every
        relay places records at the same holders)."""

        def known() -> bool:
            return all(
                (st := r.stats()) is not None and st.relays_live >= len(NAMES) - 1
                for r in self.mesh.relays.values()
            )

        self.mesh.sim.run_until(known, timeout_s=60)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=SEED) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def _up(mesh: SimMesh, captured: list[RelayLogs]) -> tuple[World, SimPeer, SimPeer, RelayLogs]:
    w = World(mesh)
    logs = RelayLogs(mesh.relays)
    logging.getLogger("wgrelay").addHandler(logs)
    captured.append(logs)
    w.converge()
    a, b = w.peers()
    mesh.connect(a, b)
    mesh.start()
    took = mesh.wait_connected(a, b, timeout_s=90)
    print(f"private tunnel up after {took:.1f} s")
    return w, a, b, logs


def test_private_tunnel_over_two_relays_neither_knowing_both(
    mesh: SimMesh, captured: list[RelayLogs]
) -> None:
    w, a, b, logs = _up(mesh, captured)
    assert a.relay_for(b) == w.entry.key
    assert b.relay_for(a) == w.exit.key
    traffic = mesh.ping_every(a, b, interval_s=0.2, timeout_s=1.0)
    mesh.sim.run_for(3.0)
    assert traffic.answered >= 10, traffic.results
    assert traffic.lost == 0
    for relay, role in ((w.entry, "entry"), (w.exit, "exit")):
        assert relay.core is not None
        st = relay.core.leg_stats()
        assert st["private_open"] == 1, st
        assert st[f"open_{role}"] == 1, st
        assert st[f"packets_{role}"] > 10, st

    e_state, x_state = relay_state(w.entry.core), relay_state(w.exit.core)  # type: ignore[arg-type]
    # the inspection sees keys where they are: each relay holds its own peer
    assert "raw" in found(e_state, a.public)
    assert "raw" in found(x_state, b.public)
    assert found(e_state, b.public) == [], "the entry relay holds B's key"
    assert found(x_state, a.public) == [], "the exit relay holds A's key"

    e_logs = "\n".join(logs.by_relay[w.entry_name])
    x_logs = "\n".join(logs.by_relay[w.exit_name])
    assert a.public.short() in e_logs  # (the capture works: A registered there)
    assert b.public.short() in x_logs
    assert "private peer" in e_logs
    assert "private peer" in x_logs
    for text, key, who in ((e_logs, b.public, "entry"), (x_logs, a.public, "exit")):
        leaked = [n for n, f in forms(key).items() if n != "raw" and f.decode() in text]
        assert leaked == [], f"the {who} relay logged the hidden key ({leaked})"
    # nor did A ever ask its entry relay where B is, nor name B to it
    assert b.public not in w.entry.core.federation.locations._lookups  # type: ignore[union-attr]
    # A's status says its path is private
    doc = json.loads(status_path(a.state_dir, INTERFACE).read_text())
    entry = next(p for p in doc["peers"] if p["public_key"] == str(b.public))
    assert entry["private"] is True
    assert entry["private_blocked"] is None
    # and names both relays of its path (the entry, then the exit)
    assert entry["exit_relay"] == str(w.exit.key), entry


def test_replayed_and_undecryptable_leg_opens_are_refused_and_counted(
    mesh: SimMesh, captured: list[RelayLogs]
) -> None:
    w, _a, _b, _logs = _up(mesh, captured)
    e, x = w.entry.core, w.exit.core
    assert e is not None
    assert x is not None
    sid, sealed = next(iter(e.sealed.items()))
    now = mesh.sim.loop.time()
    # the entry relay (or anyone holding its key) sends the same box again,
    # under another session id; and a box that is not one
    e._to_relay(w.exit.key, LegOpenSealed(bytes(8), sealed.box), now)
    e._to_relay(w.exit.key, LegOpenSealed(b"\x01" * 8, bytes(len(sealed.box))), now)
    mesh.sim.run_for(3.0)
    st = x.leg_stats()
    assert st.get("refused_replayed") == 1, st
    assert st.get("refused_undecryptable") == 1, st
    assert st["private_open"] == 1  # the real one lives on
    assert sid in x.sessions
    page = generate_latest(make_registry(x.get_stats)).decode()
    assert 'wgrelay_legs_refused_total{reason="replayed"} 1.0' in page


def test_an_offer_from_a_non_peer_is_declined(mesh: SimMesh, captured: list[RelayLogs]) -> None:
    """C knows B's key and asks privately, but C is not one of B's WireGuard
    peers: B's agent opens the box, sees C, declines; C gets no path and
    its status says why."""
    w, _a, b, _logs = _up(mesh, captured)
    c = mesh.add_peer("c", link=LinkSpec(delay_s=0.010), relays=[w.entry, w.lookup])
    c.plan_config = _PRIVATE
    c.wg.add_peer(b.public, endpoint=b.endpoint)  # one way only: B does not list C
    mesh.start([c])

    def declined() -> int:
        link = b.agent.manager.planner.link(w.exit.key) if b.agent else None
        return link.declined.get("not_peer", 0) if isinstance(link, PrivateLink) else 0

    mesh.sim.run_until(lambda: declined() > 0, timeout_s=60)
    assert c.relay_for(b) is None
    assert c.agent is not None

    def blocked() -> str:
        assert c.agent is not None
        return c.agent.manager.planner.private_blocked.get(b.public, "")

    mesh.sim.run_until(lambda: blocked() != "", timeout_s=60)
    assert "private: no two-relay path" in blocked()
    assert "REJECTED" in blocked()

    # and `wgrelay status --json` (the status file) says why
    def status_entry() -> dict[str, object]:
        path = status_path(c.state_dir, INTERFACE)
        doc = json.loads(path.read_text()) if path.exists() else {"peers": []}
        return next((p for p in doc["peers"] if p["public_key"] == str(b.public)), {})

    mesh.sim.run_until(lambda: bool(status_entry().get("private_blocked")), timeout_s=10)
    entry = status_entry()
    assert entry["private"] is True
    assert "private: no two-relay path" in str(entry["private_blocked"])
    assert "private: no two-relay path" in str(entry["reason"])


def test_with_credits_neither_relays_ledger_learns_the_hidden_key(
    mesh: SimMesh, captured: list[RelayLogs]
) -> None:
    """Every relay takes credits: the receipts a relay asks its peers for
    spread to the others by gossip (its signer's key, the session id). No
    receipt of the private session is asked for, so none reaches the other
    relay of the path (review finding: the exit relay's receipts from B
    reached the entry relay, which holds the same session id for A)."""
    w = World(mesh)
    for r in mesh.relays.values():
        assert r.core is not None
        r.core.enable_credits(Ledger(None), None, mesh.sim.now())
    logs = RelayLogs(mesh.relays)
    logging.getLogger("wgrelay").addHandler(logs)
    captured.append(logs)
    w.converge()
    a, b = w.peers()
    mesh.connect(a, b)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=90)
    assert w.entry.core is not None
    sid = next(iter(w.entry.core.sealed))
    traffic = mesh.ping_every(a, b, interval_s=0.5, timeout_s=1.0)
    mesh.sim.run_for(ASK_INTERVAL_S + 15)  # past a round of receipts and their spreading
    assert traffic.answered > 50
    for relay, hidden in ((w.entry, b.public), (w.exit, a.public)):
        assert relay.core is not None
        ledger = relay.core.ledger
        assert ledger is not None
        rows = ledger._conn.execute(
            "SELECT count(*) FROM receipts WHERE peer = ? OR session = ?", (hidden.raw, sid)
        ).fetchone()
        assert rows == (0,), f"{relay.name}'s ledger holds the hidden side's receipts"
        assert relay.core.credit_counters().get("requests_sent", 0) == 0
