"""The root demo: a relayed WireGuard tunnel coming up by itself behind NAT.

Builds the namespace testbed (a simulated internet on 203.0.113.0/24, one relay,
two peers each behind its own symmetric NAT, running wireguard-go), shows that
WireGuard alone cannot connect them, starts ``wgrelay up`` beside each
interface with nothing but the relay's endpoint and key, and shows the relayed
tunnel working: ping, a short iperf3, and where the packets went. Everything it
creates is removed at the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import json
import shutil
import time

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario, two_peers


def say(msg: str = "") -> None:
    print(msg, flush=True)


def run_netns_demo() -> int:
    t_start = time.monotonic()
    with Testbed() as tb:
        say("== building the testbed (network namespaces, nftables NAT, wireguard-go)")
        [relay], a, b = two_peers(tb, "symmetric")
        say(f"   relay r1  public address {relay.address}")
        for p in (a, b):
            say(
                f"   peer {p.name}    LAN {p.lan_address} behind symmetric NAT "
                f"{p.router.wan_address}, WireGuard {p.wireguard().name} "
                f"tunnel address {p.tunnel_address}"
            )
        say(
            f"   each peer's WireGuard endpoint for the other: its NAT address "
            f"({b.wan_endpoint[0]}:{b.wan_endpoint[1]} / {a.wan_endpoint[0]}:{a.wan_endpoint[1]})"
        )

        say("\n== 1. direct attempt: WireGuard on its own, 6 s")
        ok = a.ping(b.tunnel_address, timeout=6.0)
        hs = a.wireguard().latest_handshake(b.wireguard().public_key)
        say(
            f"   ping a -> b: {'answered' if ok else 'no answer'}; "
            f"handshake: {'yes' if hs else 'none'} (symmetric NAT on both sides)"
        )

        say("\n== 2. start the relay and one agent per peer")
        sc = MeshScenario(tb)
        running = sc.start_relay(relay)
        say(f"   wgrelay start-relay on {running.endpoint}: key {running.key}")
        t0 = time.monotonic()
        sc.start_agent(a)
        sc.start_agent(b)
        say(f"   wgrelay up {a.wireguard().name} --relay {running.endpoint}=<key>   (and on b)")
        took = sc.wait_ping(a, b, timeout=20.0)
        if took is None:
            say("   the relayed tunnel did NOT come up; agent log of a:")
            say(sc.agent_log(a)[-3000:])
            return 1
        say(f"   ping a -> b answered {time.monotonic() - t0:.1f} s after the agents started")

        say("\n== 3. what the agents did")
        for p in (a, b):
            for line in sc.agent_log(p).splitlines():
                if "wgrelay.mesh.agent" in line:
                    say(f"   [{p.name}] {line.split(': ', 1)[-1]}")
        for me, other in ((a, b), (b, a)):
            st = sc.wg_peer(me, other)
            ep = f"{st.endpoint[0]}:{st.endpoint[1]}" if st.endpoint else "-"
            what = (
                "the local relay proxy: framed"
                if st.endpoint and st.endpoint[0] == "127.0.0.1"
                else "the relay's session port: WireGuard talks to the relay itself"
            )
            say(
                f"   wg show on {me.name}: endpoint {ep} ({what}), "
                f"handshake {time.time() - st.latest_handshake:.0f} s ago"
            )

        say("\n== 4. traffic through the relay")
        res = a.ns.run(["ping", "-c", "5", "-i", "0.2", b.tunnel_address], check=False)
        summary = [
            ln for ln in res.stdout.splitlines() if "packets transmitted" in ln or "rtt" in ln
        ]
        for line in summary:
            say(f"   {line}")
        if shutil.which("iperf3"):
            server = b.popen(
                ["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf3"
            )
            wait_until(lambda: "listening" in server.read_log().lower(), 5)
            out = a.ns.run(
                ["iperf3", "-c", b.tunnel_address, "-t", "3", "-J"], timeout=30, check=False
            )
            try:
                rcv = json.loads(out.stdout)["end"]["sum_received"]
                say(
                    f"   iperf3 TCP a -> b, 3 s: {rcv['bits_per_second'] / 1e6:.1f} Mbit/s "
                    f"({rcv['bytes'] / 1e6:.1f} MB; the relay caps each connection at "
                    f"1000 KB/s by default)"
                )
            except (ValueError, KeyError):
                say(f"   iperf3 failed: {out.stderr.strip()[:200]}")

        say("\n== 5. stop the agents: endpoints go back")
        for p in (a, b):
            sc.stop_agent(p)
        st = sc.wg_peer(a, b)
        ep = f"{st.endpoint[0]}:{st.endpoint[1]}" if st.endpoint else "-"
        say(f"   wg show on a: endpoint {ep} again")
        say("\n== summary")
        say(
            f"   two WireGuard peers behind symmetric NAT, unreachable directly, got a working "
            f"tunnel through the relay {took:.1f} s after `wgrelay up`, with no manual step."
        )
    say(f"   testbed removed; demo took {time.monotonic() - t_start:.0f} s")
    return 0
