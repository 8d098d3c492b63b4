#!/usr/bin/env bash
# Install what quiesce's example and test suite need on a fresh Debian machine (as root).
set -euo pipefail
need=()
for pkg_cmd in btrfs-progs:mkfs.btrfs xfsprogs:mkfs.xfs e2fsprogs:e2fsck util-linux:fsfreeze \
               prometheus:promtool mariadb-server:mariadbd mariadb-client:mariadb \
               qemu-utils:qemu-img procps:pgrep postgresql-client:psql \
               postgresql-client:pgbench \
               etcd-server:etcd etcd-client:etcdctl openssl:openssl \
               socat:socat iproute2:ip busybox-static:busybox; do
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
# Packaging tests: a clean Debian root for the package, and lintian (tests/it/package.rs).
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# quiesce guest-agent tests compare against the real qemu-ga (Debian qemu-guest-agent).
command -v qemu-ga >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq qemu-guest-agent >/dev/null
}
# The QEMU guest test (tests/it/qemu_guest.rs): QEMU and a Debian kernel, unpacked (not installed:
# qemu-system-x86 conflicts with the newer qemu-utils) into a cache outside the checkout.
QEMU_CACHE=/var/cache/quiesce-tests/qemu
# The Debian 6.1 kernel the guest test was measured with, or the newest one the mirror has
# once that one is gone (the -NN suffix moves with Debian's updates).
KERNEL_PKG=linux-image-6.1.0-47-amd64
if ! apt-cache show "$KERNEL_PKG" >/dev/null 2>&1; then
  KERNEL_PKG=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
    | awk '{print $1}' | sort -V | tail -1)
fi
if [ ! -x "$QEMU_CACHE/root/usr/bin/qemu-system-x86_64" ] || ! ls "$QEMU_CACHE"/root/boot/vmlinuz-* >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq busybox-static seabios ipxe-qemu cpio libcapstone4 libfdt1 libpmem1 \
      librdmacm1 libibverbs1 libslirp0 libvdeplug2 >/dev/null
  mkdir -p "$QEMU_CACHE/debs" "$QEMU_CACHE/root"
  (cd "$QEMU_CACHE/debs" && apt-get download -qq qemu-system-x86 qemu-system-common qemu-system-data "$KERNEL_PKG")
  for d in "$QEMU_CACHE"/debs/*.deb; do dpkg -x "$d" "$QEMU_CACHE/root"; done
fi
# benches/guest_agent.rs times both agents' FIFREEZE/FITHAW calls with strace.
command -v strace >/dev/null 2>&1 || apt-get install -y -qq strace >/dev/null
# The server tests hold idle connections open as another user (python3 from /usr/bin).
if [ ! -x /usr/bin/python3 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3-minimal >/dev/null
fi
