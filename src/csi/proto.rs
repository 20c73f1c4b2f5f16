//! The CSI v1.12.0 messages, servers and clients, generated at build time from
//! `proto/csi.proto` (see `build.rs`). Public so that tests, benches and operators' tools can
//! talk to berth with the same types it serves.

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

tonic::include_proto!("csi.v1");
