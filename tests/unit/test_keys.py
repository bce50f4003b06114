from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool
from wgrelay.errors import InvalidKey
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
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgrelay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
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
