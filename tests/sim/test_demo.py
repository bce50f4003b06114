"""``wgrelay demo --simulated``: the story is told, and needs no privilege at all."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import wgrelay
from wgrelay.demo.simulated import run_simulated_demo

NOBODY = 65534


def test_the_story_is_told_with_virtual_times() -> None:
    out = io.StringIO()
    assert run_simulated_demo(speed=0.0, out=out) == 0
    text = out.getvalue()
    lines = text.splitlines()
    stamped = [ln for ln in lines if ln.startswith("[")]
    assert all(re.match(r"\[ *\d+\.\d\d s\] ", ln) for ln in stamped)
    times = [float(ln[1:].split(" s]")[0]) for ln in stamped]
    assert times == sorted(times)
    story = "\n".join(lines)
    for step in (
        "is relay-pending (no recent handshake; relaying at once",
        "tunnel up: both WireGuards hold a session, path relayed via relay-1",
        "ping alice -> bob through the tunnel",
        "relay-1 loses power",
        "via relay-2",
        "failover done",
        "bob's NAT box is reconfigured as a full cone",
        "direct again",
    ):
        assert step in story, step
    # the numbers the summary gives are virtual, so they are the same every run
    up = re.search(r"tunnel up after ([0-9.]+) s, relayed", story)
    assert up is not None
    assert float(up.group(1)) <= 1.5  # relay first
    failover = re.search(r"relay failover: pings lost for ([0-9.]+) s", story)
    assert failover is not None
    assert float(failover.group(1)) < 20.0


def test_same_story_every_time() -> None:
    runs = []
    for _ in range(2):
        out = io.StringIO()
        run_simulated_demo(speed=0.0, out=out)
        runs.append([ln for ln in out.getvalue().splitlines() if "wall time" not in ln])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_paced_demo_stops_on_ctrl_c_and_sigterm(
    sig: signal.Signals, code: int, tmp_path: Path
) -> None:
    """The agents ask for signal handlers; the simulator refuses them (a
    virtual-time loop would never run them), so Ctrl-C and SIGTERM work, and
    the demo cleans up after itself."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wgrelay", "demo", "--simulated", "--speed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the agents are running once they ask a relay
            if "is relay-pending" in line:
                break
        assert len(list(tmp_path.iterdir())) == 1  # its state directory
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == code
        assert list(tmp_path.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory an unprivileged user may write (HOME and TMPDIR)."""
    path = Path(tempfile.mkdtemp(prefix="wgrelay-demo-test-"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        shutil.rmtree(path)


def _python_for_anyone() -> str | None:
    """An interpreter of this Python version outside directories only root may
    enter (this venv's may live under /root): the venv's packages are added
    with PYTHONPATH."""
    for candidate in (
        sys.executable,
        f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
    ):
        real = Path(candidate).resolve()
        if real.exists() and all(os.stat(p).st_mode & 0o001 for p in real.parents):
            return str(real)
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody (setpriv)")
def test_make_demo_path_runs_as_nobody(scratch: Path) -> None:
    """What `make demo` runs (`wgrelay demo`), as an unprivileged user: the simulated story."""
    setpriv = shutil.which("setpriv")
    python = _python_for_anyone()
    if setpriv is None or python is None:
        pytest.skip("needs setpriv and a Python interpreter nobody may run")
    src = str(Path(wgrelay.__file__).resolve().parents[1])
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join([src, sysconfig.get_paths()["purelib"]]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    res = subprocess.run(
        [*cmd, python, "-m", "wgrelay", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "needs root; telling the same story in the simulator" in res.stdout
    assert "failover done" in res.stdout
    assert "Traceback" not in res.stderr
    assert list(scratch.iterdir()) == []  # its temporary state directory is gone
