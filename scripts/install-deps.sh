#!/usr/bin/env bash
# Install what quiesce's example and test suite need on a fresh Debian machine (as root).
set -euo pipefail
need=()
for pkg_cmd in btrfs-progs:mkfs.btrfs xfsprogs:mkfs.xfs e2fsprogs:e2fsck util-linux:fsfreeze \
               prometheus:promtool mariadb-server:mariadbd mariadb-client:mariadb \
               qemu-utils:qemu-img procps:pgrep postgresql-client:psql \
               postgresql-client:pgbench; do
  command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || need+=("${pkg_cmd%%:*}")
done
# qemu-ga (Debian's qemu-guest-agent) for the platform tests: its fsfreeze-hook path.
if ! command -v qemu-ga >/dev/null 2>&1 && [ ! -x /usr/sbin/qemu-ga ]; then
  need+=(qemu-guest-agent)
fi
# PostgreSQL server binaries (initdb, pg_ctl, postgres): on PATH, or Debian's layout.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
# Packaging tests: a clean Debian root for the package (tests/package.rs).
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
