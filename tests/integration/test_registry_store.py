"""relays.db shared by real processes: bad rows, permissions, concurrent saves (issue 8, finding 9).

The CLI runs as a real subprocess. Permission cases need the kernel to say no:
as root the subprocess runs without CAP_DAC_OVERRIDE (``setpriv``), so a mode
000 or 0400 file is as unusable to it as to any user; a read-only file system
is a read-only bind mount in a private mount namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from wgrelay.discovery.registry import RegistryStore
from wgrelay.keys import RelayIdentity

BOOT_EP = "203.0.113.10:51821"


def cli(*args: str, state: Path, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "wgrelay", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
    )


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def listed(state: Path) -> dict[str, list[str]]:
    res = cli("list-relays", "--json", state=state)
    assert res.returncode == 0, res.stderr
    return {r["public_key"]: r["endpoints"] for r in json.loads(res.stdout)}


def without_dac_override() -> list[str]:
    """Run as root but subject to file modes, like any other user."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE as root")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.fixture
def state_with_bootstrap(tmp_path: Path) -> tuple[Path, str]:
    state = tmp_path / "state"
    key = str(RelayIdentity.generate().public)
    res = cli("add-bootstrap-relay", BOOT_EP, key, state=state)
    assert res.returncode == 0, res.stderr
    return state, key


def test_a_bad_row_is_named_and_skipped_by_list_relays_and_add_bootstrap_relay(
    state_with_bootstrap: tuple[Path, str],
) -> None:
    state, key = state_with_bootstrap
    db = state / "relays.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO relays VALUES ('not-a-key', '[]', 1, '', 0, NULL, NULL, NULL, NULL, NULL,"
        " NULL, 0, 0)"
    )
    conn.commit()
    conn.close()
    for args in (
        ("list-relays",),
        ("add-bootstrap-relay", "203.0.113.11:51821", str(RelayIdentity.generate().public)),
    ):
        res = cli(*args, state=state)
        assert res.returncode == 0, res.stderr
        [warning] = [ln for ln in res.stderr.splitlines() if "WARNING" in ln]
        assert str(db) in warning
        assert "row 2" in warning
        assert "'not-a-key'" in warning
        assert "44 base64" in warning
    assert len(listed(state)) == 2
    assert key in listed(state)


@pytest.mark.parametrize("mode", [0o000, 0o400])
def test_an_unreadable_or_read_only_store_fails_clearly_and_is_kept(
    state_with_bootstrap: tuple[Path, str], mode: int
) -> None:
    state, key = state_with_bootstrap
    db = state / "relays.db"
    db.chmod(mode)
    prefix = without_dac_override()
    try:
        for args in (
            ("list-relays",),
            ("add-bootstrap-relay", "203.0.113.11:51821", str(RelayIdentity.generate().public)),
        ):
            res = cli(*args, state=state, prefix=prefix)
            assert res.returncode == 1
            line = one_line_error(res)
            assert str(db) in line
            assert f"chmod 600 {db}" in line
    finally:
        db.chmod(0o600)
    assert not list(state.glob("*.broken-*"))
    assert listed(state) == {key: [BOOT_EP]}


def test_a_read_only_state_dir_fails_clearly_and_is_kept(
    state_with_bootstrap: tuple[Path, str],
) -> None:
    state, key = state_with_bootstrap
    state.chmod(0o500)
    try:
        res = cli("list-relays", state=state, prefix=without_dac_override())
    finally:
        state.chmod(0o700)
    assert res.returncode == 1
    assert str(state) in one_line_error(res)
    assert not list(state.glob("*.broken-*"))
    assert listed(state) == {key: [BOOT_EP]}


def test_a_read_only_file_system_fails_clearly_and_is_kept(
    state_with_bootstrap: tuple[Path, str],
) -> None:
    state, key = state_with_bootstrap
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("a read-only bind mount needs root and unshare")
    remount_ro = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    res = cli(
        "list-relays",
        state=state,
        prefix=[unshare, "--mount", "--propagation", "private", "sh", "-c", remount_ro,
                str(state)],
    )  # fmt: skip
    assert res.returncode == 1
    line = one_line_error(res)
    assert "read-only file system" in line
    assert str(state) in line
    assert listed(state) == {key: [BOOT_EP]}


def test_add_bootstrap_relay_while_an_agent_runs_survives_the_agents_save(
    state_with_bootstrap: tuple[Path, str],
) -> None:
    state, first = state_with_bootstrap
    # the agent: loads at start, learns while it runs, saves when it stops
    agent_store = RegistryStore(state / "relays.db")
    try:
        registry = agent_store.load()
        registry.record_rtt(registry.all()[0].key, 12.0)
        # meanwhile, from another process, the operator adds a relay
        second = str(RelayIdentity.generate().public)
        res = cli("add-bootstrap-relay", "203.0.113.20:51821", second, state=state)
        assert res.returncode == 0, res.stderr
        agent_store.save(registry)
    finally:
        agent_store.close()
    assert listed(state) == {first: [BOOT_EP], second: ["203.0.113.20:51821"]}
    res = cli("list-relays", "--json", state=state)
    rtts = {r["public_key"]: r["rtt_ms"] for r in json.loads(res.stdout)}
    assert rtts == {first: 12.0, second: None}


AGENT_LIKE_SAVER = """
import select, sys, time
from pathlib import Path
from wgrelay.discovery.registry import RegistryStore

store = RegistryStore(Path(sys.argv[1]))
registry = store.load()  # loaded once at start, like `wgrelay up`
keys = [r.key for r in registry.all()]
saves = 0
while True:
    for key in keys:
        registry.record_rtt(key, 10.0 + saves % 7)
        registry.record_success(key)
    store.save(registry)
    saves += 1
    if saves == 1:
        print("saving", flush=True)
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read():
        break  # the test closed our stdin: stop, like an agent on SIGTERM
    # pacing, not synchronisation: far more often than an agent saves, but a
    # writer in a tight loop would starve SQLite's busy handler of the others
    time.sleep(0.01)
store.save(registry)
store.close()
print(saves, flush=True)
"""


def test_agent_saving_in_a_loop_never_erases_relays_added_meanwhile(
    state_with_bootstrap: tuple[Path, str],
) -> None:
    state, first = state_with_bootstrap
    saver = subprocess.Popen(
        [sys.executable, "-c", AGENT_LIKE_SAVER, str(state / "relays.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert saver.stdout is not None
        assert saver.stdout.readline() == "saving\n"
        added = {}
        for i in range(5):
            key = str(RelayIdentity.generate().public)
            added[key] = [f"203.0.113.{30 + i}:51821"]
            res = cli("add-bootstrap-relay", added[key][0], key, state=state)
            assert res.returncode == 0, res.stderr
        out, _ = saver.communicate(input="", timeout=30)  # EOF on its stdin: stop
        assert saver.returncode == 0
        assert int(out) >= 1
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait()
    assert listed(state) == {first: [BOOT_EP], **added}
