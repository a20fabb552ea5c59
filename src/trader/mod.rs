//! The per-user trading logic, free of actors and I/O: the decision state machine
//! ([`core::TraderCore`]) and the risk gate ([`risk`]). The trader actor in
//! [`crate::actors::trader`] is only its shell.

pub mod account_book;
pub mod core;
pub mod memory;
pub mod risk;
pub mod stream_link;
