//! One exchange stream connection as its follower sees it: never connected, connecting, up (since
//! when, last heard when) or down (since when), how many connections were made, how many failed
//! in a row, and when the next one may be asked for (exponential backoff with jitter, so that a
//! venue-wide outage does not bring every stream back in the same second).
//!
//! Pure and clock-free (every call passes the time), so the account books (user data streams)
//! and the market data feed (kline streams) share one definition of "up, heard from recently".

/// How a link backs off and when it counts as silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// A connection not heard from for longer is treated as down (Binance's wrong path accepts the
    /// connection and sends nothing).
    pub silence_ms_max: i64,
    /// The wait before reconnecting after the first failure in a row; it doubles with each further
    /// one up to `reconnect_backoff_ms_max`, and each wait is drawn between half of it and all of
    /// it.
    pub reconnect_backoff_ms_initial: i64,
    pub reconnect_backoff_ms_max: i64,
    /// A connection that stayed up this long before it ended resets the failures in a row.
    pub connection_stable_ms: i64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            silence_ms_max: 90_000,
            reconnect_backoff_ms_initial: 1_000,
            reconnect_backoff_ms_max: 60_000,
            connection_stable_ms: 60_000,
        }
    }
}

/// Where the connection stands (times in the follower's local ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Never,
    /// Asked for then; nothing heard on it yet.
    Connecting {
        since_ms: i64,
    },
    Up {
        connection: u64,
        since_ms: i64,
        last_heard_ms: i64,
    },
    Down {
        since_ms: i64,
    },
}

/// One stream's connection history. Written by whoever follows the stream; read by its checks.
#[derive(Debug, Clone)]
pub struct StreamLink {
    settings: LinkSettings,
    state: LinkState,
    /// Connections seen so far (the next one gets this number).
    connections: u64,
    /// Connections that failed or ended early in a row (reset by one that stayed up
    /// `connection_stable_ms`).
    failures_in_a_row: u32,
    /// No reconnect before this (local ms) unless asked for explicitly; `None`: any time.
    reconnect_not_before_ms: Option<i64>,
    /// The jitter's generator state (seeded per stream, so streams spread apart).
    jitter_state: u64,
}

