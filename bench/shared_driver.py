"""``--custom-driver`` for the shared anchor harness (shared/bench/run_all.sh).

The harness starts our relay with ``--custom-cmd`` and then, for every run,
calls ``<its python3> shared_driver.py --relay 127.0.0.1:PORT -- <udpgen> ARGS``.
This driver does wgrelay's control plane (register two fresh keys, open a
session from A to B), then runs the harness's ``udpgen --proto custom`` on the
two registered sockets with wgrelay's 10-byte data header, and closes the
session afterwards.

Two things the harness does not hand us:

* The Python: it runs drivers with its own ``python3``, which has no wgrelay.
  When ``import wgrelay`` fails we re-exec under this repo's ``.venv/bin/python``.
* The relay's public key (the control plane is encrypted to it): the relay's
  stdout goes nowhere. The relay must therefore run with a known state dir,
  ``/tmp/wgrelay-shared-bench`` by default (``$WGRELAY_BENCH_STATE_DIR`` or
  ``--state-dir`` to change), and the key is read from ``relay.key`` there.

    cp -r /work/shared/bench /tmp/anchor-bench   # the harness writes next to itself
    /tmp/anchor-bench/run_all.sh --only a_direct,c_socat,d_coturn,g_py_blocking,x_custom \\
      --custom-cmd '/work/main/.venv/bin/wgrelay start-relay --open --bind 127.0.0.1 \\
          --port {port} --max-bandwidth 0 --state-dir /tmp/wgrelay-shared-bench' \\
      --custom-driver /work/main/bench/shared_driver.py --custom-label '(x) wgrelay' --no-write
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV_PYTHON = BENCH.parent / ".venv" / "bin" / "python"
REEXEC_MARK = "WGRELAY_BENCH_DRIVER_REEXEC"
DEFAULT_STATE_DIR = "/tmp/wgrelay-shared-bench"  # noqa: S108  (a fixed path both sides know)
KEY_WAIT_S = 10.0


def ensure_wgrelay_importable() -> None:
    """Re-exec under the project's venv if this interpreter has no wgrelay."""
    if importlib.util.find_spec("wgrelay") is not None:
        return
    if os.environ.get(REEXEC_MARK) or not VENV_PYTHON.exists():
        sys.exit(f"shared_driver: no wgrelay in {sys.executable} and no usable {VENV_PYTHON}")
    os.environ[REEXEC_MARK] = "1"  # a venv without wgrelay must not loop forever
    argv = [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execv(VENV_PYTHON, argv)  # noqa: S606  (our own venv interpreter, fixed argv)


def read_relay_public_key(state_dir: Path) -> str:
    """The relay writes its key on first start; the harness only waits for the port."""
    from wgrelay.keys import load_or_create_relay_identity

    key_file = state_dir / "relay.key"
    deadline = time.monotonic() + KEY_WAIT_S
    while not key_file.exists():
        if time.monotonic() > deadline:
            sys.exit(
                f"shared_driver: no relay key at {key_file}; start the relay with "
                f"--state-dir {state_dir}"
            )
        time.sleep(0.05)
    identity, _ = load_or_create_relay_identity(key_file)
    return str(identity.public)


def main() -> int:
    ensure_wgrelay_importable()
    from relay_pair import loopback_endpoint, open_wgrelay_pair

    from wgrelay.keys import PublicKey

    ap = argparse.ArgumentParser(description="wgrelay driver for the shared relay harness")
    ap.add_argument("--relay", required=True, help="127.0.0.1:PORT the relay listens on")
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("WGRELAY_BENCH_STATE_DIR", DEFAULT_STATE_DIR)),
        help="the relay's --state-dir (its key is read from relay.key there)",
    )
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- udpgen MODE ARGS...")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no udpgen command after --")
    relay = loopback_endpoint(args.relay)
    relay_key = PublicKey.from_base64(read_relay_public_key(args.state_dir))

    pair = open_wgrelay_pair(relay, relay_key)
    try:
        full = [*cmd, "--proto", "custom", *pair.udpgen_args(relay)]
        # the harness waits for us; our only child is udpgen, which stops by itself
        # (bounded run), and subprocess.run kills it if we are interrupted
        return subprocess.run(full, pass_fds=pair.fds, check=False).returncode
    finally:
        pair.close()


if __name__ == "__main__":
    sys.exit(main())
