from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool
from wgrelay.errors import ConfigError, InvalidKey
from wgrelay.keys import (
    PrivateKey,
    PublicKey,
    RelayIdentity,
    decode_key,
    load_or_create_relay_identity,
    read_key_file,
    relay_x25519_public,
    verify_signature,
    write_key_file,
)


def wg(*args: str, stdin: str | None = None) -> str:
    exe = require_tool("wg")
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_our_pubkey_matches_wg_pubkey_for_wg_generated_keys() -> None:
    for _ in range(20):
        priv = wg("genkey")
        assert str(PrivateKey.from_base64(priv).public_key()) == wg("pubkey", stdin=priv + "\n")


def test_wg_accepts_our_generated_keys_and_agrees_on_pubkey() -> None:
    for _ in range(20):
        key = PrivateKey.generate()
        assert wg("pubkey", stdin=f"{key}\n") == str(key.public_key())


def test_generated_keys_are_clamped_like_wg_genkey() -> None:
    raw = PrivateKey.generate().raw
    assert raw[0] & 7 == 0
    assert raw[31] & 0x80 == 0
    assert raw[31] & 0x40 == 0x40


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "44 base64"),
        ("abc", "44 base64"),
        ("!" * 43 + "=", "not valid base64"),
        ("A" * 44, "44 base64"),
        ("AAAA" * 10 + "AA==", "32 bytes"),
    ],
)
def test_decode_key_rejects_bad_strings(text: str, fragment: str) -> None:
    with pytest.raises(InvalidKey, match=fragment):
        decode_key(text)


def test_key_strings_round_trip() -> None:
    key = PrivateKey.generate().public_key()
    assert PublicKey.from_base64(str(key)) == key
    assert len(str(key)) == 44


def test_key_file_written_0600_and_read_back(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "sub" / "peer.key"
    write_key_file(path, key.raw)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path) == key.raw


def test_key_file_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    write_key_file(path, PrivateKey.generate().raw)
    path.chmod(0o644)
    with pytest.raises(InvalidKey, match="chmod 600"):
        read_key_file(path)


def test_key_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InvalidKey, match="does not exist"):
        read_key_file(tmp_path / "missing")
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(InvalidKey, match="44 base64"):
        read_key_file(bad)
    short = tmp_path / "short.key"
    short.write_text("AAAA" * 10 + "AA==\n")
    short.chmod(0o600)
    with pytest.raises(InvalidKey, match="32 bytes"):
        read_key_file(short)


def test_relay_identity_generated_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    first, created = load_or_create_relay_identity(path)
    assert created
    assert path.stat().st_mode & 0o777 == 0o600
    second, created_again = load_or_create_relay_identity(path)
    assert not created_again
    assert second.public == first.public


def test_relay_identity_signs_and_derives_x25519() -> None:
    ident = RelayIdentity.generate()
    sig = ident.sign(b"hello")
    assert verify_signature(ident.public, b"hello", sig)
    assert not verify_signature(ident.public, b"hellp", sig)
    assert relay_x25519_public(ident.public) == ident.x25519_public
    assert "seed" not in repr(ident)
    assert str(ident.seed) not in repr(ident)


def _cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgrelay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_cli_keygen_and_pubkey_match_wg(tmp_path: Path) -> None:
    out = _cli("keygen")
    assert out.returncode == 0
    priv = out.stdout.strip()
    assert wg("pubkey", stdin=priv + "\n") == _cli("pubkey", stdin=priv + "\n").stdout.strip()
    keyfile = tmp_path / "k"
    res = _cli("keygen", "--out", str(keyfile))
    assert res.returncode == 0
    assert keyfile.stat().st_mode & 0o777 == 0o600
    assert _cli("pubkey", "--key-file", str(keyfile)).stdout.strip() == res.stdout.strip()


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    res = _cli("pubkey", stdin="garbage\n")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("wgrelay: error:")
    loose = tmp_path / "loose.key"
    write_key_file(loose, PrivateKey.generate().raw)
    loose.chmod(0o644)
    res = _cli("pubkey", "--key-file", str(loose))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "chmod 600" in res.stderr


def test_cli_relay_keygen_prints_ed25519_public(tmp_path: Path) -> None:
    keyfile = tmp_path / "relay.key"
    res = _cli("keygen", "--relay", "--out", str(keyfile))
    assert res.returncode == 0
    ident = RelayIdentity.from_seed(read_key_file(keyfile))
    assert res.stdout.strip() == str(ident.public)


# ------------------------------------------------ relay identity trap (issue 8, finding 10)


def _clamped_looking(raw: bytes) -> bool:
    return raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40


def _seed_not_like_wg() -> bytes:
    """A random 32-byte seed that does not carry WireGuard's clamping (31 in 32 do)."""
    while True:
        seed = os.urandom(32)
        if not _clamped_looking(seed):
            return seed


