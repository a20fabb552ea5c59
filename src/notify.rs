//! What operators are told, and how often: notifications with a dedup key, and the per-key rate
//! limit that turns an error loop into one message and then a count ([`RateLimiter`], pure, time
//! passed in). The Notifier actor (`actors/notifier.rs`) delivers them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::rfc3339_ms;

/// At most this many dedup keys are remembered (the quietest are forgotten first).
pub const RATE_KEYS_MAX: usize = 10_000;
/// Telegram refuses messages over 4,096 characters; ours are cut well before.
pub const MESSAGE_CHARS_MAX: usize = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One notification as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// Same key, same kind of event (`crash:u2`, `critical:SYS-EXCHANGE-API`, ...).
    pub key: String,
    pub severity: Severity,
    pub text: String,
    pub ts: String,
}

#[derive(Debug, Clone)]
struct KeyState {
    window_start_ms: i64,
    /// Events suppressed in the current window, and the highest severity among them.
    suppressed: u32,
    severity: Severity,
    last_text: String,
}

/// One message per key per window; the events suppressed in a window are reported once it ends
/// (by [`RateLimiter::flush`]) or with the next message.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    window_ms: i64,
    keys: BTreeMap<String, KeyState>,
}

impl RateLimiter {
    pub fn new(window_ms: i64) -> Self {
        Self { window_ms, keys: BTreeMap::new() }
    }

    /// The notification to send now, or `None` when its key already sent one in this window.
    pub fn admit(&mut self, key: &str, severity: Severity, text: &str, now_ms: i64) -> Option<Notification> {
        let text = truncate(text);
        match self.keys.get_mut(key) {
            Some(state) if now_ms - state.window_start_ms < self.window_ms => {
                state.suppressed += 1;
                state.severity = state.severity.max(severity);
                state.last_text = text;
                None
            }
            Some(state) => {
                let earlier = std::mem::take(&mut state.suppressed);
                let since = state.window_start_ms;
                *state = KeyState { window_start_ms: now_ms, suppressed: 0, severity, last_text: text.clone() };
                let text = if earlier > 0 {
                    format!("{text} (and {earlier} more like it since {})", rfc3339_ms(since))
                } else {
                    text
                };
                Some(Notification { key: key.to_owned(), severity, text, ts: rfc3339_ms(now_ms) })
            }
            None => {
                if self.keys.len() >= RATE_KEYS_MAX
                    && let Some(oldest) =
                        self.keys.iter().min_by_key(|(_, state)| state.window_start_ms).map(|(key, _)| key.clone())
                {
                    self.keys.remove(&oldest);
                }
                self.keys.insert(
                    key.to_owned(),
                    KeyState { window_start_ms: now_ms, suppressed: 0, severity, last_text: text.clone() },
                );
                Some(Notification { key: key.to_owned(), severity, text, ts: rfc3339_ms(now_ms) })
            }
        }
    }

    /// For every key whose window has ended with events suppressed: one message with the count,
    /// and a new window (an error loop reports a count per window, not a message per error).
    pub fn flush(&mut self, now_ms: i64) -> Vec<Notification> {
        let window_ms = self.window_ms;
        self.keys
            .iter_mut()
            .filter(|(_, state)| state.suppressed > 0 && now_ms - state.window_start_ms >= window_ms)
            .map(|(key, state)| {
                let text = format!(
                    "{} more since {} (last: {})",
                    state.suppressed,
                    rfc3339_ms(state.window_start_ms),
                    state.last_text
                );
                let severity = state.severity;
                *state =
                    KeyState { window_start_ms: now_ms, suppressed: 0, severity, last_text: state.last_text.clone() };
                Notification { key: key.clone(), severity, text, ts: rfc3339_ms(now_ms) }
            })
            .collect()
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MESSAGE_CHARS_MAX {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MESSAGE_CHARS_MAX).collect();
    cut.push_str(" …");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_loop_sends_one_message_then_a_count_per_window() {
        let mut limiter = RateLimiter::new(1_000);
        let first = limiter.admit("crash:u2", Severity::Warning, "u2 crashed", 0).unwrap();
        assert_eq!(first.text, "u2 crashed");
        for t in 1..10 {
            assert!(limiter.admit("crash:u2", Severity::Warning, &format!("u2 crashed {t}"), t * 50).is_none());
        }
        // Another key is not held back.
        assert!(limiter.admit("crash:u3", Severity::Warning, "u3 crashed", 100).is_some());
        assert!(limiter.flush(999).is_empty(), "the window has not ended");
        let counts = limiter.flush(1_000);
        assert_eq!(counts.len(), 1);
        assert!(counts[0].text.starts_with("9 more since 1970-01-01T00:00:00.000Z"), "{}", counts[0].text);
        assert!(counts[0].text.contains("u2 crashed 9"));
        assert!(limiter.flush(5_000).is_empty(), "counted once");
        // A quiet key speaks at once again, with what was held back in between.
        assert!(limiter.admit("crash:u2", Severity::Warning, "again", 1_200).is_none(), "inside the new window");
        let next = limiter.admit("crash:u2", Severity::Warning, "again", 2_100).unwrap();
        assert!(next.text.starts_with("again (and 1 more like it since"), "{}", next.text);
    }

    #[test]
    fn long_texts_are_cut_and_keys_are_bounded() {
        let mut limiter = RateLimiter::new(1_000);
        let long = "x".repeat(MESSAGE_CHARS_MAX + 100);
        let sent = limiter.admit("k", Severity::Info, &long, 0).unwrap();
        assert_eq!(sent.text.chars().count(), MESSAGE_CHARS_MAX + 2);
        for i in 0..RATE_KEYS_MAX + 5 {
            limiter.admit(&format!("key-{i}"), Severity::Info, "t", i as i64 + 1);
        }
        assert_eq!(limiter.keys.len(), RATE_KEYS_MAX);
    }
}
