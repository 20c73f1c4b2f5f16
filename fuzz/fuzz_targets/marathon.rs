//! `parse_definition`: never panics (debug assertions are on), every violation has a message,
//! and what it accepts keeps the promises its types document.
#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use berth::mesos::validate::{Definition, parse_definition};
use libfuzzer_sys::fuzz_target;

fn no_parent_dir(path: &Path) -> bool {
    !path.components().any(|c| c == Component::ParentDir)
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_definition(json);
    assert_eq!(parsed, parse_definition(json), "not deterministic");
    match parsed {
        Err(violations) => {
            assert!(!violations.is_empty(), "refused without a reason");
            for v in &violations {
                assert!(!v.message.trim().is_empty(), "empty message at {:?}", v.path);
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
                assert!(v.size_mib > 0, "{name:?} has size 0");
                if let Some(max) = v.max_size_mib {
                    assert!(max >= v.size_mib, "{name:?}: maxSize below size");
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
});