def _write_600(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_relay_key_file_has_a_header_and_pubkey_reads_it_as_a_relay(tmp_path: Path) -> None:
    keyfile = tmp_path / "relay.key"
    res = _cli("keygen", "--relay", "--out", str(keyfile))
    assert res.returncode == 0, res.stderr
    public = res.stdout.strip()
    header, seed_line = keyfile.read_text().splitlines()
    assert header == f"# wgrelay relay identity (Ed25519 seed); public key {public}"
    assert str(RelayIdentity.from_seed(decode_key(seed_line)).public) == public
    # no --relay needed: the header says what the key is
    assert _cli("pubkey", "--key-file", str(keyfile)).stdout == public + "\n"
    assert _cli("pubkey", stdin=keyfile.read_text()).stdout == public + "\n"
    assert _cli("pubkey", "--relay", stdin=keyfile.read_text()).stdout == public + "\n"


def test_first_start_writes_the_header_too(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    ident, created = load_or_create_relay_identity(path)
    assert created
    assert path.read_text().splitlines()[0].endswith(f"public key {ident.public}")
    assert _cli("pubkey", "--key-file", str(path)).stdout.strip() == str(ident.public)


def test_keygen_relay_on_stdout_round_trips_through_pubkey_and_start(tmp_path: Path) -> None:
    out = _cli("keygen", "--relay")
    assert out.returncode == 0
    piped = _cli("pubkey", stdin=out.stdout)
    assert piped.returncode == 0, piped.stderr
    keyfile = _write_600(tmp_path / "relay.key", out.stdout)  # wgrelay keygen --relay > relay.key
    ident, created = load_or_create_relay_identity(keyfile)
    assert not created
    assert piped.stdout.strip() == str(ident.public)


@pytest.mark.parametrize("maker", ["wgrelay keygen", "wg genkey"])
def test_start_relay_refuses_a_wireguard_private_key(tmp_path: Path, maker: str) -> None:
    peer_key = _cli("keygen").stdout if maker == "wgrelay keygen" else wg("genkey") + "\n"
    keyfile = _write_600(tmp_path / "relay.key", peer_key)  # the `wg genkey > key` habit
    with pytest.raises(InvalidKey, match="wgrelay keygen --relay --out FILE"):
        load_or_create_relay_identity(keyfile)
    res = _cli(
        "start-relay", "--open", "--bind", "127.0.0.1", "--port", "0", "--key-file", str(keyfile),
        env={"WGRELAY_STATE_DIR": str(tmp_path / "state")},
        timeout=15,
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert "make one with: wgrelay keygen --relay --out FILE" in res.stderr
    # pubkey --relay says the same instead of printing an identity no relay will have
    res = _cli("pubkey", "--relay", "--key-file", str(keyfile))
    assert res.returncode == 1
    assert "wgrelay keygen --relay --out FILE" in res.stderr
    assert keyfile.read_text() == peer_key  # never rewritten


def test_a_headerless_relay_key_of_wgrelay_0_1_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed = _seed_not_like_wg()
    keyfile = tmp_path / "relay.key"
    write_key_file(keyfile, seed)  # 0.1 wrote the bare seed
    with caplog.at_level(logging.WARNING):
        ident, created = load_or_create_relay_identity(keyfile)
    assert not created
    assert ident.public == RelayIdentity.from_seed(seed).public
    assert "# wgrelay relay identity" in caplog.text  # tells how to mark it
    assert _cli("pubkey", "--relay", "--key-file", str(keyfile)).stdout.strip() == str(ident.public)
    assert keyfile.read_text() == str(PublicKey(seed)) + "\n"  # left as it was


def test_a_header_that_names_another_public_key_is_refused(tmp_path: Path) -> None:
    other = RelayIdentity.generate().public
    seed = RelayIdentity.generate().seed
    keyfile = _write_600(
        tmp_path / "relay.key",
        f"# wgrelay relay identity (Ed25519 seed); public key {other}\n{PublicKey(seed)}\n",
    )
    with pytest.raises(InvalidKey, match="header"):
        load_or_create_relay_identity(keyfile)


@pytest.mark.parametrize(
    "text",
    [
        "# some other comment\n{key}\n",
        "# wgrelay relay identity\n{key}\n{key}\n",
        "{key}\n# wgrelay relay identity\n",
        "# wgrelay relay identity\n",
    ],
)
def test_key_text_is_a_key_and_at_most_our_header(tmp_path: Path, text: str) -> None:
    keyfile = _write_600(tmp_path / "k", text.format(key=PublicKey(_seed_not_like_wg())))
    with pytest.raises(InvalidKey):
        read_key_file(keyfile)


def test_plain_peer_keys_stay_byte_identical_to_wg(tmp_path: Path) -> None:
    out = _cli("keygen")
    assert len(out.stdout) == 45
    assert out.stdout.endswith("=\n")
    ours = _cli("pubkey", stdin=out.stdout)
    theirs = subprocess.run(
        [require_tool("wg"), "pubkey"], input=out.stdout, capture_output=True, text=True
    )
    assert ours.stdout == theirs.stdout
    keyfile = tmp_path / "peer.key"
    res = _cli("keygen", "--out", str(keyfile))
    assert keyfile.read_text() == decode_key_file_text(keyfile) + "\n"  # no header for wg
    assert wg("pubkey", stdin=keyfile.read_text()) == res.stdout.strip()


def decode_key_file_text(path: Path) -> str:
    return str(PublicKey(read_key_file(path)))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_key_file_of_another_user_is_refused(tmp_path: Path) -> None:
    keyfile = tmp_path / "peer.key"
    write_key_file(keyfile, PrivateKey.generate().raw)
    os.chown(keyfile, 12345, 12345)
    with pytest.raises(ConfigError, match="owned by uid 12345"):
        read_key_file(keyfile)
    res = _cli("pubkey", "--key-file", str(keyfile))
    assert res.returncode == 1
    assert f"chown root {keyfile}" in res.stderr
    os.chown(keyfile, 0, 0)  # root's own (or root's, for a user) is fine
    assert read_key_file(keyfile)
