//! Placeholder until the real host lands.
