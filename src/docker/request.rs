//! Requests of the plugin protocol: the endpoints, their JSON bodies, and parsing them into
//! calls (names, options and caller ids checked at the edge).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::engine::EngineError;
use crate::engine::types::{CreateRequest, Owner, PublishTarget, VolumeName};

use super::{ANONYMOUS_HOLDER, options};

/// The longest caller `ID` accepted (dockerd sends 64 hex digits).
const MAX_ID_LEN: usize = 256;
/// The endpoints of the plugin protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Activate,
    Create,
    Remove,
    Mount,
    Unmount,
    Path,
    Get,
    List,
    Capabilities,
}

impl Endpoint {
    /// The engine operation this call is, for the metrics' `op` label.
    pub(super) fn operation(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Remove => "delete",
            Self::Mount => "publish",
            Self::Unmount => "unpublish",
            Self::Path | Self::Get => "get",
            Self::List => "list",
            Self::Activate | Self::Capabilities => "handshake",
        }
    }

    const ALL: [Endpoint; 9] = [
        Self::Activate,
        Self::Create,
        Self::Remove,
        Self::Mount,
        Self::Unmount,
        Self::Path,
        Self::Get,
        Self::List,
        Self::Capabilities,
    ];

    fn path(self) -> &'static str {
        match self {
            Self::Activate => "/Plugin.Activate",
            Self::Create => "/VolumeDriver.Create",
            Self::Remove => "/VolumeDriver.Remove",
            Self::Mount => "/VolumeDriver.Mount",
            Self::Unmount => "/VolumeDriver.Unmount",
            Self::Path => "/VolumeDriver.Path",
            Self::Get => "/VolumeDriver.Get",
            Self::List => "/VolumeDriver.List",
            Self::Capabilities => "/VolumeDriver.Capabilities",
        }
    }

    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// What a well-formed body looks like, for error messages.
    fn example(self) -> &'static str {
        match self {
            Self::Create => r#"{"Name":"v","Opts":{"size":"1GiB"}}"#,
            Self::Mount | Self::Unmount => r#"{"Name":"v","ID":"<caller id>"}"#,
            Self::Remove | Self::Path | Self::Get => r#"{"Name":"v"}"#,
            Self::Activate | Self::List | Self::Capabilities => "{}",
        }
    }
}

// ----- wire types ------------------------------------------------------------------------

#[derive(Deserialize)]
struct NameBody {
    #[serde(rename = "Name", alias = "name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "Name", alias = "name")]
    name: String,
    #[serde(rename = "Opts", alias = "opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "Name", alias = "name")]
    name: String,
    #[serde(rename = "ID", alias = "id", alias = "Id", default)]
    id: Option<String>,
}
/// A parsed request.
pub enum Call {
    Activate,
    Capabilities,
    Create(Box<CreateRequest>),
    Remove(VolumeName),
    Mount(VolumeName, PublishTarget),
    Unmount(VolumeName, PublishTarget),
    Path(VolumeName),
    Get(VolumeName),
    List,
}

impl Call {
    /// What the call does, for messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Activate => "Plugin.Activate".into(),
            Self::Capabilities => "VolumeDriver.Capabilities".into(),
            Self::Create(r) => format!("creating volume {}", r.name),
            Self::Remove(n) => format!("removing volume {n}"),
            Self::Mount(n, _) => format!("mounting volume {n}"),
            Self::Unmount(n, _) => format!("unmounting volume {n}"),
            Self::Path(n) | Self::Get(n) => format!("looking up volume {n}"),
            Self::List => "listing volumes".into(),
        }
    }
}

/// Why a request failed before or in the engine.
pub enum Failure {
    /// The request itself is unusable (wrong method, endpoint or body).
    Protocol {
        status: u16,
        message: String,
    },
    Engine(EngineError),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Engine(e)
    }
}
/// Parses a request body into a call; names and options are checked here, at the edge.
/// Public (with [`Endpoint`], [`Call`] and [`Failure`]) for the `docker_request` fuzz target.
pub fn parse_call(endpoint: Endpoint, body: &[u8]) -> Result<Call, Failure> {
    let malformed = |e: serde_json::Error| {
        let what = endpoint.path().trim_start_matches('/');
        tracing::debug!(endpoint = what, error = %e, "malformed plugin request");
        Failure::Protocol {
            status: 400,
            message: format!(
                "malformed {what} request: {e}; send JSON like {}",
                endpoint.example()
            ),
        }
    };
    let name = |raw: &str| VolumeName::parse(raw).map_err(|e| Failure::Engine(e.into()));
    Ok(match endpoint {
        Endpoint::Create => {
            let b: CreateBody = decode(body).map_err(malformed)?;
            let volume = name(&b.name)?;
            let spec = options::parse_options(&volume, &b.opts.unwrap_or_default())
                .map_err(|e| Failure::Engine(e.into()))?;
            Call::Create(Box::new(CreateRequest {
                name: volume,
                spec,
                owner: Owner::default(),
            }))
        }
        Endpoint::Mount | Endpoint::Unmount => {
            let b: MountBody = decode(body).map_err(malformed)?;
            let volume = name(&b.name)?;
            let holder = holder(&volume, b.id.as_deref())?;
            if endpoint == Endpoint::Mount {
                Call::Mount(volume, holder)
            } else {
                Call::Unmount(volume, holder)
            }
        }
        Endpoint::Remove | Endpoint::Path | Endpoint::Get => {
            let b: NameBody = decode(body).map_err(malformed)?;
            let volume = name(&b.name)?;
            match endpoint {
                Endpoint::Remove => Call::Remove(volume),
                Endpoint::Path => Call::Path(volume),
                _ => Call::Get(volume),
            }
        }
        // These take no arguments; dockerd sends `{}` or nothing, which is not checked.
        Endpoint::List => Call::List,
        Endpoint::Activate => Call::Activate,
        Endpoint::Capabilities => Call::Capabilities,
    })
}

/// Decodes a JSON object into `T`; an array with the right number of items is refused too.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    serde_json::from_value(serde_json::Value::Object(object))
}

/// The reference a `Mount`/`Unmount` holds: `docker:<ID>`, or the anonymous one.
fn holder(volume: &VolumeName, id: Option<&str>) -> Result<PublishTarget, Failure> {
    let holder = match id {
        None | Some("") => ANONYMOUS_HOLDER.to_string(),
        Some(id) if id.len() <= MAX_ID_LEN && id.chars().all(|c| c.is_ascii_graphic()) => {
            format!("{ANONYMOUS_HOLDER}:{id}")
        }
        Some(_) => {
            return Err(Failure::Engine(EngineError::Input(
                crate::engine::InputError::Invalid {
                    field: format!("ID for volume {volume}"),
                    reason: format!(
                        "a caller id is at most {MAX_ID_LEN} printable ASCII characters without spaces"
                    ),
                },
            )));
        }
    };
    Ok(PublishTarget::Reference { holder })
}
