//! `Config::parse`: a config that parses is valid, serializes back to TOML and parses again
//! to the same value; a refusal always names the file.
#![no_main]

use std::path::Path;

use berth::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
