"""Relays that know each other, as real processes on 127.0.0.1 (issue 10).

Five relay processes, each started with ``--bootstrap`` of only the previous
one (a chain). A state directory that knows only relay 1 asks with
``wgrelay list-relays --refresh --json`` and must list all five within three
anti-entropy intervals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.relays import RelayProcess, start_relay_process
from tests.integration.test_relay_abuse import free_tcp_port, scrape
from wgrelay.relay.federation import FederationConfig
from wgrelay.relay.peers_store import SAVE_INTERVAL_S

pytestmark = pytest.mark.timeout(120)

SYNC_INTERVAL_S = FederationConfig().sync_interval_s


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgrelay", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_chain_of_five_relays_is_listed_whole_from_the_first(tmp_path: Path) -> None:
    relays: list[RelayProcess] = []
    metrics_port = free_tcp_port()
    try:
        for i in range(5):
            port = free_udp_port()
            args = ["--open", "--announce", f"127.0.0.1:{port}"]
            if i == 0:
                args += ["--metrics", f"127.0.0.1:{metrics_port}"]
            if relays:
                prev = relays[-1]
                args += ["--bootstrap", f"127.0.0.1:{prev.endpoint[1]}={prev.key}"]
            relays.append(start_relay_process(tmp_path / f"relay{i}", *args, port=port))
        started = time.monotonic()
        state = tmp_path / "agent"
        state.mkdir(mode=0o700)
        first = relays[0]
        res = cli(state, "add-bootstrap-relay", f"127.0.0.1:{first.endpoint[1]}", str(first.key))
        assert res.returncode == 0, res.stderr
        want = {str(r.key) for r in relays}
        listed: set[str] = set()
        while listed != want:
            assert time.monotonic() - started < 3 * SYNC_INTERVAL_S, (listed, want)
            res = cli(state, "list-relays", "--refresh", "--json")
            assert res.returncode == 0, res.stderr
            listed = {r["public_key"] for r in json.loads(res.stdout)}
        took = time.monotonic() - started
        print(f"all five listed {took:.1f} s after the last relay started")
        # the first relay's metrics say so too, and count what it learned
        m = scrape(metrics_port)
        assert m['wgrelay_federation_relays{state="live"}'] == 5
        events = 'wgrelay_federation_events_total{event="%s"}'
        assert m[events % "announcement_new"] > 0  # what it learned of the others
        assert m[events % "sent_Ping"] > 0  # and it checks they live
        # the relays remember what they learned: relay 5 restarts knowing them
        last = relays[-1]
        assert last.stop(signal.SIGTERM) == 0
        db = tmp_path / "relay4" / "relays.db"
        assert db.exists()
    finally:
        for r in relays:
            r.stop()
        for r in relays:
            assert "Traceback" not in r.log.read_text(), r.log.read_text()[-2000:]
    assert os.path.getsize(db) > 0


def test_what_a_relay_learned_survives_kill_9(tmp_path: Path) -> None:
    """Relays b and c both start with a as their bootstrap relay; b learns of
    c from the federation alone. b's relays.db holds c within seconds, while
    b runs (it used to be saved only at a clean exit: the periodic save ran
    in a thread the SQLite connection does not belong to, and failed), and
    still after ``kill -9``."""
    relays: list[RelayProcess] = []
    try:
        for name in ("a", "b", "c"):
            port = free_udp_port()
            args = ["--open", "--announce", f"127.0.0.1:{port}"]
            if relays:
                a = relays[0]
                args += ["--bootstrap", f"127.0.0.1:{a.endpoint[1]}={a.key}"]
            relays.append(start_relay_process(tmp_path / name, *args, port=port))
        b, c = relays[1], relays[2]
        deadline = time.monotonic() + 3 * SYNC_INTERVAL_S + SAVE_INTERVAL_S
        known: set[str] = set()
        while str(c.key) not in known:
            assert time.monotonic() < deadline, known
            res = cli(tmp_path / "b", "list-relays", "--json")
            assert res.returncode == 0, res.stderr
            known = {r["public_key"] for r in json.loads(res.stdout)}
        assert b.stop(signal.SIGKILL) == -signal.SIGKILL
        res = cli(tmp_path / "b", "list-relays", "--json")
        assert res.returncode == 0, res.stderr
        assert str(c.key) in {r["public_key"] for r in json.loads(res.stdout)}
    finally:
        for r in relays:
            r.stop()
        for r in relays:
            assert "Traceback" not in r.log.read_text(), r.log.read_text()[-2000:]


def test_list_relays_of_one_region(tmp_path: Path) -> None:
    """``list-relays --refresh --region eu``: the relays filter their answer,
    and only the relays of that region are listed."""
    relays: list[RelayProcess] = []
    try:
        for i, region in enumerate(("eu", "us", "eu")):
            port = free_udp_port()
            args = ["--open", "--announce", f"127.0.0.1:{port}", "--region", region]
            if relays:
                prev = relays[-1]
                args += ["--bootstrap", f"127.0.0.1:{prev.endpoint[1]}={prev.key}"]
            relays.append(start_relay_process(tmp_path / f"relay{i}", *args, port=port))
        state = tmp_path / "agent"
        state.mkdir(mode=0o700)
        first = relays[0]
        res = cli(state, "add-bootstrap-relay", f"127.0.0.1:{first.endpoint[1]}", str(first.key))
        assert res.returncode == 0, res.stderr
        want = {str(relays[0].key), str(relays[2].key)}
        deadline = time.monotonic() + 3 * SYNC_INTERVAL_S
        listed: list[dict[str, object]] = []
        while {r["public_key"] for r in listed} != want:
            assert time.monotonic() < deadline, listed
            res = cli(state, "list-relays", "--refresh", "--region", "eu", "--json")
            assert res.returncode == 0, res.stderr
            listed = json.loads(res.stdout)
        assert all(r["region"] == "eu" for r in listed)
        # the relay of the other region was never asked for: not even stored
        res = cli(state, "list-relays", "--json")
        assert str(relays[1].key) not in {r["public_key"] for r in json.loads(res.stdout)}
        res = cli(state, "list-relays", "--region", "x" * 33)
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1
        assert "at most 32" in res.stderr
    finally:
        for r in relays:
            r.stop()
