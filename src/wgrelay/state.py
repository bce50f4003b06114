"""Where wgrelay keeps its files.

Everything a relay or an agent stores lives under one state directory, so several
of them can run side by side on one machine (network namespaces share the file
system). Order: ``--state-dir``, then ``$WGRELAY_STATE_DIR``, then
``/var/lib/wgrelay`` for root, else ``$XDG_DATA_HOME/wgrelay``
(``~/.local/share/wgrelay``).
"""

from __future__ import annotations

import os
from pathlib import Path

from wgrelay.errors import ConfigError

ENV_STATE_DIR = "WGRELAY_STATE_DIR"


def default_state_dir() -> Path:
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/wgrelay")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "wgrelay"


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory (mode 0700) or explain in one line why not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create state directory {path}: {e.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"state directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"state directory {path} is not writable")
    return path
