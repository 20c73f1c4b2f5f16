#!/usr/bin/env bash
# Installs berth on this Debian machine and starts it on its embedded default
# (state and volumes under /var/lib/berth, sockets under /run/berth and
# /run/docker/plugins/berth.sock). Run as root from a checkout: ./scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# Runtime tools berth calls: mkfs/resize for loopfs volumes.
need=(e2fsprogs xfsprogs util-linux)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

# The same static, stripped binary the packages ship.
bin=$(packaging/build-release.sh)
install -m 0755 "$bin" /usr/local/bin/berth
install -d -m 0755 /etc/berth
install -m 0644 packaging/config.example.toml /etc/berth/config.toml.example

if [ -d /run/systemd/system ]; then
  sed 's|/usr/bin/berth|/usr/local/bin/berth|' systemd/berth.service > /etc/systemd/system/berth.service
  systemctl daemon-reload
  systemctl enable --now berth.service
  systemctl --no-pager status berth.service | head -5
else
  # No systemd (a container or a minimal host): run it in the background.
  if [ -f /run/berth/berth.pid ] && kill -0 "$(cat /run/berth/berth.pid)" 2>/dev/null; then
    kill "$(cat /run/berth/berth.pid)"; sleep 1
  fi
  mkdir -p /run/berth
  nohup /usr/local/bin/berth serve >>/var/log/berth.log 2>&1 &
  echo $! > /run/berth/berth.pid
  for _ in $(seq 50); do [ -S /run/berth/admin.sock ] && break; sleep 0.1; done
  echo "berth is running (pid $(cat /run/berth/berth.pid)); log: /var/log/berth.log"
fi
/usr/local/bin/berth --version
