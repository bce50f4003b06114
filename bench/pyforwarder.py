"""The baseline: the least a Python UDP forwarder can do with wgrelay's data frame.

A blocking ``recvfrom``/``sendto`` loop, no asyncio, no clock, no counters,
speaking the same 10-byte data header as the relay (``0x10 | flags | session
8B``) and forwarding the datagram byte for byte, so the comparison with
``wgrelay start-relay`` is about the relay's own overhead and nothing else.

Control plane, just enough for the benchmark (no authentication):
``0x01 | 0 | session 8B`` registers the sender for that session (the first two
distinct addresses become its two ends) and is answered with
``0x02 | 0 | session 8B``. After that a data frame is forwarded when its
header matches the route of its source address.

    python bench/pyforwarder.py --port 0    # prints "ready 127.0.0.1:PORT"

Loopback only; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from types import FrameType

HEADER_LEN = 10
DATA, REGISTER, REGISTER_ACK = 0x10, 0x01, 0x02
RECV_SIZE = 2048


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(sock: socket.socket) -> None:
    members: dict[bytes, list[tuple[str, int]]] = {}
    # source address -> (the header it must send, where its frames go)
    routes: dict[tuple[str, int], tuple[bytes, tuple[str, int]]] = {}
    # bound methods looked up once, as the relay's reader does, so the loop
    # body is only the two system calls, one dict lookup and one compare
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    get = routes.get
    while True:
        data, addr = recvfrom(RECV_SIZE)
        route = get(addr)
        if route is not None and data[:HEADER_LEN] == route[0]:
            sendto(data, route[1])
            continue
        if len(data) != HEADER_LEN or data[0] != REGISTER:
            continue
        sid = data[2:HEADER_LEN]
        ends = members.setdefault(sid, [])
        if addr not in ends and len(ends) < 2:
            ends.append(addr)
        sendto(bytes((REGISTER_ACK, 0)) + sid, addr)
        if len(ends) == 2:
            header = bytes((DATA, 0)) + sid
            routes[ends[0]] = (header, ends[1])
            routes[ends[1]] = (header, ends[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="UDP port (0: any free one)")
    args = ap.parse_args()
    if not args.host.startswith("127."):
        ap.error("loopback (127.0.0.0/8) only")
    signal.signal(signal.SIGTERM, _stop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((args.host, args.port))
        host, port = sock.getsockname()
        print(f"ready {host}:{port}", flush=True)
        serve(sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
