//! `parse_size`: never zero, never wraps, and every byte count round-trips through its
//! decimal text and through each binary unit it divides by.
#![no_main]

use berth::engine::types::{format_size, parse_size};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
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
});
