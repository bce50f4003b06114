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
    NatKind.TCP_443_ONLY,
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
    NatKind.TCP_443_ONLY: "HTTPS only",
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

    def ends_direct(self) -> bool:
        """Every seed's run ended on a direct path."""
        return all(r.final == DIRECT for r in self.runs)

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


_NO_UDP = {NatKind.UDP_BLOCKED, NatKind.TCP_443_ONLY}


def expected_connected(a: NatKind, b: NatKind) -> bool:
    """Every pair must connect: where UDP is blocked, over TCP or TLS to the relay."""
    return True


_PER_DESTINATION_OR_PORT_FILTERED = {NatKind.PORT_RESTRICTED_CONE, NatKind.SYMMETRIC}


def expected_direct(a: NatKind, b: NatKind) -> bool:
    """Whether the pair must end direct: every connected pair, except a
    symmetric NAT (a new port per destination, which nobody can learn)
    facing one that lets in only the exact address and port it sent to
    (port-restricted cone or symmetric). The namespace grid
    (tests/system/test_paths_ns.py) holds real NATs to the same rule."""
    if not expected_connected(a, b) or _NO_UDP & {a, b}:
        return False  # (no UDP, no direct path)
    pair = {a, b}
    return not (NatKind.SYMMETRIC in pair and pair <= _PER_DESTINATION_OR_PORT_FILTERED)


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
| UDP blocked | - | every outbound UDP packet dropped (TCP passes) | - |
| HTTPS only | - | UDP dropped, TCP only to port 443 | - |

* **Relayed at once.** A peer without a recent handshake is brought up
  through the relay first (both agents ask at once, the relay joins the two
  requests): every connected pair has a tunnel about 0.5 s after start.
* **Then direct where a direct path exists**, about 2 s later: the relay's
  session ports see each WireGuard's public mapping and tell both agents
  (with how each NAT maps, from a probe sent from WireGuard's own port to
  the relay's main port); one agent asks the relay for a coordinated try,
  the relay tells both GO at the same moment, and both point WireGuard at
  the other's mapping and send at every look for 0.8 s (simultaneous open).
  Each side's packets open its own box for the other's, so every pair with
  at most one symmetric NAT facing a box that filters by address only goes
  direct, the port-restricted pair included (its boxes change WireGuard's
  port, but the same port for every destination).
* **Symmetric against port-restricted or symmetric**: relayed. A symmetric
  box gives WireGuard's socket a new port per destination, which nobody can
  learn, and the other box lets in only the address and port it sent to.
  Against symmetric on both sides the agents try only the configured
  endpoints (both mappings are per destination; a port forward could still
  make one work). A failed try costs at most one ping (both sides hold the
  relayed traffic in the same 0.8 s) and backs off (60 s, 120 s, ... 15 min).
* **UDP blocked**: relayed over TCP. The agent hears no relay answer over
  UDP for 2 s and connects to the relay over TCP (on the UDP port's number);
  WireGuard's packets go through its proxy and that stream, framed. Never
  direct (no UDP), and the agent does not try.
* **HTTPS only**: relayed over TLS. TCP to the relay's port gets no answer
  (2 s), TLS on 443 does.

Times: the agents read WireGuard every second (five times a second while a
direct try runs).
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
        lines.append("Every pair connects (where UDP is blocked, over TCP or TLS).")
    off = [c for c in cells if c.ends_direct() != expected_direct(c.a, c.b)]
    if off:
        names = ", ".join(f"{LABELS[c.a]} / {LABELS[c.b]}" for c in off)
        lines.append(f"**Not ending direct as they should (or the reverse):** {names}.")
    else:
        lines.append(
            "Every pair ends direct, except symmetric against port-restricted or symmetric,"
            " and where UDP is blocked."
        )
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
