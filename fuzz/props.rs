//! The properties each fuzz target checks, one function per target, each taking the raw
//! input. Shared by the cargo-fuzz targets (`fuzz_targets/*.rs`) and by the main crate's
//! `tests/fuzz_corpus.rs`, which replays the seed corpus (and cheap mutations of it) through
//! the same checks in every `cargo test`. A broken property panics.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path};

use berth::config::Config;
use berth::docker::{Call, Endpoint, Failure, parse_call};
use berth::engine::EngineError;
use berth::engine::labels;
use berth::engine::request;
use berth::engine::selector::LabelSelector;
use berth::engine::types::{
    MAX_NAME_LEN, PathConstraint, PublishTarget, VolumeName, format_size, parse_size,
};
use berth::mesos::validate::{Definition, parse_definition};

/// `VolumeName::parse`: a name that parses is always exactly one safe path component.
pub fn volume_name(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = VolumeName::parse(raw);
    // Deserializing (how names arrive in JSON bodies and the store) agrees with parse.
    let json = serde_json::to_string(raw).expect("a str always serializes");
    let via_serde = serde_json::from_str::<VolumeName>(&json);
    assert_eq!(parsed.is_ok(), via_serde.is_ok(), "{raw:?}");
    match parsed {
        Ok(name) => {
            let s = name.as_str();
            assert_eq!(s, raw, "a name is kept as written");
            assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN, "{s:?}");
            assert!(
                !s.contains('/') && !s.contains('\0') && !s.contains('\\'),
                "{s:?}"
            );
            assert!(s != "." && s != "..", "{s:?}");
            assert!(
                s.is_ascii() && !s.chars().any(|c| c.is_ascii_control()),
                "{s:?}"
            );
            assert!(!s.starts_with('-') && !s.starts_with('.'), "{s:?}");
            let mut components = Path::new(s).components();
            assert!(
                matches!(components.next(), Some(Component::Normal(c)) if c == s),
                "{s:?} is not one normal path component"
            );
            assert!(components.next().is_none(), "{s:?}");
            // The file names berth derives from a name stay one component too.
            let image = format!("{s}.img");
            assert_eq!(Path::new(&image).components().count(), 1);
            assert_eq!(via_serde.ok(), Some(name.clone()));
            assert_eq!(name.to_string(), raw);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

const UNITS: [(&str, u64); 8] = [
    ("KiB", 1 << 10),
    ("Mi", 1 << 20),
    ("GiB", 1 << 30),
    ("Ti", 1 << 40),
    ("K", 1000),
    ("MB", 1_000_000),
    ("G", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

fn round_trips(n: u64) {
    if n == 0 {
        assert!(parse_size("0").is_err());
        return;
    }
    assert_eq!(parse_size(&n.to_string()), Ok(n));
    assert_eq!(parse_size(&format!("{n}B")), Ok(n));
    assert_eq!(parse_size(&format!(" {n} ")), Ok(n));
    for (unit, scale) in UNITS {
        if n.is_multiple_of(scale) {
            assert_eq!(parse_size(&format!("{}{unit}", n / scale)), Ok(n), "{unit}");
        }
        match n.checked_mul(scale) {
            Some(bytes) => assert_eq!(parse_size(&format!("{n}{unit}")), Ok(bytes)),
            None => assert!(parse_size(&format!("{n}{unit}")).is_err(), "{n}{unit}"),
        }
    }
    let shown = format_size(n);
    if !shown.contains('.') {
        assert_eq!(parse_size(&shown), Ok(n), "{shown}");
    }
}

/// `parse_size`: never zero, never wraps, and every byte count round-trips through its
/// decimal text and through each binary unit it divides by.
pub fn size(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_size(text) {
            Ok(n) => {
                assert!(n > 0, "{text:?} parsed to zero");
                round_trips(n);
                // Surrounding whitespace never changes a size.
                assert_eq!(parse_size(text.trim()), Ok(n));
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    if let Some(bytes) = data.get(..8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        round_trips(u64::from_le_bytes(word));
    }
}

/// The engine's `PathConstraint::new` + `matches`, and the same pattern sent as a request's
/// `constraints` key (how Docker, CSI and Marathon all pass it). Input: the pattern on the
/// first line, the path after it.
///
/// Properties: a pattern the engine accepts is a valid regular expression by itself (so
/// wrapping it in `^(?:...)$` cannot change its meaning: `a)|(?:b` must be refused), LIKE
/// and UNLIKE are exact complements, and the request vocabulary accepts exactly the patterns
/// `PathConstraint::new` does, into the same constraint.
pub fn path_constraint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, ""));
    let like = PathConstraint::new(true, pattern);
    let unlike = PathConstraint::new(false, pattern);
    assert_eq!(like.is_ok(), unlike.is_ok());
    let triple = serde_json::json!([["path", "LIKE", pattern]]).to_string();
    let via_request = request::DOCKER.parse([("constraints", triple.as_str())]);
    let (Ok(like), Ok(unlike)) = (like, unlike) else {
        assert!(
            via_request.is_err(),
            "{pattern:?}: the request took what new refused"
        );
        return;
    };
    assert!(
        regex::Regex::new(pattern).is_ok(),
        "the engine accepted {pattern:?}, which is not a regular expression by itself"
    );
    let matched = like.matches(path);
    assert_eq!(matched, !unlike.matches(path), "{pattern:?} {path:?}");
    match via_request {
        Ok(spec) => assert_eq!(spec.constraints, [like], "{pattern:?}"),
        Err(e) => panic!("new accepted {pattern:?}, the request refused it: {e}"),
    }
}

/// `LabelSelector::parse`: never panics; a selector that parses prints in a form that
/// parses back to the same selector; `unmet` and `matches` agree, on labels taken from the
/// input itself.
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (selector_text, labels_text) = text.split_once('\n').unwrap_or((text, ""));
    let parsed = LabelSelector::parse(selector_text);
    assert_eq!(
        parsed,
        LabelSelector::parse(selector_text),
        "not deterministic"
    );
    let Ok(selector) = parsed else {
        return;
    };
    let written = selector.to_string();
    assert_eq!(
        LabelSelector::parse(&written).as_ref(),
        Ok(&selector),
        "{selector_text:?} printed as {written:?}"
    );
    let labels: BTreeMap<String, String> = labels_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(selector.matches(&labels), selector.unmet(&labels).is_none());
}

/// `Config::parse`: a config that parses is valid, serializes back to TOML and parses again
/// to the same value; a refusal always names the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("fuzz.toml");
    match Config::parse(text, origin) {
        Ok(config) => {
            assert_eq!(config.validate(), Ok(()));
            assert!(!config.effective_pools().is_empty());
            let written = match toml::to_string(&config) {
                Ok(w) => w,
                Err(e) => panic!("a config that parsed does not serialize: {e}\n{config:?}"),
            };
            match Config::parse(&written, origin) {
                Ok(again) => assert_eq!(again, config, "re-parsed differently:\n{written}"),
                Err(e) => panic!("the serialized config does not parse: {e}\n{written}"),
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("fuzz.toml"), "{message}");
        }
    }
}

fn no_parent_dir(path: &Path) -> bool {
    !path.components().any(|c| c == Component::ParentDir)
}

/// `parse_definition`: never panics (debug assertions are on), every violation has a message,
/// and what it accepts keeps the promises its types document.
pub fn marathon(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_definition(json);
    assert_eq!(parsed, parse_definition(json), "not deterministic");
    match parsed {
        Err(violations) => {
            assert!(!violations.is_empty(), "refused without a reason");
            for v in &violations {
                assert!(
                    !v.message.trim().is_empty(),
                    "empty message at {:?}",
                    v.path
                );
                assert!(!v.to_string().is_empty());
            }
        }
        Ok(definition) => {
            let mut names = HashSet::new();
            for v in definition.persistent_volumes() {
                let name = v.name.as_str();
                assert!(!name.is_empty() && !name.contains('/'), "{name:?}");
                assert!(name != "." && name != "..", "{name:?}");
                assert!(names.insert(name), "volume {name:?} twice");
                let size = v.spec.size.unwrap_or(0);
                assert!(size > 0, "{name:?} has size 0");
                if let Some(max) = v.spec.max_size {
                    assert!(max >= size, "{name:?}: maxSize below size");
                }
            }
            match &definition {
                Definition::App(app) => {
                    for alias in &app.alias_mounts {
                        assert!(names.contains(alias.volume.as_str()), "{alias:?}");
                        assert!(no_parent_dir(&alias.container_path), "{alias:?}");
                    }
                }
                Definition::Pod(pod) => {
                    for mount in &pod.mounts {
                        assert!(names.contains(mount.volume.as_str()), "{mount:?}");
                        assert!(no_parent_dir(&mount.mount_path), "{mount:?}");
                    }
                }
            }
            assert!(serde_json::to_string(&definition).is_ok());
        }
    }
}

fn check_name(name: &VolumeName) {
    assert_eq!(VolumeName::parse(name.as_str()).as_ref(), Ok(name));
}

fn check_holder(target: &PublishTarget) {
    match target {
        PublishTarget::Reference { holder } => {
            assert!(
                holder == "docker" || holder.starts_with("docker:"),
                "{holder:?}"
            );
            assert!(holder.len() <= "docker:".len() + 256, "{}", holder.len());
            assert!(holder.chars().all(|c| c.is_ascii_graphic()), "{holder:?}");
        }
        PublishTarget::Bind { path, .. } => panic!("a Docker request bound {}", path.display()),
    }
}

/// The Docker volume plugin's request parsing (`berth::docker::parse_call`): the endpoint
/// path on the first line, the JSON body after it.
///
/// Properties: parsing never panics and never reaches the engine; a refusal is a 4xx with a
/// message, or an input error; a parsed Create carries a valid name, a size above zero, a
/// permission mode within 0o7777 and only label keys Docker's `label.` options named; a
/// parsed Mount/Unmount holds only a `docker` reference of bounded, printable length, never a
/// bind of a path.
pub fn docker_request(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (path, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let Some(endpoint) = std::str::from_utf8(path).ok().and_then(Endpoint::from_path) else {
        return;
    };
    match parse_call(endpoint, body) {
        Ok(Call::Create(request)) => {
            check_name(&request.name);
            let spec = &request.spec;
            assert!(spec.size.is_none_or(|s| s > 0), "{:?}", spec.size);
            assert!(spec.ownership.mode.is_none_or(|m| m <= 0o7777));
            assert!(spec.source.is_none() && spec.constraints.is_empty());
            // Every label came from a `label.KEY` option of the body, with its value.
            let json: serde_json::Value = serde_json::from_slice(body).expect("it parsed");
            let opts: BTreeMap<String, String> = json
                .get("Opts")
                .or_else(|| json.get("opts"))
                .and_then(|o| serde_json::from_value(o.clone()).ok())
                .unwrap_or_default();
            for (key, value) in &spec.labels {
                // Kubernetes' syntax: an optional DNS-subdomain prefix and `/`, then a name
                // of at most 63 characters (so a whole key may be longer than 63).
                assert_eq!(labels::key_error(key), None, "{key:?}");
                assert_eq!(labels::value_error(value), None, "{value:?}");
                assert_eq!(
                    opts.get(&format!("label.{key}")).map(String::as_str),
                    Some(value),
                    "{key:?}"
                );
            }
            // Deterministic: the same body parses to the same request.
            let Ok(Call::Create(again)) = parse_call(endpoint, body) else {
                panic!("a second parse of the same Create failed");
            };
            assert_eq!(again.spec, request.spec);
            assert_eq!(again.name, request.name);
        }
        Ok(Call::Mount(name, target) | Call::Unmount(name, target)) => {
            check_name(&name);
            check_holder(&target);
        }
        Ok(Call::Remove(name) | Call::Path(name) | Call::Get(name)) => check_name(&name),
        Ok(Call::Activate | Call::Capabilities | Call::List) => {}
        Err(Failure::Protocol { status, message }) => {
            assert!((400..500).contains(&status), "{status}");
            assert!(!message.is_empty());
        }
        Err(Failure::Engine(e)) => {
            assert!(
                matches!(e, EngineError::Input(_)),
                "parsing reached the engine: {e}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}
