#!/usr/bin/env bash
# Runs berth's whole test suite as root: installs what the tests need (scripts/test-deps.sh:
# a real dockerd, mkfs tools, QEMU, busybox, grpcio), checks formatting and lints, then runs
# every unit and root integration test. .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "test.sh: the integration tests mount things; run as root" >&2; exit 1; }

# Everything the tests need is installed by this one script (and only there).
./scripts/test-deps.sh

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --no-fail-fast 2>&1 | tee "$log"

# The benchmarks in quick mode (small counts, debug build, the binaries cargo test just
# built), so they cannot rot: they print their figures and assert only counts (store commits
# per operation, nothing committed by a call with nothing to do), never a timing.
BERTH_BENCH_QUICK=1 cargo test --locked --bench engine_lifecycle --bench csi_lifecycle \
    --bench data_path --bench loopfs_lifecycle --bench docker_volumes

# Bounded fuzzing of every parser from the seed corpus in fuzz/corpus (fails on any crash).
./fuzz/run.sh 15

# One closing line for the whole suite: every cargo test passed (the fuzz stage fails the
# script on a crash).
passed=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$log")
echo "berth: ${passed} passed, 0 failed"

