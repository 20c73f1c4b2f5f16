//! Issue 7's acceptance on the real kernel, as root: PostgreSQL from Debian's packages is a
//! Marathon app's task. A real `berth serve` owns the store; `berth mesos prepare` mounts the
//! app's persistent volume in the sandbox and, through the `/var/lib/mysql`-style alias, at
//! `/var/lib/postgresql/data` inside the task's root filesystem. The "container" is a private
//! mount and PID namespace chrooted into that root filesystem (its `/usr`, `/etc` and `/dev`
//! bound from the host), running as the `postgres` user, so the absolute path is the
//! container's and never the host's.
//!
//! Flow: prepare, initdb, start, write rows, kill -9 (the task dies), cleanup; relaunch with
//! the same task id: the rows are back; cleanup (scale down: the volume is detached and
//! stays reserved); scale up with a new task id: the detached volume is reattached, rows
//! intact; wipe it through the admin API; the next prepare starts empty.
//!
//! Needs root, util-linux's `unshare`, and the `postgresql` package.

#[path = "support/harness/mod.rs"]
mod harness;
mod mesos_support;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesos_support::{Daemon, Scratch, is_mounted, mount_points, require_root};
use serde_json::Value;

const ROWS: u32 = 100;

/// `berth mesos prepare|cleanup` for `task` in `run`.
fn mesos(
    daemon: &Daemon,
    subcommand: &str,
    task: &str,
    run: &Run,
    definition: Option<&Path>,
) -> Value {
    let mut args: Vec<OsString> = vec![subcommand.into()];
    args.extend(definition.map(OsString::from));
    for (flag, value) in [
        ("--task-id", OsString::from(task)),
        ("--framework-id", "marathon-1".into()),
        ("--sandbox", run.sandbox.clone().into()),
        ("--rootfs", run.rootfs.clone().into()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    if definition.is_some() {
        // The data directory must be postgres's, as initdb insists.
        let (uid, gid) = postgres_ids();
        args.extend(["--owner-uid".into(), uid.to_string().into()]);
        args.extend(["--owner-gid".into(), gid.to_string().into()]);
    }
    daemon.mesos(args)
}

/// One run of the task: its sandbox and its root filesystem, as a Mesos agent lays them out.
struct Run {
    name: String,
    sandbox: PathBuf,
    rootfs: PathBuf,
}

impl Run {
    fn new(work_dir: &Path, name: &str) -> Self {
        let sandbox = work_dir
            .join("slaves/S0/frameworks/marathon-1/executors/E/runs")
            .join(name);
        std::fs::create_dir_all(&sandbox).unwrap();
        let rootfs = work_dir
            .join("provisioner/containers")
            .join(name)
            .join("rootfs");
        for dir in ["usr", "etc", "dev", "proc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        for link in ["bin", "lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link)).unwrap();
        }
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        // As the hook resolves them, and as the mount table shows them.
        Self {
            name: name.to_string(),
            sandbox: sandbox.canonicalize().unwrap(),
            rootfs: rootfs.canonicalize().unwrap(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.rootfs.join("var/lib/postgresql/data")
    }

    /// The container: a private mount and PID namespace, chrooted into the root filesystem,
    /// running `program` as the postgres user.
    fn container(&self, program: &Path, args: &[&str]) -> Command {
        let (uid, gid) = postgres_ids();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--pid", "--fork", "sh", "-c"])
            .arg(format!(
                "set -e; mount --rbind /usr \"$0/usr\"; mount --bind /etc \"$0/etc\"; \
                 mount --rbind /dev \"$0/dev\"; mount -t proc proc \"$0/proc\"; \
                 exec chroot --userspec={uid}:{gid} \"$0\" \"$@\""
            ))
            .arg(&self.rootfs)
            .arg(program)
            .args(args)
            .env("LANG", "C");
        command
    }

    fn initdb(&self, pg: &Postgres) {
        let out = self
            .container(
                &pg.bin.join("initdb"),
                &[
                    "-D",
                    "/var/lib/postgresql/data",
                    "--locale=C",
                    "-E",
                    "UTF8",
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                ],
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts PostgreSQL (listening on a unix socket in the container's /tmp only) and waits
    /// until it answers.
    fn start(&self, pg: &Postgres) -> Task {
        let log = self
            .rootfs
            .with_file_name(format!("{}-postgres.log", self.name));
        let unshare = self
            .container(
                &pg.bin.join("postgres"),
                &[
                    "-D",
                    "/var/lib/postgresql/data",
                    "-c",
                    "listen_addresses=",
                    "-k",
                    "/tmp",
                    "-c",
                    "shared_buffers=16MB",
                ],
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                break pid.parse::<i32>().unwrap();
            }
            assert!(Instant::now() < deadline, "the container did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let task = Task {
            unshare,
            init,
            socket_dir: self.rootfs.join("tmp"),
        };
        loop {
            if task.try_sql("select 1").is_ok() {
                return task;
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(Instant::now() < deadline, "PostgreSQL did not start: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A running PostgreSQL container; dropping it kills it.
struct Task {
    unshare: Child,
    /// Host pid of the namespace's first process (the postmaster): killing it ends the
    /// namespace and everything in it, as the kernel does for a PID namespace's init.
    init: i32,
    socket_dir: PathBuf,
}

impl Task {
    fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The task dies: SIGKILL, no shutdown.
    fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.init);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.unshare.wait();
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Postgres {
    bin: PathBuf,
}

impl Postgres {
    /// The newest PostgreSQL under /usr/lib/postgresql.
    fn find() -> Self {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL is not installed: run scripts/test-deps.sh as root (scripts/test.sh does)",
            )
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        let (_, bin) = versions
            .pop()
            .expect("no /usr/lib/postgresql/*/bin/postgres");
        Self { bin }
    }
}

fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres user (from the postgresql package)");
    (user.uid.as_raw(), user.gid.as_raw())
}

const DEFINITION: &str = r#"{
  "id": "/test/postgres",
  "cpus": 1,
  "mem": 512,
  "instances": 1,
  "container": {
    "type": "MESOS",
    "volumes": [
      {
        "containerPath": "pgdata",
        "mode": "RW",
        "persistent": { "type": "root", "size": 256 }
      },
      {
        "containerPath": "/var/lib/postgresql/data",
        "hostPath": "pgdata",
        "mode": "RW"
      }
    ]
  },
  "unreachableStrategy": "disabled",
  "upgradeStrategy": { "minimumHealthCapacity": 0, "maximumOverCapacity": 0 }
}"#;

#[test]
fn postgres_data_survives_relaunch_and_scale_down_up_until_wiped() {
    require_root();
    let started = Instant::now();
    let pg = Postgres::find();
    let scratch = Scratch::new("berth-mpg-");
    let work_dir = scratch.path().join("mesos");
    std::fs::create_dir(&work_dir).unwrap();
    let daemon = Daemon::start(scratch.path(), &work_dir);
    let app = scratch.path().join("postgres.json");
    std::fs::write(&app, DEFINITION).unwrap();

    // First launch: a new reservation; initdb on it, write rows; the task is killed.
    let run1 = Run::new(&work_dir, "run-1");
    let reply = mesos(&daemon, "prepare", "test_postgres.t1", &run1, Some(&app));
    let volume = &reply["volumes"][0];
    assert_eq!(volume["origin"]["kind"], "created", "{reply:#}");
    assert_eq!(volume["size"], 256 << 20);
    let name = volume["volume"].as_str().unwrap().to_string();
    assert!(name.starts_with("test.postgres#pgdata#"), "{name}");
    assert!(is_mounted(&run1.sandbox.join("pgdata")));
    assert!(is_mounted(&run1.data_dir()));
    run1.initdb(&pg);
    let task = run1.start(&pg);
    task.sql(&format!(
        "create table ledger (n int primary key, note text); \
         insert into ledger select n, 'row ' || n from generate_series(1, {ROWS}) n"
    ));
    task.kill();
    let reply = mesos(&daemon, "cleanup", "test_postgres.t1", &run1, None);
    assert_eq!(reply["volumes"][0]["state"], "detached", "{reply:#}");
    assert!(!is_mounted(&run1.data_dir()));
    assert!(!is_mounted(&run1.sandbox.join("pgdata")));

    // Relaunch of the same task in a new sandbox: the same volume, the rows are there.
    let run2 = Run::new(&work_dir, "run-2");
    let reply = mesos(&daemon, "prepare", "test_postgres.t1", &run2, Some(&app));
    assert_eq!(reply["volumes"][0]["volume"], name.as_str());
    assert_eq!(reply["volumes"][0]["origin"]["kind"], "relaunched");
    assert!(
        run2.data_dir().join("PG_VERSION").exists(),
        "no initdb needed"
    );
    let task = run2.start(&pg);
    assert_eq!(task.sql("select count(*) from ledger"), ROWS.to_string());
    task.kill();
    mesos(&daemon, "cleanup", "test_postgres.t1", &run2, None);

    // Scaled down to 0: the reservation stays, detached, visible in the admin API.
    let (status, view) = daemon.volume(&name);
    assert_eq!(status, 200, "{view:#}");
    assert_eq!(view["state"], "detached", "{view:#}");
    assert_eq!(view["owner"]["task_id"], "test_postgres.t1");
    assert_eq!(view["owner"]["app_id"], "/test/postgres");

    // Scaled up: a new instance reattaches the detached volume.
    let run3 = Run::new(&work_dir, "run-3");
    let reply = mesos(&daemon, "prepare", "test_postgres.t2", &run3, Some(&app));
    assert_eq!(reply["volumes"][0]["volume"], name.as_str());
    assert_eq!(reply["volumes"][0]["origin"]["kind"], "adopted");
    assert_eq!(
        reply["volumes"][0]["origin"]["from_task"],
        "test_postgres.t1"
    );
    let task = run3.start(&pg);
    assert_eq!(task.sql("select note from ledger where n = 42"), "row 42");
    task.kill();
    mesos(&daemon, "cleanup", "test_postgres.t2", &run3, None);
    let (_, view) = daemon.volume(&name);
    assert_eq!(view["owner"]["task_id"], "test_postgres.t2");

    // Wiped through the admin API: the data is gone, and the next instance starts empty.
    let (status, reply) = daemon.wipe(&name);
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(daemon.volume(&name).0, 404);
    let run4 = Run::new(&work_dir, "run-4");
    let reply = mesos(&daemon, "prepare", "test_postgres.t3", &run4, Some(&app));
    assert_eq!(
        reply["volumes"][0]["origin"]["kind"], "created",
        "{reply:#}"
    );
    assert_ne!(reply["volumes"][0]["volume"], name.as_str());
    assert_eq!(
        std::fs::read_dir(run4.data_dir()).unwrap().count(),
        0,
        "a new, empty data directory"
    );
    run4.initdb(&pg);
    let task = run4.start(&pg);
    assert!(
        task.try_sql("select count(*) from ledger").is_err(),
        "no old table"
    );
    task.kill();
    let reply = mesos(&daemon, "cleanup", "test_postgres.t3", &run4, None);
    let fresh = reply["volumes"][0]["volume"].as_str().unwrap();
    assert_eq!(daemon.wipe(fresh).0, 200);

    // Nothing of the tasks is left mounted in the host's namespace.
    let leftovers: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&work_dir))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    eprintln!("postgres flow took {:?}", started.elapsed());
}
