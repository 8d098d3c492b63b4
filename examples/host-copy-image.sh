#!/usr/bin/env bash
# Host side of the two-phase API: quiesce the guest's applications and filesystems, copy a
# disk image, release. Run where `quiesce serve` listens (or forward its socket).
#
#   examples/host-copy-image.sh IMAGE DEST [SOCKET]
#
# The copy is taken between prepare (pre hooks ran, filesystems frozen) and release (thaw,
# post hooks). If this script dies in between, the guard thaws at the deadline and the
# operation is reported inconsistent; a repeated prepare/release with the same id is
# idempotent, so retrying is safe.
set -euo pipefail
image=${1:?image to copy}; dest=${2:?destination}; socket=${3:-/run/quiesce/quiesce.sock}
id="host-$(date -u +%Y%m%dT%H%M%SZ)-$$"
q() { quiesce "$@" --socket "$socket"; }

release() { q release --id "$id" > "$dest.report.json" || true; }
answer=$(q prepare --id "$id" --deadline 60s) || { echo "$answer" >&2; release; exit 1; }
trap release EXIT
echo "$answer" | grep -q '"state": "frozen"' || echo "warning: not frozen: $answer" >&2

cp --reflink=auto --sparse=always "$image" "$dest"

trap - EXIT
release
grep -E '"(status|consistency)"' "$dest.report.json"
