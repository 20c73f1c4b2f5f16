//! One vocabulary for what a volume request asks: the Docker `--opt` pairs, a CSI
//! StorageClass's `parameters` (or an inline volume's context) and a Marathon persistent
//! volume's fields all come here as string keys and values, are checked by the same rules
//! and refused with the same reasons. Each front-end brings a [`Dialect`], a small table of
//! how it spells the keys: Marathon says `profileName` and means MiB by a bare size.

use std::fmt;

use super::error::InputError;
use super::labels::{key_error, value_error};
use super::selector::LabelSelector;
use super::types::{
    FsType, PathConstraint, PoolKind, ReclaimPolicy, VolumeSpec, format_size, parse_size,
};

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
    Fs,
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

const SHARED_KEYS: [(&str, Key); 11] = [
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
    ("fs", Key::Fs),
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
        SHARED_KEYS[10],
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
        SHARED_KEYS[10],
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
        SHARED_KEYS[10],
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
            Key::Fs => spec.fs = Some(fs_type(value).map_err(refuse)?),
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
        out_of_range @ InputError::OutOfRange { .. } => out_of_range.to_string(),
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("must not be empty; leave the key out instead".into())
    } else {
        Ok(value.to_string())
    }
}

/// A filesystem berth makes in `loopfs` images.
fn fs_type(value: &str) -> Result<FsType, String> {
    match value {
        "ext4" => Ok(FsType::Ext4),
        "xfs" => Ok(FsType::Xfs),
        _ => Err(format!(
            "{value:?} is not a filesystem berth makes; use ext4 or xfs"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::Ownership;

    fn parse(dialect: &Dialect, pairs: &[(&str, &str)]) -> Result<VolumeSpec, RequestError> {
        dialect.parse(pairs.iter().copied())
    }

    #[test]
    fn every_key_lands_in_the_spec() {
        let spec = parse(
            &DOCKER,
            &[
                ("size", "1GiB"),
                ("max_size", "2GiB"),
                ("type", "mount"),
                ("pool", "disks"),
                ("profile", "fast"),
                ("constraints", r#"[["path","UNLIKE","/mnt/hdd-.*"]]"#),
                ("uid", "999"),
                ("gid", "998"),
                ("mode", "0o750"),
                ("reclaim", "Retain"),
                ("selector", "media=ssd,rack in (r1,r2)"),
                ("label.app.kubernetes.io/name", "mysql"),
            ],
        )
        .unwrap();
        assert_eq!(spec.size, Some(1 << 30));
        assert_eq!(spec.max_size, Some(2 << 30));
        assert_eq!(spec.kind, Some(PoolKind::Mount));
        assert_eq!(spec.pool.as_deref(), Some("disks"));
        assert_eq!(spec.profile.as_deref(), Some("fast"));
        assert_eq!(
            spec.constraints,
            [PathConstraint::new(false, "/mnt/hdd-.*").unwrap()]
        );
        assert_eq!(
            spec.ownership,
            Ownership {
                uid: Some(999),
                gid: Some(998),
                mode: Some(0o750)
            }
        );
        assert_eq!(spec.reclaim, Some(ReclaimPolicy::Retain));
        assert_eq!(
            spec.selector.map(|s| s.to_string()).as_deref(),
            Some("media=ssd,rack in (r1,r2)")
        );
        assert_eq!(&spec.labels["app.kubernetes.io/name"], "mysql");
        assert_eq!(parse(&DOCKER, &[]).unwrap(), VolumeSpec::default());
    }

    #[test]
    fn marathon_spells_its_own_keys_and_counts_bare_sizes_in_mib() {
        let spec = parse(
            &MARATHON_PERSISTENT,
            &[
                ("size", "512"),
                ("maxSize", "1024"),
                ("type", "mount"),
                ("profileName", "ssd"),
            ],
        )
        .unwrap();
        assert_eq!(spec.size, Some(512 << 20));
        assert_eq!(spec.max_size, Some(1 << 30));
        assert_eq!(spec.profile.as_deref(), Some("ssd"));
        // A size with a unit means what it says; a bare one is MiB only for Marathon.
        assert_eq!(
            parse(&MARATHON_PERSISTENT, &[("size", "1GiB")])
                .unwrap()
                .size,
            Some(1 << 30)
        );
        assert_eq!(parse(&DOCKER, &[("size", "512")]).unwrap().size, Some(512));
        let huge = parse(&MARATHON_PERSISTENT, &[("size", "18446744073709551615")]);
        assert!(huge.unwrap_err().reason.contains("size too large"));
        // Its default kind is root, so a maximum size needs `type: mount`.
        let error = parse(&MARATHON_PERSISTENT, &[("size", "1"), ("maxSize", "2")]).unwrap_err();
        assert_eq!(error.key, "maxSize");
        assert!(error.reason.contains("this volume is type root"), "{error}");
        let error = parse(&DOCKER, &[("max_size", "2MiB")]).unwrap_err();
        assert_eq!(error.key, "max_size");
        assert!(
            error.reason.contains("this volume is type unset"),
            "{error}"
        );
    }

    #[test]
    fn each_front_end_accepts_only_its_own_spelling() {
        for (dialect, key) in [
            (&DOCKER, "profileName"),
            (&CSI_PARAMETERS, "size"),
            (&CSI_PARAMETERS, "label.team"),
            (&MARATHON_PERSISTENT, "pool"),
            (&MARATHON_LABELS, "size"),
        ] {
            let error = parse(dialect, &[(key, "x")]).unwrap_err();
            assert_eq!(error.key, key);
            assert!(
                error.reason.starts_with("unknown key; berth accepts "),
                "{error}"
            );
        }
        assert_eq!(
            CSI_PARAMETERS.accepted(),
            "max_size, type, pool, profile, constraints, uid, gid, mode, reclaim, fs, selector and label/<key>"
        );
        assert_eq!(
            parse(&CSI_EPHEMERAL, &[("size", "1Mi")]).unwrap().size,
            Some(1 << 20)
        );
    }

    #[test]
    fn bad_values_are_refused_with_one_reason_each() {
        let cases = [
            (
                "fs",
                "btrfs",
                "\"btrfs\" is not a filesystem berth makes; use ext4 or xfs",
            ),
            (
                "size",
                "0",
                "\"0\" is not a size: a size must be greater than zero",
            ),
            ("size", "lots", "\"lots\" is not a size"),
            (
                "type",
                "floppy",
                "\"floppy\" is not a volume type; use root, path or mount",
            ),
            ("pool", " ", "must not be empty"),
            ("profile", "", "must not be empty"),
            ("constraints", "path LIKE x", "must be a JSON array of"),
            (
                "constraints",
                r#"[["path","LIKE"]]"#,
                "constraint 1: must be a triple",
            ),
            (
                "constraints",
                r#"[["path","LIKE",3]]"#,
                "constraint 1: the pattern must be a string",
            ),
            ("uid", "-3", "\"-3\" is not a numeric id"),
            ("uid", "+3", "\"+3\" is not a numeric id"),
            ("gid", "4294967296", "is not a numeric id"),
            ("mode", "+755", "\"+755\" is not an octal permission mode"),
            ("mode", "0999", "octal"),
            ("mode", "17777", "octal"),
            ("mode", "", "octal"),
            ("reclaim", "keep", "\"keep\" is not a reclaim policy"),
            ("selector", "", "at least one requirement"),
            ("label.", "x", "label key \"\" has an empty name"),
            ("label.a b", "x", "label key \"a b\""),
            ("label.team", "a b", "label value \"a b\""),
            (
                "colour",
                "red",
                "unknown key; berth accepts size, max_size, type",
            ),
        ];
        for (key, value, needle) in cases {
            let error = parse(&DOCKER, &[(key, value)]).unwrap_err();
            assert_eq!(error.key, key);
            assert!(error.reason.contains(needle), "{key}={value:?}: {error}");
        }
    }

    #[test]
    fn the_first_refusal_is_the_same_whatever_the_order() {
        let pairs = [("uid", "x"), ("gid", "y"), ("mode", "z")];
        let forward = parse(&DOCKER, &pairs).unwrap_err();
        let mut reversed = pairs;
        reversed.reverse();
        assert_eq!(parse(&DOCKER, &reversed).unwrap_err(), forward);
        assert_eq!(forward.key, "gid");
    }
}