impl StreamLink {
    pub fn new(settings: LinkSettings) -> Self {
        Self {
            settings,
            state: LinkState::Never,
            connections: 0,
            failures_in_a_row: 0,
            reconnect_not_before_ms: None,
            jitter_state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The same link with its reconnect jitter seeded by `seed` (streams that drop together come
    /// back spread apart; the same seed waits the same).
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_state = seed;
        self
    }

    pub fn settings(&self) -> LinkSettings {
        self.settings
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether a connection may be asked for at `now_ms` (`Err`: not before that local ms; a
    /// reconnect asked for by an operator or the Healer does not wait).
    pub fn reconnect_due(&self, now_ms: i64) -> Result<(), i64> {
        match self.reconnect_not_before_ms {
            Some(not_before_ms) if now_ms < not_before_ms => Err(not_before_ms),
            _ => Ok(()),
        }
    }

    /// While down: no reconnect is asked for before this (the backoff).
    pub fn reconnect_not_before_ms(&self) -> Option<i64> {
        self.reconnect_not_before_ms
    }

    /// Connections that failed or ended early in a row.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row
    }

    /// The connection asked for failed or ended at `now_ms`; `stable` when it had stayed up long
    /// enough to count as healthy. Sets when the next may be asked for.
    fn schedule_reconnect(&mut self, now_ms: i64, stable: bool) {
        self.failures_in_a_row = if stable { 1 } else { self.failures_in_a_row.saturating_add(1) };
        let doublings = (self.failures_in_a_row - 1).min(30);
        let backoff_ms = self
            .settings
            .reconnect_backoff_ms_initial
            .max(1)
            .saturating_mul(1_i64 << doublings)
            .min(self.settings.reconnect_backoff_ms_max.max(1));
        let half_ms = backoff_ms / 2;
        let jitter_ms = (self.next_jitter() % (backoff_ms - half_ms + 1) as u64) as i64;
        self.reconnect_not_before_ms = Some(now_ms + half_ms + jitter_ms);
    }

    /// splitmix64: enough to spread streams apart, and deterministic for a seed.
    fn next_jitter(&mut self) -> u64 {
        self.jitter_state = self.jitter_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.jitter_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A connection was asked for at `now_ms`; it counts as up once it says something
    /// ([`StreamLink::connected`]).
    pub fn connecting(&mut self, now_ms: i64) {
        self.state = LinkState::Connecting { since_ms: now_ms };
        self.reconnect_not_before_ms = None;
    }

    /// Whether a connection was asked for and has not said anything yet.
    pub fn is_connecting(&self) -> bool {
        matches!(self.state, LinkState::Connecting { .. })
    }

    /// A connection asked for ended before it said anything (the handshake failed).
    pub fn failed(&mut self, now_ms: i64) {
        if self.is_connecting() {
            self.state = LinkState::Down { since_ms: now_ms };
            self.schedule_reconnect(now_ms, false);
        }
    }

    /// The stream connected at `now_ms`; returns the new connection's number.
    pub fn connected(&mut self, now_ms: i64) -> u64 {
        self.connections += 1;
        self.state = LinkState::Up { connection: self.connections, since_ms: now_ms, last_heard_ms: now_ms };
        self.connections
    }

    /// The stream dropped (or was found silent) at `now_ms`.
    pub fn disconnected(&mut self, now_ms: i64) {
        let stable = match self.state {
            LinkState::Down { .. } => return,
            LinkState::Up { since_ms, .. } => now_ms - since_ms >= self.settings.connection_stable_ms,
            LinkState::Never | LinkState::Connecting { .. } => false,
        };
        self.state = LinkState::Down { since_ms: now_ms };
        self.schedule_reconnect(now_ms, stable);
    }

    /// Connection number `connection` ended at `now_ms`; a newer connection already up stays up.
    pub fn ended(&mut self, connection: u64, now_ms: i64) {
        if matches!(self.state, LinkState::Up { connection: up, .. } if up == connection) {
            self.disconnected(now_ms);
        }
    }

    /// The stream delivered something (an event, a ping or pong) at `now_ms`.
    pub fn heard(&mut self, now_ms: i64) {
        if let LinkState::Up { last_heard_ms, .. } = &mut self.state {
            *last_heard_ms = (*last_heard_ms).max(now_ms);
        }
    }

    /// The connection up now (`None` while the stream is down).
    pub fn connection(&self) -> Option<u64> {
        match self.state {
            LinkState::Up { connection, .. } => Some(connection),
            _ => None,
        }
    }

    /// Connections made so far (one more with each reconnect).
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// When the connection up now was last heard from (`None` while it is down).
    pub fn last_heard_ms(&self) -> Option<i64> {
        match self.state {
            LinkState::Up { last_heard_ms, .. } => Some(last_heard_ms),
            _ => None,
        }
    }

    /// Up and heard from within `silence_ms_max` at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        matches!(self.state, LinkState::Up { last_heard_ms, .. } if now_ms - last_heard_ms <= self.settings.silence_ms_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> StreamLink {
        StreamLink::new(LinkSettings {
            silence_ms_max: 10_000,
            reconnect_backoff_ms_initial: 1_000,
            reconnect_backoff_ms_max: 8_000,
            connection_stable_ms: 60_000,
        })
        .with_jitter_seed(7)
    }

    #[test]
    fn failures_in_a_row_double_the_wait_within_half_and_all_of_it_up_to_the_cap() {
        let mut link = link();
        let mut now_ms = 0;
        for (failures, backoff_ms) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000), (5, 8_000)] {
            link.connecting(now_ms);
            link.failed(now_ms);
            assert_eq!(link.failures_in_a_row(), failures);
            let wait_ms = link.reconnect_due(now_ms).expect_err("a wait after a failure") - now_ms;
            assert!((backoff_ms / 2..=backoff_ms).contains(&wait_ms), "wait {wait_ms} for {failures} failure(s)");
            now_ms += wait_ms;
            assert_eq!(link.reconnect_due(now_ms), Ok(()));
        }
    }

    #[test]
    fn a_stable_connection_resets_the_failures_and_a_silent_one_is_not_live() {
        let mut link = link();
        link.connecting(0);
        link.failed(0);
        link.connecting(2_000);
        let connection = link.connected(2_100);
        assert!(link.is_live(12_100));
        assert!(!link.is_live(12_101), "silent for longer than 10 s");
        link.heard(12_000);
        assert!(link.is_live(22_000));
        link.ended(connection + 1, 70_000);
        assert_eq!(link.connection(), Some(connection), "another connection's end leaves this one up");
        link.ended(connection, 70_000);
        assert_eq!(link.state(), LinkState::Down { since_ms: 70_000 });
        assert_eq!(link.failures_in_a_row(), 1, "up for over a minute: counted afresh");
        assert_eq!(link.connections(), 1);
    }
}
