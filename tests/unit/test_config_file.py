"""The TOML config file: keys derived from the parser, conversion, precedence, errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wgrelay import cli
from wgrelay.config_file import (
    ConfigReader,
    Reloadable,
    file_options,
    load_values,
    parse_args,
    subcommand_parser,
)
from wgrelay.errors import ConfigError


def relay_key() -> str:
    from wgrelay.keys import RelayIdentity

    return str(RelayIdentity.generate().public)


def parse(
    argv: list[str], tmp_path: Path | None = None, text: str | None = None
) -> argparse.Namespace:
    if text is not None and tmp_path is not None:
        f = tmp_path / "relay.toml"
        f.write_text(text)
        argv = [argv[0], "--config", str(f), *argv[1:]]
    return parse_args(cli.build_parser(), argv)


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def error_of(tmp_path: Path, text: str, command: str = "start-relay") -> str:
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_values(f, subcommand_parser(cli.build_parser(), command))
    return str(e.value)


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("command", ["start-relay", "up"])
def test_every_long_option_of_the_daemons_is_a_key(command: str) -> None:
    sub = subcommand_parser(cli.build_parser(), command)
    longs = {
        s[2:]
        for a in sub._actions
        for s in a.option_strings
        if s.startswith("--") and s not in ("--help", "--config")
    }
    assert set(file_options(sub)) == longs
    assert "config" not in file_options(sub)


def test_an_option_added_later_is_settable_without_changes(tmp_path: Path) -> None:
    parser = cli.build_parser()
    sub = subcommand_parser(parser, "start-relay")
    sub.add_argument("--frobnicate-level", type=int, default=1)
    sub.add_argument("--extra", action="append")
    f = write(tmp_path, 'frobnicate-level = 7\nextra = ["a", "b"]\n')
    assert load_values(f, sub) == {"frobnicate_level": 7, "extra": ["a", "b"]}


# ---------------------------------------------------------------- the same as the command line


def test_a_file_gives_what_the_same_flags_give(tmp_path: Path) -> None:
    key = relay_key()
    flags = [
        "start-relay",
        "--max-connections", "7",
        "--max-bandwidth", "0",
        "--port", "5000",
        "--bind", "127.0.0.1",
        "--bind", "::1",
        "--allow-file", "/etc/wgrelay/allow",
        "--metrics", "127.0.0.1:9100",
        "--region", "eu-west",
        "--bootstrap", f"192.0.2.1:51821={key}",
        "--announce", "192.0.2.2:51821",
        "--port-range", "off",
        "--kernel-offload", "on",
        "--tcp-port", "off",
        "--tls-port", "8443",
        "--tls-cert", "/etc/wgrelay/cert.pem",
        "--tls-key", "/etc/wgrelay/key.pem",
        "--tls-self-signed",
        "--max-sessions-per-peer", "3",
        "--idle-timeout", "60",
        "--state-dir", "/var/lib/wgrelay",
        "-v", "-v",
    ]  # fmt: skip
    text = f"""# every option of start-relay
