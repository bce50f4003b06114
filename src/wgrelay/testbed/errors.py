"""Errors of the network-namespace testbed.

They derive from ``WgRelayError`` so that ``wgrelay demo`` can print them as one
line like any other error. A failed command always carries the command line and
its stderr, because "nft failed" alone sends whoever reads it hunting.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from wgrelay.errors import WgRelayError


class TestbedError(WgRelayError):
    """The testbed could not be built, used or torn down."""

    __test__ = False  # not a pytest test class, despite the name


class CommandFailed(TestbedError):
    """A command exited non-zero (or could not be started at all)."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "could not start" if returncode is None else f"exit status {returncode}"
        detail = stderr.strip() or stdout.strip() or "(no output)"
        super().__init__(f"command failed ({status}): {shlex.join(self.argv)}: {detail}")


class CommandTimeout(TestbedError):
    """A command did not finish within its timeout (it has been killed)."""

    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "") -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        self.stderr = stderr
        detail = f": {stderr.strip()}" if stderr.strip() else ""
        super().__init__(f"command timed out after {timeout:g} s: {shlex.join(self.argv)}{detail}")
