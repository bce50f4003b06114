"""Operator settings in ``STATE_DIR/settings.toml`` (written by ``configure-relay``).

::

    # managed by `wgrelay configure-relay`; edits by hand are fine
    [relay]
    enabled = true            # default for interfaces without their own line

    [interface.wg0]
    relay_enabled = false

A running agent re-reads the file when it changes, so ``configure-relay`` takes
effect without a restart. The file is written atomically (temporary file, then
rename) and never half-written.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wgrelay.errors import ConfigError

SETTINGS_FILE = "settings.toml"
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.=+-]{1,15}$")


@dataclass(slots=True)
class Settings:
    relay_enabled: bool = True
    interfaces: dict[str, bool] = field(default_factory=dict)
    """Per-interface relay_enabled, overriding the default."""

    def relay_enabled_for(self, interface: str) -> bool:
        return self.interfaces.get(interface, self.relay_enabled)


def settings_path(state_dir: Path) -> Path:
    return state_dir / SETTINGS_FILE


def load_settings(state_dir: Path) -> Settings:
    path = settings_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    s = Settings()
    relay = doc.get("relay", {})
    if not isinstance(relay, dict) or not isinstance(relay.get("enabled", True), bool):
        raise ConfigError(f"{path}: [relay] enabled must be true or false")
    s.relay_enabled = relay.get("enabled", True)
    ifaces = doc.get("interface", {})
    if not isinstance(ifaces, dict):
        raise ConfigError(f"{path}: [interface.NAME] tables expected")
    for name, table in ifaces.items():
        if not isinstance(table, dict) or not isinstance(table.get("relay_enabled"), bool):
            raise ConfigError(f"{path}: [interface.{name}] relay_enabled must be true or false")
        s.interfaces[name] = table["relay_enabled"]
    return s


def save_settings(state_dir: Path, s: Settings) -> None:
    lines = [
        "# managed by `wgrelay configure-relay`; edits by hand are fine",
        "[relay]",
        f"enabled = {'true' if s.relay_enabled else 'false'}",
    ]
    for name in sorted(s.interfaces):
        lines += ["", f'[interface."{name}"]',
                  f"relay_enabled = {'true' if s.interfaces[name] else 'false'}"]  # fmt: skip
    path = settings_path(state_dir)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None


def check_interface_name(name: str) -> str:
    if not _IFACE_RE.match(name):
        raise ConfigError(f"{name!r} is not an interface name")
    return name
