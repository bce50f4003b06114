"""Scale benchmark: 1,000 production agents and 200 production relays in the simulator.

Not a test: it reports figures for docs/PERFORMANCE.md ("Simulated scale").
Everything that runs is the shipped code (``SimMesh``: ``Agent`` with its
``AgentCore`` and relay client, ``RelayCore`` behind ``RelayServer``); only
WireGuard and the network are simulated, with the trace off.

Traffic pattern: every peer is a WireGuard peer of the peers at ring distance
1, 7 and 31 (so six peers each, 3,000 pairs, not a full mesh of half a million);
NATs cycle through no NAT, full cone, restricted cone, port-restricted cone and
symmetric (twice), so pairs of the last two kinds need a relay. Relays are 5 to
45 ms away, listed in no particular order, with ``start-relay``'s limits. Every
agent has every relay as a bootstrap relay (one list for the whole mesh) and
the relays are not federated, so the figures are about home choice and
session placement, not discovery (bench/federation_scale.py measures that).

Phases and figures:

1. start everything; virtual time until every pair that needs a relay is
   relayed (and until every pair is connected at all);
2. a steady window (from 20 s after connecting; pings every 5 s on 100
   relayed pairs): control messages per relay per minute and by type, homes
   per relay, relays each agent measured, registrations and sockets per agent;
3. simulator throughput: queued packet steps ("events") per CPU and wall second;
4. memory (tracemalloc, a separate run: one relay, many agents): what the relay
   core keeps per registration and per session, counting allocations made
   under ``wgrelay/relay/`` frames that are still alive.

    .venv/bin/python bench/sim_scale.py                      # 1,000 x 200
    .venv/bin/python bench/sim_scale.py --peers 200 --relays 40 --window 60
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wgrelay.mesh.agent import PathKind
from wgrelay.proto.constants import MsgType
from wgrelay.relay.config import RelayConfig
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import SimMesh, SimPeer
from wgrelay.sim.socket import SimUdpTransport
from wgrelay.transport.base import Addr, DatagramReceiver

KINDS = (
    NatKind.NONE,
    NatKind.FULL_CONE,
    NatKind.RESTRICTED_CONE,
    NatKind.PORT_RESTRICTED_CONE,
    NatKind.SYMMETRIC,
    NatKind.SYMMETRIC,
)
CLOSED = (NatKind.PORT_RESTRICTED_CONE, NatKind.SYMMETRIC)
RING_OFFSETS = (1, 7, 31)
PINGED_PAIRS = 100
RELAY_CONFIG = RelayConfig()
"""What ``start-relay`` runs with: at most 100 sessions per relay."""
MEMORY_RELAY_CONFIG = RelayConfig(max_connections=100_000, max_registrations=100_000)
_SHM = "/dev/shm"  # noqa: S108 (TemporaryDirectory makes a private directory there)
SCRATCH = _SHM if os.access(_SHM, os.W_OK) else None
"""Where the agents' state directories (status files) go: memory, not the disk."""
SETTLE_S = 20.0
TRACE_FRAMES = 16


class CountingReceiver:
    """Counts what a relay socket receives by message type, then hands it on."""

    def __init__(self, inner: DatagramReceiver, counts: Counter[int]) -> None:
        self.inner = inner
        self.counts = counts

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.counts[data[0] if data else -1] += 1
        self.inner.datagram_received(data, addr)

    def batch_done(self) -> None:
        self.inner.batch_done()


def count_relay_traffic(mesh: SimMesh) -> Counter[int]:
    counts: Counter[int] = Counter()
    for relay in mesh.relays.values():
        for t in relay.server.transports if relay.server is not None else []:
            if isinstance(t, SimUdpTransport):
                t.receiver = CountingReceiver(t.receiver, counts)
    return counts


def kind_of(i: int) -> NatKind:
    return KINDS[i % len(KINDS)]


