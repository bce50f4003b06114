"""What a host needs before the testbed (and so the root demo) can run."""

from __future__ import annotations

import os
import shutil

TOOLS = ("ip", "nft", "wg", "wireguard-go", "conntrack", "ping")


def missing_prerequisite() -> str | None:
    """The first thing missing, as "needs ...", or None when all is there."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None
