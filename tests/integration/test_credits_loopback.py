"""Credits for real: two start-relay processes on 127.0.0.1, R1 started with
the operator claim of member M (``wgrelay credits claim``). Two clients
relay through R1 and sign its receipts when their session closes; R2 learns
them by gossip, and ``wgrelay credits`` (a subprocess) asking R2 shows M's
balance and how it was earned. Bad input: one-line errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import until, wg_packet
from tests.integration.relays import RelayProcess, relay_process
from tests.integration.test_relay_federation import cli, free_udp_port
from wgrelay.client.receipts import Observed, ReceiptSigner
from wgrelay.client.udp import RelayClient
from wgrelay.keys import PrivateKey, PublicKey, write_key_file

pytestmark = pytest.mark.timeout(90)

FRAMES = 200
PAYLOAD = bytes(500)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("wgrelay: error: ")
    return lines[0]


class Seen:
    """What a client saw of its session (it is the honest agent here)."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.packets = 0

    def __call__(self, _peer: PublicKey) -> Observed:
        return Observed(proxy_bytes=self.nbytes, proxy_packets=self.packets)


async def relay_and_close(r1: RelayProcess) -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    seen_a, seen_b = Seen(), Seen()

    def heard(_peer: PublicKey, frame: bytes) -> None:
        seen_b.nbytes += len(frame) - 10
        seen_b.packets += 1

    ca = RelayClient(a, r1.key, r1.endpoint)
    cb = RelayClient(b, r1.key, r1.endpoint, on_data=heard)
    ca.link.receipts = ReceiptSigner(a, seen_a)
    cb.link.receipts = ReceiptSigner(b, seen_b)
    try:
        await ca.wait_registered()
        await cb.wait_registered()
        sid = await ca.open_session(b.public_key())
        ca.link.receipts.session_started(r1.key, b.public_key(), sid, ca.now())
        cb.link.receipts.session_started(r1.key, a.public_key(), sid, cb.now())
        packet = wg_packet(PAYLOAD)
        for _ in range(FRAMES):
            assert ca.send(b.public_key(), packet)
            seen_a.nbytes += len(packet)
            seen_a.packets += 1
        await until(lambda: seen_b.packets == FRAMES, timeout=10)
        # the close: R1 asks both sides once more before it tells b
        ca.close_session(b.public_key())
        await until(lambda: cb.link.receipts is not None and cb.link.receipts.signed >= 1, 10)
        await until(lambda: ca.link.receipts is not None and ca.link.receipts.signed >= 1, 10)
    finally:
        await ca.close()
        await cb.close()


def test_operator_earns_receipts_spread_and_wgrelay_credits_shows_it(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir(mode=0o700)
    member = PrivateKey.generate()
    key_file = tmp_path / "member.key"
    write_key_file(key_file, member.raw)
    relay_key = tmp_path / "r1.key"
    res = cli(agent, "keygen", "--relay", "--out", str(relay_key))
    assert res.returncode == 0, res.stderr
    r1_pub = res.stdout.strip().split()[-1]
    claim = tmp_path / "operator.claim"
    res = cli(
        agent, "credits", "claim", "--key", str(key_file), "--relay", r1_pub, "--out", str(claim)
    )
    assert res.returncode == 0, res.stderr
    assert str(member.public_key()) in claim.read_text()

    # a claim for another relay, a damaged one: the relay does not start
    other = tmp_path / "other.claim"
    res = cli(
        agent,
        "credits",
        "claim",
        "--key",
        str(key_file),
        "--relay",
        str(PrivateKey.generate().public_key()),
    )
    assert "relay" in one_line_error(res)
    bad = tmp_path / "bad.claim"
    bad.write_text(claim.read_text().replace("A", "B", 3))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "wgrelay",
            "start-relay",
            "--state-dir",
            str(tmp_path / "x"),
            "--open",
            "--key-file",
            str(relay_key),
            "--operator-claim",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "operator claim" in one_line_error(res)
    other.write_text("not a claim\n")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "wgrelay",
            "start-relay",
            "--state-dir",
            str(tmp_path / "x"),
            "--open",
            "--operator-claim",
            str(other),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "is not a claim file" in one_line_error(res)

    p1, p2 = free_udp_port(), free_udp_port()
    r1_args = [
        "--open",
        "--port-range",
        "off",
        "--max-bandwidth",
        "0",
        "--announce",
        f"127.0.0.1:{p1}",
        "--key-file",
        str(relay_key),
        "--operator-claim",
        str(claim),
    ]
    with relay_process(tmp_path / "r1", *r1_args, port=p1) as r1:
        assert str(r1.key) == r1_pub
        r2_args = [
            "--open",
            "--announce",
            f"127.0.0.1:{p2}",
            "--bootstrap",
            f"127.0.0.1:{p1}={r1.key}",
        ]
        with relay_process(tmp_path / "r2", *r2_args, port=p2) as r2:
            asyncio.run(relay_and_close(r1))
            ask = (
                "credits",
                str(member.public_key()),
                "--relay",
                f"127.0.0.1:{p2}",
                "--relay-key",
                str(r2.key),
            )
            doc: dict[str, object] = {}

            def learned() -> bool:
                nonlocal doc
                res = cli(agent, *ask, "--json")
                assert res.returncode == 0, res.stderr
                doc = json.loads(res.stdout)
                return doc["earned_bytes"] != 0

            asyncio.run(until(learned, timeout=20))
            carried = FRAMES * (10 + len(wg_packet(PAYLOAD)))
            print(json.dumps(doc, indent=1))
            # both sides signed the session's whole count (the framing is
            # inside their tolerance): M earned it twice, once per member served
            assert doc["earned_bytes"] == 2 * carried
            assert doc["balance_bytes"] == 2 * carried
            assert doc["relays_operated"] == [
                {"relay": str(r1.key), "bytes_relayed": 2 * carried, "receipts": 2}
            ]
            text = cli(agent, *ask)
            assert text.returncode == 0, text.stderr
            assert f"relay {r1.key}: " in text.stdout
            assert "in 2 receipts" in text.stdout
            # from the agent's config (the relays it knows), M from its key file
            res = cli(agent, "add-bootstrap-relay", f"127.0.0.1:{p2}", str(r2.key))
            assert res.returncode == 0, res.stderr
            res = cli(agent, "credits", "--key", str(key_file), "--json")
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["balance_bytes"] == 2 * carried
            # without a member to ask about, or a relay key without its address
            assert "MEMBER_KEY" in one_line_error(cli(agent, "credits", "--relay", "127.0.0.1:1"))
            res = cli(agent, "credits", str(member.public_key()), "--relay-key", str(r2.key))
            assert "go together" in one_line_error(res)
