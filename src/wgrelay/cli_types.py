"""Argument types for the command line: each turns one option's text into a
value or raises ``argparse.ArgumentTypeError`` with one clear line, so bad
input never reaches a command (and never as a traceback)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from wgrelay.keys import PublicKey

if TYPE_CHECKING:
    from wgrelay.relay.budget import Budget


def relay_arg(text: str) -> tuple[tuple[str, int], PublicKey]:
    from wgrelay.relay.app import parse_relay_spec

    return parse_relay_spec(text, "--relay")


def relay_key(text: str) -> PublicKey:
    """A relay's public key: 44 base64 chars that are also a valid Ed25519 point
    (a WireGuard key pasted by mistake almost never is)."""
    from wgrelay.keys import relay_x25519_public

    key = PublicKey.from_base64(text, "relay key")
    relay_x25519_public(key)
    return key


def ascii_int(text: str) -> int | None:
    """A decimal integer in ASCII digits, else None.

    ``str.isdigit()`` and ``int()`` also take other scripts' digits (U+0665,
    ARABIC-INDIC DIGIT FIVE) and superscripts; a port or a limit typed that way
    is a mistake, not a number.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    return int(text)


def port(text: str) -> int:
    n = ascii_int(text)
    if n is None or n > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 picks a free one)")
    return n


def port_range(text: str) -> tuple[int, int] | None:
    """``LOW-HIGH`` (inclusive, two ports or more), or ``off``: None."""
    if text == "off":
        return None
    lo_text, sep, hi_text = text.partition("-")
    lo, hi = ascii_int(lo_text), ascii_int(hi_text)
    if not sep or lo is None or hi is None or not 1 <= lo < hi <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port range (LOW-HIGH within 1-65535, or off)"
        )
    return lo, hi


def port_or_off(text: str) -> int:
    """A port number, or ``off``: 0."""
    return 0 if text == "off" else port(text)


def positive(text: str) -> int:
    n = ascii_int(text)
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def non_negative(text: str) -> int:
    n = ascii_int(text)
    if n is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return n


def keepalive(text: str) -> int:
    n = ascii_int(text)
    if n is None or n > 65535:  # WireGuard's persistent keepalive is a u16
        raise argparse.ArgumentTypeError(f"{text!r} is not 0-65535 seconds")
    return n


_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
MAX_DIRECT_TIMEOUT_S = 300.0


def direct_timeout(text: str) -> float:
    # a plain decimal: float() would also take "nan", "inf", "1e9" and U+0663
    if not _SECONDS.fullmatch(text) or not 0.1 <= float(text) <= MAX_DIRECT_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0.1 to {MAX_DIRECT_TIMEOUT_S:g} seconds")
    return float(text)


def speed(text: str) -> float:
    if not _SECONDS.fullmatch(text) or float(text) > 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a speed factor from 0 to 1000")
    return float(text)


def state_dir(text: str) -> Path:
    # Path("") is the current directory: a typo or an empty variable, not a choice
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text)


def budget(text: str) -> Budget:
    """``SIZE/PERIOD``, a relay's byte budget (relay/budget.py)."""
    from wgrelay.relay.budget import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def region(text: str) -> str:
    """A region label as relays announce it (at most 32 bytes of UTF-8)."""
    from wgrelay.proto.constants import MAX_REGION_LEN

    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid UTF-8") from None
    if n > MAX_REGION_LEN:
        raise argparse.ArgumentTypeError(
            f"{text!r} is {n} bytes; a region is at most {MAX_REGION_LEN}"
        )
    return text
