//! The concurrency test's clients: many threads on a few shared volume names, each mixing
//! CSI, Docker and admin calls. Which of two racing calls wins is not known in advance, so
//! an answer is judged by what can be true whatever the other clients did:
//!
//! - every answer is a success or a refusal that names a real conflict (not found, already
//!   exists, busy, in use, being created or deleted, held by the other front-end: a name
//!   CSI created is not Docker's, and the reverse); never an internal error, never a lost
//!   connection, never a hang;
//! - what a client holds is exact, because only it publishes and unpublishes its own
//!   targets and mount IDs: a publication it was told succeeded stays until it removes it
//!   (nobody can delete a published volume), its unpublish must succeed, and the file it
//!   wrote through the publication reads back unchanged;
//! - a client uses a Docker mount as dockerd does: it bind-mounts the answered Mountpoint
//!   (into a directory of its own, outside berth's) and works through that bind mount;
//! - at the end berth records exactly the publications the clients hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::{Code, Status};

use super::berth::Endpoints;
use super::csi::{Csi, describe};
use super::model::{CsiPub, Layout, MIB, SIZE, Via};
use super::rng::Rng;

/// Volume names every client works on; even ones are sized (loopfs), odd ones plain.
pub const SHARED: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];

pub fn sized(name: &str) -> bool {
    name.ends_with(['0', '2', '4'])
}

/// A publication a client holds, and the file it wrote through it.
#[derive(Clone, Debug)]
pub struct Held {
    pub via: Via,
    /// Where the client reads and writes: the CSI target, or its bind mount of Docker's
    /// Mountpoint.
    pub through: PathBuf,
    pub file: String,
    pub content: Vec<u8>,
}

pub struct Client {
    pub id: usize,
    rng: Rng,
    layout: Layout,
    /// Where this client, as dockerd would, bind-mounts the Mountpoints Docker answers.
    binds: PathBuf,
    serial: u64,
    pub held: BTreeMap<String, Held>,
    /// Answers by kind ("csi create ok", "docker Remove 409", ...).
    pub tally: BTreeMap<String, u64>,
    pub slowest: Duration,
}

/// What a call's answer means here.
enum Answer {
    Ok(Value),
    /// A refusal that a race explains.
    Conflict(String),
}

impl Client {
    pub fn new(id: usize, seed: u64, layout: Layout, binds: PathBuf) -> Self {
        Self {
            id,
            rng: Rng::stream(seed, 1000 + id as u64),
            layout,
            binds,
            serial: 0,
            held: BTreeMap::new(),
            tally: BTreeMap::new(),
            slowest: Duration::ZERO,
        }
    }

    pub fn staging(layout: &Layout, name: &str, client: usize) -> PathBuf {
        layout.k8s.join(format!("{name}.c{client}.stage"))
    }

    fn count(&mut self, what: String) {
        *self.tally.entry(what).or_default() += 1;
    }

    /// One random operation. `Err` is a violation; `now` says what is being done (for a
    /// deadlock report).
    pub fn step(
        &mut self,
        csi: &Csi,
        endpoints: &Endpoints,
        now: &mut dyn FnMut(String),
    ) -> Result<(), String> {
        let name = *self.rng.pick(&SHARED);
        self.serial += 1;
        let started = Instant::now();
        let result = if self.held.contains_key(name) && self.rng.chance(40) {
            now(format!("c{} releases {name}", self.id));
            self.release(csi, endpoints, name)
        } else {
            let kind = self.rng.weighted(&[3, 3, 3, 2, 2, 2]);
            let what = ["create", "publish", "delete", "expand", "look", "look"][kind];
            now(format!("c{} {what} {name}", self.id));
            match kind {
                0 => self.create(csi, endpoints, name),
                1 if !self.held.contains_key(name) => self.publish(csi, endpoints, name),
                2 => self.delete(csi, endpoints, name),
                3 if sized(name) => self.expand(csi, name),
                _ => self.look(csi, endpoints, name),
            }
        };
        self.slowest = self.slowest.max(started.elapsed());
        result
    }

    fn create(&mut self, csi: &Csi, endpoints: &Endpoints, name: &str) -> Result<(), String> {
        let size = sized(name).then_some(SIZE);
        if self.rng.chance(50) {
            let answer = csi_answer(
                "CreateVolume",
                csi.create(name, size),
                &[Code::AlreadyExists, Code::Aborted],
            )?;
            self.note("csi create", &answer);
        } else {
            let body = match size {
                Some(s) => json!({"Name": name, "Opts": {"size": format!("{}MiB", s / MIB)}}),
                None => json!({"Name": name}),
            };
            let answer = http_answer(
                "Docker Create",
                endpoints.docker("/VolumeDriver.Create", &body),
                &[409],
            )?;
            self.note("docker create", &answer);
        }
        Ok(())
    }

