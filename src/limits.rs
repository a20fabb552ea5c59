//! Every bound in one place: each queue, cache, retry loop and table that grows has a named limit
//! here, with what happens at the limit (BRIEF invariant 6, "bounded everything").

/// Closed candles handed to a strategy on every decision. Strategies must declare a look-back that
/// fits (config validation rejects parameters that need more).
pub const CANDLE_WINDOW_LEN: usize = 200;

/// Mailbox capacity of each trader actor. MarketData fans candles out with `try_send`; when a
/// trader's mailbox is full the candle is dropped for that trader and counted, never queued
/// without bound.
pub const TRADER_MAILBOX_CAPACITY: usize = 64;

/// Mailbox capacity of the persistence actor.
pub const PERSISTENCE_MAILBOX_CAPACITY: usize = 4096;

/// Requests to persistence queued or running at once, across every caller (a semaphore in the
/// `Directory`, because actix mailboxes let each sender past the capacity once). Awaited requests
/// wait for a permit (back-pressure); fire-and-forget writes that find none are refused, counted
/// and logged, never queued.
pub const PERSISTENCE_IN_FLIGHT_MAX: usize = 4096;

/// Persistence requests a user can have in flight at a candle close (its account sync's read, the
/// decision, the guard decision, the position snapshot, and room for a journal record or two). A
/// fleet whose closes all land at once needs this many permits per user, or the records of the
/// users deciding last would be refused at every close (the fleet benchmark lost 130,000 of them
/// per 10 closes at 10,000 users with a flat 4,096).
pub const PERSISTENCE_IN_FLIGHT_PER_USER: usize = 8;

/// The persistence permits for a fleet of `users`: the flat floor, or enough for every user's
/// records at one close, whichever is more. Still a bound: at 10,000 users, 80,000 small messages.
pub fn persistence_in_flight_max(users: usize) -> usize {
    PERSISTENCE_IN_FLIGHT_MAX.max(users.saturating_mul(PERSISTENCE_IN_FLIGHT_PER_USER))
}

/// Records the durable outbox holds by default (`[server] outbox_records_max`); at the limit a new
/// record is refused (never dropped) and the traders halt entries.
pub const OUTBOX_RECORDS_MAX_DEFAULT: usize = 100_000;

/// Outbox entries replayed in one turn of the persistence thread before it serves other requests.
pub const OUTBOX_REPLAY_BATCH_MAX: usize = 500;

/// Waits between attempts to replay the outbox while the database refuses writes (doubling).
pub const OUTBOX_REPLAY_BACKOFF_MS_INITIAL: u64 = 100;
pub const OUTBOX_REPLAY_BACKOFF_MS_MAX: u64 = 1_000;

/// Mailbox capacity of the order router and market data actors.
pub const SHARED_MAILBOX_CAPACITY: usize = 4096;

/// Attempts at a trader's start-up (reload, reconcile, subscribe) before it counts as a crash,
/// and the first delay between them (doubling).
pub const TRADER_START_UP_ATTEMPTS_MAX: u32 = 5;
pub const TRADER_START_UP_BACKOFF_MS_INITIAL: u64 = 200;

/// Decision rows kept per user in the database; older rows are pruned periodically.
pub const DECISIONS_PER_USER_MAX: i64 = 2_000;

/// Supervisor event rows kept in the database; older rows are pruned periodically.
pub const SUPERVISOR_EVENTS_MAX: i64 = 100_000;

/// Order state-change rows kept (the audit trail); older rows are pruned periodically. The
/// ledger itself (intents, orders, fills) is never pruned: it is the users' trade history.
pub const ORDER_EVENTS_MAX: i64 = 1_000_000;

/// Reconciliation action rows kept; older rows are pruned periodically.
pub const RECONCILE_ACTIONS_MAX: i64 = 100_000;
/// Monitor runs kept in the database (a day at the default 60 s interval).
pub const MONITOR_SNAPSHOTS_MAX: i64 = 1_440;

/// Requests queued for the paper exchange's venue thread; senders wait when it is full.
pub const PAPER_VENUE_QUEUE_MAX: usize = 1024;

