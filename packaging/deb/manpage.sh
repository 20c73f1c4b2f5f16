#!/usr/bin/env bash
# Writes berth(8) to stdout: a fixed part (what berth is, files, environment, signals,
# where each front-end listens) and, for every command and subcommand the given binary
# has, its complete `--help` text. Generated from the binary at package build time, so
# the page can never miss a command or an option.
#
# Usage: packaging/deb/manpage.sh BERTH_BINARY > berth.8
set -euo pipefail
bin=${1:?usage: manpage.sh BERTH_BINARY}

# A clean environment: clap shows the values of BERTH_* variables in --help.
run() { env -i "$bin" "$@"; }
version=$(run --version | awk '{print $2}')

# Escapes help text for roff inside .nf/.fi: backslashes, and a leading . or '.
escape() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

# The subcommands `berth ARGS... --help` lists, one per line (not `help`).
subcommands() {
  run "$@" --help | awk '
    /^Commands:/ { on = 1; next }
    on && /^[^ ]/ { on = 0 }
    on && /^  [a-z]/ { if ($1 != "help") print $1 }'
}

# Prints the section for `berth ARGS...` and recurses into its subcommands.
section() {
  printf '.SS "berth%s"\n.nf\n' "${*:+ $*}"
  run "$@" --help | escape
  printf '.fi\n'
  local sub
  for sub in $(subcommands "$@"); do
    section "$@" "$sub"
  done
}

cat <<EOF
.TH BERTH 8 "" "berth $version" "System Administration"
.SH NAME
berth \\- node-local persistent volumes for Kubernetes (CSI), Docker and Mesos
.SH SYNOPSIS
.B berth serve
.RB [ \\-\\-config
.IR FILE ]
.br
.B berth
.I COMMAND
.RI [ OPTIONS ]
.SH DESCRIPTION
.B berth
keeps the data of stateful tasks on the node where it was first written.
One daemon,
.BR "berth serve" ,
serves a Kubernetes CSI driver, a Docker volume plugin and an admin API from one volume
engine; the same binary carries the operator's commands.
Volumes are directories or size-enforcing filesystem images carved from configured pools;
their reservations live in a durable store under the state directory.
.PP
Under systemd
.RB ( berth.service ,
.BR Type=notify )
berth reports ready only after recovery has finished and every configured front-end
listens. Stopping berth leaves volumes mounted for running workloads.
.PP
With no configuration file berth runs on its embedded default: state and one root pool
under
.IR /var/lib/berth ,
sockets as listed under FILES. Unknown keys in a configuration file are refused at start.
.SH COMMANDS
Every command and option, as printed by
.BR "berth ... \\-\\-help" :
EOF
section
cat <<'EOF'
.SH FILES
.TP
.I /etc/berth/config.toml
The configuration, when
.B BERTH_CONFIG
or
.B \-\-config
names it (see
.IR /etc/default/berth ).
.TP
.I /etc/berth/config.toml.example
Every key, commented; also printed by
.BR "berth config" .
.TP
.I /etc/default/berth
Environment for berth.service.
.TP
.I /var/lib/berth
The reservation store (berth.redb) and the default pool
.RI ( volumes/ ).
Removing the package, even with purge, never touches it.
.TP
.I /run/berth/csi.sock
The CSI endpoint (default).
.TP
.I /run/docker/plugins/berth.sock
The Docker volume plugin; Docker knows the driver as
.BR berth .
.TP
.I /run/berth/admin.sock
The admin API, including
.B GET /healthz
(no token needed).
.SH ENVIRONMENT
.TP
.B BERTH_CONFIG
The configuration file for
.BR "berth serve" .
.TP
.B BERTH_LOG
Log filter (tracing's EnvFilter syntax), default
.BR info .
.TP
.B BERTH_LOG_JSON
Log JSON lines instead of text (as
.BR \-\-log\-json ).
.TP
.B NOTIFY_SOCKET
Set by systemd; berth sends READY=1 there once it serves.
.TP
.B GLIBC_TUNABLES
Unless it already sets
.BR glibc.malloc.tcache_count ,
.B berth serve
starts itself again (the same process) with
.B glibc.malloc.tcache_count=0
added: per-thread allocator caches hold memory no trim returns.
.SH SIGNALS
.B SIGTERM
and
.B SIGINT
stop berth cleanly: in-flight operations finish, the sockets are removed and volumes
stay mounted.
.SH SEE ALSO
.BR systemctl (1),
.BR docker-volume-create (1)
EOF
