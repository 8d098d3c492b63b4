#!/usr/bin/env bash
# The whole test suite: installs what it needs, then builds and runs every test.
# Must run as root: the tests create loop filesystems and really freeze them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (tests freeze loop filesystems they create)"; exit 2; }
scripts/install-deps.sh
cargo build --all-targets
cargo test -- --test-threads=2
