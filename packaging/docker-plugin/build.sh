#!/usr/bin/env bash
# Builds berth's Docker managed plugin and installs it into the local dockerd with
# `docker plugin create`: the plugin directory is config.json plus a rootfs made by
# packaging/rootfs.sh (the static release binary, e2fsprogs, busybox) with plugin.toml as
# /etc/berth/plugin.toml. Enable it with `docker plugin enable NAME`.
#
# Usage: packaging/docker-plugin/build.sh [NAME]     (default NAME: berth)
# Env:   DOCKER         the docker CLI (default: docker); DOCKER_HOST etc. are honoured
#        BERTH_BINARY   the binary (default: packaging/build-release.sh's output)
#        BERTH_PLUGIN_DIR  build the plugin directory here and keep it (default: a
#                       temporary directory, removed afterwards)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-berth}
docker=${DOCKER:-docker}

if [ -n "${BERTH_PLUGIN_DIR:-}" ]; then
  dir=$BERTH_PLUGIN_DIR
else
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
fi
"$here/../rootfs.sh" "$dir/rootfs"
install -m 0644 "$here/plugin.toml" "$dir/rootfs/etc/berth/plugin.toml"
install -m 0644 "$here/config.json" "$dir/config.json"
"$docker" plugin create "$name" "$dir"