/// Events an account stream holds for a listener that has not read them; one that falls this far
/// behind is disconnected (its book is then unverified until it re-reads the account).
pub const ACCOUNT_STREAM_QUEUE_MAX: usize = 1024;

/// Streams one market connection carries at most (Binance: 1,024 since 2025-07-02); more feeds
/// take more connections.
pub const MARKET_STREAMS_PER_CONNECTION_MAX: usize = 1_024;

/// Market events a connection holds for a listener that has not read them; one that falls this far
/// behind is disconnected (its feeds are then fetched by REST until it is back).
pub const MARKET_STREAM_QUEUE_MAX: usize = 4_096;

/// How often (wall ms) the paper exchange tells each listening account its stream is alive; well
/// inside an account book's silence bound (`trader::account_book::BookSettings::silence_ms_max`).
pub const PAPER_STREAM_HEARTBEAT_MS: i64 = 10_000;

/// Orders the paper exchange keeps per account (open orders are never pruned; the oldest closed
/// ones go first), like a real venue's limited order history.
pub const PAPER_ORDERS_PER_ACCOUNT_MAX: usize = 2_000;

/// Fills the paper exchange keeps per account (oldest first out).
pub const PAPER_FILLS_PER_ACCOUNT_MAX: usize = 5_000;

/// Base candles of history a random-walk symbol keeps in memory.
pub const PAPER_RANDOM_WALK_HISTORY_MAX: usize = 20_000;

/// Most candles one klines request may return (Binance's own maximum).
pub const KLINES_LIMIT_MAX: u16 = 1_500;

/// Users one process runs.
pub const USERS_MAX: usize = 100_000;

/// Strategies one user runs.
pub const STRATEGIES_PER_USER_MAX: usize = 32;

/// Attempts to resolve an order whose outcome is unknown within one account sync; the rest waits
/// for the next sync (no unbounded retry loop).
pub const ORDER_RESOLVE_QUERIES_PER_SYNC_MAX: usize = 8;

/// A trader (re)starting within this long of a full open-orders sweep of its account (weight 40 on
/// Binance) lists open orders on its own symbols only (weight 1 each): a `bw-` order the database
/// does not know cannot have appeared elsewhere since (bulwark commits every intent before sending
/// it). A crash storm then costs the exchange a few weight per restart, not 40.
pub const OPEN_ORDERS_SWEEP_REUSE_MS: i64 = 5 * 60_000;

/// A trader (re)starting within this long of a position read, with no order of its own unresolved,
/// does not read that position again before it trades: its first account sync reads it anyway.
pub const POSITION_VERIFIED_REUSE_MS: i64 = 60_000;

/// Broadcast buffer for decision and supervision event taps (status surfaces, tests). A lagging
/// receiver loses the oldest events; senders never block.
pub const EVENT_TAP_CAPACITY: usize = 4096;

const _: () = assert!(CANDLE_WINDOW_LEN <= KLINES_LIMIT_MAX as usize);
// An 8h window (96 base candles each) must fit in a random walk's history; config refuses longer.
const _: () = assert!(PAPER_RANDOM_WALK_HISTORY_MAX >= (CANDLE_WINDOW_LEN + 1) * 96);

/// Guard decisions kept per user (the newest; older ones are pruned).
pub const GUARD_DECISIONS_PER_USER_MAX: i64 = 2_000;
/// Cleared guard locks kept (the newest); uncleared ones are never pruned.
pub const GUARD_LOCKS_CLEARED_MAX: i64 = 10_000;
/// `failure_point_monitor.jsonl` and `failure_point_healing.jsonl` are rotated at this size (the
/// previous file is kept as `<name>.1`, replacing an older one): at most twice this on disk each.
pub const FAILURE_POINT_LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Characters of a value someone else wrote (an id in a URL, a config value, a `since`) that an
/// error message echoes; the rest is cut and its length given instead. Without it a 20 KB id came
/// back twice in a 40 KB answer, and a 1 MB config value filled the terminal.
pub const ECHOED_CHARS_MAX: usize = 64;