def build(
    sim: Simulation, state: Path, n_peers: int, n_relays: int
) -> tuple[SimMesh, list[SimPeer], list[tuple[SimPeer, SimPeer]]]:
    mesh = SimMesh(sim, state, relay_config=RELAY_CONFIG)
    # relays spread from 5 to 45 ms away, in no particular order (the bootstrap
    # list an operator writes is not sorted by distance), with a little jitter
    distance = list(range(n_relays))
    sim.network.derive_rng("bench/relay-order").shuffle(distance)
    for i in range(n_relays):
        delay_s = 0.005 + 0.040 * distance[i] / n_relays
        mesh.add_relay(f"r{i}", link=LinkSpec(delay_s=delay_s, jitter_s=0.002))
    peers = [
        mesh.add_peer(f"p{i}", behind=kind_of(i), link=LinkSpec(delay_s=0.005 + 0.001 * (i % 40)))
        for i in range(n_peers)
    ]
    pairs = [(peers[i], peers[(i + d) % n_peers]) for i in range(n_peers) for d in RING_OFFSETS]
    for a, b in pairs:
        mesh.connect(a, b)
    return mesh, peers, pairs


def needs_relay(i: int, j: int) -> bool:
    return kind_of(i) in CLOSED and kind_of(j) in CLOSED


def index(p: SimPeer) -> int:
    return int(p.name[1:])


def wait(
    sim: Simulation, what: Sequence[tuple[SimPeer, SimPeer]], ok: Any, timeout_s: float
) -> float | None:
    waiting = list(what)

    def check() -> bool:
        nonlocal waiting
        waiting = [(a, b) for a, b in waiting if not ok(a, b)]
        return not waiting

    try:
        return sim.run_until(check, timeout_s=timeout_s, poll_s=0.5)
    except TimeoutError:
        print(f"  {len(waiting)} pair(s) still waiting after {timeout_s:.0f} s", flush=True)
        return None


def relayed(a: SimPeer, b: SimPeer) -> bool:
    return (
        a.path(b) is PathKind.RELAYED
        and b.path(a) is PathKind.RELAYED
        and a.tunnel_up(b)
        and b.tunnel_up(a)
    )


def scale_run(n_peers: int, n_relays: int, seed: int, window_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"peers": n_peers, "relays": n_relays, "seed": seed}
    with (
        tempfile.TemporaryDirectory(prefix="wgrelay-scale-", dir=SCRATCH) as tmp,
        Simulation(seed=seed, trace=False) as sim,
    ):
        t0 = time.perf_counter()
        mesh, peers, pairs = build(sim, Path(tmp), n_peers, n_relays)
        received = count_relay_traffic(mesh)
        mesh.start()
        out["setup_wall_s"] = round(time.perf_counter() - t0, 2)
        out["setup_virtual_s"] = sim.now()
        need = [(a, b) for a, b in pairs if needs_relay(index(a), index(b))]
        out["pairs"] = len(pairs)
        out["pairs_needing_relay"] = len(need)
        print(f"  {len(pairs)} pairs, {len(need)} need a relay; running", flush=True)

        w0, c0, e0 = time.perf_counter(), time.process_time(), sim.network.events
        out["all_relayed_at_s"] = wait(sim, need, relayed, timeout_s=300.0)
        out["all_connected_at_s"] = wait(sim, pairs, mesh.connected, timeout_s=300.0)
        print(
            f"  connected: relayed {out['all_relayed_at_s']} s, all {out['all_connected_at_s']} s"
        )
        paths = Counter((a.path(b) or PathKind.PROBING).value for a, b in pairs)
        out["paths"] = dict(sorted(paths.items()))

        for a, b in need[:PINGED_PAIRS]:
            mesh.ping_every(a, b, interval_s=5.0)
        sim.run_for(SETTLE_S)  # let the start-up traffic settle
        before = {r.name: r.control_messages for r in mesh.relays.values()}
        received.clear()
        t_start = sim.now()
        sim.run_for(window_s)
        minutes = (sim.now() - t_start) / 60.0
        out["received_by_relays_per_peer_per_min"] = {
            (MsgType(t).name if t in MsgType._value2member_map_ else str(t)): round(
                n / minutes / n_peers, 2
            )
            for t, n in received.most_common()
        }
        rates = sorted(
            (r.control_messages - before[r.name]) / minutes for r in mesh.relays.values()
        )
        wall = time.perf_counter() - w0
        cpu = time.process_time() - c0
        events = sim.network.events - e0
        out["virtual_s"] = round(sim.now(), 1)
        out["run_wall_s"] = round(wall, 1)
        out["run_cpu_s"] = round(cpu, 1)
        out["events"] = events
        out["events_per_wall_s"] = round(events / wall)
        out["events_per_cpu_s"] = round(events / cpu)
        out["virtual_s_per_cpu_s"] = round((sim.now() - out["setup_virtual_s"]) / cpu, 2)
        out["delivered"] = sim.network.delivered
        out["control_per_relay_per_min"] = {
            "mean": round(statistics.fmean(rates), 1),
            "median": round(statistics.median(rates), 1),
            "max": round(rates[-1], 1),
            "min": round(rates[0], 1),
            "total_per_min": round(sum(rates)),
            "per_peer_per_min": round(sum(rates) / n_peers, 2),
        }
        homes = Counter(p.home() for p in peers)
        out["relays_used_as_home"] = sum(1 for k in homes if k is not None)
        by_distance = sorted(mesh.relays.values(), key=lambda r: r.host.link.delay_s)
        out["nearest_10_relays_used_as_home"] = sum(1 for r in by_distance[:10] if homes[r.key])
        busiest = homes.most_common(1)[0][0]
        out["distance_rank_of_busiest_home"] = next(
            (n for n, r in enumerate(by_distance) if r.key == busiest), -1
        )
        out["most_peers_on_one_home"] = max(homes.values())
        carriers = Counter(a.relay_for(b) for a, b in need)
        out["relays_carrying_sessions"] = sum(1 for k in carriers if k is not None)
        measured = [sum(1 for r in p.registry.all() if r.rtt_ms is not None) for p in peers]
        out["relays_measured_per_agent"] = {
            "mean": round(statistics.fmean(measured), 1),
            "max": max(measured),
        }
        sockets = [len(p.host.sockets) for p in peers]
        out["udp_sockets_per_agent_host"] = {
            "mean": round(statistics.fmean(sockets), 2),
            "max": max(sockets),
        }
        regs = [s.registrations for r in mesh.relays.values() if (s := r.stats()) is not None]
        out["registrations_per_relay"] = {
            "mean": round(statistics.fmean(regs), 1),
            "max": max(regs),
        }
        out["registrations_per_agent"] = round(sum(regs) / n_peers, 2)
    return out


