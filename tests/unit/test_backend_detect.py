"""detect_backend: which backend runs an interface."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wgrelay.errors import BackendError, ConfigError
from wgrelay.mesh.backend import KernelBackend, UserspaceBackend, detect_backend
from wgrelay.mesh.backend.kernel import CommandFailed


class WgKnows:
    """A `wg` runner that succeeds only for the named interfaces."""

    def __init__(self, *interfaces: str) -> None:
        self.interfaces = interfaces
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(tuple(argv))
        if argv[2] in self.interfaces:
            return "g467oauZY4K9DV71JtXtZ+Mpq4OVoYGjQeiXTCJ+DGg=\n"
        raise CommandFailed("wg show failed (exit 1): No such device", 1, "")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    sockets, sysfs = tmp_path / "run", tmp_path / "sys"
    sockets.mkdir()
    sysfs.mkdir()
    return sockets, sysfs


@pytest.fixture
def live_socket(dirs: tuple[Path, Path]) -> Iterator[Path]:
    """A socket that accepts connections, as a running wireguard-go's does."""
    path = dirs[0] / "wg0.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(8)
        yield path


def kernel_device(sysfs: Path, name: str) -> None:
    (sysfs / name).mkdir()


@pytest.mark.usefixtures("live_socket")
def test_live_socket_means_userspace(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    kernel_device(sysfs, "wg0")  # a userspace device is also a tun device in sysfs
    backend = detect_backend("wg0", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows("wg0"))
    assert isinstance(backend, UserspaceBackend)
    assert backend.name == "userspace"


def test_kernel_device_means_kernel(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    kernel_device(sysfs, "wg0")
    runner = WgKnows("wg0")
    backend = detect_backend("wg0", socket_dir=sockets, sys_class_net=sysfs, runner=runner)
    assert isinstance(backend, KernelBackend)
    assert runner.calls == [("wg", "show", "wg0", "public-key")]


def test_device_that_wg_rejects_is_not_wireguard(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    kernel_device(sysfs, "eth0")
    with pytest.raises(BackendError, match=r"interface eth0 not found \(no .*eth0.sock"):
        detect_backend("eth0", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows())


def test_nothing_there(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    with pytest.raises(
        BackendError, match=r"^interface wg0 not found \(no .*/wg0.sock, no kernel device\)$"
    ):
        detect_backend("wg0", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows())


def test_stale_socket_falls_through_to_kernel(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(sockets / "wg0.sock"))  # bound, never listening: refuses
        with pytest.raises(BackendError, match="stale socket"):
            detect_backend("wg0", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows())
        kernel_device(sysfs, "wg0")
        backend = detect_backend(
            "wg0", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows("wg0")
        )
        assert isinstance(backend, KernelBackend)


@pytest.mark.usefixtures("live_socket")
def test_preferred_kernel_overrides_a_live_socket(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    backend = detect_backend(
        "wg0", "kernel", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows("wg0")
    )
    assert isinstance(backend, KernelBackend)


def test_preferred_backend_must_reach_the_interface(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    kernel_device(sysfs, "wg0")
    with pytest.raises(BackendError, match="not found by the userspace backend"):
        detect_backend(
            "wg0", "userspace", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows("wg0")
        )
    with pytest.raises(BackendError, match="not found by the kernel backend"):
        detect_backend("wg0", "kernel", socket_dir=sockets, sys_class_net=sysfs, runner=WgKnows())


@pytest.mark.usefixtures("live_socket")
def test_preferred_userspace(dirs: tuple[Path, Path]) -> None:
    sockets, sysfs = dirs
    backend = detect_backend("wg0", "userspace", socket_dir=sockets, sys_class_net=sysfs)
    assert isinstance(backend, UserspaceBackend)


def test_unknown_preference_is_a_config_error(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown WireGuard backend 'wgnt' \(choose kernel, netlink, userspace\)"
    ):
        detect_backend("wg0", "wgnt", socket_dir=dirs[0], sys_class_net=dirs[1])


def test_invalid_interface_name() -> None:
    with pytest.raises(BackendError, match="invalid interface name"):
        detect_backend("../../etc/passwd")
