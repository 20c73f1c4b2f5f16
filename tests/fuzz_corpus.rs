//! The fuzz targets' properties in every `cargo test`, without cargo-fuzz or nightly flags:
//! each seed in `fuzz/corpus/<target>/` (including the inputs that once broke a property) and
//! a bounded number of cheap, deterministic mutations of it go through the same checks the
//! fuzz targets run (`fuzz/props.rs`). No coverage guidance: `fuzz/run.sh` does the real
//! fuzzing; this keeps the properties and the corpus from rotting between fuzz runs.

#[path = "../fuzz/props.rs"]
mod props;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Mutations tried per seed.
const MUTATIONS: usize = 150;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 7] = [
    ("volume_name", props::volume_name),
    ("size", props::size),
    ("path_constraint", props::path_constraint),
    ("config", props::config),
    ("marathon", props::marathon),
    ("docker_request", props::docker_request),
    ("selector", props::selector),
];

/// Byte strings that tend to matter to berth's parsers.
const TOKENS: &[&[u8]] = &[
    b"..",
    b"/",
    b"\0",
    b"%2e%2e%2f",
    b")",
    b"(",
    b"|",
    b"\n",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b"'",
    b"\\",
    b"9223372036854775808",
    b"18446744073709551616",
    b"Ti",
    b"GiB",
    b".5",
    b"-1",
    b"0",
    b"null",
    b"true",
    b"\xff",
    b"\xc0\xae",
    b"\xe2\x80\xae",
    b"label.",
    b"Opts",
    b"Name",
    b"ID",
    b"persistent",
    b"containerPath",
    b"hostPath",
    b"[[pools]]",
    b"kind = \"mount\"",
    b"LIKE",
    b"UNLIKE",
    b" in (",
    b" notin (",
    b"!=",
    b"==",
    b"!",
];

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(seed: &[u8], others: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(32)).min(out.len());
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            4 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                let byte = rng.next() as u8;
                out.insert(at, byte);
            }
        }
    }
    out
}

fn check(target: &str, origin: &str, check: Check, input: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(input))) {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "{target}: {origin} broke a property: {why}\ninput: {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn the_seed_corpus_and_its_mutations_keep_the_fuzz_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, property) in TARGETS {
        let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(root.join(target))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} is empty");
        let bytes: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (name, seed) in &seeds {
            check(target, name, property, seed);
            for i in 0..MUTATIONS {
                let mutated = mutate(seed, &bytes, &mut rng);
                check(
                    target,
                    &format!("mutation {i} of {name}"),
                    property,
                    &mutated,
                );
            }
        }
    }
}
