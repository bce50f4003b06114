"""The NAT-pair grid: which path the production agents take for every pair of NAT kinds.

For each ordered pair (A behind one kind of NAT, B behind another) a fresh
simulation runs one relay and the two peers' agents (``SimMesh``), waits until
both WireGuards hold a session and both agents have settled on a path, then
pings through the tunnel for a while to check the path holds. Each cell is run
under several seeds: the peers' links have a little jitter, so which packet
reaches a NAT box first (and so whether the first handshake or WireGuard's
retry 5 s later gets through) varies, as it does on a real network.

``render_markdown`` writes ``docs/NAT_MATRIX.md`` (``wgrelay demo --simulated
--matrix``, ``make nat-matrix``); a test checks the committed file matches.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wgrelay.mesh.agent import PathKind
from wgrelay.sim.link import LinkSpec
from wgrelay.sim.mesh import SETTLED, SimMesh, SimPeer
from wgrelay.sim.nat import NatKind
from wgrelay.sim.network import Simulation

KINDS = (
    NatKind.NONE,
    NatKind.FULL_CONE,
    NatKind.RESTRICTED_CONE,
    NatKind.PORT_RESTRICTED_CONE,
    NatKind.SYMMETRIC,
    NatKind.UDP_BLOCKED,
)
SEEDS = (1, 2, 3, 4)
CONNECT_TIMEOUT_S = 60.0
"""Virtual seconds a cell may take to connect before it counts as "none"."""
OBSERVE_S = 60.0
"""After connecting, how long the pair is watched (and pinged)."""
PING_INTERVAL_S = 1.0
OUTAGE_ALLOWED_S = PING_INTERVAL_S
"""One lost ping is allowed (a relay round trip may lose one on the way)."""
RELAY_LINK = LinkSpec(delay_s=0.010)
PEER_LINK = LinkSpec(delay_s=0.020, jitter_s=0.005)

LABELS = {
    NatKind.NONE: "no NAT",
    NatKind.FULL_CONE: "full cone",
    NatKind.RESTRICTED_CONE: "restricted cone",
    NatKind.PORT_RESTRICTED_CONE: "port-restricted cone",
    NatKind.SYMMETRIC: "symmetric",
    NatKind.UDP_BLOCKED: "UDP blocked",
}
NONE = "none"
DIRECT = PathKind.DIRECT.value
RELAYED = PathKind.RELAYED.value


@dataclass(frozen=True, slots=True)
class CellRun:
    """One seed's outcome for one pair."""

    first: str
    """The path both agents first settled on: ``direct``, ``relayed``, ``none``,
    or ``a-path/b-path`` when they disagree."""
    time_s: float | None
    """Virtual seconds from start until connected on ``first`` (None: never)."""
    final: str
    """The path at the end of the observation."""
    final_s: float | None
    """When the agents settled on ``final``, if it differs from ``first``."""
    longest_outage_s: float
    """The longest run of unanswered pings after connecting (0: none lost)."""

    @property
    def outcome(self) -> str:
        return self.first if self.final == self.first else f"{self.first} -> {self.final}"


@dataclass(frozen=True, slots=True)
class Cell:
    a: NatKind
    b: NatKind
    runs: tuple[CellRun, ...]

    @property
    def connected(self) -> bool:
        return all(r.final in (DIRECT, RELAYED) for r in self.runs)

    @property
    def holds(self) -> bool:
        """No connected run lost more than one ping in a row."""
        return all(r.longest_outage_s <= OUTAGE_ALLOWED_S for r in self.runs)

    def text(self) -> str:
        groups: dict[str, list[CellRun]] = {}
        for r in self.runs:
            groups.setdefault(r.outcome, []).append(r)
        parts = []
        for outcome, runs in groups.items():
            out = outcome
            first = _range([r.time_s for r in runs])
            final = _range([r.final_s for r in runs])
            if first:
                out = out.replace(runs[0].first, f"{runs[0].first} {first}", 1)
            if final:
                out += f" {final}"
            worst = max(r.longest_outage_s for r in runs)
            if worst > OUTAGE_ALLOWED_S:
                out += f" (pings lost for {worst:.0f} s)"
            if len(groups) > 1:
                out += f" ({len(runs)}/{len(self.runs)})"
            parts.append(out)
        return "; ".join(parts)


