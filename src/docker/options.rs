//! `docker volume create --opt KEY=VALUE` → [`VolumeSpec`].
//!
//! Docker passes `--opt` pairs to the plugin verbatim and keeps `--label` to itself, so
//! labels travel as `--opt label.KEY=VALUE`. Every key goes through the engine's one request
//! vocabulary ([`request::DOCKER`]) before the engine is called: an unknown key is an error
//! (a typo such as `sise=1G` must not silently create an unlimited volume), and each message
//! names the volume, the option and what to write.

use std::collections::BTreeMap;

use crate::engine::InputError;
use crate::engine::request;
use crate::engine::types::{VolumeName, VolumeSpec};

/// Turns Docker's `Opts` into a volume spec; see the module docs.
pub fn parse_options(
    volume: &VolumeName,
    opts: &BTreeMap<String, String>,
) -> Result<VolumeSpec, InputError> {
    request::DOCKER
        .parse(opts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| InputError::Invalid {
            field: format!("option {:?} for volume {volume}", e.key),
            reason: e.reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::{Ownership, PoolKind};

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
        assert_eq!(spec.labels.get("team"), Some("db"));
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
            (("colour", "red"), "unknown key; berth accepts size"),
            (("mode", "+755"), "octal"),
            (("reclaim", "forever"), "delete or retain"),
            (("selector", "rack in (r1"), "without a matching"),
            (("type", "floppy"), "root, path or mount"),
            (("uid", "-3"), "numeric id"),
            (("gid", "staff"), "numeric id"),
            (("mode", "0999"), "octal"),
            (("mode", "17777"), "octal"),
            (("mode", ""), "octal"),
            (("pool", " "), "must not be empty"),
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
