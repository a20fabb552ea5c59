//! bulwark: a long-running server that runs crypto-futures trading bots for many users in one
//! process, and keeps each of them trading safely through every failure a real bot meets.
//!
//! # Layout
//!
//! The architecture document is `actors.md` at the repository root; read it first. In short:
//!
//! - [`domain`]: plain types (ids, prices, quantities, candles, orders, positions). No I/O.
//! - [`strategy`]: trading strategies, pure functions of a window of closed candles.
//! - [`trader`]: the per-user decision state machine and its risk gate. No actix, no I/O.
//! - [`supervision`]: restart policy arithmetic (pure) and the supervisor actors.
//! - [`actors`]: the actor shells (trader, market data, order router, persistence) that move
//!   messages and do I/O.
//! - [`exchange`]: the `Exchange` trait and the built-in paper exchange.
//! - [`failure_points`]: the catalog of every way trading can be blocked.
//! - [`persistence`]: the only module that knows SQL.
//! - [`config`]: TOML configuration, validated with every problem named by its path.
//! - [`server`]: builds the tree, runs it, and shuts it down in order.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unused_qualifications)]

pub mod actors;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod exchange;
pub mod failure_points;
pub mod guards;
pub mod http;
pub mod instance;
pub mod instance_lock;
pub mod intelligence;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod persistence;
pub mod records;
pub mod reload;
pub mod remote;
pub mod secret;
pub mod server;
pub mod service;
pub mod sim;
pub mod status;
pub mod strategy;
pub mod supervision;
pub mod trader;
pub mod verify;
