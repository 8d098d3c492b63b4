#!/usr/bin/env bash
# Build the Debian package from a built quiesce binary, with dpkg-deb from a staged tree
# (no packaging tool to install). Usage: packaging/build-deb.sh BINARY OUTDIR
# Every unit in packaging/systemd/ is shipped; man pages and completions come from the
# binary itself (`quiesce generate`), so they always match its command line.
set -euo pipefail
bin=$(realpath "$1"); out=$2
here=$(cd "$(dirname "$0")" && pwd); top=$(dirname "$here")
version=$("$bin" --version | awk '{print $2}')
deb_version="$version-1"
maintainer="quiesce developers <quiesce@users.noreply.github.com>"
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
root="$stage/root"
d() { install -d -m 0755 "$root/$1"; }

# Stripped (the release profile keeps line tables for local profiling).
d usr/bin; strip --remove-section=.comment --remove-section=.note -o "$root/usr/bin/quiesce" "$bin"; chmod 0755 "$root/usr/bin/quiesce"
install -d -m 0755 "$root/etc/quiesce"
install -m 0600 "$here/quiesce.toml" "$root/etc/quiesce/quiesce.toml"
d lib/systemd/system
for unit in "$here"/systemd/*.service "$here"/systemd/*.timer "$here"/systemd/*.socket \
            "$here"/systemd/*.path; do
  [ -e "$unit" ] && install -m 0644 "$unit" "$root/lib/systemd/system/"
done
d usr/lib/tmpfiles.d; install -m 0644 "$here/debian/tmpfiles.conf" "$root/usr/lib/tmpfiles.d/quiesce.conf"
# Releases before 0.2.0 cannot generate them (the upgrade test packages one).
if "$bin" generate man "$stage/man" 2>/dev/null; then
  d usr/share/man/man1
  install -m 0644 "$stage"/man/*.1 "$root/usr/share/man/man1/"
  gzip -9n "$root"/usr/share/man/man1/*.1
  "$bin" generate completions "$stage/completions"
  d usr/share/bash-completion/completions
  install -m 0644 "$stage/completions/quiesce.bash" "$root/usr/share/bash-completion/completions/quiesce"
  d usr/share/zsh/vendor-completions
  install -m 0644 "$stage/completions/_quiesce" "$root/usr/share/zsh/vendor-completions/_quiesce"
  d usr/share/fish/vendor_completions.d
  install -m 0644 "$stage/completions/quiesce.fish" "$root/usr/share/fish/vendor_completions.d/quiesce.fish"
else
  echo "build-deb: $bin cannot generate man pages; packaged without them" >&2
fi
doc=usr/share/doc/quiesce
d "$doc"; d "$doc/examples"
install -m 0644 "$top/README.md" "$root/$doc/README.md"
cp "$here/README.md" "$root/$doc/README.packaging.md"
install -m 0644 "$here/debian/copyright" "$root/$doc/copyright"
# Debian's names: the upstream changelog is changelog.gz, the package's own is
# changelog.Debian.gz (one entry per package version, dated like the upstream changelog).
if [ -f "$top/CHANGELOG.md" ]; then
  gzip -9n < "$top/CHANGELOG.md" > "$root/$doc/changelog.gz"
fi
stamp=${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}
printf '%s\n' "quiesce ($deb_version) unstable; urgency=medium" "" \
  "  * Package of upstream release $version (upstream changes: changelog.gz)." "" \
  " -- $maintainer  $(LC_ALL=C date -u -R -d "@$stamp")" | gzip -9n > "$root/$doc/changelog.Debian.gz"
chmod 0644 "$root/$doc"/changelog*.gz
# Lintian overrides, each with the reason it is not fixed instead.
d usr/share/lintian/overrides
install -m 0644 "$here/debian/lintian-overrides" "$root/usr/share/lintian/overrides/quiesce"
cp -r "$top/examples/." "$root/$doc/examples/"
if [ -d "$here/monitoring" ]; then
  d usr/share/quiesce
  cp -r "$here/monitoring/." "$root/usr/share/quiesce/"
fi
chmod -R u=rwX,go=rX "$root/usr"

install -d -m 0755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$deb_version/" -e "s/@SIZE@/$size/" -e "s/@MAINTAINER@/$maintainer/" "$here/debian/control.in" > "$root/DEBIAN/control"
echo /etc/quiesce/quiesce.toml > "$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
  | LC_ALL=C sort -z | xargs -0 md5sum > DEBIAN/md5sums)
for s in preinst postinst prerm postrm; do install -m 0755 "$here/debian/$s" "$root/DEBIAN/$s"; done

mkdir -p "$out"
deb="$out/quiesce_${deb_version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
