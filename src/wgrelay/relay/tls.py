"""The relay's TLS listener settings: which ports, which certificate.

TLS is there so an agent on a network that lets only HTTPS out can still reach
the relay (on 443); it is not what authenticates the relay (every control
message is sealed to the relay's key), so a self-signed certificate made once
and kept in the state directory is as good as any (docs/SECURITY.md).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

from wgrelay.errors import ConfigError
from wgrelay.transport.stream import server_tls_context

DEFAULT_TLS_PORT = 443
SELF_SIGNED_DAYS = 3650


def stream_ports(
    udp_port: int,
    tcp_port: int | None,
    tls_port: int | None,
    tls_wanted: bool,
) -> tuple[int | None, int]:
    """(TCP port, TLS port): 0 is off, a TCP port of None is the UDP port's
    number (one number to open in a firewall; with ``--port 0``, the one the
    system picks). TLS defaults to 443 when a certificate is configured."""
    if tls_port and not tls_wanted:
        raise ConfigError("--tls-port needs --tls-cert and --tls-key, or --tls-self-signed")
    tls = (DEFAULT_TLS_PORT if tls_port is None else tls_port) if tls_wanted else 0
    tcp_number = udp_port if tcp_port is None else tcp_port
    if tls and tcp_number == tls:
        raise ConfigError(f"TCP and TLS cannot share port {tls} (give --tcp-port or --tls-port)")
    return tcp_port, tls


def tls_context(
    cert: Path | None, key: Path | None, self_signed: bool, state_dir: Path
) -> ssl.SSLContext | None:
    """The server context, or None when TLS is off. Errors are one line."""
    if self_signed and (cert is not None or key is not None):
        raise ConfigError("--tls-self-signed makes its own certificate: drop --tls-cert/--tls-key")
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if self_signed:
        cert, key = state_dir / "tls.crt", state_dir / "tls.key"
        if not (cert.exists() and key.exists()):
            make_self_signed(cert, key)
    if cert is None or key is None:
        return None
    try:
        return server_tls_context(str(cert), str(key))
    except FileNotFoundError as e:
        raise ConfigError(f"TLS: no such file: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"TLS: cannot load {cert} / {key}: {e}") from None


def make_self_signed(cert: Path, key: Path) -> None:
    """A P-256 key and a ten-year certificate for it, via ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("--tls-self-signed needs the openssl command (apt install openssl)")
    tmp_key = key.with_suffix(".key.tmp")
    tmp_cert = cert.with_suffix(".crt.tmp")
    old = os.umask(0o077)  # the key is never readable by others, not even briefly
    try:
        done = subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", str(SELF_SIGNED_DAYS), "-subj", "/CN=wgrelay",
                "-keyout", str(tmp_key), "-out", str(tmp_cert),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise ConfigError(f"openssl could not make a certificate: {why}")
        tmp_key.replace(key)
        tmp_cert.replace(cert)
    finally:
        os.umask(old)
        tmp_key.unlink(missing_ok=True)
        tmp_cert.unlink(missing_ok=True)
