#!/usr/bin/env bash
# Installs berth on this Debian machine and starts it on its embedded default
# (state and volumes under /var/lib/berth, sockets under /run/berth and
# /run/docker/plugins/berth.sock). Run as root from a checkout: ./scripts/install.sh
#
# Running it again gives the same result: the same files, and the service restarted on
# the binary just installed.
#
# Env: BERTH_BINARY=PATH  install this binary instead of building the release one
#      DESTDIR=DIR        install beneath DIR and start nothing (for packaging and tests)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
root=${DESTDIR:-}
step() { echo "install.sh: $*"; }

export DEBIAN_FRONTEND=noninteractive
# Runtime tools berth calls: mkfs/resize for loopfs volumes.
need=(e2fsprogs xfsprogs util-linux)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  step "1/4 installing ${missing[*]} with apt"
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  step "1/4 runtime tools present (${need[*]})"
fi

if [ -n "${BERTH_BINARY:-}" ]; then
  step "2/4 using $BERTH_BINARY (no build)"
  bin=$BERTH_BINARY
else
  log=${TMPDIR:-/tmp}/berth-install-build.log
  step "2/4 building the release binary; this takes a few minutes on a 2-core machine (log: $log)"
  if ! bin=$(packaging/build-release.sh 2>"$log"); then
    tail -n 20 "$log" >&2
    echo "install.sh: the build failed; the whole log is $log" >&2
    exit 1
  fi
fi

step "3/4 installing /usr/local/bin/berth, /etc/berth/config.toml.example and berth(8)"
install -D -m 0755 "$bin" "$root/usr/local/bin/berth"
install -D -m 0644 packaging/config.example.toml "$root/etc/berth/config.toml.example"
# The page the unit's Documentation=man:berth(8) names; gzip -n keeps no timestamp, so a
# second run writes the same bytes.
install -d -m 0755 "$root/usr/local/share/man/man8"
packaging/deb/manpage.sh "$bin" | gzip -9n > "$root/usr/local/share/man/man8/berth.8.gz"
if [ -d /run/systemd/system ] || [ -n "$root" ]; then
  install -d -m 0755 "$root/etc/systemd/system"
  sed 's|/usr/bin/berth|/usr/local/bin/berth|' systemd/berth.service \
    > "$root/etc/systemd/system/berth.service"
fi

if [ -n "$root" ]; then
  step "4/4 installed beneath $root; not started"
  exit 0
fi
if command -v mandb >/dev/null; then mandb -q 2>/dev/null || true; fi

if [ -d /run/systemd/system ]; then
  step "4/4 starting berth.service"
  systemctl daemon-reload
  systemctl enable --quiet berth.service
  # restart, not start: a second run must run the binary it just installed.
  systemctl restart berth.service
  systemctl --no-pager status berth.service | head -3
else
  # No systemd (a container or a minimal host): run it in the background. The pid file
  # lives in /run, not in /run/berth beside the sockets.
  step "4/4 starting berth in the background (no systemd)"
  for pidfile in /run/berth.pid /run/berth/berth.pid; do
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
  nohup /usr/local/bin/berth serve >>/var/log/berth.log 2>&1 </dev/null &
  echo $! > /run/berth.pid
  for _ in $(seq 50); do [ -S /run/berth/admin.sock ] && break; sleep 0.1; done
  echo "berth is running (pid $(cat /run/berth.pid)); log: /var/log/berth.log"
fi
/usr/local/bin/berth --version
