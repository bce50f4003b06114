"""Helper process for test_cache_store's kill -9 test (not a test module).

Usage: ``python cache_writer.py PATH``. Opens the cache at PATH, continues from
the generation it holds (the last success time of its entries, 0 if empty) and
then forever: generation ``g`` records a success at ``now = g`` for every
endpoint of PEERS x ENDPOINTS, flushes, and prints ``g`` once the flush has
returned. So after a completed flush of ``g`` every entry has
``last_success == success_count == g``; the parent kills this process with
SIGKILL at a random moment and checks exactly that.
"""

from __future__ import annotations

import sys
from pathlib import Path

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.cache import ConnectionCache

PEERS = [PublicKey(bytes([i + 1]) * 32) for i in range(40)]
ENDPOINTS: list[Endpoint] = [(f"203.0.113.{j + 1}", 51820) for j in range(10)]


def main() -> None:
    cache = ConnectionCache(Path(sys.argv[1]))
    done = [e.last_success for p in cache.peers() for e in cache.entries(p)]
    generation = int(max((t for t in done if t is not None), default=0.0))
    while True:
        generation += 1
        for peer in PEERS:
            for ep in ENDPOINTS:
                cache.record_success(peer, ep, float(generation))
        cache.flush()
        print(generation, flush=True)


if __name__ == "__main__":
    main()
