//! `VolumeName::parse`: a name that parses is always exactly one safe path component.
#![no_main]

use std::path::{Component, Path};

use berth::engine::types::{MAX_NAME_LEN, VolumeName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
            assert!(!s.contains('/') && !s.contains('\0') && !s.contains('\\'), "{s:?}");
            assert!(s != "." && s != "..", "{s:?}");
            assert!(s.is_ascii() && !s.chars().any(|c| c.is_ascii_control()), "{s:?}");
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
});
