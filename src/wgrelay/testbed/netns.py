"""Network namespaces, and the commands and processes we run inside them.

Every command goes through ``run_command`` so that a failure always raises an
exception naming the command and quoting its stderr. Long-running processes are
started with ``Namespace.popen``: the namespace keeps the ``Popen`` so teardown
can stop each one by its PID (SIGTERM, a grace period, then SIGKILL), and their
output goes to a log file, never to a pipe that nobody drains (a full pipe would
silently freeze the process).

``ip netns exec`` execs the command in place, so the PID of the ``Popen`` is the
PID of the program itself, not of a wrapper.

Deleting a namespace with ``ip netns del`` only removes its name: the namespace
(and every interface in it) lives on while any process still runs inside. So a
namespace is emptied, by PID, before it is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from wgrelay.testbed.errors import CommandFailed, CommandTimeout, TestbedError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Time limit of a configuration command (ip, nft, wg): they take milliseconds."""

STOP_GRACE_S = 3.0
"""How long a process may take to exit after SIGTERM before it gets SIGKILL."""

POLL_INTERVAL_S = 0.05


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return its text output.

    Raises ``CommandFailed`` (with the command and its stderr) when it exits
    non-zero and ``check`` is true, or when it cannot be started; raises
    ``CommandTimeout`` when it outlives ``timeout`` seconds.
    """
    args = list(argv)
    logger.debug("run: %s", shlex.join(args))
    try:
        completed = subprocess.run(
            args,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else ""
        raise CommandTimeout(args, timeout, stderr) from None
    except OSError as e:
        raise CommandFailed(args, None, "", str(e)) from None
    if check and completed.returncode != 0:
        raise CommandFailed(args, completed.returncode, completed.stdout, completed.stderr)
    return completed


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = POLL_INTERVAL_S
) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass.

    Returns whether it held. The condition is always checked once more at the
    deadline, so a slow poll cannot miss a condition that came true in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return condition()
        time.sleep(min(interval, remaining))


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = run_command(["ip", "netns", "list"]).stdout
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes running inside namespace ``name``."""
    out = run_command(["ip", "netns", "pids", name], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie counts as gone.

    Orphans of a crashed testbed are reaped by whoever adopted them, which may
    take a moment (or, under a careless init, forever): they already let go of
    everything, so waiting for their reaping would only slow teardown.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state is the first field after the parenthesised command name.
    return stat[stat.rindex(")") + 2 :][:1] not in ("Z", "X", "")


def kill_namespace_processes(name: str, grace: float = STOP_GRACE_S) -> list[int]:
    """Stop, by PID, every process still inside namespace ``name``.

    Only for namespaces the testbed created: whatever runs in them was started by
    a testbed (directly, or as a child of something it started). SIGTERM first so
    wireguard-go can remove its control socket, SIGKILL after ``grace`` seconds.
    Returns the PIDs that were signalled.
    """
    pids = namespace_pids(name)
    if not pids:
        return []
    logger.info("stopping %d leftover process(es) in namespace %s: %s", len(pids), name, pids)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    if not wait_until(lambda: not any(pid_alive(p) for p in pids), grace):
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), grace)
    return pids


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def delete_namespace(name: str) -> None:
    """Empty namespace ``name`` of processes, then delete it (and its veths)."""
    kill_namespace_processes(name)
    try:
        run_command(["ip", "netns", "del", name])
    except CommandFailed:
        # Someone else (a concurrent stale cleanup) deleted it first: fine.
        if name in list_namespaces():
            raise
    logger.debug("deleted namespace %s", name)


