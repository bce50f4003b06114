"""Keys: WireGuard peer keys (X25519) and relay identity keys (Ed25519).

A *peer* is its WireGuard public key. Strings parse and print exactly like
``wg genkey`` / ``wg pubkey``: standard base64 of 32 bytes, 44 characters with one
``=`` of padding. Private keys are clamped the way ``wg genkey`` clamps them.

A *relay* has its own long-term Ed25519 key, so that its announcements can be
signed and verified by anyone who knows its public key. Its X25519 key for the
encrypted control channel is derived from the Ed25519 key with libsodium's
``crypto_sign_ed25519_{pk,sk}_to_curve25519`` (no home-made conversion). Relay
key files hold the 32-byte Ed25519 seed in the same base64 form as a WireGuard
key, so every key file of the project looks and is handled alike.

Key files are written with mode 0600 and refused when group or others can read
them, because a leaked relay or peer key lets anyone impersonate it.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
import nacl.signing

from wgrelay.errors import InvalidKey

KEY_LEN = 32
KEY_B64_LEN = 44


def decode_key(text: str, what: str = "key") -> bytes:
    """Parse a base64 key exactly as wg(8) does: 44 chars, 32 bytes."""
    text = text.strip()
    if len(text) != KEY_B64_LEN or not text.endswith("="):
        raise InvalidKey(f"{what} must be 44 base64 characters ending in '=' (got {len(text)})")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"{what} is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise InvalidKey(f"{what} must decode to 32 bytes (got {len(raw)})")
    return raw


def encode_key(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise ValueError("keys are 32 bytes")
    return base64.b64encode(raw).decode("ascii")


def clamp(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A 32-byte public key (X25519 for peers, Ed25519 for relays)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise InvalidKey("public keys are 32 bytes")

    @classmethod
    def from_base64(cls, text: str, what: str = "public key") -> PublicKey:
        return cls(decode_key(text, what))

    def __str__(self) -> str:
        return encode_key(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({encode_key(self.raw)})"

    def short(self) -> str:
        """First characters of the base64 form, for logs and tables."""
        return encode_key(self.raw)[:8]


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A WireGuard (X25519) private key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise InvalidKey("private keys are 32 bytes")

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(clamp(os.urandom(KEY_LEN)))

    @classmethod
    def from_base64(cls, text: str, what: str = "private key") -> PrivateKey:
        return cls(decode_key(text, what))

    def public_key(self) -> PublicKey:
        # scalarmult_base clamps internally, exactly like wg pubkey does.
        return PublicKey(sodium.crypto_scalarmult_base(self.raw))

    def __str__(self) -> str:
        return encode_key(self.raw)

    def __repr__(self) -> str:  # never print secrets by accident
        return f"PrivateKey(public={self.public_key()})"


@dataclass(frozen=True, slots=True)
class RelayIdentity:
    """A relay's long-term key: Ed25519 for signatures, X25519 derived for DH."""

    seed: bytes
    signing_key: nacl.signing.SigningKey
    public: PublicKey
    x25519_private: bytes
    x25519_public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> RelayIdentity:
        if len(seed) != KEY_LEN:
            raise InvalidKey("relay key seeds are 32 bytes")
        sk = nacl.signing.SigningKey(seed)
        vk = sk.verify_key
        return cls(
            seed=seed,
            signing_key=sk,
            public=PublicKey(bytes(vk)),
            x25519_private=bytes(sk.to_curve25519_private_key()),
            x25519_public=bytes(vk.to_curve25519_public_key()),
        )

    @classmethod
    def generate(cls) -> RelayIdentity:
        return cls.from_seed(os.urandom(KEY_LEN))

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signing_key.sign(message).signature)

    def __str__(self) -> str:
        return encode_key(self.seed)

    def __repr__(self) -> str:
        return f"RelayIdentity(public={self.public})"


def relay_x25519_public(relay_key: PublicKey) -> bytes:
    """The X25519 key a relay uses for the control channel, from its Ed25519 key."""
    try:
        return bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(relay_key.raw))
    except Exception:
        raise InvalidKey(f"{relay_key} is not a valid relay (Ed25519) public key") from None


def verify_signature(relay_key: PublicKey, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(relay_key.raw).verify(message, signature)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- key files


def read_key_file(path: Path, what: str = "key file") -> bytes:
    """Read a base64 key file, refusing group/other-readable files."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidKey(f"{what} {path} does not exist") from None
    except OSError as e:
        raise InvalidKey(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidKey(f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise InvalidKey(
            f"{what} {path} is accessible by group/others (mode {st.st_mode & 0o777:04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise InvalidKey(f"{what} {path} is not base64 text") from None
    except OSError as e:
        raise InvalidKey(f"cannot read {what} {path}: {e.strerror}") from None
    return decode_key(text, f"{what} {path}")


def write_key_file(path: Path, raw: bytes) -> None:
    """Write a key atomically with mode 0600 (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (encode_key(raw) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_relay_identity(path: Path) -> tuple[RelayIdentity, bool]:
    """Load the relay key, generating it on first start. Returns (identity, created)."""
    if path.exists():
        return RelayIdentity.from_seed(read_key_file(path, "relay key file")), False
    ident = RelayIdentity.generate()
    try:
        write_key_file(path, ident.seed)
    except OSError as e:
        raise InvalidKey(f"cannot write relay key file {path}: {e.strerror}") from None
    return ident, True
