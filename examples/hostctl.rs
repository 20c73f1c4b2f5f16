//! `hostctl`: calls the size-enforcement methods of the real host layer from the command
//! line, one call per run, so a test on another kernel (a VM with quota support) can drive
//! them without the daemon: `cargo build --example hostctl`, then as root
//!
//! ```text
//! hostctl fs-kind PATH
//! hostctl btrfs-create PATH | btrfs-delete PATH | btrfs-enable-quota FS_PATH
//! hostctl btrfs-limit SUBVOLUME BYTES | btrfs-usage SUBVOLUME
//! hostctl pq-support PATH | pq-set DIR ID BYTES | pq-clear DIR ID | pq-usage PATH ID
//! hostctl pq-ids FS_PATH
//! hostctl grow IMAGE BYTES [MOUNT_POINT ext4|xfs]
//! ```
//!
//! Prints the result (usage as `bytes inodes`, ids one a line) and exits 0; exits 2 with the
//! message on `HostError::Unsupported`, 1 on any other error, 64 on bad usage.

use std::path::Path;
use std::process::ExitCode;

use berth::engine::types::FsType;
use berth::host::linux::LinuxHost;
use berth::host::{Host, HostError};

const USAGE: &str = "usage: hostctl fs-kind PATH | btrfs-create PATH | btrfs-delete PATH | \
                     btrfs-enable-quota FS_PATH | btrfs-limit SUBVOL BYTES | btrfs-usage SUBVOL | \
                     pq-support PATH | pq-set DIR ID BYTES | pq-clear DIR ID | pq-usage PATH ID | \
                     pq-ids FS_PATH | grow IMAGE BYTES [MOUNT_POINT ext4|xfs]";

enum Failure {
    Usage(String),
    Host(HostError),
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Self {
        Self::Host(e)
    }
}

fn number<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, Failure> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::Usage(format!("{what}: expected a number")))
}

fn path(args: &[String], i: usize) -> Result<&Path, Failure> {
    args.get(i)
        .map(Path::new)
        .ok_or_else(|| Failure::Usage("missing path".into()))
}

fn run(args: &[String]) -> Result<String, Failure> {
    let host = LinuxHost::new();
    let command = args.first().map(String::as_str).unwrap_or("");
    let done = || Ok("ok".to_string());
    match command {
        "fs-kind" => Ok(format!("{:?}", host.fs_kind(path(args, 1)?)?)),
        "btrfs-create" => {
            host.btrfs_create_subvolume(path(args, 1)?)?;
            done()
        }
        "btrfs-delete" => {
            host.btrfs_delete_subvolume(path(args, 1)?)?;
            done()
        }
        "btrfs-enable-quota" => {
            host.btrfs_enable_quota(path(args, 1)?)?;
            done()
        }
        "btrfs-limit" => {
            host.btrfs_set_limit(path(args, 1)?, number(args, 2, "BYTES")?)?;
            done()
        }
        "btrfs-usage" => {
            let u = host.btrfs_usage(path(args, 1)?)?;
            Ok(format!("{} {}", u.bytes, u.inodes))
        }
        "pq-support" => {
            host.project_quota_support(path(args, 1)?)?;
            Ok("supported".into())
        }
        "pq-set" => {
            host.set_project_quota(
                path(args, 1)?,
                number(args, 2, "ID")?,
                number(args, 3, "BYTES")?,
            )?;
            done()
        }
        "pq-clear" => {
            host.clear_project_quota(path(args, 1)?, number(args, 2, "ID")?)?;
            done()
        }
        "pq-usage" => {
            let u = host.project_quota_usage(path(args, 1)?, number(args, 2, "ID")?)?;
            Ok(format!("{} {}", u.bytes, u.inodes))
        }
        "pq-ids" => {
            let ids = host.project_ids_in_use(path(args, 1)?)?;
            Ok(ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        }
        "grow" => {
            let size = number(args, 2, "BYTES")?;
            let mounted = match (args.get(3), args.get(4).map(String::as_str)) {
                (None, _) => None,
                (Some(mp), Some("ext4")) => Some((Path::new(mp), FsType::Ext4)),
                (Some(mp), Some("xfs")) => Some((Path::new(mp), FsType::Xfs)),
                _ => return Err(Failure::Usage("grow: MOUNT_POINT needs ext4 or xfs".into())),
            };
            host.grow_image(path(args, 1)?, size, mounted)?;
            done()
        }
        _ => Err(Failure::Usage(format!("unknown command {command:?}"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(message)) => {
            eprintln!("hostctl: {message}\n{USAGE}");
            ExitCode::from(64)
        }
        Err(Failure::Host(e @ HostError::Unsupported(_))) => {
            eprintln!("hostctl: unsupported: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Host(e)) => {
            eprintln!("hostctl: {e}");
            ExitCode::from(1)
        }
    }
}
