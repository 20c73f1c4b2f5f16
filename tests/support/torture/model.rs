//! What the torture test believes berth holds, built only from acknowledged answers, and the
//! operations it sends.
//!
//! Each volume name belongs to one client thread, so the operations on a volume are issued
//! one at a time and the model of it is exact: an answer either arrived (the model follows
//! it) or was lost because berth was killed (the operation is *pending*: after the restart
//! it is sent again, unchanged, and must then get the answer it would have got the first
//! time). Right after a publish is acknowledged the client writes a checksum file through
//! the publication and fsyncs it; the checks read it back from the volume's data path.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use tonic::Code;

use super::berth::Endpoints;
use super::csi::{Csi, describe, is_transport};
use super::rng::Rng;

pub const MIB: u64 = 1 << 20;
/// The size of a sized volume at create: a loopfs volume (its own ext4 image).
pub const SIZE: u64 = 16 * MIB;
/// Expansions grow by this much, up to [`MAX_SIZE`].
pub const GROWTH: u64 = 8 * MIB;
pub const MAX_SIZE: u64 = 40 * MIB;
/// The file each volume's data is checked by.
pub const SUM_FILE: &str = "berth-torture.sum";

/// The front-end that created a volume; a repeated create goes the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Csi,
    Docker,
}

/// A CSI publication: staged at `staging` (which the test made, as a kubelet does), published
/// at `target` (which berth makes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsiPub {
    pub staging: PathBuf,
    pub target: PathBuf,
}

/// An acknowledged volume.
#[derive(Clone, Debug)]
pub struct Vol {
    pub front: Front,
    /// The size asked at create (none: a plain directory).
    pub asked: Option<u64>,
    /// The size berth reported last.
    pub size: Option<u64>,
    pub csi: Option<CsiPub>,
    /// Docker mount IDs holding it.
    pub docker: BTreeSet<String>,
    /// The checksum file's content, once written.
    pub sum: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub enum Via {
    Csi(CsiPub),
    Docker(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remover {
    Csi,
    Docker,
    /// `DELETE /v1/volumes/{id}?wipe=true` on the admin API.
    AdminWipe,
}

#[derive(Clone, Debug)]
pub enum Action {
    Create { front: Front, size: Option<u64> },
    Publish(Via),
    Unpublish(Via),
    Expand { to: u64 },
    Delete(Remover),
}

/// Why berth must refuse an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Deleting a volume that is published.
    InUse,
    /// Growing an ext4 loopfs volume that is bind-mounted elsewhere (staged): online grow
    /// needs CAP_SYS_RESOURCE, which this machine's root lacks, and berth does not unmount
    /// a filesystem a container may use.
    GrowWhileMounted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Success,
    Refused(Refusal),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub volume: String,
    pub action: Action,
    pub expect: Expect,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.volume;
        match &self.action {
            Action::Create { front, size } => {
                write!(
                    f,
                    "create {v} via {front:?}, size {:?} MiB",
                    size.map(|s| s / MIB)
                )
            }
            Action::Publish(Via::Csi(p)) => {
                write!(f, "stage+publish {v} at {}", p.target.display())
            }
            Action::Publish(Via::Docker(id)) => write!(f, "docker mount {v} id {id}"),
            Action::Unpublish(Via::Csi(p)) => {
                write!(f, "unpublish+unstage {v} at {}", p.target.display())
            }
            Action::Unpublish(Via::Docker(id)) => write!(f, "docker unmount {v} id {id}"),
            Action::Expand { to } => write!(f, "expand {v} to {} MiB", to / MIB),
            Action::Delete(r) => write!(f, "delete {v} via {r:?}"),
        }?;
        if let Expect::Refused(why) = self.expect {
            write!(f, " (expect refusal: {why:?})")?;
        }
        Ok(())
    }
}

/// An operation's answer.
#[derive(Clone, Debug)]
pub enum Outcome {
    Done {
        size: Option<u64>,
        mountpoint: Option<PathBuf>,
    },
    /// berth's error: its status (gRPC code or HTTP status) and message.
    Refused { status: String, message: String },
    /// No answer: the connection failed (berth died).
    Lost(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done { .. } => write!(f, "ok"),
            Outcome::Refused { status, message } => write!(f, "refused {status}: {message}"),
            Outcome::Lost(why) => write!(f, "LOST ({why})"),
        }
    }
}

