"""The netlink backend beside a real wireguard-go interface, in its namespace.

wireguard-go is no kernel WireGuard: its device is a tun device, and it speaks
the UAPI, not the generic netlink family. So the netlink backend must decline
it (the family is absent on hosts without the module; on hosts with it, the
kernel answers EOPNOTSUPP for a device that is not a WireGuard link), detection
must still pick the UAPI socket, and forcing netlink must fail in one line that
says why. A kernel WireGuard interface to run the backend against exists on
no machine this was written on (see mesh/backend/netlink.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from wgrelay.testbed import Testbed
from wgrelay.testbed.topology import Peer

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

PROBE = """
import json, sys
from wgrelay.errors import BackendError
from wgrelay.mesh.backend import NetlinkBackend, detect_backend
iface = sys.argv[1]
out = {"exists": NetlinkBackend().exists(iface), "detected": detect_backend(iface).name}
try:
    detect_backend(iface, "netlink")
    out["forced"] = None
except BackendError as e:
    out["forced"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Testbed() as tb:
        yield tb.add_peer("a")


def test_netlink_declines_wireguard_go_and_detection_keeps_the_uapi(
    peer: Peer,
) -> None:
    iface = peer.wireguard().name
    out = json.loads(peer.ns.run([sys.executable, "-c", PROBE, iface]).stdout)
    assert out["exists"] is False
    assert out["detected"] == "userspace"
    prefix = f"interface {iface} not usable by the netlink backend: "
    assert out["forced"] in (
        prefix + "the kernel has no generic netlink family 'wireguard' "
        "(no WireGuard kernel module loaded)",
        prefix + f"{iface} is not a kernel WireGuard interface",
    )
