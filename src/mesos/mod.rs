//! Mesos/Marathon front-end: validating app and pod definitions, and the containerizer hook.

pub mod validate;