/// An operation whose answer was lost, to send again after the restart.
#[derive(Clone, Debug)]
pub struct Pending {
    pub op: Op,
    pub started: Instant,
}

/// The paths the model needs.
#[derive(Clone, Debug)]
pub struct Layout {
    pub pool: PathBuf,
    pub k8s: PathBuf,
}

impl Layout {
    pub fn staging(&self, volume: &str) -> PathBuf {
        self.k8s.join(format!("{volume}.stage"))
    }
    pub fn data(&self, volume: &str) -> PathBuf {
        self.pool.join(volume).join("data")
    }
}

/// Picks the next operation on `volume`, from what the model says it is.
pub fn choose(
    rng: &mut Rng,
    volume: &str,
    slot: &Option<Vol>,
    layout: &Layout,
    owner: &str,
    serial: u64,
) -> Op {
    let op = |action, expect| Op {
        volume: volume.to_string(),
        action,
        expect,
    };
    let Some(v) = slot else {
        let front = *rng.pick(&[Front::Csi, Front::Docker]);
        let size = rng.chance(50).then_some(SIZE);
        return op(Action::Create { front, size }, Expect::Success);
    };
    let published = v.csi.is_some() || !v.docker.is_empty();
    // Only the front-end that created a volume acts on it (and the admin API on any).
    let csi = v.front == Front::Csi;
    let docker = v.front == Front::Docker;
    let growable = csi && v.size.is_some_and(|s| s + GROWTH <= MAX_SIZE);
    let weights = [
        1,                                           // create again: idempotent
        3 * u64::from(csi && v.csi.is_none()),       // stage + publish
        3 * u64::from(docker && v.docker.len() < 2), // docker mount
        3 * u64::from(v.csi.is_some()),              // unpublish + unstage
        3 * u64::from(!v.docker.is_empty()),         // docker unmount
        2 * u64::from(growable),                     // expand
        3 * u64::from(!published),                   // delete
        u64::from(published),                        // delete while published: refused
    ];
    let owner_remover = if csi { Remover::Csi } else { Remover::Docker };
    let removers = [owner_remover, Remover::AdminWipe];
    match rng.weighted(&weights) {
        0 => op(
            Action::Create {
                front: v.front,
                size: v.asked,
            },
            Expect::Success,
        ),
        1 => op(
            Action::Publish(Via::Csi(CsiPub {
                staging: layout.staging(volume),
                target: layout.k8s.join(format!("{volume}.pub{serial}")),
            })),
            Expect::Success,
        ),
        2 => op(
            Action::Publish(Via::Docker(format!("{owner}-{serial}"))),
            Expect::Success,
        ),
        3 => op(
            Action::Unpublish(Via::Csi(v.csi.clone().unwrap_or_else(|| unreachable!()))),
            Expect::Success,
        ),
        4 => {
            let ids: Vec<&String> = v.docker.iter().collect();
            op(
                Action::Unpublish(Via::Docker((*rng.pick(&ids)).clone())),
                Expect::Success,
            )
        }
        5 => op(
            Action::Expand {
                to: v.size.unwrap_or(SIZE) + GROWTH,
            },
            if v.csi.is_some() {
                Expect::Refused(Refusal::GrowWhileMounted)
            } else {
                Expect::Success
            },
        ),
        6 => op(Action::Delete(*rng.pick(&removers)), Expect::Success),
        _ => op(
            Action::Delete(*rng.pick(&removers)),
            Expect::Refused(Refusal::InUse),
        ),
    }
}

fn csi_outcome<T>(result: Result<T, tonic::Status>, done: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(value) => done(value),
        Err(status) if is_transport(&status) => Outcome::Lost(describe(&status)),
        Err(status) => Outcome::Refused {
            status: format!("{:?}", status.code()),
            message: status.message().to_string(),
        },
    }
}

