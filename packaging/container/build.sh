#!/usr/bin/env bash
# Builds berth's container image, for the Kubernetes DaemonSet and the Marathon app: the
# rootfs of packaging/rootfs.sh imported as an image whose entrypoint is berth. No base
# image and no registry are needed.
#
# Usage: packaging/container/build.sh [TAG]   (default TAG: berth:<version in Cargo.toml>)
# Env:   DOCKER, DOCKER_HOST, BERTH_BINARY as in packaging/docker-plugin/build.sh
#
# Then load it on each node, e.g. `docker save berth:0.1.0 | ssh node ctr -n k8s.io
# images import -`, or push it to your registry and change the manifests' `image`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
tag=${1:-berth:$version}
docker=${DOCKER:-docker}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$here/../rootfs.sh" "$dir/rootfs"
tar -C "$dir/rootfs" --numeric-owner -c . | "$docker" import \
  --change 'ENTRYPOINT ["/usr/bin/berth"]' \
  --change 'CMD ["serve"]' \
  --change "LABEL org.opencontainers.image.version=$version" \
  - "$tag" >&2
echo "$tag"
