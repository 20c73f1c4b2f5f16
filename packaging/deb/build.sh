#!/usr/bin/env bash
# Builds berth's Debian package with dpkg-deb alone (no debhelper, no cargo-deb): stages
# the tree, writes control, conffiles and md5sums, and builds
# OUTDIR/berth_<version>_<arch>.deb. Prints the .deb's path on stdout.
#
# Usage: packaging/deb/build.sh [OUTDIR]       (default OUTDIR: target/deb)
# Env:   BERTH_BINARY   the binary to ship (default: packaging/build-release.sh's output,
#                       the static stripped release build)
#
# What the package installs:
#   /usr/bin/berth                            the static release binary
#   /lib/systemd/system/berth.service         systemd/berth.service (Type=notify)
#   /etc/berth/config.toml.example            every key, commented   (conffile)
#   /etc/default/berth                        the unit's environment (conffile)
#   /usr/share/man/man8/berth.8.gz            generated from the binary's --help
#   /usr/share/doc/berth/{README.md,copyright,changelog.gz}
# Maintainer scripts (packaging/deb/debian/): enable and start like dh_installsystemd,
# nothing started without systemd; purge never touches /var/lib/berth.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/deb}

bin=${BERTH_BINARY:-$("$root/packaging/build-release.sh")}
[ -x "$bin" ] || { echo "deb/build.sh: $bin is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
bin_version=$(env -i "$bin" --version | awk '{print $2}')
if [ "$version" != "$bin_version" ]; then
  echo "deb/build.sh: Cargo.toml says $version but $bin says $bin_version" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
umask 022

install -D -m 0755 "$bin" "$stage/usr/bin/berth"
install -D -m 0644 "$root/systemd/berth.service" "$stage/lib/systemd/system/berth.service"
install -D -m 0644 "$root/packaging/config.example.toml" "$stage/etc/berth/config.toml.example"
install -D -m 0644 "$here/debian/default" "$stage/etc/default/berth"
install -d "$stage/usr/share/man/man8" "$stage/usr/share/doc/berth"
"$here/manpage.sh" "$bin" | gzip -9n > "$stage/usr/share/man/man8/berth.8.gz"
install -m 0644 "$root/README.md" "$stage/usr/share/doc/berth/README.md"
install -m 0644 "$here/debian/copyright" "$stage/usr/share/doc/berth/copyright"
commit=$(env -i "$bin" --version | sed -n 's/.*(\(.*\)).*/\1/p')
{
  echo "berth ($version) unstable; urgency=medium"
  echo
  echo "  * Built from commit $commit."
  echo
  echo " -- berth maintainers <berth@localhost>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")"
} | gzip -9n > "$stage/usr/share/doc/berth/changelog.gz"

install -d "$stage/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$here/debian/$script" "$stage/DEBIAN/$script"
done
printf '%s\n' /etc/berth/config.toml.example /etc/default/berth > "$stage/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: berth
Version: $version
Architecture: $arch
Maintainer: berth maintainers <berth@localhost>
Installed-Size: $installed_kib
Depends: e2fsprogs
Recommends: xfsprogs
Section: admin
Priority: optional
Description: node-local persistent volumes for Kubernetes, Docker and Mesos
 berth keeps the data of stateful tasks (databases, queues) on the node where it
 was first written. One daemon serves a Kubernetes CSI driver, a Docker volume
 plugin and an admin API for Mesos/Marathon from one volume engine, with sizes
 enforced by per-volume filesystem images and reservations kept in a durable
 local store.
 .
 The binary is statically linked. Removing or purging the package never removes
 /var/lib/berth, which holds the volumes and their reservations.
EOF
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print0 | sed -z 's|^\./||' \
  | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/berth_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
echo "$deb"
