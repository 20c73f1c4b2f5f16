#!/usr/bin/env bash
# Builds the minimal root filesystem that berth runs in inside a container: the Docker
# managed plugin (packaging/docker-plugin) and the container image for Kubernetes and
# Marathon (packaging/container) share it.
#
#   /usr/bin/berth                    the static release binary
#   /usr/sbin/mkfs.ext4, resize2fs,   e2fsprogs, with the shared libraries they load, so
#     e2fsck                          loopfs volumes enforce sizes here too
#   /usr/sbin/mkfs.xfs, xfs_growfs    the same from xfsprogs, if the build host has it
#   /bin/busybox + applets            a shell for the Marathon command and for debugging
#   /etc/mke2fs.conf, passwd, group
#   /dev /proc /sys /run /tmp /var/lib/berth /etc/berth   empty, filled at run time
#
# Usage: packaging/rootfs.sh OUTDIR      (OUTDIR must not exist or be empty)
# Env:   BERTH_BINARY   the binary (default: packaging/build-release.sh's output)
# Needs: e2fsprogs and a static busybox (Debian: busybox-static) on the build host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: rootfs.sh OUTDIR}
bin=${BERTH_BINARY:-$("$here/build-release.sh")}

if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "rootfs.sh: $out is not empty" >&2
  exit 1
fi
umask 022
mkdir -p "$out"
for d in bin usr/bin usr/sbin etc/berth dev proc sys run tmp var/lib/berth root; do
  mkdir -p "$out/$d"
done
chmod 1777 "$out/tmp"
ln -s usr/sbin "$out/sbin"
install -m 0755 "$bin" "$out/usr/bin/berth"

# Copies a dynamically linked program and everything it loads (ldd), at the same paths.
copy_with_libs() {
  local prog=$1 dest=$2 lib
  install -D -m 0755 "$prog" "$out$dest"
  for lib in $(ldd "$prog" | grep -o '/[^ ]*'); do
    [ -e "$out$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$out$lib"
  done
}
find_tool() { PATH=/usr/sbin:/sbin:/usr/bin:/bin command -v "$1" || true; }

for tool in mkfs.ext4 dumpe2fs resize2fs e2fsck; do
  path=$(find_tool "$tool")
  [ -n "$path" ] || { echo "rootfs.sh: $tool not found; apt-get install e2fsprogs" >&2; exit 1; }
  copy_with_libs "$path" "/usr/sbin/$tool"
done
[ -f /etc/mke2fs.conf ] && install -m 0644 /etc/mke2fs.conf "$out/etc/mke2fs.conf"
for tool in mkfs.xfs xfs_db xfs_growfs; do
  path=$(find_tool "$tool")
  [ -z "$path" ] || copy_with_libs "$path" "/usr/sbin/$tool"
done

busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [ -x "$candidate" ] && ! readelf -l "$candidate" | grep -q 'program interpreter'; then
    busybox=$candidate
    break
  fi
done
[ -n "$busybox" ] || { echo "rootfs.sh: no static busybox; apt-get install busybox-static" >&2; exit 1; }
install -m 0755 "$busybox" "$out/bin/busybox"
for applet in $("$busybox" --list); do
  case "$applet" in busybox|*/*) continue ;; esac
  # Never shadow the real filesystem tools berth runs.
  [ -e "$out/usr/sbin/$applet" ] || ln -s busybox "$out/bin/$applet"
done

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$out/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$out/etc/group"