/// Characters of each line of a library's error message (TOML, JSON) that may quote the input.
pub const ECHOED_LINE_CHARS_MAX: usize = 240;

/// `text` as an error message may echo it: whole when it has at most [`ECHOED_CHARS_MAX`]
/// characters, else its first [`ECHOED_CHARS_MAX`], `…` and its length in bytes. `{}` prints it
/// plain (`aaaa…` ` (20480 bytes)`), `{:?}` quoted and escaped (`"aaaa…" (20480 bytes)`).
pub fn excerpt(text: &str) -> Excerpt<'_> {
    excerpt_chars(text, ECHOED_CHARS_MAX)
}

/// [`excerpt`] with another bound.
pub fn excerpt_chars(text: &str, chars_max: usize) -> Excerpt<'_> {
    let cut_at = text.char_indices().nth(chars_max).map(|(byte_index, _)| byte_index);
    Excerpt { head: &text[..cut_at.unwrap_or(text.len())], cut_bytes_total: cut_at.map(|_| text.len()) }
}

/// Each line of a multi-line message bounded by [`ECHOED_LINE_CHARS_MAX`] (a library's error
/// that quotes the offending input, or draws a caret under all of it), and at most 12 lines.
pub fn excerpt_lines(text: &str) -> String {
    const LINES_MAX: usize = 12;
    let mut lines: Vec<String> =
        text.lines().take(LINES_MAX).map(|line| excerpt_chars(line, ECHOED_LINE_CHARS_MAX).to_string()).collect();
    let total = text.lines().count();
    if total > LINES_MAX {
        lines.push(format!("… ({} more lines)", total - LINES_MAX));
    }
    lines.join("\n")
}

/// What [`excerpt`] returns: the start of a text, and the whole text's length if it was cut.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Excerpt<'a> {
    head: &'a str,
    /// `None`: `head` is the whole text.
    cut_bytes_total: Option<usize>,
}

impl std::fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cut_bytes_total {
            None => f.write_str(self.head),
            Some(bytes) => write!(f, "{}… ({bytes} bytes)", self.head),
        }
    }
}

impl std::fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cut_bytes_total {
            None => write!(f, "{:?}", self.head),
            Some(bytes) => write!(f, "\"{}…\" ({bytes} bytes)", self.head.escape_debug()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_value_is_cut_with_its_length() {
        assert_eq!(excerpt("u1").to_string(), "u1");
        assert_eq!(format!("{:?}", excerpt("u1")), "\"u1\"");
        let long = "a".repeat(20_480);
        let cut = format!("{:?}", excerpt(&long));
        assert_eq!(cut, format!("\"{}…\" (20480 bytes)", "a".repeat(ECHOED_CHARS_MAX)));
        assert_eq!(excerpt(&long).to_string(), format!("{}… (20480 bytes)", "a".repeat(ECHOED_CHARS_MAX)));
        // Exactly at the bound: whole. Multi-byte characters are never split.
        assert_eq!(excerpt(&"b".repeat(ECHOED_CHARS_MAX)).to_string(), "b".repeat(ECHOED_CHARS_MAX));
        let wide = "é".repeat(100);
        assert_eq!(excerpt(&wide).to_string(), format!("{}… (200 bytes)", "é".repeat(ECHOED_CHARS_MAX)));
        assert_eq!(format!("{:?}", excerpt("<script>\"x\"\n")), "\"<script>\\\"x\\\"\\n\"");
    }

    #[test]
    fn a_long_message_keeps_its_lines_bounded() {
        let message = format!("line 1\n{}\nexpected f64", "x".repeat(1_000_000));
        let bounded = excerpt_lines(&message);
        assert!(bounded.len() < 400, "{}", bounded.len());
        assert!(bounded.starts_with("line 1\nxxx") && bounded.ends_with("(1000000 bytes)\nexpected f64"), "{bounded}");
        let many = "l\n".repeat(100);
        assert!(excerpt_lines(&many).ends_with("… (88 more lines)"));
    }
}
