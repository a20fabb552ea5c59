//! Running under systemd (`scripts/bulwark.service`, `Type=notify`): the sd_notify messages, sent
//! only when `NOTIFY_SOCKET` is set (otherwise every call here does nothing).
//!
//! - `READY=1` once the tree is started (shared actors up, every user's supervisor started);
//! - `WATCHDOG=1` every half `WatchdogSec` (`WATCHDOG_USEC`), sent by the root supervisor and only
//!   while the tree is healthy (every shared actor running): a tree that cannot recover stops
//!   pinging and systemd restarts the process;
//! - `STOPPING=1` when the ordered shutdown begins;
//! - `STATUS=…` with a one-line summary alongside.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends one message; a socket that cannot be written is logged, never fatal.
fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd set one for this process
/// (`WATCHDOG_PID` unset or ours). `None`: no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|usec| *usec > 0)?;
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    for_us.then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}
