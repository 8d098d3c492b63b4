#!/usr/bin/env bash
# Build every release artefact into dist/: the static binary (glibc, +crt-static) as a
# tarball, the Debian package built from that same binary, man pages, completions, the
# Prometheus rules and Grafana dashboard, and SHA256SUMS over all of them.
# `scripts/release.sh static-binary` only builds the static binary and prints its path (the
# QEMU guest test runs it inside the guest).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target"
if [ "${1:-}" = static-binary ]; then
  echo "$PWD/target/$target/release/quiesce"
  exit 0
fi
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
# Stripped: the release profile keeps line tables (debug = 1) for local profiling.
bin="$stage/quiesce"
strip -o "$bin" "target/$target/release/quiesce"
version=$("$bin" --version | awk '{print $2}')
rm -rf dist; mkdir -p dist
name="quiesce-$version-x86_64-linux-static"
mkdir -p "$stage/$name"
install -m 0755 "$bin" "$stage/$name/quiesce"
"$bin" generate man "$stage/$name/man"
"$bin" generate completions "$stage/$name/completions"
cp README.md CHANGELOG.md "$stage/$name/"
cp -r packaging/systemd packaging/monitoring "$stage/$name/"
cp examples/quiesce.toml "$stage/$name/quiesce.toml.example"
tar -C "$stage" --owner=0 --group=0 -czf "dist/$name.tar.gz" "$name"
install -m 0755 "$bin" "dist/quiesce-$version-x86_64-linux-static"
packaging/build-deb.sh "$bin" dist >/dev/null
(cd dist && sha256sum -- * > SHA256SUMS)
ls -l dist
