"""The pieces every backend shares: endpoint text, interface names, MTU, snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey
from wgrelay.mesh.backend.base import (
    InterfaceInfo,
    PeerInfo,
    check_interface_name,
    format_endpoint,
    is_cidr,
    parse_endpoint,
    read_mtu,
)


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:51820", ("127.0.0.1", 51820)),
        ("[::1]:4000", ("::1", 4000)),
        ("[fd00:0::2]:1", ("fd00::2", 1)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("203.0.113.7:65535", ("203.0.113.7", 65535)),
    ],
)
def test_parse_endpoint_canonicalises_hosts(text: str, endpoint: tuple[str, int]) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    "text",
    ["", "1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "[::1]", "[::1:80", "::1:80",
     "host:80", "1.2.3.4:+80", "1.2.3.4: 80", "[1.2.3.4]:80", "1.2.3.4:123456"],
)  # fmt: skip
def test_parse_endpoint_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - callers add the context
        parse_endpoint(text)


def test_format_endpoint_brackets_ipv6_only() -> None:
    assert format_endpoint(("10.0.0.1", 5)) == "10.0.0.1:5"
    assert format_endpoint(("::1", 5)) == "[::1]:5"
    assert format_endpoint(("0:0::1", 5)) == "[::1]:5"


@pytest.mark.parametrize(
    "endpoint", [("example.com", 80), ("10.0.0.1", 0), ("10.0.0.1", 70000), ("::1", True)]
)
def test_format_endpoint_refuses_names_and_bad_ports(endpoint: tuple[str, int]) -> None:
    with pytest.raises(BackendError):
        format_endpoint(endpoint)


@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(min_value=1, max_value=65535),
)
def test_endpoint_text_round_trips(host: str, port: int) -> None:
    assert parse_endpoint(format_endpoint((host, port))) == (host, port)


@pytest.mark.parametrize("name", ["wg0", "a", "x" * 15, "wg-mesh.1"])
def test_valid_interface_names(name: str) -> None:
    check_interface_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 16, "../etc", "wg 0", "wg:0", "wg\n"])
def test_invalid_interface_names(name: str) -> None:
    with pytest.raises(BackendError, match="invalid interface name"):
        check_interface_name(name)


def test_is_cidr() -> None:
    assert is_cidr("10.0.0.0/24")
    assert is_cidr("10.0.0.1/24")  # wg keeps host bits; we do not insist otherwise
    assert is_cidr("fd00::/64")
    assert not is_cidr("10.0.0.1")
    assert not is_cidr("10.0.0.0/33")
    assert not is_cidr("x/8")


def test_read_mtu(tmp_path: Path) -> None:
    (tmp_path / "wg0").mkdir()
    (tmp_path / "wg0" / "mtu").write_text("1420\n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mtu").write_text("lots\n")
    assert read_mtu("wg0", tmp_path) == 1420
    assert read_mtu("bad", tmp_path) is None
    assert read_mtu("missing", tmp_path) is None


def test_interface_info_peer_lookup() -> None:
    keys = [PrivateKey.generate().public_key() for _ in range(3)]
    peers = tuple(PeerInfo(k, None, (), None, 0, 0, None) for k in keys[:2])
    info = InterfaceInfo("wg0", None, None, None, None, peers)
    assert info.peer(keys[1]) is peers[1]
    assert info.peer(keys[2]) is None
