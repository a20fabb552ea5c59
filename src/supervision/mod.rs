//! The supervision layer. [`policy`] is the pure restart arithmetic (backoff, jitter, intensity
//! window); [`watch`] runs an actor so that its death (panics included) is always reported;
//! [`journal`] records every event and the tree's state; [`user`] and [`root`] are the
//! supervisor actors. See `actors.md` for the tree.

pub mod journal;
pub mod policy;
pub mod root;
pub mod user;
pub mod watch;
