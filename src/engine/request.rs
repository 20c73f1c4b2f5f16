//! One vocabulary for what a volume request asks: the Docker `--opt` pairs, a CSI
//! StorageClass's `parameters` (or an inline volume's context) and a Marathon persistent
//! volume's fields all come here as string keys and values, are checked by the same rules
//! and refused with the same reasons. Each front-end brings a [`Dialect`], a small table of
//! how it spells the keys: Marathon says `profileName` and means MiB by a bare size.

use std::fmt;

use super::error::InputError;
use super::labels::{key_error, value_error};
use super::selector::LabelSelector;
use super::types::{PathConstraint, PoolKind, ReclaimPolicy, VolumeSpec, format_size, parse_size};

/// What a request key sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Size,
    MaxSize,
    Pool,
    Kind,
    Profile,
    Constraints,
    Uid,
    Gid,
    Mode,
    Reclaim,
    Selector,
}

/// How one front-end spells the request keys.
#[derive(Debug)]
pub struct Dialect {
    /// The keys this front-end accepts, as it spells them, in the order the docs list them.
    pub keys: &'static [(&'static str, Key)],
    /// The prefix of a label key (`label.team=db`), if labels can be set this way.
    pub label_prefix: Option<&'static str>,
    /// What a size without a unit counts: bytes, or Marathon's MiB.
    pub bare_size_unit: u64,
    /// The kind assumed when none is asked for (Marathon's `root`).
    pub default_kind: Option<PoolKind>,
}

const SHARED_KEYS: [(&str, Key); 10] = [
    ("size", Key::Size),
    ("max_size", Key::MaxSize),
    ("type", Key::Kind),
    ("pool", Key::Pool),
    ("profile", Key::Profile),
    ("constraints", Key::Constraints),
    ("uid", Key::Uid),
    ("gid", Key::Gid),
    ("mode", Key::Mode),
    ("reclaim", Key::Reclaim),
];

/// `docker volume create --opt KEY=VALUE`.
pub const DOCKER: Dialect = Dialect {
    keys: &[
        SHARED_KEYS[0],
        SHARED_KEYS[1],
        SHARED_KEYS[2],
        SHARED_KEYS[3],
        SHARED_KEYS[4],
        SHARED_KEYS[5],
        SHARED_KEYS[6],
        SHARED_KEYS[7],
        SHARED_KEYS[8],
        SHARED_KEYS[9],
        ("selector", Key::Selector),
    ],
    label_prefix: Some("label."),
    bare_size_unit: 1,
    default_kind: None,
};

/// A StorageClass's `parameters`: the size comes from the claim, not from here.
pub const CSI_PARAMETERS: Dialect = Dialect {
    keys: &[
        SHARED_KEYS[1],
        SHARED_KEYS[2],
        SHARED_KEYS[3],
        SHARED_KEYS[4],
        SHARED_KEYS[5],
        SHARED_KEYS[6],
        SHARED_KEYS[7],
        SHARED_KEYS[8],
        SHARED_KEYS[9],
        ("selector", Key::Selector),
    ],
    label_prefix: Some("label/"),
    bare_size_unit: 1,
    default_kind: None,
};

/// An inline ephemeral volume's `volume_context`, which also carries its size.
pub const CSI_EPHEMERAL: Dialect = Dialect {
    keys: DOCKER.keys,
    ..CSI_PARAMETERS
};

/// The fields of a Marathon `persistent` object (the JSON numbers and arrays as text).
pub const MARATHON_PERSISTENT: Dialect = Dialect {
    keys: &[
        ("size", Key::Size),
        ("maxSize", Key::MaxSize),
        ("type", Key::Kind),
        ("profileName", Key::Profile),
        ("constraints", Key::Constraints),
    ],
    label_prefix: None,
    bare_size_unit: 1 << 20,
    default_kind: Some(PoolKind::Root),
};

/// The keys a Marathon app or pod sets for one volume in its `labels`
/// (`"berth/VOLUME/KEY": "VALUE"`): what the `persistent` object has no field for.
pub const MARATHON_LABELS: Dialect = Dialect {
    keys: &[
        SHARED_KEYS[3],
        SHARED_KEYS[6],
        SHARED_KEYS[7],
        SHARED_KEYS[8],
        SHARED_KEYS[9],
        ("selector", Key::Selector),
    ],
    label_prefix: Some("label."),
    bare_size_unit: 1 << 20,
    default_kind: None,
};

