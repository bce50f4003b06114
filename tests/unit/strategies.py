"""Hypothesis strategies for every wire value."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import strategies as st

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.proto.announce import RelayNodeInfo
from wgrelay.proto.constants import (
    MAX_DETAIL_LEN,
    MAX_ENDPOINTS,
    MAX_REGION_LEN,
    QUERY_FLAG_LOCATE_PEER,
    Capability,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    Status,
)
from wgrelay.proto.leg_rtts import LegRttQuery, LegRttReply
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    PeerLocation,
    Ping,
    Pong,
    Register,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionOffer,
)
from wgrelay.proto.sealed import (
    EXIT_SEALED_LEN,
    PEER_SEALED_LEN,
    ConnectionRequestSealed,
    LegOpenSealed,
    SessionOfferSealed,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
keys = st.binary(min_size=32, max_size=32).map(PublicKey)
session_ids = st.binary(min_size=8, max_size=8)


def _short_text(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(max_size=max_bytes).filter(lambda s: len(s.encode()) <= max_bytes)


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = (
    st.integers(0, 2**128 - 1)
    .map(ipaddress.IPv6Address)
    .filter(lambda a: a.ipv4_mapped is None)
    .map(str)
)
endpoints: st.SearchStrategy[Endpoint] = st.tuples(st.one_of(ipv4, ipv6), u16)

_exit_boxes = st.binary(min_size=EXIT_SEALED_LEN, max_size=EXIT_SEALED_LEN)
_peer_boxes = st.binary(min_size=PEER_SEALED_LEN, max_size=PEER_SEALED_LEN)

bodies: st.SearchStrategy[Body] = st.one_of(
    st.builds(Register, flags=u8, keepalive_s=u16),
    st.builds(Registered, ttl_s=u16, heartbeat_s=u16, epoch=u64, observed=endpoints),
    st.builds(Heartbeat, seq=u32),
    st.builds(HeartbeatAck, seq=u32, status=st.sampled_from(HeartbeatStatus), epoch=u64),
    st.builds(ConnectionRequest, request_id=u32, target=keys),
    st.builds(
        ConnectionResponse,
        request_id=u32,
        status=st.sampled_from(Status),
        session_id=session_ids,
        idle_timeout_s=u16,
        max_bandwidth_kbps=u32,
    ),
    st.builds(SessionOffer, session_id=session_ids, initiator=keys),
    st.builds(SessionAnswer, session_id=session_ids, accept=st.booleans()),
    st.builds(SessionClose, session_id=session_ids, reason=st.sampled_from(CloseReason)),
    st.builds(
        Error,
        code=st.sampled_from(ErrorCode),
        ref_type=u8,
        detail=_short_text(MAX_DETAIL_LEN),
        value=u64,
    ),
    st.builds(Ping, echo_id=u64),
    st.builds(Pong, echo_id=u64, load_pct=st.integers(0, 100)),
    st.builds(
        DiscoveryQuery,
        query_id=u32,
        flags=u8.map(lambda f: f & ~QUERY_FLAG_LOCATE_PEER),
        max_results=u8,
        required_caps=u32,
        region=_short_text(MAX_REGION_LEN),
        locate=st.none() | keys,
    ),
    st.builds(
        DiscoveryResponse,
        query_id=u32,
        announcements=st.lists(st.binary(max_size=150), max_size=4).map(tuple),
        location=st.none() | st.builds(PeerLocation, relay=keys, endpoint=endpoints),
    ),
    # private paths (proto/sealed.py): the boxes are opaque to the codec
    st.builds(ConnectionRequestSealed, request_id=u32, exit_relay=keys, sealed=_exit_boxes),
    st.builds(LegOpenSealed, session_id=session_ids, sealed=_exit_boxes, hops=st.integers(2, 3)),
    st.builds(SessionOfferSealed, session_id=session_ids, sealed=_peer_boxes, port=u16),
    st.builds(LegRttQuery, query_id=u32),
    st.builds(
        LegRttReply, query_id=u32, relays=st.lists(st.tuples(keys, u16), max_size=30).map(tuple)
    ),
)

node_infos = st.builds(
    RelayNodeInfo,
    key=keys,
    endpoints=st.lists(endpoints, min_size=1, max_size=MAX_ENDPOINTS).map(tuple),
    region=_short_text(MAX_REGION_LEN),
    capabilities=u32,
    load_pct=st.integers(0, 100),
    max_sessions=u32,
    protocol_version=u8,
    tcp_port=st.integers(1, 0xFFFF),
    tls_port=st.integers(1, 0xFFFF),
    budget_left_pct=st.integers(0, 100),
).map(
    # a stream port or the budget left goes with its capability bit (and only then)
    lambda i: replace(
        i,
        tcp_port=i.tcp_port if i.capabilities & Capability.TCP_FALLBACK else 0,
        tls_port=i.tls_port if i.capabilities & Capability.TLS_FALLBACK else 0,
        budget_left_pct=i.budget_left_pct if i.capabilities & Capability.BUDGET else None,
    )
)
