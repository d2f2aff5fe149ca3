#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need on a fresh
# Debian machine, then runs the format check, clippy, the offline Kubernetes validation (helm
# lint, kubernetes-validate, yamllint, checkov, manifest drift), the generated-file drift checks
# and the whole test suite. Safe to re-run; installs are skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v rsyslogd >/dev/null 2>&1 || need_apt+=(rsyslog)
command -v logger >/dev/null 2>&1 || need_apt+=(bsdutils)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)   # the dashboard's headless-browser test
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
# Real third-party Python clients (elasticsearch-py, the OpenTelemetry SDK, python-logging-loki)
# in a virtualenv under target/, reinstalled only when the requirements change.
venv=target/pyenv
if ! cmp -s scripts/python-requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  echo "== installing the Python test clients into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/python-requirements.txt
  cp scripts/python-requirements.txt "$venv/requirements.txt"
fi
export LOGCLUSTER_PYTHON="$PWD/$venv/bin/python"
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest >/dev/null 2>&1 || true

# No incremental caches: a fresh CI build gains nothing from them and they double the disk
# footprint of the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== Kubernetes: chart, manifests and operator objects, offline"
./scripts/validate_k8s.sh

echo "== tests"
export LOGCLUSTER_TEST_PATIENCE="${LOGCLUSTER_TEST_PATIENCE:-3}"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 4
else
  cargo test --workspace --locked --no-fail-fast
fi
