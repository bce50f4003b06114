"""A relayed mesh on the testbed: relays and agents as real processes.

``MeshScenario`` runs ``wgrelay start-relay`` in relay namespaces and ``wgrelay
up`` beside each peer's wireguard-go, exactly as an operator would, with
nothing but the relays' endpoints and keys given to the agents. The system tests
and ``wgrelay demo`` both build on it.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wgrelay.keys import PublicKey
from wgrelay.testbed.errors import TestbedError
from wgrelay.testbed.netns import BackgroundProcess, wait_until
from wgrelay.testbed.topology import Peer, Relay, Testbed
from wgrelay.testbed.wireguard import WgPeerStatus

RELAY_PORT = 51821
_READY = re.compile(r"relay (\S+) listening on")


@dataclass
class RunningRelay:
    relay: Relay
    process: BackgroundProcess
    key: PublicKey
    state_dir: Path

    @property
    def endpoint(self) -> str:
        return f"{self.relay.address}:{RELAY_PORT}"


def two_peers(
    tb: Testbed, nat: str = "symmetric", relays: tuple[str, ...] = ("r1",)
) -> tuple[list[Relay], Peer, Peer]:
    """The standard picture: relays on the internet and peers a and b, each
    behind its own NAT and configured with the other's public (NAT) address as
    WireGuard endpoint - the direct attempt an unaided mesh would make."""
    rs = [tb.add_relay(name) for name in relays]
    a = tb.add_peer("a", nat=nat)
    b = tb.add_peer("b", nat=nat)
    a.add_wireguard_peer(b, endpoint=b.wan_endpoint)
    b.add_wireguard_peer(a, endpoint=a.wan_endpoint)
    return rs, a, b


class MeshScenario:
    def __init__(self, tb: Testbed, python: str = sys.executable) -> None:
        self.tb = tb
        self.python = python
        self.relays: dict[str, RunningRelay] = {}
        self.agents: dict[str, BackgroundProcess] = {}
        self._restarts = 0

    # ------------------------------------------------------------ relays

    def start_relay(self, relay: Relay, *extra: str) -> RunningRelay:
        """Start (or restart, with the same key file) a relay process."""
        state = self.tb.work_dir / f"relay-{relay.name}"
        self._restarts += 1
        proc = relay.popen(
            [self.python, "-m", "wgrelay", "start-relay", "--open", "--state-dir", str(state),
             "--port", str(RELAY_PORT), "--announce", f"{relay.address}:{RELAY_PORT}", *extra],
            name=f"relay{self._restarts}",
        )  # fmt: skip
        if not proc.wait_for_log("listening on", 15):
            raise TestbedError(f"relay {relay.name} did not start: {proc.log_tail()}")
        m = _READY.search(proc.read_log())
        if m is None:
            raise TestbedError(f"relay {relay.name}: no ready line")
        running = RunningRelay(relay, proc, PublicKey.from_base64(m.group(1)), state)
        self.relays[relay.name] = running
        return running

    def kill_relay(self, name: str, sig: int = signal.SIGKILL) -> None:
        running = self.relays[name]
        if sig == signal.SIGKILL:
            running.process.kill()
        else:
            running.process.stop()

    # ------------------------------------------------------------ agents

    def agent_state_dir(self, peer: Peer) -> Path:
        return self.tb.work_dir / f"agent-{peer.name}"

    def start_agent(self, peer: Peer, *extra: str, relays: list[str] | None = None) -> None:
        names = relays if relays is not None else list(self.relays)
        args = [self.python, "-m", "wgrelay", "up", peer.wireguard().name,
                "--state-dir", str(self.agent_state_dir(peer))]  # fmt: skip
        for name in names:
            r = self.relays[name]
            args += ["--relay", f"{r.endpoint}={r.key}"]
        self.agents[peer.name] = peer.popen([*args, *extra], name="agent")

    def stop_agent(self, peer: Peer) -> int | None:
        return self.agents[peer.name].stop()

    def agent_log(self, peer: Peer) -> str:
        return self.agents[peer.name].read_log()

    def status(self, peer: Peer) -> dict[str, object] | None:
        path = self.agent_state_dir(peer) / f"status-{peer.wireguard().name}.json"
        try:
            doc: dict[str, object] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return doc

    # ------------------------------------------------------------ observations

    def wg_peer(self, peer: Peer, other: Peer) -> WgPeerStatus:
        st = peer.wireguard().dump().peer(other.wireguard().public_key)
        if st is None:
            raise TestbedError(f"{other.name} is not a peer of {peer.name}")
        return st

    def wait_ping(self, src: Peer, dst: Peer, timeout: float) -> float | None:
        """Seconds until one ping from ``src`` to ``dst`` over the tunnel is answered."""
        t0 = time.monotonic()
        if wait_until(lambda: src.ping(dst.tunnel_address, timeout=1.0), timeout, interval=0.0):
            return time.monotonic() - t0
        return None
