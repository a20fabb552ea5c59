//! Time as an injected dependency. Trading decisions, restart policies and the paper market read
//! the time through [`Clock`], so tests drive them with a [`ManualClock`] instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of wall-clock time in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> i64;

    /// Blocks the calling OS thread (a thread of its own, never an async task) until this clock
    /// reads other than `seen_ms` or `timeout` of real time has passed. The system clock moves on
    /// its own, so it sleeps `timeout`; a [`ManualClock`] wakes the sleeper the moment it is moved,
    /// so a thread that acts when the clock reaches a moment (the paper venue's ticker) acts on
    /// the test's step, not up to `timeout` later.
    fn sleep_until_moved(&self, seen_ms: i64, timeout: std::time::Duration) {
        let _ = seen_ms;
        std::thread::sleep(timeout);
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to. Shared between a test and the code under test.
#[derive(Debug, Default)]
pub struct ManualClock {
    /// Written by the test (`set_ms`, `advance_ms`), read by everything holding the clock.
    now_ms: AtomicI64,
    /// Taken by a move (after the new time is stored) and by `sleep_until_moved` (around its check
    /// of the time), so a sleeper cannot miss a move between its check and its wait.
    moves: parking_lot::Mutex<()>,
    /// Signalled on every move; waited on by `sleep_until_moved`.
    moved: parking_lot::Condvar,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(Self { now_ms: AtomicI64::new(now_ms), ..Self::default() })
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
        self.wake_sleepers();
    }

    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
        self.wake_sleepers();
    }

    fn wake_sleepers(&self) {
        let _moves = self.moves.lock();
        self.moved.notify_all();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn sleep_until_moved(&self, seen_ms: i64, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut moves = self.moves.lock();
        while self.now_ms() == seen_ms {
            if self.moved.wait_until(&mut moves, deadline).timed_out() {
                return;
            }
        }
    }
}

/// How fast a venue's clock runs against the wall clock: `venue_ms` of venue time pass in `wall_ms`
/// of wall time. Binance runs at wall speed; the accelerated paper exchange runs one 5-minute candle
/// per `candle_interval_ms`. Lock expiries, lookbacks and intelligence ages are venue durations
/// (a 6 h probation is 72 candles everywhere); this converts them into the wall time a record, an
/// operator or the Healer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VenuePace {
    venue_ms: i64,
    wall_ms: i64,
}

impl VenuePace {
    /// A venue whose clock is the wall clock (Binance).
    pub const WALL: Self = Self { venue_ms: 1, wall_ms: 1 };

    /// `venue_ms` of venue time per `wall_ms` of wall time (each at least 1).
    pub fn new(venue_ms: i64, wall_ms: i64) -> Self {
        Self { venue_ms: venue_ms.max(1), wall_ms: wall_ms.max(1) }
    }

    /// Whether venue time runs at wall speed.
    pub fn is_wall(self) -> bool {
        self.venue_ms == self.wall_ms
    }

    /// How much wall time `venue_duration_ms` of venue time takes.
    pub fn wall_ms_for(self, venue_duration_ms: i64) -> i64 {
        (i128::from(venue_duration_ms) * i128::from(self.wall_ms) / i128::from(self.venue_ms))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// One moment on both clocks a decision knows: the wall clock (what records and operators read)
/// and the venue's (the close of the candle being decided on: what locks, lookbacks and ages are
/// judged by, so that a decision depends on the market, never on how long a request took).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VenueMoment {
    pub wall_ms: i64,
    pub venue_ms: i64,
    pub pace: VenuePace,
}

impl VenueMoment {
    /// The same moment on both clocks when the venue runs on the wall clock.
    pub fn wall(now_ms: i64) -> Self {
        Self { wall_ms: now_ms, venue_ms: now_ms, pace: VenuePace::WALL }
    }

    /// `(wall, venue)` times `venue_duration_ms` of venue time from now.
    pub fn after(self, venue_duration_ms: i64) -> (i64, i64) {
        (
            self.wall_ms.saturating_add(self.pace.wall_ms_for(venue_duration_ms)),
            self.venue_ms.saturating_add(venue_duration_ms),
        )
    }
}

/// Formats a millisecond timestamp as RFC 3339 UTC with millisecond precision.
pub fn rfc3339_ms(timestamp_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(timestamp_ms) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("invalid-timestamp({timestamp_ms})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeper_on_a_manual_clock_wakes_when_it_moves_and_not_before_its_timeout_otherwise() {
        let clock = ManualClock::new(1_000);
        let started = std::time::Instant::now();
        clock.sleep_until_moved(1_000, std::time::Duration::from_millis(5));
        assert!(started.elapsed() >= std::time::Duration::from_millis(5), "unmoved: the whole timeout");
        // Woken by the move, not by the timeout (a minute, far beyond any scheduling delay).
        let timeout = std::time::Duration::from_secs(60);
        let started = std::time::Instant::now();
        clock.sleep_until_moved(999, timeout);
        let sleeper = {
            let clock = clock.clone();
            std::thread::spawn(move || clock.sleep_until_moved(1_000, timeout))
        };
        clock.advance_ms(1);
        sleeper.join().expect("the sleeper returns");
        assert!(started.elapsed() < timeout, "woken by the move");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(clock.now_ms(), 1_250);
        clock.set_ms(5);
        assert_eq!(clock.now_ms(), 5);
    }

    #[test]
    fn a_venue_duration_takes_its_share_of_wall_time() {
        // The paper exchange at one 5-minute candle per second: 6 h are 72 candles, 72 s.
        let paper = VenuePace::new(300_000, 1_000);
        assert_eq!(paper.wall_ms_for(6 * 3_600_000), 72_000);
        assert!(!paper.is_wall());
        assert_eq!(VenuePace::WALL.wall_ms_for(6 * 3_600_000), 6 * 3_600_000);
        let moment = VenueMoment { wall_ms: 1_000, venue_ms: 50_000_000, pace: paper };
        assert_eq!(moment.after(3_600_000), (13_000, 53_600_000));
        assert_eq!(VenueMoment::wall(7).after(5), (12, 12));
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339_ms(1_637_533_800_123), "2021-11-21T22:30:00.123Z");
    }
}
