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

import subprocess
import sys
import time
from pathlib import Path

from bench_common import ensure_wgrelay_importable, parse_driver_args

DEFAULT_STATE_DIR = "/tmp/wgrelay-shared-bench"  # noqa: S108  (a fixed path both sides know)
KEY_WAIT_S = 10.0


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
    ensure_wgrelay_importable(__file__, "shared_driver")
    from relay_pair import loopback_endpoint, open_wgrelay_pair

    from wgrelay.keys import PublicKey

    args, cmd = parse_driver_args(
        "wgrelay driver for the shared relay harness",
        DEFAULT_STATE_DIR,
        "the relay's --state-dir (its key is read from relay.key there)",
    )
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