max-connections = 7
max-bandwidth = 0
port = 5000
bind = ["127.0.0.1", "::1"]
allow-file = "/etc/wgrelay/allow"
metrics = "127.0.0.1:9100"
region = "eu-west"
bootstrap = ["192.0.2.1:51821={key}"]
announce = ["192.0.2.2:51821"]
port-range = "off"
kernel-offload = "on"
tcp-port = "off"
tls-port = 8443
tls-cert = "/etc/wgrelay/cert.pem"
tls-key = "/etc/wgrelay/key.pem"
tls-self-signed = true
max-sessions-per-peer = 3
idle-timeout = 60
state-dir = "/var/lib/wgrelay"
verbose = 2
"""
    from_flags = vars(parse(flags))
    from_file = vars(parse(["start-relay"], tmp_path, text))
    for d in (from_flags, from_file):
        d.pop("config", None)
        d.pop("config_reader")
    assert from_file == from_flags
    assert from_file["port_range"] is None
    assert from_file["tcp_port"] == 0


def test_agent_file(tmp_path: Path) -> None:
    key = relay_key()
    args = parse(
        ["up", "wg0"],
        tmp_path,
        f'relay = ["192.0.2.1:51821={key}"]\nkeepalive = 0\ndirect-timeout = 1.5\n'
        'backend = "userspace"\nframed-only = true\ngeoip-db = "/x.mmdb"\n',
    )
    assert args.interface == "wg0"
    assert args.relay == [f"192.0.2.1:51821={key}"]
    assert (args.keepalive, args.direct_timeout, args.backend) == (0, 1.5, "userspace")
    assert args.framed_only is True
    assert args.geoip_db == Path("/x.mmdb")


# ---------------------------------------------------------------- precedence


def test_the_command_line_wins(tmp_path: Path) -> None:
    text = 'max-connections = 7\nbind = ["127.0.0.2", "127.0.0.3"]\nopen = true\nregion = "a"\n'
    args = parse(["start-relay", "--max-connections", "9", "--bind", "127.0.0.4"], tmp_path, text)
    assert args.max_connections == 9
    assert args.bind == ["127.0.0.4"]  # replaces the file's list, not added to it
    assert args.region == "a"
    assert args.open is True


def test_a_flag_of_an_exclusive_group_sets_the_files_choice_aside(tmp_path: Path) -> None:
    args = parse(["start-relay", "--open"], tmp_path, 'allow-file = "/etc/wgrelay/allow"\n')
    assert args.open is True
    assert args.allow_file is None
    args = parse(["start-relay", "--allow-peers-of", "wg0"], tmp_path, "open = true\n")
    assert args.open is False
    assert args.allow_peers_of == "wg0"


def test_a_flag_given_with_its_default_value_still_wins(tmp_path: Path) -> None:
    args = parse(["start-relay", "--idle-timeout", "180"], tmp_path, "idle-timeout = 30\n")
    assert args.idle_timeout == 180


def test_verbosity_before_the_command_name_wins(tmp_path: Path) -> None:
    f = write(tmp_path, "quiet = 2\nverbose = 1\n")
    args = parse_args(cli.build_parser(), ["-q", "start-relay", "--config", str(f)])
    assert (args.quiet, args.verbose) == (1, 1)


def test_false_switch_keeps_the_default(tmp_path: Path) -> None:
    args = parse(["start-relay"], tmp_path, "open = false\ntls-self-signed = false\n")
    assert args.open is False
    assert args.tls_self_signed is False


# ---------------------------------------------------------------- errors, each with its line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "open = true\n\n# limits\nmax-bandwith = 5\n",
            ':4: unknown key "max-bandwith" (did you mean "max-bandwidth"?)',
        ),
        ("open = true\nmax_bandwidth = 5\n", ':2: unknown key "max_bandwidth" (did you mean'),
        ("colour = 1\n", ':1: unknown key "colour"'),
        ("open = true\nport = \n", ":2: invalid value (column 8)"),
        ('port = "1\n', ":1: illegal character '\\n' (column 10)"),
        (
            "open = true\nmax-connections = 0\n",
            ":2: max-connections: '0' is not a positive integer",
        ),
        ("port = 70000\n", ":1: port: '70000' is not a port"),
        ('bind = "127.0.0.1"\n', ':1: "bind" must be a list'),
        ('open = "yes"\n', ':1: "open" must be true or false'),
        ("region = true\n", ':1: "region" must be a string or a number'),
        ('kernel-offload = "sometimes"\n', ':1: kernel-offload: "sometimes" is not one of'),
        ("verbose = -1\n", ':1: "verbose" must be a whole number'),
        ('open = true\n"allow-file" = "/x"\n', ':2: "open" and "allow-file" cannot both be set'),
        ("[relay]\nopen = true\n", ':1: unknown key "relay"'),
        ("config = '/x'\n", ':1: unknown key "config"'),
        ("open = true\nport-range.low = 5\n", ':2: "port-range" must be a string or a number'),
    ],
)
def test_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    msg = error_of(tmp_path, text)
    assert msg.startswith(str(tmp_path / "relay.toml") + ":"), msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_a_positional_in_the_file_is_explained(tmp_path: Path) -> None:
    msg = error_of(tmp_path, 'interface = "wg0"\n', command="up")
    assert msg.endswith(':1: "interface" is given on the command line, not in the file')


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    sub = subcommand_parser(cli.build_parser(), "start-relay")
    with pytest.raises(ConfigError, match=r"cannot read config file .*No such file"):
        load_values(tmp_path / "missing.toml", sub)
    f = tmp_path / "latin1.toml"
    f.write_bytes(b"open = true\nregion = '\xe9'\n")
    with pytest.raises(ConfigError, match=r"latin1.toml:2: not UTF-8 text"):
        load_values(f, sub)


def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    f = write(tmp_path, "open = true\n\n\n\n\n\nmax-bandwith = 5\n")
    env = dict(os.environ, WGRELAY_STATE_DIR=str(tmp_path / "state"))
    res = subprocess.run(
        [sys.executable, "-m", "wgrelay", "start-relay", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert res.returncode == 1
    assert res.stderr == (
        f'wgrelay: error: {f}:7: unknown key "max-bandwith" (did you mean "max-bandwidth"?)\n'
    )


# ---------------------------------------------------------------- reading again (SIGHUP)


def test_reread_sees_the_file_as_it_is_now_and_what_changed(tmp_path: Path) -> None:
    f = write(tmp_path, "open = true\nmax-connections = 5\n")
    args = parse_args(cli.build_parser(), ["start-relay", "--config", str(f), "--port", "7"])
    source = Reloadable(args, lambda a: a.max_connections, lambda a: 20 - 10 * a.verbose)
    f.write_text("open = true\nmax-connections = 6\nport = 9\nverbose = 1\n")
    again = source.reread()
    assert again.options == 6
    assert again.args.port == 7  # the command line still wins
    assert again.changed == {"verbose": "--verbose", "max_connections": "--max-connections"}
    assert again.log_level == 10
    f.write_text('open = true\nmax-connections = "nope"\n')
    with pytest.raises(ConfigError, match=":2: max-connections"):
        source.reread()


def test_reader_without_a_file_reparses_the_command_line() -> None:
    reader = ConfigReader(cli.build_parser(), ["start-relay", "--open"])
    assert reader.read().open is True
    assert reader.flag("start-relay", "max_connections") == "--max-connections"
