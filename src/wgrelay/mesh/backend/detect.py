"""Pick the backend that runs a given interface.

A live UAPI socket wins: it means a userspace daemon owns the interface, and
talking to it directly saves a ``wg`` process per call. Next, when the kernel
has the generic netlink family "wireguard" and answers ``WG_CMD_GET_DEVICE``
for the name, it is a kernel WireGuard link and the netlink backend runs it (no
``wg`` process at all). Otherwise a device in ``/sys/class/net`` that
``wg show`` accepts is a kernel interface run through the ``wg`` tool (the
fallback when netlink is refused, e.g. under a seccomp policy). The socket
check connects rather than only looking for the file, because a daemon killed
with SIGKILL leaves its socket behind, and a kernel interface may meanwhile
have taken the name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from wgrelay.errors import BackendError, ConfigError
from wgrelay.mesh.backend.base import SYS_CLASS_NET, WireGuardBackend, check_interface_name
from wgrelay.mesh.backend.kernel import KernelBackend, Runner
from wgrelay.mesh.backend.netlink import NetlinkBackend
from wgrelay.mesh.backend.userspace import DEFAULT_SOCKET_DIR, UserspaceBackend, socket_path

log = logging.getLogger(__name__)

BACKEND_NAMES = ("kernel", "netlink", "userspace")


def detect_backend(
    interface: str,
    preferred: str | None = None,
    *,
    socket_dir: Path = DEFAULT_SOCKET_DIR,
    sys_class_net: Path = SYS_CLASS_NET,
    runner: Runner | None = None,
    netlink: NetlinkBackend | None = None,
) -> WireGuardBackend:
    """The backend for ``interface``; ``preferred`` (one of ``BACKEND_NAMES``) forces one.

    A forced backend must still be able to reach the interface, so a typo in
    the interface name fails here and not on the agent's first read.
    Raises ``BackendError`` when no backend finds the interface and
    ``ConfigError`` for an unknown ``preferred`` name.
    """
    check_interface_name(interface)
    if preferred is not None and preferred not in BACKEND_NAMES:
        raise ConfigError(
            f"unknown WireGuard backend {preferred!r} (choose {', '.join(BACKEND_NAMES)})"
        )
    sock = socket_path(interface, socket_dir)
    userspace = UserspaceBackend(socket_dir=socket_dir, sys_class_net=sys_class_net)
    kernel = KernelBackend(runner=runner, sys_class_net=sys_class_net)
    netlink = netlink or NetlinkBackend(sys_class_net=sys_class_net)

    if preferred == "userspace":
        if not userspace.exists(interface):
            raise BackendError(
                f"interface {interface} not found by the userspace backend "
                f"(no daemon listening on {sock})"
            )
        return userspace
    if preferred == "kernel":
        if not kernel.exists(interface):
            raise BackendError(
                f"interface {interface} not found by the kernel backend (wg show failed)"
            )
        return kernel
    if preferred == "netlink":
        # read() rather than exists(): its error says why (no module, no device,
        # not a WireGuard link, no permission)
        try:
            netlink.read(interface)
        except BackendError as e:
            raise BackendError(
                f"interface {interface} not usable by the netlink backend: {e}"
            ) from None
        return netlink

    if userspace.exists(interface):
        return userspace
    try:
        if netlink.exists(interface):
            return netlink
    except BackendError as e:
        log.info("netlink backend unusable for %s (%s); trying the wg tool", interface, e)
    if (sys_class_net / interface).exists() and kernel.exists(interface):
        return kernel
    why = f"stale socket {sock}, no daemon" if sock.exists() else f"no {sock}"
    raise BackendError(f"interface {interface} not found ({why}, no kernel device)")
