#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need on a fresh
# Debian machine, then runs the format check, clippy, the generated-file drift checks and the
# whole test suite. Safe to re-run; installs are skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v rsyslogd >/dev/null 2>&1 || need_apt+=(rsyslog)
command -v logger >/dev/null 2>&1 || need_apt+=(bsdutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing test dependencies: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "== warning: not root; cannot install ${need_apt[*]} (tests that need them will fail)" >&2
  fi
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
export LOGCLUSTER_TEST_PATIENCE="${LOGCLUSTER_TEST_PATIENCE:-3}"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 4
else
  cargo test --workspace --locked --no-fail-fast
fi
