#!/usr/bin/env bash
# Bounded fuzzing for CI: builds every fuzz target once, then runs each for N seconds
# (default 20) from its seed corpus in fuzz/corpus/<target>. The corpus is copied to a temp
# directory first, so the inputs libFuzzer adds never grow the repo. Fails on the first
# crash, panic or broken property; the input that did it is left in fuzz/artifacts/<target>/
# and printed, ready to become a regression test in tests/hostile_input.rs.
#
#   fuzz/run.sh [SECONDS]            every target
#   FUZZ_TARGETS="size config" fuzz/run.sh 60
#
# cargo-fuzz needs nightly flags (-Zsanitizer, -Cpasses=sancov); on the stable toolchain
# RUSTC_BOOTSTRAP=1 allows them. BERTH_FUZZ_SANITIZER=none builds without AddressSanitizer
# (faster; berth has no unsafe parsing code, so ASAN mostly guards the dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
sanitizer="${BERTH_FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

started=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer"
built=$(date +%s)
echo "fuzz/run.sh: built in $((built - started)) s"

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
bin="fuzz/target/x86_64-unknown-linux-gnu/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
for target in $targets; do
  mkdir -p "$work/$target"
  cp fuzz/corpus/"$target"/* "$work/$target/" 2>/dev/null || true
  echo "fuzz/run.sh: $target for ${secs} s"
  # -timeout: one input taking longer than that is a hang, and fails the run.
  mkdir -p "fuzz/artifacts/$target"
  # The binary that `cargo fuzz build` made, run directly: `cargo fuzz run` would check (and
  # in a git worktree, where build.rs always reruns, rebuild) the crate once per target.
  if ! "$bin/$target" "$work/$target" -artifact_prefix="fuzz/artifacts/$target/" \
      -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$work/$target.log" 2>&1; then
    failed+=("$target")
    grep -v -E '^#[0-9]+' "$work/$target.log" | tail -n 60
    ls -1 "fuzz/artifacts/$target/" 2>/dev/null | sed "s|^|fuzz/run.sh: crashing input: fuzz/artifacts/$target/|"
  else
    grep -E '^Done|stat::number_of_executed_units' "$work/$target.log" | sed "s|^|fuzz/run.sh: $target: |"
  fi
done

echo "fuzz/run.sh: ${#failed[@]} failed, total $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: failing targets: ${failed[*]}" >&2
  exit 1
fi
