//! Mesos/Marathon front-end: local persistent volumes for Marathon apps and pods.
//!
//! Marathon reserves disk and Mesos creates a persistent volume in the task's sandbox; berth
//! plays that part on the agent, from the same app or pod definition, so the volumes get
//! berth's size enforcement, pools and admin API. [`validate`] checks a definition against
//! Marathon's rules (`berth mesos validate`); [`hook`] is the daemon side of `berth mesos
//! prepare|cleanup`, which reserves, mounts and releases a task's volumes; [`cli`] is the
//! command, a thin client of the daemon over the admin socket ([`api`] is their wire format).

pub mod api;
pub mod cli;
pub mod hook;
pub mod validate;
