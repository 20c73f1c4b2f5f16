//! `docker volume create --opt KEY=VALUE` → [`VolumeSpec`].
//!
//! Docker passes `--opt` pairs to the plugin verbatim and keeps `--label` to itself, so
//! labels travel as `--opt label.KEY=VALUE`. Every key is checked here, before the engine is
//! called: an unknown key is an error (a typo such as `sise=1G` must not silently create an
//! unlimited volume), and each message names the volume, the option and what to write.

use std::collections::BTreeMap;

use crate::engine::InputError;
use crate::engine::types::{PoolKind, VolumeName, VolumeSpec, parse_size};

/// The options `Create` accepts, for error messages and the docs.
pub const KNOWN_OPTIONS: &str = "size, type, pool, profile, uid, gid, mode and label.<key>";

/// The prefix of a label option: `label.team=db` sets the label `team` to `db`.
pub const LABEL_PREFIX: &str = "label.";

/// Turns Docker's `Opts` into a volume spec; see the module docs.
pub fn parse_options(
    volume: &VolumeName,
    opts: &BTreeMap<String, String>,
) -> Result<VolumeSpec, InputError> {
    let mut spec = VolumeSpec::default();
    for (key, value) in opts {
        let invalid = |reason: String| InputError::Invalid {
            field: format!("option {key:?} for volume {volume}"),
            reason,
        };
        match key.as_str() {
            "size" => spec.size = Some(parse_size(value).map_err(|e| invalid(e.to_string()))?),
            "type" => {
                spec.kind = Some(
                    value
                        .parse::<PoolKind>()
                        .map_err(|e| invalid(e.to_string()))?,
                )
            }
            "pool" => spec.pool = Some(non_empty(value).map_err(invalid)?),
            "profile" => spec.profile = Some(non_empty(value).map_err(invalid)?),
            "uid" => spec.ownership.uid = Some(parse_id(value).map_err(invalid)?),
            "gid" => spec.ownership.gid = Some(parse_id(value).map_err(invalid)?),
            "mode" => spec.ownership.mode = Some(parse_mode(value).map_err(invalid)?),
            _ => match key.strip_prefix(LABEL_PREFIX) {
                Some(label) if valid_label_key(label) => {
                    spec.labels.insert(label.to_string(), value.clone());
                }
                Some(_) => {
                    return Err(invalid(
                        "a label key is 1 to 63 letters, digits, and - _ . /; write label.team=db"
                            .into(),
                    ));
                }
                None => {
                    return Err(InputError::Invalid {
                        field: format!("option {key:?} for volume {volume}"),
                        reason: format!("unknown option; berth accepts {KNOWN_OPTIONS}"),
                    });
                }
            },
        }
    }
    Ok(spec)
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("the value cannot be empty".into())
    } else {
        Ok(value.to_string())
    }
}

fn parse_id(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .map_err(|_| format!("{value:?} is not a numeric id; use a number such as 999"))
}

/// Permission bits in octal, with or without a leading `0` or `0o`: `750`, `0750`, `0o750`.
fn parse_mode(value: &str) -> Result<u32, String> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    let bad = || format!("{value:?} is not an octal permission mode; use e.g. 0750");
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode > 0o7777 {
        return Err(bad());
    }
    Ok(mode)
}

fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::Ownership;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeSpec, String> {
        parse_options(&VolumeName::parse("v").unwrap(), &opts(pairs)).map_err(|e| e.to_string())
    }

    #[test]
    fn every_option_lands_in_the_spec() {
        let spec = parse(&[
            ("size", "16MiB"),
            ("type", "path"),
            ("pool", "ssd"),
            ("profile", "fast"),
            ("uid", "999"),
            ("gid", "998"),
            ("mode", "0750"),
            ("label.team", "db"),
            ("label.app.kubernetes.io/name", "mysql"),
        ])
        .unwrap();
        assert_eq!(spec.size, Some(16 << 20));
        assert_eq!(spec.kind, Some(PoolKind::Path));
        assert_eq!(spec.pool.as_deref(), Some("ssd"));
        assert_eq!(spec.profile.as_deref(), Some("fast"));
        assert_eq!(
            spec.ownership,
            Ownership {
                uid: Some(999),
                gid: Some(998),
                mode: Some(0o750)
            }
        );
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("db"));
        assert_eq!(spec.labels.len(), 2);
        assert_eq!(parse(&[]).unwrap(), VolumeSpec::default());
        assert_eq!(
            parse(&[("size", "10G")]).unwrap().size,
            Some(10_000_000_000)
        );
        assert_eq!(
            parse(&[("mode", "755")]).unwrap().ownership.mode,
            Some(0o755)
        );
        assert_eq!(
            parse(&[("mode", "0o1777")]).unwrap().ownership.mode,
            Some(0o1777)
        );
    }

    #[test]
    fn bad_options_name_the_volume_the_option_and_the_fix() {
        let cases = [
            (("size", "-1"), "\"-1\""),
            (("size", "lots"), "512MiB"),
            (("size", "0"), "greater than zero"),
            (("colour", "red"), "unknown option; berth accepts size"),
            (("type", "floppy"), "root, path or mount"),
            (("uid", "-3"), "numeric id"),
            (("gid", "staff"), "numeric id"),
            (("mode", "0999"), "octal"),
            (("mode", "17777"), "octal"),
            (("mode", ""), "octal"),
            (("pool", " "), "cannot be empty"),
            (("label.", "x"), "label key"),
            (("label.a b", "x"), "label key"),
        ];
        for ((key, value), needle) in cases {
            let e = parse(&[(key, value)]).unwrap_err();
            assert!(e.contains(needle), "{key}={value}: {e}");
            assert!(e.contains(&format!("option {key:?} for volume v")), "{e}");
        }
    }
}
