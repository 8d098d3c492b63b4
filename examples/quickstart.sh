#!/usr/bin/env bash
# quiesce quick start: a self-contained, real run.
#
# Creates its own ext4 loop volume with a small application that appends fsync'ed records,
# hooks that pause and resume that application, and a `command` snapshot provider that copies
# the volume's image while it is frozen. Then runs `quiesce snapshot`, checks the copy with
# e2fsck (no journal recovery needed) and shows the last record in it. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it creates and freezes a loop filesystem)"; exit 2; }
scripts/install-deps.sh
cargo build --release --quiet
Q=$PWD/target/release/quiesce

umask 077
DEMO=$PWD/target/quickstart
rm -rf "$DEMO"; mkdir -p "$DEMO"/{hooks,mnt,state,snap-mnt}; chmod 700 "$DEMO"
LOOP=""; WRITER=""
cleanup() {
  set +e
  [ -n "$WRITER" ] && kill "$WRITER" 2>/dev/null && wait "$WRITER" 2>/dev/null
  fsfreeze -u "$DEMO/mnt" 2>/dev/null
  umount "$DEMO/snap-mnt" 2>/dev/null
  umount "$DEMO/mnt" 2>/dev/null
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  [ -n "${SNAPLOOP:-}" ] && losetup -d "$SNAPLOOP"
}
trap cleanup EXIT

truncate -s 256M "$DEMO/volume.img"
LOOP=$(losetup -f --show "$DEMO/volume.img")
mkfs.ext4 -q "$LOOP"
mount "$LOOP" "$DEMO/mnt"

# The application: appends "record N" lines, fsync'ing each; pauses while $DEMO/pause exists.
cat > "$DEMO/app.sh" <<APP
#!/bin/bash
n=0
while true; do
  if [ -e "$DEMO/pause" ]; then touch "$DEMO/paused"; sleep 0.01; continue; fi
  rm -f "$DEMO/paused"
  n=\$((n+1)); echo "record \$n" >> "$DEMO/mnt/journal.txt"; sync "$DEMO/mnt/journal.txt"
done
APP
chmod 700 "$DEMO/app.sh"; "$DEMO/app.sh" & WRITER=$!

cat > "$DEMO/hooks/app-pre" <<HOOK
#!/bin/sh
# Quiesce the application: ask it to pause and wait until it says it has.
touch "$DEMO/pause"
for i in \$(seq 100); do [ -e "$DEMO/paused" ] && exit 0; sleep 0.05; done
echo "application did not pause" >&2; exit 1
HOOK
cat > "$DEMO/hooks/app-post" <<HOOK
#!/bin/sh
rm -f "$DEMO/pause"
HOOK
cat > "$DEMO/hooks/copy-image" <<HOOK
#!/bin/sh
# The snapshot: a copy of the frozen volume's image. Prints the snapshot id.
cp --reflink=auto "$DEMO/volume.img" "$DEMO/snapshot.img" && echo "$DEMO/snapshot.img"
HOOK
chmod 700 "$DEMO"/hooks/*

cat > "$DEMO/quiesce.toml" <<CONF
[paths]
state_dir = "$DEMO/state"
catalog = "$DEMO/catalog.db"
[freeze]
include = ["$DEMO/mnt"]
timeout = "30s"
[snapshot]
provider = "command"
command = ["$DEMO/hooks/copy-image"]
timeout = "60s"
[[hook]]
name = "app"
pre = ["$DEMO/hooks/app-pre"]
post = ["$DEMO/hooks/app-post"]
timeout = "10s"
CONF
chmod 600 "$DEMO/quiesce.toml"

sleep 1
echo "== quiesce check"
"$Q" check --config "$DEMO/quiesce.toml"
echo "== quiesce snapshot"
set +e; "$Q" snapshot --config "$DEMO/quiesce.toml"; rc=$?; set -e
echo "exit code: $rc"
echo "== the copy, checked"
e2fsck -fn "$DEMO/snapshot.img"
SNAPLOOP=$(losetup -f --show -r "$DEMO/snapshot.img")
mount -o ro "$SNAPLOOP" "$DEMO/snap-mnt"
echo "last record in the snapshot: $(tail -n1 "$DEMO/snap-mnt/journal.txt")"
echo "records written so far:      $(wc -l < "$DEMO/mnt/journal.txt")"
exit $rc
