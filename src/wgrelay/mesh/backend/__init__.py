"""WireGuard backends: how the agent reads peers and moves their endpoints.

``detect_backend`` picks the implementation for an interface: ``UserspaceBackend``
(the UAPI socket of wireguard-go), ``NetlinkBackend`` (kernel WireGuard's generic
netlink family), ``KernelBackend`` (the ``wg`` tool), or, in tests,
``FakeBackend`` (in memory). All implement ``WireGuardBackend``.
"""

from wgrelay.mesh.backend.base import InterfaceInfo, PeerInfo, WireGuardBackend
from wgrelay.mesh.backend.detect import detect_backend
from wgrelay.mesh.backend.fake import FakeBackend, SetEndpointCall
from wgrelay.mesh.backend.kernel import CommandFailed, KernelBackend
from wgrelay.mesh.backend.netlink import NetlinkBackend
from wgrelay.mesh.backend.userspace import UserspaceBackend

__all__ = [
    "CommandFailed",
    "FakeBackend",
    "InterfaceInfo",
    "KernelBackend",
    "NetlinkBackend",
    "PeerInfo",
    "SetEndpointCall",
    "UserspaceBackend",
    "WireGuardBackend",
    "detect_backend",
]
