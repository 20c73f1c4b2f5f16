//! Support for `tests/torture.rs`: a killable daemon with every front-end on
//! ([`berth::Berth`]), a blocking CSI client ([`csi::Csi`]), the model of acknowledged state
//! and the operations ([`model`]), the invariants ([`checks`]), the concurrency test's
//! clients ([`crowd`]) and a seeded generator ([`rng`]).

pub mod berth;
pub mod checks;
pub mod crowd;
pub mod csi;
pub mod model;
pub mod rng;
