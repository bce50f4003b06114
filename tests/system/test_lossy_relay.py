"""The seed's "relay under packet loss": the relayed tunnel comes up and stays up.

The relay's namespace drops a share of every packet it receives (nftables
`numgen random`, since netem is not in this kernel): control messages and
WireGuard packets alike.
"""

from __future__ import annotations

import re

import pytest

from wgrelay.testbed import Testbed
from wgrelay.testbed.scenario import MeshScenario, two_peers

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


@pytest.mark.parametrize("loss_pct", [10, 20])
def test_relayed_tunnel_survives_loss_at_the_relay(loss_pct: int) -> None:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        sc = MeshScenario(tb)
        sc.start_relay(relay)
        relay.set_loss(loss_pct)
        sc.start_agent(a)
        sc.start_agent(b)
        assert sc.wait_ping(a, b, timeout=30.0) is not None, sc.agent_log(a)[-3000:]
        res = a.ns.run(
            ["ping", "-c", "50", "-i", "0.3", "-W", "1", b.tunnel_address], check=False, timeout=60
        )
        m = re.search(r"(\d+) received", res.stdout)
        assert m is not None, res.stdout
        received = int(m.group(1))
        # each ping crosses the relay twice: expect about (1 - loss)^2 of them
        expected = 50 * (1 - loss_pct / 100) ** 2
        assert received >= 0.6 * expected, res.stdout  # well below the mean: not flaky
        for p in (a, b):
            log = sc.agent_log(p)
            assert " lost" not in log, log[-2000:]  # the relay was never given up on
            assert "relayed (via relay" in log
        print(f"{loss_pct} % loss at the relay: {received}/50 pings answered")
