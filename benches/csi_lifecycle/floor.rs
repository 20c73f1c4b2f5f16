//! The floor a CSI lifecycle cannot go below on this machine, measured in the same run as
//! the lifecycle itself (absolute times on a shared machine vary by 2× between runs; ratios to
//! a floor measured alongside do not): a gRPC round trip over the unix socket, an fsync'd
//! append on the state directory's filesystem, a mkdir and an rmdir each with a directory
//! fsync on the pool's, a bind mount and an umount.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The p50 of each step, in the same run.
pub struct Floor {
    /// A gRPC round trip that does not reach the engine (NodeGetInfo).
    pub rpc: Duration,
    /// Appending a small record and `fdatasync`ing it (what a durable commit must do).
    pub fsync_append: Duration,
    /// `mkdir` and an `fsync` of its parent directory (making a directory volume durable).
    pub mkdir_fsync: Duration,
    /// `rmdir` and an `fsync` of its parent directory.
    pub rmdir_fsync: Duration,
    pub bind: Duration,
    pub umount: Duration,
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn fsync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync a directory");
}

impl Floor {
    /// Measures the host steps `rounds` times each under `dir` (the daemon's own directory,
    /// so on the filesystem its store and pools live on); `rpc` is measured by the caller.
    pub fn measure(dir: &Path, rpc: Duration, rounds: usize) -> Self {
        let scratch = dir.join("floor");
        std::fs::create_dir_all(&scratch).expect("floor dir");
        let mut log = File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(scratch.join("append.log"))
            .expect("append log");
        let record = [b'x'; 256];
        let (mut append, mut mkdir, mut rmdir) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bind, mut unmount) = (Vec::new(), Vec::new());
        let source = scratch.join("source");
        std::fs::create_dir_all(&source).expect("bind source");
        for i in 0..rounds {
            let t = Instant::now();
            log.write_all(&record).expect("append");
            log.sync_data().expect("fdatasync");
            append.push(t.elapsed());

            let made = scratch.join(format!("d{i}"));
            let t = Instant::now();
            std::fs::create_dir(&made).expect("mkdir");
            fsync_dir(&scratch);
            mkdir.push(t.elapsed());

            let t = Instant::now();
            mount(
                Some(&source),
                &made,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind mount");
            bind.push(t.elapsed());
            let t = Instant::now();
            umount2(&made, MntFlags::empty()).expect("umount");
            unmount.push(t.elapsed());

            let t = Instant::now();
            std::fs::remove_dir(&made).expect("rmdir");
            fsync_dir(&scratch);
            rmdir.push(t.elapsed());
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Self {
            rpc,
            fsync_append: p50(append),
            mkdir_fsync: p50(mkdir),
            rmdir_fsync: p50(rmdir),
            bind: p50(bind),
            umount: p50(unmount),
        }
    }

    /// The least each of the six lifecycle RPCs must cost: its round trip, one durable
    /// commit (it changes state), and its one host step.
    pub fn of_rpcs(&self) -> [Duration; 6] {
        let each = self.rpc + self.fsync_append;
        [
            each + self.mkdir_fsync,
            each + self.bind,
            each + self.bind,
            each + self.umount,
            each + self.umount,
            each + self.rmdir_fsync,
        ]
    }

    /// The whole lifecycle's floor: the sum of [`Floor::of_rpcs`].
    pub fn lifecycle(&self) -> Duration {
        self.of_rpcs().iter().sum()
    }

    pub fn print(&self) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!("floor (p50 of each step, this run):");
        println!(
            "  gRPC round trip (NodeGetInfo)    {:>8.1} µs",
            us(self.rpc)
        );
        println!(
            "  fsync'd 256-byte append          {:>8.1} µs",
            us(self.fsync_append)
        );
        println!(
            "  mkdir + directory fsync          {:>8.1} µs",
            us(self.mkdir_fsync)
        );
        println!(
            "  rmdir + directory fsync          {:>8.1} µs",
            us(self.rmdir_fsync)
        );
        println!(
            "  bind mount                       {:>8.1} µs",
            us(self.bind)
        );
        println!(
            "  umount                           {:>8.1} µs",
            us(self.umount)
        );
        println!(
            "  lifecycle floor = 6 round trips + 6 fsync'd appends + mkdir + rmdir + 2 binds + 2 umounts = {:.1} µs",
            us(self.lifecycle())
        );
        println!(
            "  (the reference driver, Kubernetes' Go hostpathplugin, cannot be built here: the bar \
             of 0.09x its lifecycle is taken as 2x this floor, per issue 17)"
        );
    }
}
