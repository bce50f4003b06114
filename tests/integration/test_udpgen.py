"""bench/udpgen.c, the benchmark's load generator, on loopback.

A relay now sends the peers it serves messages of its own during a session
(RECEIPT_REQUEST, relay/credits.py): the generator holds those peers'
sockets, counted such a datagram as a malformed frame and failed the run
(``make bench`` at every wgrelay cell: "udpgen failed (rc 3)"). It is told
apart by its type byte and counted as ``control``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from wgrelay.proto.constants import MsgType
from wgrelay.proto.data import data_header

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "udpgen.c"


@pytest.fixture(scope="module")
def udpgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build bench/udpgen.c")
    out = tmp_path_factory.mktemp("udpgen") / "udpgen"
    subprocess.run([cc, "-O2", "-o", str(out), str(SOURCE), "-pthread"], check=True, timeout=120)
    return out


def test_a_relay_message_to_the_peer_is_not_a_bad_frame(udpgen: Path) -> None:
    header = data_header(b"S" * 8) + b"\x04\x00\x00\x00"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        # what a relay's receipt request looks like to the generator: a
        # control message (its type byte first), waiting on B's socket
        a.sendto(bytes((MsgType.RECEIPT_REQUEST,)) + bytes(120), b.getsockname())
        argv = [str(udpgen), "tput", "--dst", "{}:{}".format(*b.getsockname())]
        argv += ["--tx-fd", str(a.fileno()), "--rx-fd", str(b.fileno())]
        argv += ["--tx-hdr", header.hex(), "--rx-hdr-len", str(len(header))]
        argv += ["--size", "64", "--duration", "0.3", "--warmup", "0.1"]
        run = subprocess.run(
            argv,
            pass_fds=(a.fileno(), b.fileno()),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    result = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("{")))
    assert result["control"] == 1
    assert result["bad_len"] == 0
    assert result["bad_seq"] == 0
    assert result["recv"] > 1000
    assert result["lost"] <= result["window"]  # (the tail in flight at the end, if any)
