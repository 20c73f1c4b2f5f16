#!/usr/bin/env bash
# Builds berth's release binary, the one every package ships: optimized and stripped
# ([profile.release] in Cargo.toml) and statically linked against glibc
# (`-C target-feature=+crt-static`), so the same file runs on the host, in a bare Debian
# chroot, in the Docker managed plugin's rootfs and in the container image.
#
# berth resolves no user or host names (no NSS), so static glibc has no runtime
# dependencies; the admin API's TCP address must be an IP literal.
#
# Usage: packaging/build-release.sh      prints the binary's path on stdout
# Env:   CARGO_TARGET_DIR                where cargo builds (default: ./target)
#
# The target triple is given explicitly so RUSTFLAGS apply to berth only, not to build
# scripts and proc macros (which cannot be static). Output:
# $CARGO_TARGET_DIR/<host triple>/release/berth. A second run with nothing changed is a
# cargo no-op (about a second), so tests call this freely.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || { echo "build-release.sh: cannot tell the host triple from rustc -vV" >&2; exit 1; }
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --locked --target "$triple" --bin berth >&2

bin="$target_dir/$triple/release/berth"
[ -x "$bin" ] || { echo "build-release.sh: $bin was not built" >&2; exit 1; }

# Refuse to hand out a binary that is not what this script promises.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-release.sh: $bin is dynamically linked" >&2
  exit 1
fi
if readelf -S "$bin" | grep -q '\.symtab'; then
  echo "build-release.sh: $bin is not stripped" >&2
  exit 1
fi
echo "$bin"