fn http_outcome(
    result: std::io::Result<(u16, Value)>,
    done: impl FnOnce(&Value) -> Outcome,
) -> Outcome {
    match result {
        Ok((200, reply)) => done(&reply),
        Ok((status, reply)) => Outcome::Refused {
            status: status.to_string(),
            message: reply
                .get("Err")
                .or_else(|| reply.get("error"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        Err(e) => Outcome::Lost(e.to_string()),
    }
}

const DONE: Outcome = Outcome::Done {
    size: None,
    mountpoint: None,
};

/// Sends `op` to berth and returns its answer.
pub fn execute(csi: &Csi, endpoints: &Endpoints, op: &Op) -> Outcome {
    let v = op.volume.as_str();
    match &op.action {
        Action::Create {
            front: Front::Csi,
            size,
        } => csi_outcome(csi.create(v, *size), |created| Outcome::Done {
            size: (created.capacity_bytes > 0).then_some(created.capacity_bytes as u64),
            mountpoint: None,
        }),
        Action::Create {
            front: Front::Docker,
            size,
        } => {
            let body = match size {
                Some(s) => json!({"Name": v, "Opts": {"size": format!("{}MiB", s / MIB)}}),
                None => json!({"Name": v}),
            };
            http_outcome(endpoints.docker("/VolumeDriver.Create", &body), |_| DONE)
        }
        Action::Publish(Via::Csi(p)) => match csi_outcome(csi.stage(v, &p.staging), |()| DONE) {
            Outcome::Done { .. } => {
                csi_outcome(csi.publish(v, &p.staging, &p.target), |()| Outcome::Done {
                    size: None,
                    mountpoint: Some(p.target.clone()),
                })
            }
            failed => failed,
        },
        Action::Publish(Via::Docker(id)) => http_outcome(
            endpoints.docker("/VolumeDriver.Mount", &json!({"Name": v, "ID": id})),
            |reply| Outcome::Done {
                size: None,
                mountpoint: reply
                    .get("Mountpoint")
                    .and_then(Value::as_str)
                    .map(PathBuf::from),
            },
        ),
        Action::Unpublish(Via::Csi(p)) => match csi_outcome(csi.unpublish(v, &p.target), |()| DONE)
        {
            Outcome::Done { .. } => csi_outcome(csi.unstage(v, &p.staging), |()| DONE),
            failed => failed,
        },
        Action::Unpublish(Via::Docker(id)) => http_outcome(
            endpoints.docker("/VolumeDriver.Unmount", &json!({"Name": v, "ID": id})),
            |_| DONE,
        ),
        Action::Expand { to } => csi_outcome(csi.expand(v, *to), |size| Outcome::Done {
            size: Some(size as u64),
            mountpoint: None,
        }),
        Action::Delete(Remover::Csi) => csi_outcome(csi.delete(v), |()| DONE),
        Action::Delete(Remover::Docker) => http_outcome(
            endpoints.docker("/VolumeDriver.Remove", &json!({"Name": v})),
            |_| DONE,
        ),
        Action::Delete(Remover::AdminWipe) => http_outcome(
            endpoints.admin("DELETE", &format!("/v1/volumes/{v}?wipe=true")),
            |_| DONE,
        ),
    }
}

/// Whether berth's refusal is the one expected.
fn refusal_matches(why: Refusal, op: &Op, status: &str, message: &str) -> bool {
    let (action, volume) = (&op.action, &op.volume);
    match why {
        Refusal::InUse => {
            let expected = match action {
                Action::Delete(Remover::Csi) => format!("{:?}", Code::FailedPrecondition),
                Action::Delete(Remover::Docker | Remover::AdminWipe) => "409".into(),
                _ => return false,
            };
            status == expected && message.contains(&format!("volume {volume}"))
        }
        // berth answers INTERNAL (the host's refusal reaches CSI as a host failure); the
        // message says what to do. FAILED_PRECONDITION would be CSI's code for it.
        Refusal::GrowWhileMounted => {
            [Code::FailedPrecondition, Code::Internal]
                .iter()
                .any(|code| status == format!("{code:?}"))
                && message.contains(&format!("volume {volume}"))
                && message.contains("unpublish the volume to grow it offline")
        }
    }
}

/// Whether `outcome` refuses an expand because the volume's filesystem is still in use
/// outside berth's mount namespace (a mount namespace made elsewhere on the machine while
/// the volume was mounted keeps a copy, so the offline grow's `e2fsck` cannot have the
/// device). berth then mounts it back unchanged; the checks verify that.
pub fn busy_elsewhere(op: &Op, outcome: &Outcome) -> bool {
    matches!(op.action, Action::Expand { .. })
        && matches!(outcome, Outcome::Refused { status, message }
            if status == "Internal" && message.contains("e2fsck") && message.contains("is in use"))
}

/// Folds an answer (not `Lost`) into the model of its volume. `retried`: the operation was
/// sent before, and that answer was lost. Returns what is wrong, if anything.
pub fn settle(
    slot: &mut Option<Vol>,
    op: &Op,
    outcome: &Outcome,
    retried: bool,
    layout: &Layout,
    rng: &mut Rng,
) -> Result<(), String> {
    let wrong = |what: String| {
        Err(format!(
            "{op}{}: {what}",
            if retried { " (retried)" } else { "" }
        ))
    };
    match (outcome, op.expect) {
        (Outcome::Lost(why), _) => wrong(format!("no answer while berth was running: {why}")),
        (Outcome::Done { .. }, Expect::Refused(why)) => wrong(format!(
            "succeeded, but berth should have refused it ({why:?})"
        )),
        (Outcome::Refused { status, message }, Expect::Refused(why)) => {
            if refusal_matches(why, op, status, message) {
                Ok(())
            } else {
                wrong(format!(
                    "refused with {status}: {message}, not as expected for {why:?}"
                ))
            }
        }
        (outcome, Expect::Success) if busy_elsewhere(op, outcome) => Ok(()),
        (Outcome::Refused { status, message }, Expect::Success) => {
            // The lost attempt did the wipe; the admin API says the volume is gone.
            if retried && matches!(op.action, Action::Delete(Remover::AdminWipe)) && status == "404"
            {
                *slot = None;
                return Ok(());
            }
            wrong(format!("refused with {status}: {message}"))
        }
        (Outcome::Done { size, mountpoint }, Expect::Success) => {
            apply(slot, op, *size, mountpoint.as_deref(), layout, rng).or_else(wrong)
        }
    }
}

fn apply(
    slot: &mut Option<Vol>,
    op: &Op,
    size: Option<u64>,
    mountpoint: Option<&Path>,
    layout: &Layout,
    rng: &mut Rng,
) -> Result<(), String> {
    match &op.action {
        Action::Create { front, size: asked } => {
            // `size` is what berth reported (CSI does; Docker's Create answers nothing).
            if let (Some(reported), Some(asked)) = (size, asked)
                && reported < *asked
            {
                return Err(format!("berth made it {reported} bytes, {asked} asked"));
            }
            match slot {
                // Created again: the same volume, unchanged.
                Some(v) if size.is_some() && v.size != size => {
                    return Err(format!(
                        "a repeated create answered size {size:?}; the volume is {:?}",
                        v.size
                    ));
                }
                Some(_) => {}
                None => {
                    *slot = Some(Vol {
                        front: *front,
                        asked: *asked,
                        size: size.or(*asked),
                        csi: None,
                        docker: BTreeSet::new(),
                        sum: None,
                    });
                }
            }
        }
        Action::Publish(via) => {
            let Some(v) = slot.as_mut() else {
                return Err("published a volume that does not exist".into());
            };
            let Some(through) = mountpoint else {
                return Err("the answer names no mount point".into());
            };
            if let Via::Docker(_) = via
                && through != layout.data(&op.volume)
            {
                return Err(format!(
                    "Mountpoint {} is not the volume's data directory {}",
                    through.display(),
                    layout.data(&op.volume).display()
                ));
            }
            match via {
                Via::Csi(p) => v.csi = Some(p.clone()),
                Via::Docker(id) => {
                    v.docker.insert(id.clone());
                }
            }
            let content = format!("{} {}\n{}\n", op.volume, rng.hex(8), rng.hex(2048)).into_bytes();
            write_synced(&through.join(SUM_FILE), &content).map_err(|e| {
                format!(
                    "writing the checksum file through {}: {e}",
                    through.display()
                )
            })?;
            v.sum = Some(content);
        }
        Action::Unpublish(via) => {
            let Some(v) = slot.as_mut() else {
                return Err("unpublished a volume that does not exist".into());
            };
            match via {
                Via::Csi(_) => v.csi = None,
                Via::Docker(id) => {
                    v.docker.remove(id);
                }
            }
        }
        Action::Expand { to } => {
            let Some(v) = slot.as_mut() else {
                return Err("expanded a volume that does not exist".into());
            };
            if size != Some(*to) {
                return Err(format!("answered size {size:?}, {to} asked"));
            }
            v.size = size;
        }
        Action::Delete(_) => *slot = None,
    }
    Ok(())
}

fn write_synced(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(content)?;
    file.sync_all()
}
