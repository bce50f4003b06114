"""The relay's byte budget: parsing, calendar periods, the count across a
restart, enforcement in the core, the announcement's field, and selection."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.metrics_text import samples
from wgrelay import cli
from wgrelay.client.events import SessionEnded, SessionEstablished, SessionFailed
from wgrelay.config_file import parse_args
from wgrelay.discovery.registry import KnownRelay, RelayRegistry
from wgrelay.discovery.selection import Selector, relay_score
from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PrivateKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import Capability, CloseReason, ErrorCode, Status
from wgrelay.proto.data import encode_data
from wgrelay.proto.messages import Error
from wgrelay.proto.vectors import ANNOUNCEMENT_BUDGET, INFO, RELAY
from wgrelay.relay.budget import (
    Budget,
    BudgetMeter,
    BudgetStore,
    Period,
    format_bytes,
    parse_budget,
    period_bounds,
)
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.metrics import make_registry
from wgrelay.testkit import WALL0, Client, CoreNet, registered


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500GB/month", Budget(500 * 10**9, Period.MONTH)),
        ("20GB/day", Budget(20 * 10**9, Period.DAY)),
        ("1TB/week", Budget(10**12, Period.WEEK)),
        ("1.5TB/month", Budget(15 * 10**11, Period.MONTH)),
        ("750 kB / Day", Budget(750_000, Period.DAY)),
        ("100000B/day", Budget(100_000, Period.DAY)),
        ("2PB/month", Budget(2 * 10**15, Period.MONTH)),
    ],
)
def test_budget_parses_si_units_and_calendar_periods(text: str, expected: Budget) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("500GB", "not SIZE/PERIOD"),
        ("GB/month", "not SIZE/PERIOD"),
        ("500XB/month", "unit 'xb' is not one of"),
        ("500GiB/month", "unit 'gib' is not one of"),
        ("500GB/year", "the period is day, week or month"),
        ("0GB/month", "no budget at all"),
        ("0.0001B/day", "no budget at all"),
        ("2000PB/month", "more than 1000PB"),
        ("-5GB/day", "not SIZE/PERIOD"),
        ("\u0665GB/day", "not SIZE/PERIOD"),  # an Arabic-Indic five is not a number here
    ],
)
def test_bad_budget_is_one_clear_line(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_budget_prints_as_written() -> None:
    assert str(parse_budget("500GB/month")) == "500GB/month"
    assert format_bytes(1_500_000) == "1500kB"
    assert format_bytes(1234) == "1234B"


def test_start_relay_budget_option_and_config_key(tmp_path: Path) -> None:
    args = parse_args(cli.build_parser(), ["start-relay", "--open", "--budget", "20GB/day"])
    assert args.budget == Budget(20 * 10**9, Period.DAY)
    conf = tmp_path / "relay.toml"
    conf.write_text('open = true\nbudget = "1TB/week"\n')
    args = parse_args(cli.build_parser(), ["start-relay", "--config", str(conf)])
    assert args.budget == Budget(10**12, Period.WEEK)


def test_start_relay_bad_budget_exits_with_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "wgrelay",
            "--state-dir",
            str(tmp_path),
            "start-relay",
            "--open",
            "--budget",
            "5XB/month",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("wgrelay"), run.stderr
    assert "unit 'xb' is not one of B, kB, MB, GB, TB, PB" in lines[0]


# ---------------------------------------------------------------- periods


def test_periods_are_utc_calendar_periods() -> None:
    wall = ts("2024-02-29T13:45:10")  # a Thursday in a leap year
    assert period_bounds(Period.DAY, wall) == (ts("2024-02-29T00:00"), ts("2024-03-01T00:00"))
    assert period_bounds(Period.WEEK, wall) == (ts("2024-02-26T00:00"), ts("2024-03-04T00:00"))
    assert period_bounds(Period.MONTH, wall) == (ts("2024-02-01T00:00"), ts("2024-03-01T00:00"))
    december = ts("2023-12-31T23:59:59")
    assert period_bounds(Period.MONTH, december) == (ts("2023-12-01"), ts("2024-01-01"))
    monday = ts("2024-03-04T00:00")
    assert period_bounds(Period.WEEK, monday)[0] == monday


def test_meter_rolls_over_at_the_period_boundary() -> None:
    budget = Budget(1000, Period.DAY)
    meter = BudgetMeter(budget, ts("2024-05-01T22:00"))
    meter.add(999, ts("2024-05-01T23:00"))
    assert (meter.used, meter.left, meter.left_pct, meter.spent) == (999, 1, 1, False)
    meter.add(1, ts("2024-05-01T23:59:59"))
    assert meter.spent
    assert meter.left_pct == 0
    assert meter.spent_detail() == "budget 1kB/day spent until 2024-05-02 00:00 UTC"
    meter.add(300, ts("2024-05-02T00:00"))  # the next day: counted from zero
    assert (meter.used, meter.spent, meter.period_end) == (300, False, ts("2024-05-03T00:00"))
    assert not meter.roll(ts("2024-05-02T12:00"))
    assert meter.roll(ts("2024-05-04T00:00:01"))
    assert meter.used == 0
    assert meter.left_pct == 100


def test_left_pct_rounds_up_so_zero_means_spent() -> None:
    meter = BudgetMeter(Budget(10_000, Period.MONTH), WALL0, used=9_999)
    assert meter.left_pct == 1
    meter.used = 5_000
    assert meter.left_pct == 50
    meter.used = 12_000  # overshoot (the last second's traffic)
    assert (meter.left, meter.left_pct) == (0, 0)


# ---------------------------------------------------------------- persistence


def test_count_survives_a_restart_within_the_period(tmp_path: Path) -> None:
    budget = Budget(10**9, Period.MONTH)
    path = tmp_path / "budget.db"
    store = BudgetStore(path)
    meter = BudgetMeter(budget, ts("2024-05-03T10:00"))
    assert not store.restore(meter)  # nothing stored yet
    meter.add(123_456, ts("2024-05-03T10:00"))
    store.save(meter)
    store.close()

    store = BudgetStore(path)  # the next start, later that month
    again = BudgetMeter(budget, ts("2024-05-20T08:00"))
    assert store.restore(again)
    assert again.used == 123_456
    next_month = BudgetMeter(budget, ts("2024-06-01T00:00"))
    assert not store.restore(next_month)  # another period starts at zero
    assert next_month.used == 0
    per_day = BudgetMeter(Budget(10**9, Period.DAY), ts("2024-05-03T11:00"))
    assert not store.restore(per_day)  # another unit: not carried over
    store.close()


def test_a_broken_budget_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    path.write_bytes(b"not a database at all" * 100)
    store = BudgetStore(path)
    meter = BudgetMeter(Budget(1000, Period.DAY), WALL0)
    assert not store.restore(meter)
    store.close()
    assert list(tmp_path.glob("budget.db.broken-*"))


# ---------------------------------------------------------------- the announcement


def _info(**kw: object) -> RelayNodeInfo:
    return replace(INFO, **kw)  # type: ignore[arg-type]


def test_budget_left_is_announced_only_with_its_bit() -> None:
    info = _info(capabilities=INFO.capabilities | Capability.BUDGET, budget_left_pct=0)
    ann = decode_announcement(encode_announcement(info, 1, 600, RELAY))
    assert ann.info.budget_left_pct == 0
    assert ann.info.capabilities & Capability.BUDGET
    assert (
        decode_announcement(encode_announcement(INFO, 1, 600, RELAY)).info.budget_left_pct is None
    )
    with pytest.raises(LocalProtocolError):
        _info(budget_left_pct=50).encode(Writer())  # without the bit
    with pytest.raises(LocalProtocolError):
        _info(capabilities=Capability.BUDGET | INFO.capabilities).encode(Writer())  # no figure
    with pytest.raises(LocalProtocolError):
        _info(capabilities=Capability.BUDGET | INFO.capabilities, budget_left_pct=101).encode(
            Writer()
        )


def test_budget_left_over_100_is_malformed() -> None:
    info = _info(capabilities=INFO.capabilities | Capability.BUDGET, budget_left_pct=100)
    w = Writer()
    info.encode(w)
    raw = bytearray(w.getvalue())
    raw[-1] = 101
    with pytest.raises(Malformed):
        RelayNodeInfo.decode(Buffer(bytes(raw), 0, len(raw)))


def test_budget_vector_decodes_to_its_value() -> None:
    info = decode_announcement(ANNOUNCEMENT_BUDGET).info
    assert info.budget_left_pct == 37
    assert info == _info(capabilities=INFO.capabilities | Capability.BUDGET, budget_left_pct=37)


# ---------------------------------------------------------------- enforcement in the core

PAYLOAD = b"\x04\x00\x00\x00" + bytes(996)  # a WireGuard transport message, 1,000 bytes


def _pair(budget: str) -> tuple[CoreNet, Client, Client, bytes]:
    net = CoreNet(RelayConfig(budget=parse_budget(budget), port_range=None))
    net.relay.announce_endpoints = (("203.0.113.10", 51821),)
    a, b = net.client(), net.client()
    registered(net, a, b)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    est = [e for e in a.events if isinstance(e, SessionEstablished)]
    assert len(est) == 1
    return net, a, b, est[0].session_id


def test_spent_budget_closes_sessions_refuses_new_ones_and_is_announced() -> None:
    net, a, b, sid = _pair("10kB/day")
    core = net.relay
    info = decode_announcement(core.announcement(0.0) or b"").info
    assert info.capabilities & Capability.BUDGET
    assert info.budget_left_pct == 100
    frame = encode_data(sid, PAYLOAD)
    for _ in range(4):  # both directions count
        assert core.forward_data(frame, a.addr, net.clock.now) == b.addr
        assert core.forward_data(frame, b.addr, net.clock.now) == a.addr
    net.advance(1.0)
    st = core.get_stats()
    assert st.budget_used == 8 * len(frame)
    left = decode_announcement(core.announcement(1.0) or b"").info.budget_left_pct
    assert left == -(-(10_000 - 8 * len(frame)) * 100 // 10_000)
    for _ in range(2):
        core.forward_data(frame, a.addr, net.clock.now)
    net.advance(1.0)  # the tick that sees it spent
    assert core.get_stats().budget_left == 0
    ended = [e for e in a.events if isinstance(e, SessionEnded)]
    assert [(e.session_id, e.reason) for e in ended] == [(sid, CloseReason.SHUTDOWN)]
    assert core.get_stats().sessions_active == 0
    assert decode_announcement(core.announcement(2.0) or b"").info.budget_left_pct == 0

    a.events.clear()
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    failed = [e for e in a.events if isinstance(e, SessionFailed)]
    assert [f.status for f in failed] == [Status.RESOURCE_LIMIT]
    assert core.get_stats().quota_hits["budget"] == 1
    errors = [
        body for body in _bodies_to(net, a) if isinstance(body, Error)
    ]  # the ERROR that says why
    assert errors
    assert errors[-1].code == ErrorCode.RESOURCE_LIMIT
    assert errors[-1].detail.startswith("budget 10kB/day spent until ")

    net.advance(86_400.0)  # the next UTC day: the budget is back
    assert decode_announcement(core.announcement(net.clock.now) or b"").info.budget_left_pct == 100
    a.events.clear()
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    assert any(isinstance(e, SessionEstablished) for e in a.events)


def _bodies_to(net: CoreNet, client: Client) -> list[object]:
    """What the relay sent ``client``, opened with its keys."""
    from wgrelay.proto.envelope import derive_client_keys, open_control, parse_control_header

    key = client.key
    keys = derive_client_keys(key.public_key().raw, key.raw, net.ident.x25519_public)
    out: list[object] = []
    for d, dst in net.replies:
        if dst != client.addr or not 0x20 <= d[0] <= 0x2F:
            continue
        out.append(open_control(d, parse_control_header(d), keys)[1])
    return out


def test_budget_metrics() -> None:
    net, a, _b, sid = _pair("1GB/month")
    frame = encode_data(sid, PAYLOAD)
    net.relay.forward_data(frame, a.addr, 0.0)
    net.advance(1.0)
    text = generate_latest(make_registry(net.relay.get_stats)).decode()
    by_state = {labels["state"]: v for labels, v in samples(text, "wgrelay_budget_bytes")}
    assert by_state == {"total": 1e9, "used": len(frame), "left": 1e9 - len(frame)}
    end = period_bounds(Period.MONTH, WALL0)[1]
    assert end == ts("2023-12-01T00:00")  # WALL0 is in November 2023
    assert samples(text, "wgrelay_budget_period_end_seconds") == [({}, end)]


def test_no_budget_no_bit_no_metric() -> None:
    net = CoreNet()
    net.relay.announce_endpoints = (("203.0.113.10", 51821),)
    info = decode_announcement(net.relay.announcement(0.0) or b"").info
    assert not info.capabilities & Capability.BUDGET
    assert info.budget_left_pct is None
    assert "wgrelay_budget" not in generate_latest(make_registry(net.relay.get_stats)).decode()


# ---------------------------------------------------------------- selection


def _relay(rtt: float, load: int | None = None, left: int | None = None) -> KnownRelay:
    key = RelayIdentity.generate().public
    return KnownRelay(key, (("203.0.113.1", 1),), rtt_ms=rtt, load_pct=load, budget_left_pct=left)


def test_selection_puts_spent_and_full_relays_last() -> None:
    near_spent = _relay(5.0, left=0)
    near_full = _relay(5.0, load=100)
    far = _relay(900.0, left=100)
    failing = replace(_relay(300.0), failures=40)
    sel = Selector(PrivateKey.generate().public_key())
    order = sel.order([near_spent, near_full, far, failing])
    assert order[:2] == [far, failing]
    assert set(order[2:]) == {near_spent, near_full}
    assert sel.path_cost(near_spent, 1.0) > sel.path_cost(far, 1000.0)
    assert sel.order([near_spent]) == [near_spent]  # alone, it is still tried


def test_selection_steers_gently_by_budget_used() -> None:
    assert relay_score(_relay(10.0, left=100)) == pytest.approx(10.0)
    assert relay_score(_relay(10.0, left=40)) == pytest.approx(70.0)
    assert relay_score(_relay(10.0)) == pytest.approx(10.0)  # no budget announced


def test_registry_learns_budget_left_from_announcements() -> None:
    reg = RelayRegistry()
    info = replace(INFO, capabilities=INFO.capabilities | Capability.BUDGET, budget_left_pct=0)
    reg.register_relay(decode_announcement(encode_announcement(info, 5, 600, RELAY)))
    known = reg.get(RELAY.public)
    assert known is not None
    assert known.budget_left_pct == 0
    info = replace(info, budget_left_pct=100)  # its next period
    reg.register_relay(decode_announcement(encode_announcement(info, 6, 600, RELAY)))
    known = reg.get(RELAY.public)
    assert known is not None
    assert known.budget_left_pct == 100
