//! Failure points: the named ways trading can be blocked. [`catalog`] lists them; [`monitor`]
//! judges one status per entry from observations (pure); the guards, the Monitor actor and the
//! Healer that make each one observable and, where possible, heal it are built on those.

pub mod catalog;
pub mod database;
pub mod healing;
pub mod locks;
pub mod monitor;
pub mod trends;
pub mod why;
