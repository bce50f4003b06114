"""Ask known relays for the current relay set (``wgrelay list-relays --refresh``).

The seed's ``refresh_from_bootstrap``/``query_relays`` for a command, not a
daemon: it asks the known relays in order (bootstrap relays first, then by
score) for their list of live relays, page by page, until one relay has
answered in full. Any relay of a federation knows every live relay, so one
full answer is the whole set. A relay is asked at each of its endpoints in
turn, those this host has a route for first, until one answers. The list of
relays is public (announcements are), so a throwaway key is enough, whatever a
relay's access policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from wgrelay.client.events import DiscoveryAnswered, LinkEvent, QueryFailed
from wgrelay.client.udp import RelayClient
from wgrelay.discovery.reach import has_route
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.discovery.selection import relay_score
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.keys import PrivateKey
from wgrelay.transport.base import Runtime

log = logging.getLogger(__name__)

MAX_PAGES = 100
ASK_AT_MOST = 5


@dataclass(slots=True)
class RefreshResult:
    answered_by: str | None = None
    learned: int = 0
    failures: list[str] = field(default_factory=list)


async def refresh_registry(
    registry: RelayRegistry,
    runtime: Runtime,
    timeout_s: float = 3.0,
    region: str = "",
    reachable: Callable[[Endpoint], bool] = has_route,
) -> RefreshResult:
    result = RefreshResult()
    key = PrivateKey.generate()
    order = sorted(registry.all(), key=lambda r: (not r.bootstrap, relay_score(r)))
    for relay in order[:ASK_AT_MOST]:
        # routable endpoints first, in the relay's order (sorted() is stable)
        for endpoint in sorted(relay.endpoints, key=lambda e: not reachable(e)):
            client = RelayClient(key, relay.key, endpoint, runtime=runtime)
            try:
                complete = await _ask_all_pages(client, registry, timeout_s, result, region)
            except (TimeoutError, OSError) as e:
                where = f"{relay.key.short()} at {endpoint_str(endpoint)}"
                result.failures.append(f"{where}: {type(e).__name__}")
                continue
            finally:
                await client.close()
            if complete:
                result.answered_by = str(relay.key)
                return result
            break  # it answered, in part: the next relay, not the next address
    return result


async def _ask_all_pages(
    client: RelayClient,
    registry: RelayRegistry,
    timeout_s: float,
    result: RefreshResult,
    region: str = "",
) -> bool:
    for page in range(MAX_PAGES):
        qid = client.link.query(client.now(), want_relays=True, region=region, page=page)

        def answer(e: LinkEvent, q: int = qid) -> bool:
            return isinstance(e, DiscoveryAnswered | QueryFailed) and e.query_id == q

        fut = client.expect(answer)
        client.poke()
        async with asyncio.timeout(timeout_s):
            ev = await fut
        if not isinstance(ev, DiscoveryAnswered):
            result.failures.append(f"{client.relay_key.short()}: no answer")
            return False
        result.learned += sum(registry.register_relay(a) for a in ev.announcements)
        if not ev.more:
            return True
    return True
