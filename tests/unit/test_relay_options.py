"""Relay start-up checks: wire limits, endpoints, the allow file (issue 8)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from wgrelay.errors import ConfigError
from wgrelay.keys import PrivateKey
from wgrelay.relay.access import AllowFilePolicy
from wgrelay.relay.app import parse_destination, parse_endpoint
from wgrelay.relay.config import RelayConfig


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"session_idle_timeout_s": 65536}, "--idle-timeout"),
        ({"max_connections": 2**32}, "--max-connections"),
        ({"registration_ttl_s": 65536}, "registration TTL"),
        ({"heartbeat_interval_s": 40000, "registration_ttl_s": 80000}, "registration TTL"),
        ({"port_range": (52000, 70000)}, "--port-range"),
        ({"port_range": (52000, 52000)}, "--port-range"),
    ],
)
def test_config_refuses_values_beyond_their_wire_fields(
    fields: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RelayConfig(**fields)


def test_config_takes_the_largest_wire_values() -> None:
    config = RelayConfig(
        max_connections=2**32 - 1, session_idle_timeout_s=65535, registration_ttl_s=65535
    )
    assert config.session_idle_timeout_s == 65535


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.1:51821", ("203.0.113.1", 51821)),
        ("[2001:db8::1]:51821", ("2001:db8::1", 51821)),
        (" [::1]:5 ", ("::1", 5)),
    ],
)
def test_parse_endpoint_accepts_plain_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("::1:5", r"\[ADDR\]:PORT"),
        ("2001:db8::1:51821", r"\[ADDR\]:PORT"),
        ("203.0.113.1:\u0665", "HOST:PORT"),
        ("203.0.113.1:\u00b9", "HOST:PORT"),
        ("203.0.113.1:0000051821", "HOST:PORT"),
        ("203.0.113.1:0", "port out of range"),
        ("[::1]", "HOST:PORT"),
    ],
)
def test_parse_endpoint_refuses_ambiguous_forms(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_endpoint(text)


@pytest.mark.parametrize(
    "text", ["0.0.0.0:1", "0.9.9.9:1", "[::]:1", "224.0.0.251:5353", "[ff02::1]:1",
             "255.255.255.255:1"],
)  # fmt: skip
def test_destinations_are_one_reachable_host(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_destination(text, "--announce")
    assert parse_endpoint(text)  # fine as a bind or metrics address


def test_empty_allow_file_refused_at_start_and_warned_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    allow = tmp_path / "allow"
    allow.write_text("# none yet\n")
    with pytest.raises(ConfigError, match="lists no keys"):
        AllowFilePolicy(allow)
    key = PrivateKey.generate().public_key()
    allow.write_text(f"{key}\n")
    policy = AllowFilePolicy(allow)
    assert policy.allows(key.raw)
    allow.write_text("")
    os.utime(allow, ns=(0, 1))  # a different mtime, whatever the clock's resolution
    with caplog.at_level(logging.INFO, logger="wgrelay.relay.access"):
        policy.refresh()
    assert not policy.allows(key.raw)  # emptied on purpose is applied
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "serves nobody" in warned[0].getMessage()
