"""A small ctypes binding to libnftables' JSON API.

libnftables is the library behind the ``nft`` command: it takes a JSON
document (``{"nftables": [...]}``, the schema of libnftables-json(5)), turns it
into one netlink transaction (all of a document's commands apply, or none do),
and answers in JSON. Talking to it directly spares us a subprocess per change
and any string-built command line; it works in the network namespace of the
calling process.

Only the handful of functions we need are bound::

    nft_ctx_new(flags)                 -> struct nft_ctx *
    nft_ctx_output_set_flags(ctx, f)      (NFT_CTX_OUTPUT_JSON: answers in JSON)
    nft_ctx_buffer_output(ctx)            (output and errors go to buffers we read,
    nft_ctx_buffer_error(ctx)              never to our stdout/stderr)
    nft_run_cmd_from_buffer(ctx, text) -> 0 or an error
    nft_ctx_get_output_buffer(ctx)     -> const char * (valid until the next call)
    nft_ctx_get_error_buffer(ctx)      -> const char *
    nft_ctx_free(ctx)

A context is not thread-safe: one ``Nft`` per thread. Calls block for about a
millisecond (one netlink round trip).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
from typing import Any

LIBRARY_NAMES = ("libnftables.so.1", "nftables")
"""Tried in order: the soname Debian's libnftables1 ships, then a search."""

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4

CAP_NET_ADMIN = 12

_PROBE: dict[str, Any] = {"nftables": [{"list": {"tables": {}}}]}
"""A harmless read: nf_tables refuses every request without CAP_NET_ADMIN."""

_LOCATION = re.compile(r"^internal:\d+:\d+-\d+: ")
"""The position prefix of errors about a JSON command: it says nothing there."""

_lib_cache: ctypes.CDLL | None = None


class NftError(Exception):
    """libnftables refused a command; the message is its error text, on one line."""


def _load() -> ctypes.CDLL:
    """The library with the signatures set; raises ``OSError`` when missing."""
    global _lib_cache
    if _lib_cache is not None:
        return _lib_cache
    errors = []
    for name in LIBRARY_NAMES:
        path = name if name.startswith("lib") else ctypes.util.find_library(name)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            errors.append(str(e))
            continue
        break
    else:
        raise OSError("; ".join(errors) or "libnftables not found")
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_set_flags.restype = None
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.restype = ctypes.c_int
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    _lib_cache = lib
    return lib


def has_cap_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def one_line(text: str) -> str:
    """libnftables' multi-line error (message, command, caret) as one line."""
    lines = [_LOCATION.sub("", line.strip()) for line in text.splitlines()]
    return " | ".join(line for line in lines if line and set(line) - {"^", "~"})


class Nft:
    """One libnftables context; ``run`` takes and returns JSON documents."""

    def __init__(self) -> None:
        self._lib = _load()
        ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        if self._lib.nft_ctx_buffer_output(ctx) or self._lib.nft_ctx_buffer_error(ctx):
            self.close()
            raise NftError("cannot buffer libnftables output")

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run one JSON command document as one transaction; return the answer.

        Commands that print nothing (add, delete, flush) answer ``{}``; a list
        answers ``{"nftables": [...]}``. Raises ``NftError`` with libnftables'
        message when the command is refused (nothing of it was applied).
        """
        if self._ctx is None:
            raise NftError("libnftables context already closed")
        text = json.dumps(cmd).encode()
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text)
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(one_line(err) or f"libnftables failed (rc {rc}) without a message")
        if not out.strip():
            return {}
        answer = json.loads(out)
        if not isinstance(answer, dict):
            raise NftError(f"unexpected libnftables answer: {out[:200]}")
        return answer


def available() -> str | None:
    """None when libnftables can be used here, else why not (one line)."""
    try:
        nft = Nft()
    except OSError as e:
        return f"libnftables is not installed ({e}); install the libnftables1 package"
    except NftError as e:
        return f"libnftables does not work: {e}"
    with nft:
        # Asked without the capability, libnftables also prints to our stderr.
        if not has_cap_net_admin():
            return "not permitted: nftables needs CAP_NET_ADMIN (run as root)"
        try:
            nft.run(_PROBE)
        except NftError as e:
            return f"nftables refused a listing: {e}"
    return None