    fn publish(&mut self, csi: &Csi, endpoints: &Endpoints, name: &str) -> Result<(), String> {
        let file = format!("c{}.sum", self.id);
        let (via, mountpoint) = if self.rng.chance(50) {
            let p = CsiPub {
                staging: Self::staging(&self.layout, name, self.id),
                target: self
                    .layout
                    .k8s
                    .join(format!("{name}.c{}.pub{}", self.id, self.serial)),
            };
            // Not there, being created or deleted, or busy: nothing is held.
            let allowed = [Code::NotFound, Code::Aborted];
            let staged = csi_answer("NodeStageVolume", csi.stage(name, &p.staging), &allowed)?;
            if let Answer::Conflict(_) = staged {
                self.note("csi stage", &staged);
                return Ok(());
            }
            let published = csi_answer(
                "NodePublishVolume",
                csi.publish(name, &p.staging, &p.target),
                &allowed,
            )?;
            self.note("csi stage+publish", &published);
            if let Answer::Conflict(_) = published {
                // Staged but not published: unstage again, which must work.
                self.until_done("NodeUnstageVolume", || csi.unstage(name, &p.staging))?;
                return Ok(());
            }
            let target = p.target.clone();
            (Via::Csi(p), target)
        } else {
            let id = format!("c{}-{}", self.id, self.serial);
            let answer = http_answer(
                "Docker Mount",
                endpoints.docker("/VolumeDriver.Mount", &json!({"Name": name, "ID": id})),
                &[404, 409],
            )?;
            self.note("docker mount", &answer);
            let Answer::Ok(reply) = answer else {
                return Ok(());
            };
            let mountpoint = reply["Mountpoint"].as_str().unwrap_or_default();
            if self.layout.data(name) != Path::new(mountpoint) {
                return Err(format!(
                    "Docker Mount of {name} answered Mountpoint {mountpoint:?}, not its data directory"
                ));
            }
            let bind = self.binds.join(format!("{name}.{id}"));
            std::fs::create_dir(&bind)
                .and_then(|()| {
                    nix::mount::mount(
                        Some(mountpoint),
                        &bind,
                        None::<&str>,
                        nix::mount::MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(std::io::Error::from)
                })
                .map_err(|e| {
                    format!("bind-mounting Docker's Mountpoint {mountpoint} of {name}: {e}")
                })?;
            (Via::Docker(id), bind)
        };
        let content = format!("{name} c{} {}\n", self.id, self.rng.hex(16)).into_bytes();
        std::fs::write(mountpoint.join(&file), &content).map_err(|e| {
            format!(
                "writing through the new publication of {name} at {}: {e}",
                mountpoint.display()
            )
        })?;
        let through = mountpoint;
        self.held.insert(
            name.to_string(),
            Held {
                via,
                through,
                file,
                content,
            },
        );
        Ok(())
    }

    /// Unpublishes what this client holds on `name`; it must succeed. The file written
    /// through it must still read back first.
    pub fn release(&mut self, csi: &Csi, endpoints: &Endpoints, name: &str) -> Result<(), String> {
        let Some(held) = self.held.remove(name) else {
            return Ok(());
        };
        let through = held.through.clone();
        let read = std::fs::read(through.join(&held.file));
        if read.as_ref().ok() != Some(&held.content) {
            let listing: Vec<String> = std::fs::read_dir(&through)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let volume_dir = self.layout.pool.join(name);
            let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&*volume_dir.to_string_lossy()))
                .map(str::to_string)
                .collect();
            return Err(format!(
                "c{}: the file written through its publication of {name} at {} reads back {:?}; \
                 the directory holds {listing:?}; mounts of {}: {mounts:?}; loops: {:?}",
                self.id,
                through.display(),
                read.map(|r| String::from_utf8_lossy(&r).into_owned()),
                volume_dir.display(),
                super::berth::loops_under(&self.layout.pool),
            ));
        }
        match &held.via {
            Via::Csi(p) => {
                self.until_done("NodeUnpublishVolume", || csi.unpublish(name, &p.target))?;
                self.until_done("NodeUnstageVolume", || csi.unstage(name, &p.staging))?;
                self.count("csi unpublish+unstage ok".into());
            }
            Via::Docker(id) => {
                // Busy for an instant while another client's child holds our descriptors
                // between fork and exec (as berth's own unmount allows for).
                let mut tries = 0;
                while let Err(e) = nix::mount::umount2(&through, nix::mount::MntFlags::empty()) {
                    tries += 1;
                    if e != nix::errno::Errno::EBUSY || tries > 10 {
                        return Err(format!("unmounting {}: {e}", through.display()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5 * tries));
                }
                std::fs::remove_dir(&through)
                    .map_err(|e| format!("removing {}: {e}", through.display()))?;
                let answer = http_answer(
                    "Docker Unmount",
                    endpoints.docker("/VolumeDriver.Unmount", &json!({"Name": name, "ID": id})),
                    &[],
                )?;
                self.note("docker unmount", &answer);
            }
        }
        Ok(())
    }

