"""Where wgrelay keeps its files.

Everything a relay or an agent stores lives under one state directory, so several
of them can run side by side on one machine (network namespaces share the file
system). Order: ``--state-dir``, then ``$WGRELAY_STATE_DIR``, then
``/var/lib/wgrelay`` for root, else ``$XDG_DATA_HOME/wgrelay``
(``~/.local/share/wgrelay``).
"""

from __future__ import annotations

import os
import pwd
import stat
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
    """Create the state directory (mode 0700) or explain in one line why not.

    The directory holds the relay key and the operator's relays; whoever can
    write to it can swap them (or plant a symlink a store would follow). So it
    must belong to us (or root) and not be writable by group or others.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create state directory {path}: {e.strerror}") from None
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"cannot use state directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state directory {path} is not a directory")
    check_owner(path, st, "state directory")
    if st.st_mode & 0o022:
        raise ConfigError(
            f"state directory {path} is writable by group/others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {path}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        if read_only_fs(path):
            raise ConfigError(
                f"state directory {path} is on a read-only file system; use a writable --state-dir"
            )
        raise ConfigError(
            f"state directory {path} is not writable; run: chmod 700 {path} (as its owner)"
        )
    return path


def read_only_fs(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only (EROFS on writes)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_owner(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a file or directory of another user (root's is fine, like OpenSSH)."""
    me = os.geteuid()
    if st.st_uid in (me, 0):
        return
    raise ConfigError(
        f"{what} {path} is owned by uid {st.st_uid}, not by uid {me} running wgrelay; "
        f"run: chown {_user_name(me)} {path}"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
