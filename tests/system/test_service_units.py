"""The systemd units and example config files in packaging/: systemd accepts
the units, their command lines are real wgrelay commands, they are hardened
as docs/OPERATIONS.md says, and the examples load and name every option."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool
from wgrelay import cli
from wgrelay.config_file import file_options, load_values, subcommand_parser
from wgrelay.keys import RelayIdentity

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNITS = PACKAGING / "systemd"
INSTALLED = "/usr/local/bin/wgrelay"
"""Where the units expect the entry point (pip install as root puts it there)."""

RELAY_CAPS = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
AGENT_CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW"}


def service_section(name: str) -> configparser.SectionProxy:
    # strict=False: systemd allows repeated keys; none here matters twice
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(UNITS / name)
    return p["Service"]


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` checks that ExecStart's binary exists: the
    copies it checks run this checkout's entry point instead of
    /usr/local/bin/wgrelay (one substitution per unit, nothing else)."""
    analyze = require_tool("systemd-analyze")
    entry = shutil.which("wgrelay", path=str(Path(sys.executable).parent))
    assert entry is not None, "the wgrelay entry point is not installed beside this Python"
    for unit in ("wgrelay-relay.service", "wgrelay@.service"):
        text = (UNITS / unit).read_text()
        assert text.count(INSTALLED) == 1, unit
        (tmp_path / unit).write_text(text.replace(INSTALLED, entry))
    res = subprocess.run(
        [
            analyze,
            "verify",
            str(tmp_path / "wgrelay-relay.service"),
            str(tmp_path / "wgrelay@wg0.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    about_ours = [ln for ln in (res.stdout + res.stderr).splitlines() if "wgrelay" in ln]
    assert res.returncode == 0, res.stdout + res.stderr
    assert about_ours == [], "\n".join(about_ours)


def test_verify_would_notice_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is a warning it prints."""
    analyze = require_tool("systemd-analyze")
    entry = shutil.which("wgrelay", path=str(Path(sys.executable).parent))
    assert entry is not None
    text = (UNITS / "wgrelay-relay.service").read_text().replace(INSTALLED, entry)
    bad = tmp_path / "wgrelay-relay.service"
    bad.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    res = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'NoNewPrivilege'" in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("unit", "command", "config", "caps"),
    [
        ("wgrelay-relay.service", "start-relay", "/etc/wgrelay/relay.toml", RELAY_CAPS),
        ("wgrelay@.service", "up", "/etc/wgrelay/%i.toml", AGENT_CAPS),
    ],
)
def test_units_run_real_commands_hardened(
    unit: str, command: str, config: str, caps: set[str]
) -> None:
    s = service_section(unit)
    argv = shlex.split(s["ExecStart"])
    assert argv[0] == INSTALLED
    # the unit's command line is one our parser takes, reading /etc/wgrelay
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == command
    assert str(args.config) == config
    assert str(args.state_dir) == "/var/lib/wgrelay"
    if command == "up":
        assert args.interface == "%i"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure"
    assert s["StateDirectory"] == "wgrelay"
    assert set(s["CapabilityBoundingSet"].split()) == caps
    assert set(s["AmbientCapabilities"].split()) == caps
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert s[key] == value, key


# ---------------------------------------------------------------- example config files


@pytest.mark.parametrize(("name", "command"), [("relay.toml", "start-relay"), ("wg0.toml", "up")])
def test_example_config_loads_and_names_every_option(
    tmp_path: Path, name: str, command: str
) -> None:
    sub = subcommand_parser(cli.build_parser(), command)
    text = (PACKAGING / "config" / name).read_text()
    f = tmp_path / name
    f.write_text(text.replace("RELAY_PUBLIC_KEY", str(RelayIdentity.generate().public)))
    load_values(f, sub)  # raises ConfigError (with the line) if an example value is bad
    written = set(re.findall(r"^#? ?([a-z][a-z0-9-]*) =", text, re.MULTILINE))
    missing = set(file_options(sub)) - written
    assert not missing, f"packaging/config/{name} does not show {sorted(missing)}"
