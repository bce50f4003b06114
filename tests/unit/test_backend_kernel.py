"""The kernel backend, driven by recorded ``wg`` output through a fake runner.

The host has no WireGuard module, so these tests are what covers the kernel
path; the system test additionally runs the real ``wg`` against wireguard-go.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgrelay.errors import BackendError
from wgrelay.keys import PublicKey
from wgrelay.mesh.backend.kernel import CommandFailed, KernelBackend, parse_dump, run_command

PRIVATE = "aJ8mYX7lRhzTTf3YA+W+nhrbO0EMflN+L2njL3k95lE="
PUBLIC = "g467oauZY4K9DV71JtXtZ+Mpq4OVoYGjQeiXTCJ+DGg="
PEER_V6 = "NicC5KuVUJrXrnQ3wlVd21qpGchmiOu4uKuOyDuHZ0A="
PEER_V4 = "RE3PDo+XuhD19mtRBFAz3yEPYDAm3D2tWjHY9mx7aAI="
PEER_BARE = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
PSK = "FRvYpQF5a3wyVUpJm5w2xp0u2Ry0Lgk06UbE9Bq2EaM="

# `wg show IF dump` from wireguard-tools v1.0.20210914 (recorded against
# wireguard-go, which wg drives through the same code path as the kernel), with
# a handshake, counters, a preshared key and a fwmark added.
RECORDED_DUMP = (
    f"{PRIVATE}\t{PUBLIC}\t51999\t0xca6c\n"
    f"{PEER_V6}\t(none)\t[::1]:4000\t(none)\t0\t0\t0\toff\n"
    f"{PEER_V4}\t{PSK}\t127.0.0.1:51998\t10.0.0.2/32,fd00::2/128\t1700000000\t5678\t1234\t25\n"
    f"{PEER_BARE}\t(none)\t(none)\t10.0.0.3/32\t0\t0\t0\toff\n"
)


class FakeRunner:
    """Answers argv from a table; records every call."""

    def __init__(self, answers: dict[tuple[str, ...], str | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(tuple(argv))
        answer = self.answers.get(tuple(argv))
        if answer is None:
            raise CommandFailed("unexpected command", 1, "Unable to access interface")
        if isinstance(answer, Exception):
            raise answer
        return answer


def peers_output(*keys: str) -> str:
    return "".join(f"{k}\n" for k in keys)


def wg0_runner() -> FakeRunner:
    answers: dict[tuple[str, ...], str | Exception] = {
        ("wg", "show", "wg0", "dump"): RECORDED_DUMP,
        ("wg", "show", "wg0", "peers"): peers_output(PEER_V4, PEER_V6, PEER_BARE),
        ("wg", "show", "wg0", "public-key"): f"{PUBLIC}\n",
    }
    return FakeRunner(answers)


def test_parse_recorded_dump() -> None:
    info = parse_dump(RECORDED_DUMP, "wg0")
    assert info.name == "wg0"
    assert str(info.private_key) == PRIVATE
    assert str(info.public_key) == PUBLIC
    assert info.private_key is not None
    assert info.private_key.public_key() == info.public_key
    assert info.listen_port == 51999
    assert info.fwmark == 0xCA6C

    v6 = info.peer(PublicKey.from_base64(PEER_V6))
    assert v6 is not None
    assert v6.endpoint == ("::1", 4000)
    assert v6.allowed_ips == ()
    assert v6.latest_handshake is None
    assert v6.persistent_keepalive is None

    v4 = info.peer(PublicKey.from_base64(PEER_V4))
    assert v4 is not None
    assert v4.endpoint == ("127.0.0.1", 51998)
    assert v4.allowed_ips == ("10.0.0.2/32", "fd00::2/128")
    assert v4.latest_handshake == 1_700_000_000.0
    assert (v4.rx_bytes, v4.tx_bytes) == (5678, 1234)
    assert v4.persistent_keepalive == 25

    bare = info.peer(PublicKey.from_base64(PEER_BARE))
    assert bare is not None
    assert bare.endpoint is None
    assert bare.allowed_ips == ("10.0.0.3/32",)


def test_parse_unconfigured_interface() -> None:
    info = parse_dump("(none)\t(none)\t0\toff\n", "wg0")
    assert info.private_key is None
    assert info.public_key is None
    assert info.listen_port is None
    assert info.fwmark is None
    assert info.peers == ()


HEAD = "(none)\t(none)\t0\toff\n"


def peer_line(
    endpoint: str = "(none)",
    ips: str = "(none)",
    handshake: str = "0",
    keepalive: str = "off",
    key: str = PEER_V4,
) -> str:
    return f"{key}\t(none)\t{endpoint}\t{ips}\t{handshake}\t0\t0\t{keepalive}\n"


@pytest.mark.parametrize(
    ("dump", "message"),
    [
        ("", "interface line has 1 fields"),
        (f"{PRIVATE}\t{PUBLIC}\t1\n", "interface line has 3 fields"),
        (f"{PRIVATE}\t{PUBLIC}\tport\toff\n", "bad listen port 'port'"),
        (f"{PRIVATE}\t{PUBLIC}\t70000\toff\n", "bad listen port"),
        (f"{PRIVATE}\t{PUBLIC}\t1\tmark\n", "bad fwmark 'mark'"),
        (f"{PRIVATE}\tshort=\t1\toff\n", "bad public key"),
        (f"{HEAD}{PEER_V4}\t(none)\t(none)\n", "line 2 has 3 fields"),
        (HEAD + peer_line(key="(none)"), "bad peer key"),
        (HEAD + peer_line(endpoint="x:1"), "bad endpoint 'x:1'"),
        (HEAD + peer_line(ips="10.0.0.0/8,1.2.3/8"), "bad allowed-ip '1.2.3/8'"),
        (HEAD + peer_line(handshake="-1"), "bad latest handshake"),
        (HEAD + peer_line(keepalive="soon"), "bad keepalive 'soon'"),
    ],
)  # fmt: skip
def test_malformed_dump_raises(dump: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        parse_dump(dump, "wg0")


def test_malformed_private_key_is_not_echoed() -> None:
    secret = PRIVATE[:-2] + "!="
    with pytest.raises(BackendError, match="bad private key") as info:
        parse_dump(f"{secret}\t(none)\t0\toff\n", "wg0")
    assert secret not in str(info.value)


@given(st.text(alphabet=st.sampled_from("\t\n(none)off0123456789,./:[]=+AQE"), max_size=300))
def test_garbage_raises_only_backend_error(text: str) -> None:
    with contextlib.suppress(BackendError):
        parse_dump(text, "wg0")


def test_read_runs_wg_show_dump() -> None:
    runner = wg0_runner()
    info = KernelBackend(runner=runner).read("wg0")
    assert info == parse_dump(RECORDED_DUMP, "wg0")
    assert runner.calls == [("wg", "show", "wg0", "dump")]


def test_set_endpoint_checks_the_peer_then_sets_only_its_endpoint() -> None:
    runner = wg0_runner()
    runner.answers[("wg", "set", "wg0", "peer", PEER_V4, "endpoint", "[fd00::9]:51820")] = ""
    KernelBackend(runner=runner).set_endpoint(
        "wg0", PublicKey.from_base64(PEER_V4), ("fd00::9", 51820)
    )
    assert runner.calls == [
        ("wg", "show", "wg0", "peers"),
        ("wg", "set", "wg0", "peer", PEER_V4, "endpoint", "[fd00::9]:51820"),
    ]


def test_set_endpoint_never_creates_a_peer() -> None:
    runner = wg0_runner()
    absent = PublicKey(bytes(range(32)))
    with pytest.raises(BackendError, match="not on interface wg0"):
        KernelBackend(runner=runner).set_endpoint("wg0", absent, ("127.0.0.1", 1))
    assert all(call[1] != "set" for call in runner.calls)


def test_set_endpoint_refuses_host_names_before_running_anything() -> None:
    runner = wg0_runner()
    with pytest.raises(BackendError, match="not an IP address"):
        KernelBackend(runner=runner).set_endpoint(
            "wg0", PublicKey.from_base64(PEER_V4), ("relay.example", 1)
        )
    assert runner.calls == []


@pytest.mark.parametrize(
    "error",
    [
        CommandFailed("wg show wg0 failed (exit 1): Unable to access interface", 1, ""),
        BackendError("wg timed out"),
        FileNotFoundError(2, "No such file or directory"),
        subprocess.TimeoutExpired(["wg"], 5.0),
        PermissionError(13, "Permission denied"),
    ],
)
def test_runner_failures_become_backend_errors(error: Exception) -> None:
    runner = FakeRunner({("wg", "show", "wg0", "dump"): error})
    with pytest.raises(BackendError):
        KernelBackend(runner=runner).read("wg0")


def test_exists() -> None:
    backend = KernelBackend(runner=wg0_runner())
    assert backend.exists("wg0")
    assert not backend.exists("wg1")  # wg exits non-zero: no such interface


def test_exists_raises_when_wg_cannot_run() -> None:
    runner = FakeRunner({("wg", "show", "wg0", "public-key"): BackendError("wg not found")})
    with pytest.raises(BackendError, match="wg not found"):
        KernelBackend(runner=runner).exists("wg0")


def test_mtu_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "wg0").mkdir()
    (tmp_path / "wg0" / "mtu").write_text("1420\n")
    backend = KernelBackend(runner=wg0_runner(), sys_class_net=tmp_path)
    assert backend.mtu("wg0") == 1420
    assert backend.mtu("wg1") is None


# The production runner, on harmless commands.


def test_run_command_returns_stdout() -> None:
    assert run_command(["echo", "hello"]) == "hello\n"


def test_run_command_non_zero_exit() -> None:
    with pytest.raises(CommandFailed, match=r"exit 3\): boom") as info:
        run_command(["sh", "-c", "echo boom >&2; exit 3"])
    assert info.value.returncode == 3


def test_run_command_missing_binary() -> None:
    with pytest.raises(BackendError, match="not found"):
        run_command(["wgrelay-no-such-binary"])


def test_run_command_timeout() -> None:
    with pytest.raises(BackendError, match=r"timed out after 0\.1s"):
        run_command(["sleep", "10"], timeout_s=0.1)


def test_set_keepalive_with_kick_goes_through_off() -> None:
    runner = wg0_runner()
    for value in ("off", "25"):
        runner.answers[("wg", "set", "wg0", "peer", PEER_V4, "persistent-keepalive", value)] = ""
    KernelBackend(runner=runner).set_keepalive("wg0", PublicKey.from_base64(PEER_V4), 25, kick=True)
    sets = [c for c in runner.calls if c[1] == "set"]
    assert sets == [
        ("wg", "set", "wg0", "peer", PEER_V4, "persistent-keepalive", "off"),
        ("wg", "set", "wg0", "peer", PEER_V4, "persistent-keepalive", "25"),
    ]
