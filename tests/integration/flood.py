"""A paced UDP flooder for abuse tests, run as its own process (its own core).

    python -m tests.integration.flood --dst 127.0.0.1:PORT --rate 5000 --seconds 5 \\
        --kind junk-control [--fd N --header HEX]

``junk-control``: datagrams that look like control messages from random keys
(valid type, version and size; garbage crypto), from a fresh socket on
127.0.0.1 - the victim's own IP on loopback. ``tiny-data``: 11-byte data
frames with ``--header`` (a real session's data header) on an inherited socket
``--fd`` (a registered peer's), i.e. a member abusing its own session. Prints
how many datagrams it sent. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import time

CONTROL_TYPES = (0x20, 0x22, 0x24, 0x2A, 0x2C)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dst", required=True)
    ap.add_argument("--rate", type=float, required=True, help="datagrams per second")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--kind", choices=["junk-control", "tiny-data"], required=True)
    ap.add_argument("--fd", type=int)
    ap.add_argument("--header", default="")
    args = ap.parse_args()
    host, _, port = args.dst.rpartition(":")
    if not host.startswith("127."):
        raise SystemExit("flood: loopback destinations only")
    dst = (host, int(port))
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    rng = random.Random(os.getpid())
    if args.kind == "tiny-data":
        frames = [bytes.fromhex(args.header) + b"\x04"]
    else:
        frames = [
            bytes((rng.choice(CONTROL_TYPES), 1, 0)) + rng.randbytes(rng.randint(90, 300))
            for _ in range(512)
        ]
    sent = 0
    start = time.monotonic()
    end = start + args.seconds
    i = 0
    while (now := time.monotonic()) < end:
        due = int((now - start) * args.rate)
        while sent < due:
            try:
                sock.sendto(frames[i % len(frames)], dst)
            except BlockingIOError:
                break
            sent += 1
            i += 1
        time.sleep(0.001)  # pacing, not synchronisation
    print(sent, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