def _range(times: list[float | None]) -> str:
    known = [t for t in times if t is not None]
    if not known:
        return ""
    lo, hi = f"{min(known):.1f}", f"{max(known):.1f}"
    return f"{lo} s" if lo == hi else f"{lo}-{hi} s"


def _path(a: SimPeer, b: SimPeer) -> str:
    pa, pb = a.path(b), b.path(a)
    if pa is None or pb is None or pa not in SETTLED or pb not in SETTLED:
        return NONE
    return pa.value if pa == pb else f"{pa.value}/{pb.value}"


def run_cell(a_kind: NatKind, b_kind: NatKind, seed: int) -> CellRun:
    """Run one pair under one seed (in a temporary state directory)."""
    with (
        tempfile.TemporaryDirectory(prefix="wgrelay-natmatrix-") as tmp,
        Simulation(seed=seed, trace=False) as sim,
    ):
        mesh = SimMesh(sim, Path(tmp))
        mesh.add_relay("relay", link=RELAY_LINK)
        a = mesh.add_peer("a", behind=a_kind, link=PEER_LINK)
        b = mesh.add_peer("b", behind=b_kind, link=PEER_LINK)
        mesh.connect(a, b)
        mesh.start()
        try:
            t = mesh.wait_connected(a, b, timeout_s=CONNECT_TIMEOUT_S)
        except TimeoutError:
            return CellRun(NONE, None, NONE, None, 0.0)
        first = _path(a, b)
        traffic = mesh.ping_every(a, b, interval_s=PING_INTERVAL_S, timeout_s=PING_INTERVAL_S)
        watch = mesh.watch([(a, b)])
        sim.run_for(OBSERVE_S + PING_INTERVAL_S / 2)
        final = _path(a, b)
        final_s = watch.changes[-1].time if final != first and watch.changes else None
        return CellRun(first, t, final, final_s, traffic.longest_outage_s())