def _relay_bytes(snapshot: tracemalloc.Snapshot) -> int:
    relay_frames = tracemalloc.Filter(True, "*/wgrelay/relay/*", all_frames=True)
    return sum(s.size for s in snapshot.filter_traces([relay_frames]).statistics("filename"))


def memory_run(n_peers: int, seed: int) -> dict[str, Any]:
    """One relay; ``n_peers`` agents register, then half of them open sessions in pairs."""
    with (
        tempfile.TemporaryDirectory(prefix="wgrelay-mem-", dir=SCRATCH) as tmp,
        Simulation(seed=seed, trace=False) as sim,
    ):
        mesh = SimMesh(sim, Path(tmp), relay_config=MEMORY_RELAY_CONFIG)
        relay = mesh.add_relay("relay", link=LinkSpec(delay_s=0.010))
        peers = [
            mesh.add_peer(f"p{i}", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
            for i in range(n_peers)
        ]
        sim.run_for(5.0)
        gc.collect()
        tracemalloc.start(TRACE_FRAMES)
        base = _relay_bytes(tracemalloc.take_snapshot())
        mesh.start()
        sim.run_for(30.0)
        gc.collect()
        registered = _relay_bytes(tracemalloc.take_snapshot())
        stats = relay.stats()
        assert stats is not None
        n_regs = stats.registrations
        pairs = [(peers[i], peers[i + 1]) for i in range(0, n_peers - 1, 2)]
        for a, b in pairs:
            mesh.connect(a, b)
        wait(sim, pairs, relayed, timeout_s=120.0)
        sim.run_for(10.0)
        gc.collect()
        with_sessions = _relay_bytes(tracemalloc.take_snapshot())
        tracemalloc.stop()
        stats = relay.stats()
        assert stats is not None
        n_sessions = stats.sessions_active
    return {
        "registrations": n_regs,
        "bytes_per_registration": round((registered - base) / max(n_regs, 1)),
        "sessions": n_sessions,
        "bytes_per_session": round((with_sessions - registered) / max(n_sessions, 1)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--relays", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=float, default=120.0, help="steady window, virtual s")
    ap.add_argument("--memory-peers", type=int, default=400)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # agents warn about every relay they cannot reach
    print(f"scale: {args.peers} agents, {args.relays} relays (seed {args.seed})", flush=True)
    result: dict[str, Any] = {"scale": scale_run(args.peers, args.relays, args.seed, args.window)}
    print(f"memory: one relay, {args.memory_peers} agents", flush=True)
    result["memory"] = memory_run(args.memory_peers, args.seed)
    result["python"] = sys.version.split()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
