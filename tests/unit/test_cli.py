"""The command line, run as a real subprocess: help, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest


def cli(
    *args: str, state: Path | None = None, timeout: float = 30, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if state is not None:
        env["WGRELAY_STATE_DIR"] = str(state)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "wgrelay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_help_lists_the_seed_commands_and_ours() -> None:
    out = cli("--help").stdout
    for cmd in (
        "list-relays",
        "start-relay",
        "add-bootstrap-relay",
        "configure-relay",
        "up",
        "status",
        "keygen",
        "pubkey",
        "demo",
    ):
        assert cmd in out


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("start-relay",), "choose exactly one of --open"),
        (("start-relay", "--open", "--max-connections", "0"), "positive integer"),
        (("start-relay", "--open", "--port", "70000"), "not a port"),
        (("start-relay", "--open", "--bind", "nonsense"), "not an IP address"),
        (("start-relay", "--open", "--metrics", "nowhere"), "HOST:PORT"),
        (("start-relay", "--allow-file", "/nonexistent/allow"), "cannot load allow file"),
        (("start-relay", "--open", "--allow-file", "x"), "not allowed with argument"),
        (("no-such-command",), "invalid choice"),
    ],
)
def test_bad_flags_are_one_clear_line(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    res = cli(*args, state=tmp_path)
    assert res.returncode != 0
    assert fragment in one_line_error(res)


def test_unusable_relay_key_file(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    res = cli(
        "start-relay",
        "--open",
        "--key-file",
        str(key),
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        state=tmp_path,
    )
    assert res.returncode == 1
    assert "44 base64" in one_line_error(res)
    key.chmod(0o644)
    res = cli("start-relay", "--open", "--key-file", str(key), state=tmp_path)
    assert "chmod 600" in one_line_error(res)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        res = cli(
            "start-relay", "--open", "--bind", "127.0.0.1", "--port", str(port), state=tmp_path
        )
    assert res.returncode == 1
    assert "cannot bind UDP 127.0.0.1" in one_line_error(res)


def test_add_bootstrap_relay_then_list_relays(tmp_path: Path) -> None:
    import json

    from wgrelay.keys import RelayIdentity

    key = str(RelayIdentity.generate().public)
    res = cli("add-bootstrap-relay", "203.0.113.10:51821", key, state=tmp_path)
    assert res.returncode == 0, res.stderr
    listed = cli("list-relays", "--json", state=tmp_path)
    relays = json.loads(listed.stdout)
    assert relays[0]["public_key"] == key
    assert relays[0]["endpoints"] == ["203.0.113.10:51821"]
    assert relays[0]["bootstrap"] is True
    table = cli("list-relays", state=tmp_path).stdout
    assert key in table
    assert "bootstrap" in table


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("add-bootstrap-relay", "203.0.113.10", "x"), "HOST:PORT"),
        (("add-bootstrap-relay", "203.0.113.10:51821", "notakey"), "44 base64"),
        (("up", "wgrelaynope0"), "not found"),
        (("up", "wgrelaynope0", "--relay", "203.0.113.1:1"), "ENDPOINT=PUB_KEY"),
    ],
)
def test_agent_commands_fail_with_one_line(
    tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    res = cli(*args, state=tmp_path)
    assert res.returncode == 1
    assert fragment in one_line_error(res)


def test_configure_relay_persists_per_interface_and_default(tmp_path: Path) -> None:
    from wgrelay.settings import load_settings

    assert cli("configure-relay", "--disable", "wg0", state=tmp_path).returncode == 0
    assert cli("configure-relay", "--enable", state=tmp_path).returncode == 0
    s = load_settings(tmp_path)
    assert s.relay_enabled_for("wg0") is False
    assert s.relay_enabled_for("wg1") is True
    res = cli("configure-relay", "wg0", state=tmp_path)
    assert "one of the arguments --enable --disable is required" in one_line_error(res)
    res = cli("configure-relay", "--enable", "--disable", state=tmp_path)
    assert "not allowed with argument" in one_line_error(res)


def test_broken_settings_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("[relay\nenabled = maybe\n")
    res = cli("configure-relay", "--enable", state=tmp_path)
    assert res.returncode == 1
    assert "not valid TOML" in one_line_error(res)


def test_status_without_agent_says_so(tmp_path: Path) -> None:
    import json

    cli("configure-relay", "--disable", "wg7", state=tmp_path)
    res = cli("status", "wg7", "--json", state=tmp_path)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["interfaces"][0]["agent_running"] is False
    assert doc["interfaces"][0]["relay_enabled"] is False
    assert "no agent is running for wg7" in one_line_error(res)


def test_status_reads_a_running_agents_file(tmp_path: Path) -> None:
    import json
    import os

    from wgrelay.keys import PrivateKey

    key = str(PrivateKey.generate().public_key())
    doc = {
        "interface": "wg0", "backend": "userspace", "pid": os.getpid(), "relay_enabled": True,
        "home_relay": None, "home_relay_endpoint": None, "updated": 1.0,
        "peers": [{
            "public_key": key, "path": "direct", "reason": "handshake via 198.51.100.9:51820",
            "endpoint": "198.51.100.9:51820", "direct_endpoint": "198.51.100.9:51820",
            "relay": None, "relay_endpoint": None, "latest_handshake": 1.0, "rtt_ms": 1.5,
            "rtt_source": "handshake", "rx_bytes": 2048, "tx_bytes": 4096, "since": 1.0,
            "history": [],
        }],
    }  # fmt: skip
    (tmp_path / "status-wg0.json").write_text(json.dumps(doc))
    res = cli("status", state=tmp_path)
    assert res.returncode == 0, res.stderr
    assert key[:8] in res.stdout
    assert "handshake via 198.51.100.9:51820" in res.stdout
    assert "2.0KiB/4.0KiB" in res.stdout
    out = json.loads(cli("status", "--json", state=tmp_path).stdout)
    assert out["interfaces"][0]["agent_running"] is True
    assert out["interfaces"][0]["peers"][0]["rtt_ms"] == 1.5


# ------------------------------------------------ wire limits (issue 8, finding 8)

_NINE_ANNOUNCES = tuple(a for i in range(9) for a in ("--announce", f"203.0.113.{i + 1}:51821"))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        # ConnectionResponse.idle_timeout_s is a u16
        (("--idle-timeout", "65536"), "--idle-timeout"),
        # announcements carry max_sessions as a u32
        (("--max-connections", str(2**32)), "--max-connections"),
        # ConnectionResponse carries kBps as a u32
        (("--max-bandwidth", str(2**32)), "--max-bandwidth"),
        # 17 two-byte characters: 34 UTF-8 bytes, over MAX_REGION_LEN (32)
        (("--region", "\u00e9" * 17), "--region"),
        (_NINE_ANNOUNCES, "at most 8 --announce"),
        (("--announce", "0.0.0.0:1"), "unspecified"),
        (("--announce", "[::]:51821"), "unspecified"),
        (("--announce", "224.0.0.1:51821"), "multicast"),
        (("--announce", "[ff02::1]:51821"), "multicast"),
        (("--announce", "255.255.255.255:51821"), "broadcast"),
        (("--announce", "0.1.2.3:51821"), "unspecified"),
        (("--announce", "203.0.113.1:0"), "port"),
    ],
)
def test_start_relay_refuses_what_the_wire_cannot_carry(
    tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    state = tmp_path / "state"
    # (on a build that accepts the value the relay starts and this times out)
    res = cli(
        "start-relay", "--open", "--bind", "127.0.0.1", "--port", "0", *args,
        state=state, timeout=15,
    )  # fmt: skip
    assert res.returncode == 1
    assert fragment in one_line_error(res)
    assert not state.exists()  # refused before any side effect: no state dir, no key


def test_start_relay_accepts_the_largest_values_the_wire_carries(tmp_path: Path) -> None:
    from wgrelay.relay.app import RelayOptions, check_options
    from wgrelay.relay.config import RelayConfig

    config = RelayConfig(max_connections=2**32 - 1, session_idle_timeout_s=65535)
    opts = RelayOptions(
        state_dir=tmp_path,
        open=True,
        region="\u00e9" * 16,  # exactly 32 bytes
        announce=[f"203.0.113.{i}:51821" for i in range(1, 9)],
        config=config,
    )
    announce, metrics = check_options(opts)
    assert len(announce) == 8
    assert metrics is None


# ------------------------------------------------ parsing and files (issue 8, finding 13)

ARABIC_51821 = "\u0665\u0661\u0668\u0662\u0661"  # "51821" in Arabic-Indic digits


def _relay_pub() -> str:
    from wgrelay.keys import RelayIdentity

    return str(RelayIdentity.generate().public)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("start-relay", "--open", "--bind", "127.0.0.1", "--port", "\u0660"), "not a port"),
        (("start-relay", "--open", "--max-connections", "\u0661\u0660"), "positive integer"),
        (("up", "wg0", "--keepalive", "\u0662\u0665"), "--keepalive"),
        (("up", "wg0", "--keepalive", "65536"), "--keepalive"),
        (("up", "wg0", "--direct-timeout", "nan"), "--direct-timeout"),
        (("up", "wg0", "--direct-timeout", "inf"), "--direct-timeout"),
        (("up", "wg0", "--direct-timeout", "-1"), "--direct-timeout"),
        (("up", "wg0", "--direct-timeout", "0"), "--direct-timeout"),
        (("up", "wg0", "--direct-timeout", "\u0663"), "--direct-timeout"),
        (("up", "wg0", "--direct-timeout", "1e9"), "--direct-timeout"),
        (("list-relays", "--state-dir", ""), "--state-dir"),
        (("--state-dir", "", "list-relays"), "--state-dir"),
    ],
)
def test_numbers_and_paths_are_ascii_finite_and_non_empty(
    tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "wgrelay", *args],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=tmp_path,  # where an empty --state-dir would put relays.db
        env={**os.environ, "WGRELAY_STATE_DIR": str(tmp_path / "state")},
    )
    assert res.returncode == 2
    assert fragment in one_line_error(res)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        (f"203.0.113.10:{ARABIC_51821}", "HOST:PORT"),
        ("203.0.113.10:\u00b2", "HOST:PORT"),
        ("::1:5", "[ADDR]:PORT"),
        ("2001:db8::1:51821", "[ADDR]:PORT"),
        ("0.0.0.0:51821", "unspecified"),
        ("[ff02::1]:51821", "multicast"),
    ],
)
def test_bootstrap_relay_endpoint_must_be_plain(
    tmp_path: Path, endpoint: str, fragment: str
) -> None:
    res = cli("add-bootstrap-relay", endpoint, _relay_pub(), state=tmp_path)
    assert res.returncode == 1
    assert fragment in one_line_error(res)
    res = cli("up", "wg0", "--relay", f"{endpoint}={_relay_pub()}", state=tmp_path)
    assert res.returncode == 1
    assert fragment in one_line_error(res)


def test_empty_allow_file_is_refused_at_start(tmp_path: Path) -> None:
    allow = tmp_path / "allow"
    allow.write_text("# nobody yet\n\n")
    state = tmp_path / "state"
    res = cli(
        "start-relay", "--allow-file", str(allow), "--bind", "127.0.0.1", "--port", "0",
        state=state, timeout=15,
    )  # fmt: skip
    assert res.returncode == 1
    assert "lists no keys" in one_line_error(res)
    assert not state.exists()


def test_state_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    res = cli("list-relays", state=state)
    assert res.returncode == 1
    assert f"chmod 700 {state}" in one_line_error(res)
    assert list(state.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 12345, 12345)
    res = cli("list-relays", state=state)
    assert res.returncode == 1
    assert "owned by uid 12345" in one_line_error(res)
    assert list(state.iterdir()) == []


@pytest.mark.parametrize("target", ["elsewhere.db", "missing-dir/relays.db"])
def test_symlinked_store_file_is_refused(tmp_path: Path, target: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    outside = tmp_path / target
    (state / "relays.db").symlink_to(outside)
    for args in (("list-relays",), ("add-bootstrap-relay", "203.0.113.10:51821", _relay_pub())):
        res = cli(*args, state=state)
        assert res.returncode == 1
        assert "symbolic link" in one_line_error(res)
    assert not outside.exists()
    assert sorted(p.name for p in state.iterdir()) == ["relays.db"]
