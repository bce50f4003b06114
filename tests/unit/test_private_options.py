"""`wgrelay up --private` / `--private-peer KEY`, on the command line and in
the TOML file: what reaches the planner, and bad keys as one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_cli import cli, one_line_error
from tests.unit.test_config_file import parse
from wgrelay import cli as wgrelay_cli
from wgrelay.keys import PrivateKey


def test_flags_reach_the_planner_config() -> None:
    k1, k2 = (PrivateKey.generate().public_key() for _ in range(2))
    args = parse(["up", "wg0", "--private-peer", str(k1), "--private-peer", str(k2)])
    private = wgrelay_cli.agent_options(args).plan_config.private
    assert (private.all_peers, private.peers) == (False, frozenset({k1, k2}))
    assert private.covers(k1)
    assert not private.covers(PrivateKey.generate().public_key())
    everyone = wgrelay_cli.agent_options(parse(["up", "wg0", "--private"])).plan_config.private
    assert everyone.all_peers
    assert everyone.covers(PrivateKey.generate().public_key())
    off = wgrelay_cli.agent_options(parse(["up", "wg0"])).plan_config.private
    assert not off.enabled


def test_the_toml_file_says_the_same(tmp_path: Path) -> None:
    key = PrivateKey.generate().public_key()
    args = parse(["up", "wg0"], tmp_path, f'private = true\nprivate-peer = ["{key}"]\n')
    private = wgrelay_cli.agent_options(args).plan_config.private
    assert (private.all_peers, private.peers) == (True, frozenset({key}))


@pytest.mark.parametrize("bad", ["nope", "A" * 43, "!" * 43 + "="])
def test_a_bad_peer_key_is_one_line(tmp_path: Path, bad: str) -> None:
    res = cli("up", "wg0", "--private-peer", bad, state=tmp_path)
    assert res.returncode == 1
    assert "--private-peer" in one_line_error(res)
