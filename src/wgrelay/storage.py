"""SQLite files under the state directory: atomic, crash-safe, never lost.

Every store of wgrelay (relay registry, connection cache) is one SQLite file
opened through ``open_store``:

* WAL journal and ``synchronous=FULL``: a committed transaction survives
  ``kill -9`` and power loss; a transaction cut short leaves the previous state.
* Each file carries our ``application_id`` and a schema version in
  ``user_version``. A file that is not SQLite, is corrupt, belongs to something
  else or has an unknown schema is moved aside as ``NAME.broken-<time>`` (with
  ``.1``, ``.2``... when that name is taken: an earlier broken file is evidence,
  never overwritten) with a warning, and an empty store is created: the agent
  keeps running and only loses what it had learned.
* A file we may not use is **not** broken: permission denied, a read-only file
  system, a lock held by another process, a full disk. Moving such a file aside
  would throw away the operator's bootstrap relays for a ``chmod``; instead
  ``open_store`` raises ``ConfigError`` naming the file and the fix.
* Store files (and their ``-wal``/``-shm`` companions) must be plain files: a
  symlink would put the database outside the state directory, wherever the
  link points, so it is refused.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

from wgrelay.errors import ConfigError
from wgrelay.state import read_only_fs

log = logging.getLogger(__name__)

APPLICATION_ID = 0x77677231  # "wgr1": the relay registry
CACHE_APPLICATION_ID = 0x77677243  # "wgrC": a connection cache
"""Each kind of store has its own id, so one can never be opened as another."""

BUSY_TIMEOUT_S = 5.0
"""How long to wait for another process's write lock (an agent saving)."""

_COMPANIONS = ("-wal", "-shm", "-journal")
_CORRUPTION = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
"""Primary result codes meaning the file's content is unusable. Anything else
(SQLITE_CANTOPEN, _READONLY, _PERM, _BUSY, _IOERR, _FULL...) is about access
or the environment, and the file itself is fine."""


def _check(conn: sqlite3.Connection, schema_version: int, application_id: int) -> str | None:
    """Why the opened file is unusable, or None if it is ours and healthy."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and version == 0 and tables == 0:
        return None  # brand new
    if app_id != application_id:
        return f"not a wgrelay file (application_id {app_id:#x})"
    if version != schema_version:
        return f"schema version {version}, expected {schema_version}"
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        return f"integrity check failed: {result}"
    return None


def open_store(
    path: Path,
    schema: str,
    schema_version: int,
    application_id: int = APPLICATION_ID,
    *,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
) -> sqlite3.Connection:
    """Open (or create) a store; a broken file is moved aside, an inaccessible
    one is a ``ConfigError`` (module docstring)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path.parent}: {e.strerror}") from None
    for attempt in range(2):
        _check_access(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
            problem = _check(conn, schema_version, application_id)
            if problem is None:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    _apply_schema(conn, schema)
                    conn.execute(f"PRAGMA application_id={application_id}")
                    conn.execute(f"PRAGMA user_version={schema_version}")
                return conn
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            if not _is_corruption(e):
                raise ConfigError(_unusable(path, e)) from None
            problem = f"unreadable: {e}"
        else:
            conn.close()
        if attempt == 1:
            break
        _move_aside(path, problem)
    raise ConfigError(f"cannot create a usable store at {path}")


def _is_corruption(e: sqlite3.DatabaseError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPTION


def _unusable(path: Path, e: sqlite3.DatabaseError) -> str:
    name = getattr(e, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        fix = "another process holds it locked (a wgrelay agent saving?); try again"
    elif name.startswith("SQLITE_FULL"):
        fix = "the disk is full"
    else:
        fix = (
            f"the user running wgrelay needs read and write access to it and to {path.parent}"
            " (chmod 600 / chmod 700)"
        )
    return f"cannot use {path} ({e}); it was left as it is: {fix}"


def _check_access(path: Path) -> None:
    """Refuse symlinks and files we may not read and write, before SQLite sees them."""
    for p in (path, *(Path(str(path) + s) for s in _COMPANIONS)):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot use {p}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(
                f"{p} is a symbolic link; wgrelay keeps its stores as plain files in the"
                " state directory: remove the link (or move the real file there)"
            )
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{p} is not a regular file; remove it or use another --state-dir")
        try:
            os.close(os.open(p, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
        except OSError as e:
            raise ConfigError(_access_denied(p, st, e)) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite creates the file and its -wal/-shm next to it
        why = "is on a read-only file system" if read_only_fs(path.parent) else "is not writable"
        raise ConfigError(f"{path.parent} {why}, so {path.name} cannot be used; run: chmod 700 "
                          f"{path.parent} (as its owner), or use another --state-dir")  # fmt: skip


def _access_denied(p: Path, st: os.stat_result, e: OSError) -> str:
    if e.errno == errno.EROFS:
        return f"{p} is on a read-only file system; use a writable --state-dir"
    if e.errno not in (errno.EACCES, errno.EPERM):
        return f"cannot open {p}: {e.strerror}"
    me = os.geteuid()
    mode = f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"
    fix = f"chmod 600 {p}" if st.st_uid == me else f"chown {me} {p} && chmod 600 {p}"
    return f"cannot open {p} for reading and writing ({mode}); it was left as it is: run {fix}"


def _apply_schema(conn: sqlite3.Connection, schema: str) -> None:
    for statement in schema.split(";"):
        if statement.strip():
            conn.execute(statement)


def _move_aside(path: Path, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in itertools.count():
        target = path.with_name(f"{path.name}.broken-{stamp}" + (f".{n}" if n else ""))
        if any(os.path.lexists(str(target) + s) for s in ("", *_COMPANIONS)):
            continue
        try:
            # a hard link claims the name atomically (another process moving a
            # file aside in the same second gets EEXIST and takes the next one)
            os.link(path, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise ConfigError(f"cannot move broken {path} aside: {e.strerror}") from None
            _rename(path, target)  # no hard links on this file system
        else:
            _unlink(path)
        break
    log.warning("%s: %s; moved it to %s and starting an empty one", path, problem, target.name)
    for suffix in _COMPANIONS:
        src = Path(str(path) + suffix)
        if os.path.lexists(src):
            _rename(src, Path(str(target) + suffix))


def _rename(src: Path, dst: Path) -> None:
    try:
        src.replace(dst)
    except OSError as e:
        raise ConfigError(f"cannot move broken {src} aside: {e.strerror}") from None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError as e:
        raise ConfigError(f"cannot move broken {path} aside: {e.strerror}") from None
