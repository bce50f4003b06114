#!/usr/bin/env bash
# Installs the Debian packages wgrelay's tests, demo and benchmarks use, if missing.
# As root on Debian/Ubuntu it runs apt-get; otherwise it only says what is missing.
set -euo pipefail

packages=(wireguard-go wireguard-tools nftables iproute2 iperf3 conntrack iputils-ping
          gcc libc6-dev python3-dev util-linux procps libnftables1 openssl systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: missing system packages: ${missing[*]} (system tests and the demo need them;" \
       "install them as root, or run make as root)" >&2
fi
