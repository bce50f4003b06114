"""Figures for docs/PERFORMANCE.md: contributors and free riders at a full relay.

Runs tests/sim/test_contention_sim.py's scenario (the production RelayServer
and RelayCore, production relay clients, simulated hosts and virtual time) in
a few settings and prints, per class, the sessions admitted and the bytes per
second each session delivered. Free riders (balance 0) take every slot first,
then contributors ask; every pair then offers more than its share.

    .venv/bin/python bench/contention.py
    .venv/bin/python bench/contention.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # (the tests package)

from tests.sim.test_contention_sim import Figures, Scenario, run_scenario

GB = 1_000_000_000

SETTINGS: list[tuple[str, Scenario]] = [
    ("capacity to spare (2 MB/s)", Scenario(contributors=3, riders=3, capacity=2_000_000)),
    ("over capacity, no credit anywhere", Scenario(contributor_balance=0)),
    ("over capacity, contributors 1 GB", Scenario(contributor_balance=GB)),
    ("over capacity, contributors 100 GB", Scenario()),
    ("over capacity, 100 GB, --min-share 50%", Scenario(min_share=0.5)),
    ("over capacity, 100 GB, 4 of each", Scenario(contributors=4, riders=4)),
]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def row(name: str, sc: Scenario, f: Figures) -> dict[str, object]:
    c, r = f.contributors, f.riders
    return {
        "setting": name,
        "slots": sc.max_connections,
        "capacity_Bps": sc.capacity,
        "cap_Bps": sc.cap_kbps * 1000,
        "contributors_admitted": f"{c.admitted}/{c.asked}",
        "riders_admitted": f"{r.admitted}/{r.asked}",
        "riders_displaced": r.displaced,
        "contributor_Bps_per_session": round(_mean(c.rates)),
        "rider_Bps_per_session": round(_mean(r.rates)),
        "contributors_Bps": round(c.total),
        "riders_Bps": round(r.total),
        "contended": f.stats.contention.get("contended", 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--json", action="store_true", help="one JSON object a line")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    rows = [row(name, sc, run_scenario(replace(sc, seed=args.seed))) for name, sc in SETTINGS]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(
        "8 slots unless said, --max-bandwidth 80 KB/s, --capacity 240 kB/s unless said; "
        "each pair offers 100 kB/s; bytes/s are delivered frame bytes"
    )
    head = f"{'setting':40} {'contrib':>8} {'riders':>7} {'displ':>5} "
    head += f"{'B/s/contrib':>11} {'B/s/rider':>9} {'contrib B/s':>11} {'riders B/s':>10}"
    print(head)
    for r in rows:
        print(
            f"{r['setting']!s:40} {r['contributors_admitted']!s:>8} {r['riders_admitted']!s:>7} "
            f"{r['riders_displaced']!s:>5} {r['contributor_Bps_per_session']!s:>11} "
            f"{r['rider_Bps_per_session']!s:>9} {r['contributors_Bps']!s:>11} "
            f"{r['riders_Bps']!s:>10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
