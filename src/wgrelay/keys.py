"""Keys: WireGuard peer keys (X25519) and relay identity keys (Ed25519).

A *peer* is its WireGuard public key. Strings parse and print exactly like
``wg genkey`` / ``wg pubkey``: standard base64 of 32 bytes, 44 characters with one
``=`` of padding. Private keys are clamped the way ``wg genkey`` clamps them.

A *relay* has its own long-term Ed25519 key, so that its announcements can be
signed and verified by anyone who knows its public key. Its X25519 key for the
encrypted control channel is derived from the Ed25519 key with libsodium's
``crypto_sign_ed25519_{pk,sk}_to_curve25519`` (no home-made conversion).

Both kinds are 32 bytes in the same base64 form, so a relay key file is marked
by a header line above the Ed25519 seed::

    # wgrelay relay identity (Ed25519 seed); public key <base64 Ed25519 key>
    <base64 seed>

Without the mark, ``wgrelay keygen > relay.key`` (the ``wg genkey`` habit) gave
a file that ``start-relay`` ran as a relay identity while ``wgrelay pubkey``
printed its X25519 public key: a relay nobody could reach by the key they were
given. So: ``pubkey`` reads the header and prints the relay identity;
``start-relay`` refuses a headerless key with WireGuard's clamping (what
``wg genkey`` and ``wgrelay keygen`` produce); a headerless seed without it is
a relay key written by wgrelay 0.1 and still accepted. Peer keys never get a
header: they stay byte-for-byte what ``wg`` reads and writes.

Key files are written with mode 0600 and refused when group or others can read
them, or when they belong to another user, because a leaked relay or peer key
lets anyone impersonate it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
import nacl.signing

from wgrelay.errors import InvalidKey
from wgrelay.state import check_owner

log = logging.getLogger(__name__)

KEY_LEN = 32
KEY_B64_LEN = 44
RELAY_KEY_MARK = "# wgrelay relay identity"
"""The start of the header line of a relay key file (enough to mark one by hand)."""
MAKE_RELAY_KEY_HINT = "make one with: wgrelay keygen --relay --out FILE"


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


@dataclass(frozen=True, slots=True)
class KeyText:
    """A key as read from a file or stdin, and whether it was marked as a relay's."""

    raw: bytes
    relay: bool


def parse_key_text(text: str, what: str = "key") -> KeyText:
    """A bare key (exactly as wg reads it) or our relay header line and a seed."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if not lines or not lines[0].startswith("#"):
        return KeyText(decode_key(text, what), relay=False)
    header = lines[0]
    if not header.startswith(RELAY_KEY_MARK):
        raise InvalidKey(f"{what}: unexpected comment line {header[:40]!r}")
    if len(lines) != 2:
        raise InvalidKey(f"{what}: expected the header line and one key line")
    raw = decode_key(lines[1], what)
    _, sep, claimed = header.partition("public key ")
    if sep:
        actual = RelayIdentity.from_seed(raw).public
        if claimed.strip() != str(actual):
            raise InvalidKey(
                f"{what}: the header names public key {claimed.strip()} but the seed gives"
                f" {actual}; the file was edited or mixed up"
            )
    return KeyText(raw, relay=True)


def looks_like_wireguard_key(raw: bytes) -> bool:
    """WireGuard's clamping, as ``wg genkey`` writes it (1 random seed in 32 has it too)."""
    return raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40


def relay_seed(key: KeyText, what: str = "relay key") -> bytes:
    """The relay seed in ``key``, refusing what is really a WireGuard private key."""
    if not key.relay and looks_like_wireguard_key(key.raw):
        raise InvalidKey(
            f"{what} is a WireGuard private key (wg genkey, wgrelay keygen), not a relay key;"
            f" {MAKE_RELAY_KEY_HINT} (a wgrelay 0.1 relay key: add the line"
            f" '{RELAY_KEY_MARK}' above it)"
        )
    return key.raw


def relay_key_text(ident: RelayIdentity) -> str:
    """A relay key file's content: the header line, then the seed."""
    return f"{RELAY_KEY_MARK} (Ed25519 seed); public key {ident.public}\n{encode_key(ident.seed)}\n"


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


def load_key_file(path: Path, what: str = "key file") -> KeyText:
    """Read a key file, refusing group/other-readable files and other users' files."""
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
    check_owner(path, st, what)  # whoever owns it can swap the key under us
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise InvalidKey(f"{what} {path} is not base64 text") from None
    except OSError as e:
        raise InvalidKey(f"cannot read {what} {path}: {e.strerror}") from None
    return parse_key_text(text, f"{what} {path}")


def read_key_file(path: Path, what: str = "key file") -> bytes:
    """The 32 bytes of a key file (a peer key, or a relay seed with its header)."""
    return load_key_file(path, what).raw


def write_key_file(path: Path, raw: bytes, text: str | None = None) -> None:
    """Write a key atomically with mode 0600 (never briefly world-readable).

    ``text`` replaces the bare base64 line (a relay key with its header).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (text if text is not None else encode_key(raw) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_relay_key_file(path: Path, ident: RelayIdentity) -> None:
    write_key_file(path, ident.seed, relay_key_text(ident))


def load_or_create_relay_identity(path: Path) -> tuple[RelayIdentity, bool]:
    """Load the relay key, generating it on first start. Returns (identity, created)."""
    what = "relay key file"
    if path.exists():
        key = load_key_file(path, what)
        ident = RelayIdentity.from_seed(relay_seed(key, f"{what} {path}"))
        if not key.relay:
            log.warning(
                "relay key file %s has no header line (a wgrelay 0.1 key): `wgrelay pubkey`"
                " needs --relay for it; add the line '%s' above the key to mark it",
                path,
                RELAY_KEY_MARK,
            )
        return ident, False
    ident = RelayIdentity.generate()
    try:
        write_relay_key_file(path, ident)
    except OSError as e:
        raise InvalidKey(f"cannot write relay key file {path}: {e.strerror}") from None
    return ident, True
