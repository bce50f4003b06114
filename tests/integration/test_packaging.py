"""Packaging: a wheel builds, and installed into a fresh virtual environment
(from the wheel, and by ``pipx install`` of the source tree, which is ``pip
install .`` in a venv of its own) it gives a working ``wgrelay`` whose
version is the one written in wgrelay/__init__.py.

The build runs on a copy of the tracked files, so the shared tree gets no
build/ or egg-info litter. Build requirements and dependencies come through
pip (PyPI or the host's configured indexes); without any the test skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import wgrelay

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    res = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        input=stdin,
        cwd="/",
    )
    if res.returncode != 0:
        raise AssertionError(f"{argv} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def clean_env(**extra: str) -> dict[str, str]:
    """This test's environment without what would make an installed
    wgrelay import the checkout instead of itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("pkg") / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        rel = Path(os.fsdecode(name))
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    return src


@pytest.fixture(scope="module")
def wheel(source_copy: Path) -> Path:
    out = source_copy.parent / "dist"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source_copy)],
        capture_output=True,
        text=True,
        timeout=240,
        env=clean_env(),
    )
    if res.returncode != 0:
        if not pypi_reachable():
            pytest.skip("no network to PyPI: cannot fetch the build requirements (setuptools)")
        raise AssertionError(f"pip wheel failed:\n{res.stdout}\n{res.stderr}")
    (whl,) = out.glob("wgrelay-*.whl")
    return whl


def check_installed(bin_dir: Path, python: Path | None = None) -> None:
    wg = bin_dir / "wgrelay"
    assert run(wg, "--version", env=clean_env()) == f"wgrelay {wgrelay.__version__}\n"
    private = run(wg, "keygen", env=clean_env()).strip()
    assert len(private) == 44
    assert private.endswith("=")
    public = run(wg, "pubkey", env=clean_env(), stdin=private + "\n").strip()
    assert len(public) == 44
    assert public != private
    relay_key = run(wg, "keygen", "--relay", env=clean_env())
    assert run(wg, "pubkey", env=clean_env(), stdin=relay_key).strip()
    if python is not None:  # the installed copy runs, not this checkout
        where = run(python, "-c", "import wgrelay; print(wgrelay.__file__)", env=clean_env())
        assert not where.startswith(str(ROOT)), where


def test_wheel_carries_the_one_version_and_the_entry_point(wheel: Path) -> None:
    version = wgrelay.__version__
    assert wheel.name.startswith(f"wgrelay-{version}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"wgrelay-{version}.dist-info/METADATA").decode()
        entry = z.read(f"wgrelay-{version}.dist-info/entry_points.txt").decode()
    assert f"\nVersion: {version}\n" in meta
    assert "wgrelay = wgrelay.cli:main" in entry
    assert {"wgrelay/__init__.py", "wgrelay/py.typed", "wgrelay/config_file.py"} <= names
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_installs_into_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, env=clean_env())
    run(venv / "bin" / "pip", "install", "-q", wheel, env=clean_env())
    check_installed(venv / "bin", venv / "bin" / "python")


def test_pipx_install_of_the_source_tree(source_copy: Path, tmp_path: Path) -> None:
    """``pipx install .``: pipx itself in a venv of its own, its homes in
    tmp_path (the user's ~/.local is left alone)."""
    tools = tmp_path / "pipx-venv"
    run(sys.executable, "-m", "venv", tools, env=clean_env())
    res = subprocess.run(
        [str(tools / "bin" / "pip"), "install", "-q", "pipx"],
        capture_output=True,
        text=True,
        timeout=240,
        env=clean_env(),
    )
    if res.returncode != 0:
        if not pypi_reachable():
            pytest.skip("no network to PyPI: cannot install pipx")
        raise AssertionError(f"pip install pipx failed:\n{res.stdout}\n{res.stderr}")
    env = clean_env(
        PIPX_HOME=str(tmp_path / "pipx-home"),
        PIPX_BIN_DIR=str(tmp_path / "bin"),
        PIPX_MAN_DIR=str(tmp_path / "man"),
    )
    run(tools / "bin" / "pipx", "install", source_copy, env=env)
    check_installed(tmp_path / "bin")