    /// A CSI call on something this client holds: only "busy" may delay it.
    fn until_done(
        &mut self,
        what: &str,
        mut call: impl FnMut() -> Result<(), Status>,
    ) -> Result<(), String> {
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(s) if s.code() == Code::Aborted => {
                    self.count(format!("csi {what} busy, retried"));
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(s) => return Err(format!("c{} {what}: {}", self.id, describe(&s))),
            }
        }
    }

    fn delete(&mut self, csi: &Csi, endpoints: &Endpoints, name: &str) -> Result<(), String> {
        match self.rng.below(3) {
            0 => {
                let answer = csi_answer(
                    "DeleteVolume",
                    csi.delete(name),
                    &[Code::FailedPrecondition, Code::Aborted],
                )?;
                self.note("csi delete", &answer);
            }
            1 => {
                let answer = http_answer(
                    "Docker Remove",
                    endpoints.docker("/VolumeDriver.Remove", &json!({"Name": name})),
                    &[409],
                )?;
                self.note("docker remove", &answer);
            }
            _ => {
                let answer = http_answer(
                    "admin wipe",
                    endpoints.admin("DELETE", &format!("/v1/volumes/{name}?wipe=true")),
                    &[404, 409],
                )?;
                self.note("admin wipe", &answer);
            }
        }
        if self.held.contains_key(name) {
            // Our publication must have kept it: check it is still there.
            let (status, reply) = endpoints
                .admin("GET", &format!("/v1/volumes/{name}"))
                .map_err(|e| format!("admin GET {name}: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "c{}: volume {name} is gone while c{} holds a publication of it: {status} {reply}",
                    self.id, self.id
                ));
            }
        }
        Ok(())
    }

    fn expand(&mut self, csi: &Csi, name: &str) -> Result<(), String> {
        let to = SIZE + self.rng.below(4) * 8 * MIB;
        match csi.expand(name, to) {
            // Growing an ext4 that is staged or bind-mounted by a "dockerd" is refused (no
            // CAP_SYS_RESOURCE for an online grow), saying what to do.
            Err(s)
                if s.code() == Code::Internal
                    && s.message()
                        .contains("unpublish the volume to grow it offline") =>
            {
                self.count("csi expand refused: mounted elsewhere".into());
                Ok(())
            }
            // Still mounted in a mount namespace made elsewhere on the machine: e2fsck
            // cannot have the device, and the filesystem is mounted back unchanged.
            Err(s)
                if s.code() == Code::Internal
                    && s.message().contains("e2fsck")
                    && s.message().contains("is in use") =>
            {
                self.count("csi expand refused: in use in another mount namespace".into());
                Ok(())
            }
            result => {
                let answer = csi_answer(
                    "ControllerExpandVolume",
                    result.map(drop),
                    &[Code::NotFound, Code::Aborted],
                )?;
                self.note("csi expand", &answer);
                Ok(())
            }
        }
    }

    fn look(&mut self, csi: &Csi, endpoints: &Endpoints, name: &str) -> Result<(), String> {
        match self.rng.below(3) {
            0 => {
                csi.list()
                    .map_err(|s| format!("CSI ListVolumes: {}", describe(&s)))?;
                self.count("csi list ok".into());
            }
            1 => {
                let answer = http_answer(
                    "Docker Get",
                    endpoints.docker("/VolumeDriver.Get", &json!({"Name": name})),
                    // 409: the name is held by CSI, which Docker may not see.
                    &[404, 409],
                )?;
                self.note("docker get", &answer);
            }
            _ => {
                let answer = http_answer(
                    "admin GET",
                    endpoints.admin("GET", &format!("/v1/volumes/{name}")),
                    &[404],
                )?;
                self.note("admin get", &answer);
            }
        }
        Ok(())
    }

    fn note(&mut self, what: &str, answer: &Answer) {
        match answer {
            Answer::Ok(_) => self.count(format!("{what} ok")),
            Answer::Conflict(code) => self.count(format!("{what} refused {code}")),
        }
    }
}

/// A CSI answer: success, a refusal with one of `allowed` codes (or NOT_FOUND, which any
/// call on a shared name may meet), or a violation.
fn csi_answer<T>(
    what: &str,
    result: Result<T, Status>,
    allowed: &[Code],
) -> Result<Answer, String> {
    match result {
        Ok(_) => Ok(Answer::Ok(Value::Null)),
        Err(s) if s.code() == Code::NotFound || allowed.contains(&s.code()) => {
            Ok(Answer::Conflict(format!("{:?}", s.code())))
        }
        Err(s) => Err(format!("{what}: {}", describe(&s))),
    }
}

/// A Docker or admin answer: 200, a refusal with one of `allowed` statuses, or a violation.
fn http_answer(
    what: &str,
    result: std::io::Result<(u16, Value)>,
    allowed: &[u16],
) -> Result<Answer, String> {
    match result {
        Ok((200, reply)) => Ok(Answer::Ok(reply)),
        Ok((status, _)) if allowed.contains(&status) => Ok(Answer::Conflict(status.to_string())),
        Ok((status, reply)) => Err(format!("{what}: {status} {reply}")),
        Err(e) => Err(format!("{what}: no answer: {e}")),
    }
}