class BackgroundProcess:
    """A process we started in a namespace; stoppable by PID, output in a log file."""

    def __init__(
        self,
        name: str,
        namespace: str,
        argv: Sequence[str],
        popen: subprocess.Popen[bytes],
        log_path: Path,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.argv = tuple(argv)
        self.log_path = log_path
        self._popen = popen

    def __repr__(self) -> str:
        return f"BackgroundProcess({self.name!r}, ns={self.namespace!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited (negative: killed by that signal)."""
        return self._popen.poll()

    def running(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; raise ``CommandTimeout`` if not."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(self.argv, timeout) from None

    def kill(self) -> int | None:
        """SIGKILL (a crash, no chance to say goodbye), then reap it."""
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(STOP_GRACE_S)
        return self._popen.returncode

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL. Idempotent; returns the status."""
        if self._popen.poll() is None:
            logger.debug("stopping %r", self)
            # Popen.send_signal refuses to signal a process it has already reaped,
            # so a PID reused by somebody else is never hit.
            self._popen.terminate()
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                logger.warning("%r ignored SIGTERM for %.1f s; killing it", self, grace)
                self._popen.kill()
                self._popen.wait(grace)
        return self._popen.returncode

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float) -> bool:
        """Wait until ``text`` appears in the output; False on timeout or early exit."""

        def seen_or_exited() -> bool:
            return text in self.read_log() or not self.running()

        wait_until(seen_or_exited, timeout)
        return text in self.read_log()


class Namespace:
    """A named network namespace (``ip netns``) and the processes we run in it."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_dir = log_dir
        self.processes: list[BackgroundProcess] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    # ------------------------------------------------------------ lifecycle

    def create(self) -> None:
        run_command(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        logger.debug("created namespace %s", self.name)

    def exists(self) -> bool:
        return self.name in list_namespaces()

    def stop_processes(self) -> None:
        """Stop every process started with ``popen``, newest first."""
        for proc in reversed(self.processes):
            proc.stop()

    def delete(self) -> None:
        """Stop our processes and anything else inside, then delete the namespace."""
        self.stop_processes()
        if self.exists():
            delete_namespace(self.name)

    # ------------------------------------------------------------ commands

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace; see ``run_command``."""
        return run_command(
            self.exec_argv(argv), check=check, timeout=timeout, input_text=input_text, env=env
        )

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ...``: cheaper than ``ip netns exec`` (no mount namespace)."""
        return run_command(["ip", "-n", self.name, *args], check=check)

    def nft(self, ruleset: str) -> None:
        """Load an nftables script (``nft -f -``) atomically into this namespace."""
        logger.debug("nft in %s:\n%s", self.name, ruleset)
        self.run(["nft", "-f", "-"], input_text=ruleset)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def pids(self) -> list[int]:
        return namespace_pids(self.name)

    def popen(
        self, argv: Sequence[str], *, name: str, env: Mapping[str, str] | None = None
    ) -> BackgroundProcess:
        """Start ``argv`` in the background inside the namespace.

        stdout and stderr go to ``<log_dir>/<namespace>.<name>.log``. The process
        gets its own session so a Ctrl-C at the terminal does not kill it before
        teardown can stop it in order (wireguard-go must see SIGTERM to remove its
        control socket).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{self.name}.{name}.log"
        full_env = dict(os.environ)
        if env is not None:
            full_env.update(env)
        args = self.exec_argv(argv)
        logger.debug("start %s: %s (log %s)", name, shlex.join(args), log_path)
        with log_path.open("ab") as log_file:
            try:
                popen = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    start_new_session=True,
                )
            except OSError as e:
                raise CommandFailed(args, None, "", str(e)) from None
        # The child holds its own copy of the log descriptor; ours is closed.
        proc = BackgroundProcess(name, self.name, args, popen, log_path)
        self.processes.append(proc)
        logger.info("started %s in %s (pid %d)", name, self.name, proc.pid)
        return proc

    def ping(self, address: str, *, count: int = 1, timeout: float = 5.0) -> bool:
        """Whether ``count`` echo replies from ``address`` arrive within ``timeout`` s."""
        if count < 1:
            raise TestbedError("ping count must be at least 1")
        deadline_s = max(1, round(timeout))
        completed = self.run(
            # -i 0.2: root may ping faster than once a second; -w: overall deadline.
            ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(deadline_s), address],
            check=False,
            timeout=deadline_s + DEFAULT_TIMEOUT_S,
        )
        return completed.returncode == 0
