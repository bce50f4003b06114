"""One TOML file per daemon: every option of its command, by its long flag's name.

``wgrelay start-relay --config relay.toml`` and ``wgrelay up --config wg0.toml
wg0`` read a flat TOML table whose keys are the command's long options without
their dashes (``--max-bandwidth 500`` is ``max-bandwidth = 500``). The parser
is the source of truth: the keys, their conversion (the option's own ``type``
and ``choices``), lists for repeatable options and booleans for switches are
all derived from the argparse subparser, so an option added to cli_parser.py
is settable in the file without a change here.

Precedence: an option given on the command line wins over the file, and
choosing one member of a group of exclusive options there (``--open``) sets
aside the file's choice among them (``allow-file``); a repeatable option given
on the command line replaces the file's list instead of adding to it.

Errors are one line with the file and line: ``relay.toml:7: unknown key
"max-bandwith" (did you mean "max-bandwidth"?)``. Relative paths in the file
are taken from the working directory, as on the command line.

``ConfigReader.read`` parses the same command line with the file as it is now:
what a SIGHUP applies (relay/reload.py, mesh/reload.py).
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from wgrelay.errors import ConfigError

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_T = TypeVar("_T")
_UNSET = object()
"""A switch set to false in the file: the option keeps its default."""


def subcommand_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get(command)
            if isinstance(sub, argparse.ArgumentParser):
                return sub
    raise ConfigError(f"no command {command!r}")


def file_key(action: argparse.Action) -> str | None:
    """The key that sets ``action`` in a config file: its long flag without
    the dashes (``--max-bandwidth`` -> ``max-bandwidth``); None for what a
    file cannot set (help, version, positionals, --config itself)."""
    if isinstance(action, argparse._HelpAction | argparse._VersionAction):
        return None
    if action.dest in (argparse.SUPPRESS, "config"):
        return None
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0][2:] if longs else None


def file_options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Key -> action for every option of a command that a file can set."""
    out: dict[str, argparse.Action] = {}
    for action in sub._actions:
        key = file_key(action)
        if key is not None and _kind(action) is not None:
            out[key] = action
    return out


