//! A tiny seeded generator (SplitMix64): the torture test's choices of operations, sizes and
//! kill delays all come from it, so a printed seed replays the same choices. (Thread timing
//! still varies from run to run: the seed fixes what is done, not exactly when a kill lands.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Where a run takes its seed from, to reproduce a failure.
pub const SEED_ENV: &str = "BERTH_TORTURE_SEED";

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for `stream` (a worker's number), derived from `seed`.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mixer = Self(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        Self(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index into `weights`, each chosen in proportion to its weight (at least one > 0).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut roll = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if roll < *w {
                return i;
            }
            roll -= w;
        }
        weights.len() - 1
    }

    pub fn hex(&mut self, bytes: usize) -> String {
        (0..bytes.div_ceil(8))
            .map(|_| format!("{:016x}", self.next_u64()))
            .collect::<String>()[..bytes * 2]
            .to_string()
    }
}

/// `BERTH_TORTURE_SEED` (decimal or `0x` hex) when set, else a fresh one.
pub fn seed_from_env() -> u64 {
    if let Ok(text) = std::env::var(SEED_ENV) {
        let text = text.trim();
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        return parsed.unwrap_or_else(|e| panic!("{SEED_ENV}={text:?} is not a number: {e}"));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ u64::from(std::process::id()) << 32).next_u64()
}