/// A key a request refused, as the front-end spelled it, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl Dialect {
    /// The accepted keys as the docs and the unknown-key message list them.
    pub fn accepted(&self) -> String {
        let mut names: Vec<String> = self.keys.iter().map(|(name, _)| name.to_string()).collect();
        if let Some(prefix) = self.label_prefix {
            names.push(format!("{prefix}<key>"));
        }
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    /// Parses a whole request: every pair, then the rules between keys. Pairs are taken in
    /// key order, so the first refusal is the same on every retry.
    pub fn parse<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<VolumeSpec, RequestError> {
        let mut pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        pairs.sort();
        let mut spec = VolumeSpec::default();
        for (key, value) in pairs {
            self.apply(key, value, &mut spec)?;
        }
        self.check(&spec)?;
        Ok(spec)
    }

    /// Sets one key of `spec` from its text.
    pub fn apply(&self, key: &str, value: &str, spec: &mut VolumeSpec) -> Result<(), RequestError> {
        let refuse = |reason: String| RequestError {
            key: key.to_string(),
            reason,
        };
        let Some(known) = self.keys.iter().find(|(name, _)| *name == key).map(|k| k.1) else {
            return match self.label_prefix.and_then(|p| key.strip_prefix(p)) {
                Some(label) => {
                    if let Some(why) = key_error(label).or_else(|| value_error(value)) {
                        return Err(refuse(why));
                    }
                    spec.labels.insert(label.to_string(), value.to_string());
                    Ok(())
                }
                None => Err(refuse(format!(
                    "unknown key; berth accepts {}",
                    self.accepted()
                ))),
            };
        };
        match known {
            Key::Size => spec.size = Some(self.size(value).map_err(refuse)?),
            Key::MaxSize => spec.max_size = Some(self.size(value).map_err(refuse)?),
            Key::Kind => spec.kind = Some(value.parse().map_err(|e| refuse(reason(e)))?),
            Key::Pool => spec.pool = Some(non_empty(value).map_err(refuse)?),
            Key::Profile => spec.profile = Some(non_empty(value).map_err(refuse)?),
            Key::Constraints => spec.constraints = constraints(value).map_err(refuse)?,
            Key::Uid => spec.ownership.uid = Some(id(value).map_err(refuse)?),
            Key::Gid => spec.ownership.gid = Some(id(value).map_err(refuse)?),
            Key::Mode => spec.ownership.mode = Some(mode(value).map_err(refuse)?),
            Key::Reclaim => {
                spec.reclaim = Some(
                    value
                        .parse::<ReclaimPolicy>()
                        .map_err(|e| refuse(reason(e)))?,
                )
            }
            Key::Selector => spec.selector = Some(LabelSelector::parse(value).map_err(refuse)?),
        }
        Ok(())
    }

    /// The rules between keys, once every key is set; fills in the dialect's default kind.
    pub fn check(&self, spec: &VolumeSpec) -> Result<(), RequestError> {
        let kind = spec.kind.or(self.default_kind);
        let Some(max) = spec.max_size else {
            return Ok(());
        };
        let refuse = |reason: String| RequestError {
            key: self.spelling(Key::MaxSize).to_string(),
            reason,
        };
        if kind != Some(PoolKind::Mount) {
            return Err(refuse(format!(
                "a maximum size is only for type mount (a whole disk), this volume is type {}",
                kind.map_or("unset", PoolKind::as_str)
            )));
        }
        if let Some(size) = spec.size
            && max < size
        {
            return Err(refuse(format!(
                "the maximum {} is below the size {}",
                format_size(max),
                format_size(size)
            )));
        }
        Ok(())
    }

    /// How this front-end spells `key`.
    pub fn spelling(&self, key: Key) -> &'static str {
        self.keys
            .iter()
            .find(|(_, k)| *k == key)
            .map_or("?", |(name, _)| name)
    }

    fn size(&self, value: &str) -> Result<u64, String> {
        let bytes = parse_size(value).map_err(reason)?;
        if self.bare_size_unit == 1 || !value.trim().bytes().all(|b| b.is_ascii_digit()) {
            return Ok(bytes);
        }
        bytes
            .checked_mul(self.bare_size_unit)
            .ok_or_else(|| format!("{value:?} is not a size: size too large"))
    }
}

/// The reason of an engine input error, without its "invalid <field>" lead-in.
fn reason(error: InputError) -> String {
    match error {
        InputError::Size { value, reason } => format!("\"{value}\" is not a size: {reason}"),
        InputError::Name { reason, .. } | InputError::Invalid { reason, .. } => reason,
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("must not be empty; leave the key out instead".into())
    } else {
        Ok(value.to_string())
    }
}

fn id(value: &str) -> Result<u32, String> {
    if !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && let Ok(id) = value.parse()
    {
        return Ok(id);
    }
    Err(format!(
        "{value:?} is not a numeric id; use a number from 0 to 4294967295, such as 999"
    ))
}

/// Permission bits in octal, with or without a leading `0` or `0o`: `750`, `0750`, `0o750`.
fn mode(value: &str) -> Result<u32, String> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    let valid = !digits.is_empty()
        && digits.len() <= 5
        && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if valid && mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "{value:?} is not an octal permission mode; use e.g. 0750"
        )),
    }
}

/// `[["path", "LIKE"|"UNLIKE", REGEX], ...]`, Marathon's constraint triples as JSON text.
fn constraints(value: &str) -> Result<Vec<PathConstraint>, String> {
    const SHAPE: &str = "a JSON array of [\"path\", \"LIKE\"|\"UNLIKE\", REGEX] triples";
    let items: Vec<serde_json::Value> =
        serde_json::from_str(value).map_err(|_| format!("must be {SHAPE}, got {value:?}"))?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let at = |why: String| format!("constraint {}: {why}", index + 1);
            let parts = match item.as_array().map(Vec::as_slice) {
                Some([field, op, pattern]) => [field, op, pattern],
                _ => {
                    return Err(at(format!(
                        "must be a triple like [\"path\", \"LIKE\", \"/mnt/ssd-.+\"], got {item}"
                    )));
                }
            };
            let [field, op, pattern] = parts;
            if field.as_str() != Some("path") {
                return Err(at(format!(
                    "only \"path\" constraints are supported on volumes, got {field}"
                )));
            }
            let like = match op.as_str() {
                Some("LIKE") => true,
                Some("UNLIKE") => false,
                _ => return Err(at(format!("must be \"LIKE\" or \"UNLIKE\", got {op}"))),
            };
            let Some(pattern) = pattern.as_str() else {
                return Err(at(format!("the pattern must be a string, got {pattern}")));
            };
            PathConstraint::new(like, pattern).map_err(|e| at(reason(e)))
        })
        .collect()
}