def _kind(action: argparse.Action) -> str | None:
    """How a TOML value maps onto the action (None: a file cannot set it)."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return "bool"
    if isinstance(action, argparse._CountAction):
        return "count"
    if isinstance(action, argparse._AppendAction | argparse._ExtendAction):
        return "list"
    if isinstance(action, argparse._StoreConstAction):  # store_true/false/const
        return "switch"
    if isinstance(action, argparse._StoreAction):
        return "list" if action.nargs in ("+", "*") or isinstance(action.nargs, int) else "value"
    return None


class _Source:
    """The file's text and where each top-level key is written (tomllib does
    not say), for errors that name a line."""

    def __init__(self, path: Path, text: str) -> None:
        self.name = str(path)
        self._lines = text.splitlines()

    def line_of(self, key: str) -> int:
        names = "|".join(_quoted(key))
        pattern = re.compile(rf"\s*(?:(?:{names})\s*[=.]|\[\s*(?:{names})\s*[\].])")
        for n, line in enumerate(self._lines, 1):
            if pattern.match(line):
                return n
            if line.lstrip().startswith("["):
                break  # another table's header: the top-level keys are above it
        return 1

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.name}:{self.line_of(key)}: {message}")


def _quoted(key: str) -> list[str]:
    k = re.escape(key)
    return [f'"{k}"', f"'{k}'", k]


def read_toml(path: Path) -> tuple[dict[str, Any], _Source]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_POSITION.search(msg)
        if m is None:  # "(at end of document)"
            line = len(text.splitlines()) or 1
            msg = msg.replace(" (at end of document)", " at the end of the file")
        else:
            line = int(m.group(1))
            msg = f"{msg[: m.start()]} (column {m.group(2)})"
        raise ConfigError(f"{path}:{line}: {msg[:1].lower()}{msg[1:]}") from None
    return doc, _Source(path, text)


def load_values(path: Path, sub: argparse.ArgumentParser) -> dict[str, object]:
    """The file's settings as ``dest -> value``, converted and checked as the
    command line would have them."""
    doc, src = read_toml(path)
    options = file_options(sub)
    values: dict[str, object] = {}
    for key, raw in doc.items():
        action = options.get(key)
        if action is None:
            raise src.error(key, _unknown(key, options, sub))
        value = _convert(action, key, raw, src)
        if value is not _UNSET:
            values[action.dest] = value
    for group in sub._mutually_exclusive_groups:
        chosen = [a for a in group._group_actions if values.get(a.dest, a.default) != a.default]
        if len(chosen) > 1:
            keys = [file_key(a) or a.dest for a in chosen]
            raise src.error(keys[1], f'"{keys[0]}" and "{keys[1]}" cannot both be set (choose one)')
    return values


def _unknown(key: str, options: dict[str, argparse.Action], sub: argparse.ArgumentParser) -> str:
    for action in sub._actions:
        if not action.option_strings and action.dest == key.replace("-", "_"):
            return f'"{key}" is given on the command line, not in the file'
    msg = f'unknown key "{key}"'
    near = [key.replace("_", "-")] if key.replace("_", "-") in options else []
    near = near or difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return msg + (f' (did you mean "{near[0]}"?)' if near else "")


def _convert(action: argparse.Action, key: str, raw: object, src: _Source) -> object:
    kind = _kind(action)
    if kind in ("bool", "switch"):
        if not isinstance(raw, bool):
            raise src.error(key, f'"{key}" must be true or false')
        if kind == "bool":
            return raw
        return action.const if raw else _UNSET
    if kind == "count":
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise src.error(key, f'"{key}" must be a whole number, 0 or more')
        return raw
    if kind == "list":
        if not isinstance(raw, list):
            raise src.error(key, f'"{key}" must be a list, e.g. {key} = ["..."] (it repeats)')
        return [_scalar(action, key, item, src) for item in raw]
    return _scalar(action, key, raw, src)


def _scalar(action: argparse.Action, key: str, raw: object, src: _Source) -> object:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise src.error(key, f'"{key}" must be a string or a number')
    text = str(raw)
    convert: Callable[[str], object] = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError, ConfigError) as e:
        raise src.error(key, f"{key}: {e or 'invalid value ' + repr(text)}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(f'"{c}"' for c in action.choices)
        raise src.error(key, f'{key}: "{text}" is not one of {choices}')
    return value


def _given_on_command_line(
    parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, argv: Sequence[str]
) -> set[str]:
    """The dests the command line set: a second parse where nothing has a
    default, so only what was given appears in the namespace."""
    saved: list[tuple[argparse.Action, object]] = []
    try:
        for p in (parser, sub):
            for action in p._actions:
                if not isinstance(action, argparse._SubParsersAction) and action.option_strings:
                    saved.append((action, action.default))
                    action.default = argparse.SUPPRESS
        given = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def _merge(
    parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace, path: Path
) -> None:
    sub = subcommand_parser(parser, args.command)
    values = load_values(path, sub)
    given = _given_on_command_line(parser, sub, argv)
    # one member of an exclusive group on the command line sets the group aside
    for group in sub._mutually_exclusive_groups:
        members = {a.dest for a in group._group_actions}
        if members & given:
            given |= members
    for dest, value in values.items():
        if dest not in given:
            setattr(args, dest, value)


@dataclass
class ConfigReader:
    """How the running command's options were made (its command line and
    config file): read again on SIGHUP."""

    parser: argparse.ArgumentParser
    argv: list[str]
    finish: Callable[[argparse.Namespace], None] = field(default=lambda _args: None)

    def read(self) -> argparse.Namespace:
        """The options as the command line and the file give them now
        (``ConfigError`` for a broken file)."""
        args = self.parser.parse_args(self.argv)
        if getattr(args, "config", None) is not None and args.command:
            _merge(self.parser, self.argv, args, Path(args.config))
        self.finish(args)
        args.config_reader = self
        return args

    def flag(self, command: str, dest: str) -> str:
        """The option's long flag (for messages)."""
        for action in subcommand_parser(self.parser, command)._actions:
            if action.dest == dest and action.option_strings:
                return max(action.option_strings, key=len)
        return dest

    def changed(self, old: argparse.Namespace, new: argparse.Namespace) -> list[str]:
        """The command's option dests whose value differs, in the parser's order."""
        out = []
        for action in subcommand_parser(self.parser, old.command)._actions:
            if file_key(action) is None or action.dest in out:
                continue
            if getattr(old, action.dest, None) != getattr(new, action.dest, None):
                out.append(action.dest)
        return out


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    finish: Callable[[argparse.Namespace], None] = lambda _args: None,
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the ``--config`` file's settings under
    the command line's; ``finish`` completes the namespace (defaults that
    depend on the host), also on every later ``config_reader.read()``."""
    return ConfigReader(parser, list(argv), finish).read()


@dataclass(frozen=True)
class Reread(Generic[_T]):
    """The options as the command line and the config file give them now."""

    args: argparse.Namespace
    options: _T
    changed: dict[str, str]
    """dest -> flag of every option whose value differs from the running one."""
    log_level: int
    config_file: str
    reader: ConfigReader

    def flag(self, dest: str) -> str:
        return self.reader.flag(self.args.command, dest)


@dataclass
class Reloadable(Generic[_T]):
    """A daemon's options and how to make them again (SIGHUP): ``build``
    turns a namespace into the daemon's options, ``log_level`` the verbosity
    options into a logging level. ``args`` are the options it started with."""

    args: argparse.Namespace
    build: Callable[[argparse.Namespace], _T]
    log_level: Callable[[argparse.Namespace], int]

    def reread(self) -> Reread[_T]:
        """Blocking (reads the file); ``ConfigError`` if the file or a value is bad."""
        reader: ConfigReader = self.args.config_reader
        new = reader.read()
        options = self.build(new)
        changed = {d: reader.flag(new.command, d) for d in reader.changed(self.args, new)}
        path = getattr(new, "config", None)
        where = str(path) if path is not None else "(no --config file)"
        return Reread(new, options, changed, self.log_level(new), where, reader)
