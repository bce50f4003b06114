"""Ownership records of testbeds, and removal of what crashed testbeds left.

Each testbed owns a directory ``<state_root>/<prefix>/`` (default root
``/run/wgrelay-testbed``, a tmpfs that a reboot empties together with every
namespace). It holds ``owner.json`` -- the PID and kernel start time of the
process that built the testbed -- next to the testbed's keys and logs.

A testbed whose owner is gone (no such PID, or the PID now belongs to a process
that started later) crashed or was killed before ``close()`` ran. For such a
prefix, and only for such a prefix, ``cleanup_stale_testbeds`` stops the
processes inside its namespaces, deletes the namespaces named ``<prefix>-*``,
removes ``/var/run/wireguard/<prefix>-*.sock`` and the directory. Namespaces that
look like ours but have no record are left alone: nothing proves they are ours.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from wgrelay.testbed.errors import TestbedError
from wgrelay.testbed.netns import delete_namespace, list_namespaces
from wgrelay.testbed.wireguard import WG_SOCKET_DIR

logger = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("/run/wgrelay-testbed")
OWNER_FILE = "owner.json"
PREFIX_RE = re.compile(r"^wr[0-9a-f]{4}$")
"""Testbed prefixes: ``wr`` + 4 hex digits, short enough for interface names."""

OWNERLESS_GRACE_S = 60.0
"""A directory without owner record younger than this may be a testbed being
created right now (the record is written just after the directory)."""


def process_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks since boot; None if no such process.

    PID plus start time identifies a process for good: a reused PID has a later
    start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields
    # after its closing parenthesis start with field 3, so starttime (field 22)
    # is the 20th of them.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    pid: int
    start_time: int

    @classmethod
    def of_current_process(cls) -> OwnerRecord:
        pid = os.getpid()
        start_time = process_start_time(pid)
        if start_time is None:  # pragma: no cover - we are running, after all
            raise RuntimeError("cannot read our own /proc entry")
        return cls(pid, start_time)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def write_owner(state_dir: Path) -> OwnerRecord:
    record = OwnerRecord.of_current_process()
    tmp = state_dir / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps({"pid": record.pid, "start_time": record.start_time}) + "\n")
    tmp.replace(state_dir / OWNER_FILE)
    return record


def read_owner(state_dir: Path) -> OwnerRecord | None:
    """The recorded owner, or None if the record is missing or unreadable."""
    try:
        data = json.loads((state_dir / OWNER_FILE).read_text())
        return OwnerRecord(int(data["pid"]), int(data["start_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_prefixed_resources(prefix: str) -> None:
    """Delete namespaces ``<prefix>-*`` (after stopping what runs inside) and
    wireguard sockets ``<prefix>-*.sock``. Only call this for a prefix we own."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"not a testbed prefix: {prefix!r}")
    for name in list_namespaces():
        if name.startswith(f"{prefix}-"):
            delete_namespace(name)
    for sock in WG_SOCKET_DIR.glob(f"{prefix}-*.sock"):
        sock.unlink(missing_ok=True)


def cleanup_stale_testbeds(state_root: Path = DEFAULT_STATE_ROOT) -> list[str]:
    """Remove the leftovers of testbeds whose owner process is gone.

    Returns the prefixes that were cleaned up. Testbeds of live processes
    (including this one) are never touched.
    """
    if not state_root.is_dir():
        return []
    cleaned = []
    for state_dir in sorted(state_root.iterdir()):
        prefix = state_dir.name
        if not state_dir.is_dir() or not PREFIX_RE.match(prefix):
            continue
        owner = read_owner(state_dir)
        if owner is None:
            try:
                age_s = time.time() - state_dir.stat().st_mtime
            except FileNotFoundError:  # its owner just closed it
                continue
            if age_s < OWNERLESS_GRACE_S:
                continue
        elif owner.alive():
            continue
        logger.warning(
            "removing leftovers of testbed %s (owner %s is gone)",
            prefix, "unknown" if owner is None else f"pid {owner.pid}",
        )  # fmt: skip
        try:
            remove_prefixed_resources(prefix)
        except TestbedError as e:
            # Keep the record so a later run can retry; don't fail the caller,
            # which usually just wants to build a fresh testbed.
            logger.warning("could not clean up testbed %s: %s", prefix, e)
            continue
        shutil.rmtree(state_dir, ignore_errors=True)
        cleaned.append(prefix)
    return cleaned
