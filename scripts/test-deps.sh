#!/usr/bin/env bash
# Installs everything berth's test suite needs, in one place: scripts/test.sh calls it, and
# no test installs anything itself (a test that misses a tool fails and names this script).
#
# Debian packages come from the image's own suites, except where the image already holds a
# package from the backports suite whose siblings must match it. The machine image of this
# project ships `qemu-utils` from bookworm-backports, and that version `Breaks` the stable
# `qemu-system-common`, so QEMU must come from backports too. Such a package is installed
# with `-t <codename>-backports`, after adding that suite as a source file of our own
# (/etc/apt/sources.list.d/berth-backports.sources) when it is missing. A plain install that
# reports broken packages is retried the same way. The distribution's own source files are
# never edited.
#
#   scripts/test-deps.sh            install what is missing (quietly), say what it did
#   scripts/test-deps.sh --list     print the package lists and exit
set -euo pipefail

# Debian packages, and why the suite needs each.
apt_packages=(
  docker.io        # a real dockerd for the Docker plugin tests
  busybox-static   # container images (docker import) and the VM test's initramfs
  xfsprogs         # loopfs xfs volumes, the VM project-quota test
  btrfs-progs      # btrfs pools on loop devices
  e2fsprogs        # loopfs ext4 volumes
  util-linux       # losetup, mount, findmnt
  postgresql       # the Mesos PostgreSQL end-to-end test
  debootstrap      # the packaging tests' clean root
  systemd          # systemd-analyze verify of the unit
  man-db           # the man page test
  binutils         # readelf on the release binary
  qemu-system-x86  # the VM test (XFS/ext4 project quotas need a kernel that has them)
  fio              # the data-path benchmark
  tar              # GNU tar reads berth's exports (tests/transfer.rs)
)
# Packages that must come from the same suite as an installed sibling: "package:sibling".
same_suite_as=(
  qemu-system-x86:qemu-utils
)
# PyPI packages for the client tests (a CSI client that is not grpc-go).
pip_packages=(
  grpcio==1.85.4        # grpc-core: sends the socket path as :authority, as old kubelets do
  grpcio-tools==1.85.4  # compiles proto/csi.proto for that client at test time
)

if [ "${1:-}" = "--list" ]; then
  printf 'apt: %s\n' "${apt_packages[*]}"
  printf 'pip: %s\n' "${pip_packages[*]}"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "test-deps.sh: installing packages needs root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
say() { echo "test-deps.sh: $*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
backports="${codename}-backports"
backports_file=/etc/apt/sources.list.d/berth-backports.sources
updated=0

apt_update() {
  if [ "$updated" = 0 ]; then
    apt-get update -qq
    updated=1
  fi
}

# Adds the backports suite as a source of ours, once, if no source names it yet.
ensure_backports() {
  [ -n "$codename" ] || { echo "test-deps.sh: /etc/os-release names no codename" >&2; return 1; }
  if ! grep -rqs -- "$backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding $backports as $backports_file"
    cat >"$backports_file" <<EOF
# Added by berth's scripts/test-deps.sh: packages that must match the image's backports ones.
Types: deb
URIs: http://deb.debian.org/debian
Suites: $backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    updated=0
  fi
  apt_update
}

# Whether an installed package's version comes from backports (Debian's ~bpo suffix).
from_backports() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null | grep -q '~bpo'; }

apt_install() {
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for p in "${apt_packages[@]}"; do installed "$p" || missing+=("$p"); done

if [ ${#missing[@]} -gt 0 ]; then
  # Split off the packages whose sibling the image holds from backports.
  plain=()
  pinned=()
  for p in "${missing[@]}"; do
    suite=stable
    for pair in "${same_suite_as[@]}"; do
      if [ "${pair%%:*}" = "$p" ] && from_backports "${pair#*:}"; then suite=backports; fi
    done
    if [ "$suite" = backports ]; then pinned+=("$p"); else plain+=("$p"); fi
  done
  apt_update
  if [ ${#plain[@]} -gt 0 ]; then
    say "installing ${plain[*]}"
    if ! apt_install "${plain[@]}" 2>/tmp/berth-test-deps.err; then
      # Broken or held packages: the image mixes suites. Retry each from backports.
      say "a plain install failed ($(tail -1 /tmp/berth-test-deps.err)); retrying from $backports"
      pinned+=("${plain[@]}")
    fi
  fi
  if [ ${#pinned[@]} -gt 0 ]; then
    ensure_backports
    say "installing ${pinned[*]} from $backports (to match the image's backports packages)"
    apt_install -t "$backports" "${pinned[@]}"
  fi
  for p in "${missing[@]}"; do
    installed "$p" || { echo "test-deps.sh: $p is still not installed" >&2; exit 1; }
  done
fi
modprobe loop 2>/dev/null || true

pip_missing=()
for spec in "${pip_packages[@]}"; do
  name="${spec%%==*}"
  want="${spec#*==}"
  have=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  [ "$have" = "$want" ] || pip_missing+=("$spec")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  say "pip installing ${pip_missing[*]}"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${pip_missing[@]}"
fi
say "all test dependencies present"
