//! Failure points: the named ways trading can be blocked. [`catalog`] lists them; the checks,
//! guards, Monitor and Healer that make each one observable and, where possible, heal it are built
//! on that list.

pub mod catalog;
