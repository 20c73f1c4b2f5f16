//! berth: node-local persistent volumes for Kubernetes (CSI), Docker (volume plugin API)
//! and Mesos/Marathon, from one volume engine.
//!
//! # Layout
//! - [`engine`]: the one volume service (create, publish, unpublish, delete, wipe, expand,
//!   usage, capacity, recovery). Front-ends call only this.
//! - [`store`]: the durable reservation store under the engine.
//! - [`host`]: everything that touches the kernel (mounts, loop devices, safe removal).
//! - [`config`]: the typed configuration and its embedded default.
//! - [`csi`], [`docker`], [`admin`], [`mesos`]: front-ends. They parse their protocol, call
//!   the engine and map its errors; no volume logic of their own.
//! - [`server`]: plumbing the front-ends share: unix sockets, the small HTTP/1.1 server,
//!   shutdown.
//! - [`logging`]: the log line format for a terminal, a file, journald or JSON.
//! - [`daemon`]: wiring for `berth serve`: sockets, lock file, signals.

pub mod admin;
pub mod config;
pub mod csi;
pub mod daemon;
pub mod docker;
pub mod engine;
pub mod host;
pub mod logging;
pub mod mesos;
pub mod server;
pub mod store;
