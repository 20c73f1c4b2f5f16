//! The Docker volume plugin's request parsing (`berth::docker::parse_call`): the endpoint
//! path on the first line, the JSON body after it.
//!
//! Properties: parsing never panics and never reaches the engine; a refusal is a 4xx with a
//! message, or an input error; a parsed Create carries a valid name, a size above zero, a
//! permission mode within 0o7777 and only label keys Docker's `label.` options named; a
//! parsed Mount/Unmount holds only a `docker` reference of bounded, printable length, never a
//! bind of a path.
#![no_main]

use std::collections::BTreeMap;

use berth::docker::{Call, Endpoint, Failure, parse_call};
use berth::engine::EngineError;
use berth::engine::types::{PublishTarget, VolumeName};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
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
                assert!(!key.is_empty() && key.len() <= 63, "{key:?}");
                assert_eq!(opts.get(&format!("label.{key}")), Some(value), "{key:?}");
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
            assert!(matches!(e, EngineError::Input(_)), "parsing reached the engine: {e}");
            assert!(!e.to_string().is_empty());
        }
    }
});