def compute(
    seeds: Iterable[int] = SEEDS,
    kinds: Iterable[NatKind] = KINDS,
    progress: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    seeds, kinds = tuple(seeds), tuple(kinds)
    cells = []
    for a in kinds:
        for b in kinds:
            cell = Cell(a, b, tuple(run_cell(a, b, s) for s in seeds))
            cells.append(cell)
            if progress is not None:
                progress(cell)
    return cells


def expected_connected(a: NatKind, b: NatKind) -> bool:
    """Every pair must connect, except where UDP is blocked (no TCP fallback yet)."""
    return NatKind.UDP_BLOCKED not in (a, b)


_INTRO = """\
# NAT pair matrix

Generated by `wgrelay demo --simulated --matrix` (`make nat-matrix`); a test
(`tests/sim/test_nat_matrix.py`) checks that this file is what the command
prints, so do not edit it by hand.

Each cell: peer A (row) and peer B (column), each behind its own NAT box of
the given kind, run the production agent (`wgrelay up`: `AgentCore`, the relay
client) beside a WireGuard stand-in that behaves as WireGuard does on the wire
(`wgrelay.sim`). Each WireGuard is configured with the other's public address
and listen port, as an operator would write it; one relay on the internet
(production `RelayCore`) is both agents' bootstrap relay. Links: relay 10 ms,
peers 20 ms plus up to 5 ms of jitter.

A cell gives the path both agents first settled on (**direct**, **relayed**,
or **none**) and the virtual time from start until both WireGuards held a
session on it. The pair is then pinged once a second for {observe:.0f} s:
"relayed 5.3 s -> direct 34.6 s" means the agents moved to another path and
settled there at that time; "(pings lost for N s)" that pings went unanswered
for longer than one ping interval after connecting. Each cell ran under
{nseeds} seeds (the jitter decides which packet reaches a NAT box first);
times are min-max over them, and "(k/{nseeds})" counts the seeds of each outcome
when they differ.
"""

_NOTES = """\
## Reading the cells

NAT kinds are the simulator's RFC 4787 presets (`wgrelay/sim/nat.py`):

| kind | mapping | filtering | keeps the port |
|---|---|---|---|
| full cone | endpoint-independent | endpoint-independent | yes |
| restricted cone | endpoint-independent | address-dependent | yes |
| port-restricted cone | endpoint-independent | address-and-port-dependent | no |
| symmetric | address-and-port-dependent | address-and-port-dependent | no |
| UDP blocked | - | every outbound UDP packet dropped | - |

* **No NAT on one side**: direct. The NATed side's handshake reaches the
  public peer, whose WireGuard answers to the packet's source (roaming).
* **Full or restricted cone on both sides**: direct. These boxes keep the
  WireGuard port, so the configured endpoints are right, and each side's first
  packet opens its own box for the other.
* **Full or restricted cone against port-restricted or symmetric**: direct
  in the end. The cone side's box keeps its port, so the other side's
  handshake gets in once the cone side has sent towards that address: at once
  (0.4 s) when the cone side's first packet leaves first. When the other
  side's handshake arrives first it is filtered; the agents give a direct
  candidate 3 s, less than WireGuard's 5 s retry, so that retry goes through
  the relay (relayed at 5.3 s), and the first direct retry while relayed
  (about 30 s later) moves the pair to direct.
* **Port-restricted or symmetric on both sides**: relayed. Neither box keeps
  the port, so the configured endpoints are wrong and nothing tells the agents
  the right ones; coordinated hole punching through the relay (candidates
  exchanged, simultaneous open) is a later issue; it would make the
  port-restricted pair direct (its mapping is endpoint-independent), not the
  pairs with a symmetric NAT.
* **UDP blocked**: none. The relay protocol runs over UDP today, so a peer that
  cannot send UDP reaches neither its peer nor a relay. TCP fallback is a later
  issue; until then "none" is expected in this row and column, and only there.

Times: the agents read WireGuard every second (five times a second while a
direct attempt runs) and give each direct candidate 3 s before asking a relay,
so a relayed path takes a little over 3 s plus the relay round trips.
"""


def render_markdown(cells: list[Cell], seeds: Iterable[int] = SEEDS) -> str:
    kinds = list(dict.fromkeys(c.a for c in cells))
    by = {(c.a, c.b): c for c in cells}
    lines = [_INTRO.format(nseeds=len(tuple(seeds)), observe=OBSERVE_S)]
    lines.append("| A \\ B | " + " | ".join(LABELS[k] for k in kinds) + " |")
    lines.append("|---" * (len(kinds) + 1) + "|")
    for a in kinds:
        row = [f"**{LABELS[a]}**", *(by[(a, b)].text() for b in kinds)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    wrong = [c for c in cells if c.connected != expected_connected(c.a, c.b)]
    if wrong:
        names = ", ".join(f"{LABELS[c.a]} / {LABELS[c.b]}" for c in wrong)
        lines.append(f"**Not connected as they should be:** {names}.")
    else:
        lines.append("Every pair connects, except where UDP is blocked.")
    lossy = [c for c in cells if not c.holds]
    if lossy:
        lines.append("")
        lines.append(
            f"**Pings lost after connecting** in {len(lossy)} of {len(cells)} cells (marked):"
            " agent behaviour to fix, not a NAT limit (reported on issue 9)."
        )
    lines.append("")
    lines.append(_NOTES)
    return "\n".join(lines)
