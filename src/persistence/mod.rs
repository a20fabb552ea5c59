//! The only module that knows SQL. [`Store`] is a plain synchronous struct over one SQLite
//! connection (WAL mode, busy timeout, migrations); the persistence actor
//! ([`crate::actors::persistence`]) runs it on its own thread so blocking calls never stall another
//! actor, and the status command opens it read-only from another process.
//!
//! Two rules carry the trading invariants:
//! - An order intent is committed (with its deterministic client order id and its order row in
//!   state `pending`) before anything is sent; the client order id is the primary key, so one id
//!   can never stand for two intents.
//! - Every order state change is a compare-and-set from the state the caller saw, checked against
//!   [`OrderState::may_become`], and commits together with the fills it records. Two writers can
//!   never both move an order, and a fill is recorded at most once (keyed by the exchange's trade
//!   id) and never lost behind a state that says "done".

pub mod outbox;
pub mod paper_journal;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};
use rust_decimal::Decimal;

use crate::domain::{
    ClientOrderId, Fill, IntentPurpose, OrderIntent, OrderState, OrderType, Price, Quantity, Side, Symbol, UserId,
};
use crate::failure_points::locks::GuardLock;
use crate::limits::{
    DECISIONS_PER_USER_MAX, GUARD_DECISIONS_PER_USER_MAX, GUARD_LOCKS_CLEARED_MAX, MONITOR_SNAPSHOTS_MAX,
    ORDER_EVENTS_MAX, RECONCILE_ACTIONS_MAX, SUPERVISOR_EVENTS_MAX,
};
use crate::persistence::outbox::DurableWrite;
pub use crate::records::{
    DecisionCause, DecisionRecord, GuardDecisionRecord, OrderTransition, PositionMismatch, PositionRecord, StoredOrder,
    SupervisorEventRecord, TraderState, UserStatus, UserSupervisionRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database schema migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt data in table {table}: {detail}")]
    Corrupt { table: String, detail: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
    #[error("persistence is unavailable: {0}")]
    Unavailable(String),
    /// The database refuses writes and the durable outbox holds its maximum: the record was not
    /// kept anywhere, and the caller must not act as if it had been.
    #[error("the database refuses writes and the durable outbox is full ({depth} records); record refused")]
    OutboxFull { depth: usize },
}

impl StoreError {
    /// Busy, locked or temporarily unreachable: the same write may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
                matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            StoreError::Unavailable(_) => true,
            _ => false,
        }
    }

    /// Another connection holds the lock this write needs (SQLite busy or locked).
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
            if matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }

    /// The database cannot take a write now but may later (busy, locked, read-only, I/O error,
    /// disk full, cannot open): a durable record waits in the outbox instead of being lost. A
    /// conflict, a constraint or corrupt data would fail the same way again, so it is not.
    pub fn is_write_unavailable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::PermissionDenied
                    | rusqlite::ErrorCode::OutOfMemory
                    | rusqlite::ErrorCode::FileLockingProtocolFailed
            ),
            StoreError::Io(_) | StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// How long a write waits for another connection's write lock before it is refused (busy). Short:
/// the server's own writes all go through one connection, so a lock held longer than this belongs
/// to somebody else (an operator's `sqlite3` session, a tool), and a durable record then waits in
/// the outbox instead of holding every user's trading behind it.
pub const BUSY_TIMEOUT_MS: u64 = 250;

/// WAL journal, a busy timeout, foreign keys: the settings every connection gets.
pub(crate) fn configure_connection(connection: &Connection) -> Result<(), StoreError> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // Every statement `Store` runs is prepared once and kept (there are about 60 of them).
    connection.set_prepared_statement_cache_capacity(128);
    Ok(())
}

const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE users (
         user_id TEXT PRIMARY KEY,
         created_at_ms INTEGER NOT NULL,
         supervisor_state TEXT NOT NULL,
         state_reason TEXT,
         state_since_ms INTEGER NOT NULL,
         incarnation INTEGER NOT NULL DEFAULT 0,
         restart_count INTEGER NOT NULL DEFAULT 0,
         decision_count INTEGER NOT NULL DEFAULT 0,
         last_decision TEXT,
         last_decision_at_ms INTEGER);
     CREATE TABLE intents (
         client_order_id TEXT PRIMARY KEY,
         user_id TEXT NOT NULL REFERENCES users (user_id),
         intent_seq INTEGER NOT NULL,
         symbol TEXT NOT NULL,
         side TEXT NOT NULL,
         order_type TEXT NOT NULL,
         limit_price TEXT,
         quantity TEXT NOT NULL,
         reduce_only INTEGER NOT NULL,
         purpose TEXT NOT NULL,
         strategy TEXT NOT NULL,
         decision_candle_close_ms INTEGER NOT NULL,
         created_at_ms INTEGER NOT NULL,
         UNIQUE (user_id, intent_seq));
     CREATE TABLE orders (
         client_order_id TEXT PRIMARY KEY REFERENCES intents (client_order_id),
         user_id TEXT NOT NULL,
         symbol TEXT NOT NULL,
         state TEXT NOT NULL,
         exchange_order_id TEXT,
         filled_quantity TEXT NOT NULL DEFAULT '0',
         average_price TEXT,
         sent_at_ms INTEGER,
         updated_at_ms INTEGER NOT NULL,
         last_error TEXT);
     CREATE INDEX orders_unresolved ON orders (user_id, symbol)
         WHERE state IN ('pending', 'sending', 'unknown', 'open');
     CREATE TABLE order_events (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         client_order_id TEXT NOT NULL,
         ts_ms INTEGER NOT NULL,
         from_state TEXT,
         to_state TEXT NOT NULL,
         detail TEXT);
     CREATE TABLE fills (
         user_id TEXT NOT NULL,
         trade_id TEXT NOT NULL,
         client_order_id TEXT,
         exchange_order_id TEXT NOT NULL,
         symbol TEXT NOT NULL,
         side TEXT NOT NULL,
         price TEXT NOT NULL,
         quantity TEXT NOT NULL,
         fee TEXT NOT NULL,
         fee_asset TEXT NOT NULL,
         realized_pnl TEXT NOT NULL,
         filled_at_ms INTEGER NOT NULL,
         recorded_at_ms INTEGER NOT NULL,
         PRIMARY KEY (user_id, trade_id));
     CREATE TABLE positions (
         user_id TEXT NOT NULL,
         symbol TEXT NOT NULL,
         quantity TEXT NOT NULL,
         entry_price TEXT NOT NULL,
         position_start_time_ms INTEGER,
         active_order_id TEXT,
         verified_at_ms INTEGER NOT NULL,
         PRIMARY KEY (user_id, symbol));
     CREATE TABLE decisions (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         user_id TEXT NOT NULL,
         symbol TEXT NOT NULL,
         timeframe TEXT NOT NULL,
         strategy TEXT NOT NULL,
         candle_close_ms INTEGER,
         decided_at_ms INTEGER NOT NULL,
         outcome TEXT NOT NULL,
         reason TEXT NOT NULL,
         signal TEXT,
         score REAL,
         client_order_id TEXT);
     CREATE INDEX decisions_by_user ON decisions (user_id, id);
     CREATE TABLE supervisor_events (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         ts_ms INTEGER NOT NULL,
         event TEXT NOT NULL,
         actor TEXT NOT NULL,
         user_id TEXT,
         incarnation INTEGER,
         reason TEXT,
         backoff_ms INTEGER);
     CREATE TABLE reconcile_actions (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         ts_ms INTEGER NOT NULL,
         user_id TEXT NOT NULL,
         action TEXT NOT NULL,
         client_order_id TEXT,
         detail TEXT NOT NULL);",
    ),
    // How many requests carrying the client order id were sent: bounds resubmission.
    M::up("ALTER TABLE orders ADD COLUMN send_attempts INTEGER NOT NULL DEFAULT 0;"),
    // The Monitor's runs, for history (bounded).
    M::up(
        "CREATE TABLE monitor_snapshots (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             ts_ms INTEGER NOT NULL,
             overall TEXT NOT NULL,
             body TEXT NOT NULL);",
    ),
    // Kill switches and probations (they outlive restarts) and every guard decision (bounded).
    M::up(
        "CREATE TABLE guard_locks (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             user_id TEXT NOT NULL,
             failure_point TEXT NOT NULL,
             symbol TEXT,
             reason TEXT NOT NULL,
             values_json TEXT NOT NULL,
             set_at_ms INTEGER NOT NULL,
             until_ms INTEGER NOT NULL,
             cleared_at_ms INTEGER,
             cleared_by TEXT);
         CREATE INDEX guard_locks_uncleared ON guard_locks (user_id) WHERE cleared_at_ms IS NULL;
         CREATE TABLE guard_decisions (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             user_id TEXT NOT NULL,
             symbol TEXT NOT NULL,
             strategy TEXT NOT NULL,
             decided_at_ms INTEGER NOT NULL,
             verdict TEXT NOT NULL,
             failure_point TEXT,
             reason TEXT NOT NULL,
             values_json TEXT NOT NULL,
             until_ms INTEGER);
         CREATE INDEX guard_decisions_by_user ON guard_decisions (user_id, id);",
    ),
    // Binance numbers trades per symbol, so a trade id is unique only within its symbol: the fills
    // key gains the symbol (two symbols' fills with the same id are both kept). And the outbox's
    // replayed entries, so a replay applies each entry once even across a crash.
    M::up(
        "CREATE TABLE fills_by_symbol (
             user_id TEXT NOT NULL,
             trade_id TEXT NOT NULL,
             client_order_id TEXT,
             exchange_order_id TEXT NOT NULL,
             symbol TEXT NOT NULL,
             side TEXT NOT NULL,
             price TEXT NOT NULL,
             quantity TEXT NOT NULL,
             fee TEXT NOT NULL,
             fee_asset TEXT NOT NULL,
             realized_pnl TEXT NOT NULL,
             filled_at_ms INTEGER NOT NULL,
             recorded_at_ms INTEGER NOT NULL,
             PRIMARY KEY (user_id, symbol, trade_id));
         INSERT INTO fills_by_symbol SELECT user_id, trade_id, client_order_id, exchange_order_id, symbol, side, price,
             quantity, fee, fee_asset, realized_pnl, filled_at_ms, recorded_at_ms FROM fills;
         DROP TABLE fills;
         ALTER TABLE fills_by_symbol RENAME TO fills;
         CREATE TABLE outbox_applied (
             entry_id TEXT PRIMARY KEY,
             applied_at_ms INTEGER NOT NULL);",
    ),
    // Recording a fill finds its order by exchange id: without this index every fill insert
    // scanned the orders table (the fleet benchmark measured 2,400 fills/s at 10,000 users).
    M::up("CREATE INDEX orders_by_exchange_id ON orders (user_id, symbol, exchange_order_id);"),
    // The inputs of a user's risk locks (equity peaks, losing streaks), one row per user, so that
    // a restart never loosens a limit (`trader::memory`).
    M::up(
        "CREATE TABLE risk_memory (
             user_id TEXT PRIMARY KEY REFERENCES users (user_id),
             body TEXT NOT NULL,
             updated_at_ms INTEGER NOT NULL);",
    ),
    // What a decision counts as (strategy error, bad candles, margin refused): a column the Monitor
    // counts by, instead of matching the reason's text.
    M::up(
        "ALTER TABLE decisions ADD COLUMN cause TEXT;
         CREATE INDEX decisions_by_cause ON decisions (cause, decided_at_ms) WHERE cause IS NOT NULL;",
    ),
    // A lock's venue-clock window (`failure_points::locks`): rows from before it read as the wall
    // window.
    M::up(
        "ALTER TABLE guard_locks ADD COLUMN set_at_venue_ms INTEGER;
         ALTER TABLE guard_locks ADD COLUMN until_venue_ms INTEGER;",
    ),
];

/// Positions whose newest sync the recorded fills do not add up to (see
/// [`Store::position_fill_mismatches_of`]); the two filters narrow both tables to one user, or not.
macro_rules! position_mismatches_sql {
    ($fills_filter:literal, $positions_filter:literal) => {
        concat!(
            "SELECT p.user_id, p.symbol, p.quantity, COALESCE(f.net, 0.0), p.verified_at_ms
             FROM positions p
             LEFT JOIN (SELECT user_id, symbol,
                               SUM(CASE side WHEN 'BUY' THEN CAST(quantity AS REAL) ELSE -CAST(quantity AS REAL) END) AS net,
                               MAX(filled_at_ms) AS newest
                        FROM fills ",
            $fills_filter,
            " GROUP BY user_id, symbol) f
               ON f.user_id = p.user_id AND f.symbol = p.symbol
             WHERE ",
            $positions_filter,
            " (f.newest IS NULL OR p.verified_at_ms >= f.newest)
               AND NOT EXISTS (SELECT 1 FROM orders o JOIN intents i USING (client_order_id)
                               WHERE i.user_id = p.user_id AND i.symbol = p.symbol
                                 AND o.state IN ('pending', 'sending', 'unknown', 'open'))"
        )
    };
}
const POSITION_MISMATCHES_OF_USER: &str = position_mismatches_sql!("WHERE user_id = ?1", "p.user_id = ?1 AND");
const POSITION_MISMATCHES_OF_EVERYONE: &str = position_mismatches_sql!("", "");

/// The file SQLite keeps its WAL index in, beside the database (`bulwark.db-shm`).
pub fn shared_memory_path(database_path: &Path) -> std::path::PathBuf {
    let mut name = database_path.as_os_str().to_owned();
    name.push("-shm");
    std::path::PathBuf::from(name)
}

/// Whether SQLite may use the database's shared-memory file. SQLite maps `<db>-shm` into memory
/// and writes through the mapping; when the file cannot be written (made immutable, or its
/// filesystem remounted read-only after an I/O error) the kernel answers such a write with SIGBUS,
/// which no error code can catch: the process dies. So the persistence actor asks the kernel
/// first (`access(2)` with `W_OK` sees both an immutable file and a read-only filesystem, for root
/// too) and keeps away from SQLite while the answer is no. A file that does not exist yet is fine:
/// SQLite creates it, or fails to with an error it reports.
pub fn shared_memory_writable(database_path: &Path) -> Result<(), String> {
    let path = shared_memory_path(database_path);
    match rustix::fs::access(&path, rustix::fs::Access::WRITE_OK) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(errno) => Err(format!(
            "the database's shared-memory file {} cannot be written ({}); SQLite would crash the process on it",
            path.display(),
            std::io::Error::from(errno)
        )),
    }
}

/// What a record waiting in the outbox does to the store's order reads (see
/// [`Store::preview_pending`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingChange {
    /// A compare-and-set applies (or the record is no compare-and-set).
    pub changed: bool,
    /// The order as it becomes.
    order: Option<StoredOrder>,
    /// A record a restart judges by (risk memory, guard lock, position) that reads must see before
    /// it is in the database.
    risk: Option<PendingState>,
}

/// A record a restart must judge by even while it waits in the outbox: a crash during a database
/// outage must not loosen a risk limit, nor judge a trade by a position older than the one its
/// trader knew.
#[derive(Debug, Clone, PartialEq)]
enum PendingState {
    Memory(UserId, crate::trader::memory::RiskMemory),
    Lock(GuardLock),
    Position(PositionRecord),
}

/// The bot's database.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    /// Orders whose newest state waits in the durable outbox: each as the database will hold it
    /// once the outbox is replayed (committed intents, compare-and-set moves, fills' order
    /// states). Written by the persistence actor as it queues records ([`Store::hold_pending`])
    /// and cleared when the outbox is empty; read by every order read here, so that what the
    /// store answers is what it was told, whether it is in the database yet or not.
    pending_orders: BTreeMap<ClientOrderId, StoredOrder>,
    /// The same for risk records: each user's newest risk memory and every guard lock waiting in
    /// the outbox, laid over `risk_memory` and the lock reads (a trader restarting during a
    /// database outage reloads the streaks and locks it set).
    pending_risk_memory: BTreeMap<UserId, crate::trader::memory::RiskMemory>,
    pending_guard_locks: Vec<GuardLock>,
    /// The same for positions: the newest record per user and symbol.
    pending_positions: BTreeMap<(UserId, Symbol), PositionRecord>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Self::with_connection(connection)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    /// For readers in another process (`bulwark status`): never writes, never migrates.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let connection =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        connection.busy_timeout(std::time::Duration::from_millis(5_000))?;
        Ok(Self::nothing_pending(connection))
    }

    /// A store on `connection` with nothing laid over its reads yet.
    fn nothing_pending(connection: Connection) -> Self {
        Self {
            connection,
            pending_orders: BTreeMap::new(),
            pending_risk_memory: BTreeMap::new(),
            pending_guard_locks: Vec::new(),
            pending_positions: BTreeMap::new(),
        }
    }

    fn with_connection(mut connection: Connection) -> Result<Self, StoreError> {
        configure_connection(&connection)?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut connection)
            .map_err(|error| StoreError::Migration(error.to_string()))?;
        Ok(Self::nothing_pending(connection))
    }

    /// Group commit: opens a transaction that the following writes join (every write method's
    /// savepoint nests in it) until [`Store::commit_batch`]. The persistence actor batches the
    /// records nobody waits on this way: one commit for many records instead of one each.
    pub fn begin_batch(&mut self) -> Result<(), StoreError> {
        self.connection.execute_batch("BEGIN")?;
        Ok(())
    }

    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        self.connection.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Undoes the open batch (nothing when SQLite has already rolled it back by itself, as it
    /// does on some I/O errors).
    pub fn rollback_batch(&mut self) {
        if !self.connection.is_autocommit()
            && let Err(error) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::warn!(%error, "persistence: rolling back a group commit failed");
        }
    }

    /// How long a write waits for another connection's lock before it is refused as busy (the
    /// persistence actor shortens it while a foreign lock holds, so probing costs nothing).
    pub fn set_busy_timeout(&mut self, timeout: std::time::Duration) -> Result<(), StoreError> {
        self.connection.busy_timeout(timeout)?;
        Ok(())
    }

    /// Whether a transaction is open on this connection.
    pub fn in_transaction(&self) -> bool {
        !self.connection.is_autocommit()
    }

    /// Rows changed by this connection since it opened (what tells whether an operation wrote).
    pub fn total_changes(&self) -> u64 {
        self.connection.total_changes()
    }

    /// Creates a row for every configured user that does not have one yet.
    pub fn ensure_users(&mut self, users: &[UserId], now_ms: i64) -> Result<(), StoreError> {
        let transaction = self.connection.savepoint()?;
        for user in users {
            transaction.prepare_cached("INSERT OR IGNORE INTO users (user_id, created_at_ms, supervisor_state, state_since_ms) VALUES (?1, ?2, 'stopped', ?2)")?.execute(params![user.as_str(), now_ms],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn set_user_supervision(&mut self, record: &UserSupervisionRecord) -> Result<(), StoreError> {
        self.connection.prepare_cached("UPDATE users SET supervisor_state = ?2, state_reason = ?3, state_since_ms = ?4, incarnation = ?5, restart_count = ?6
             WHERE user_id = ?1")?.execute(params![record.user.as_str(), record.state, record.reason, record.since_ms, record.incarnation, record.restart_count],
        )?;
        Ok(())
    }

    pub fn record_supervisor_event(&mut self, event: &SupervisorEventRecord) -> Result<(), StoreError> {
        self.connection
            .prepare_cached(
                "INSERT INTO supervisor_events (ts_ms, event, actor, user_id, incarnation, reason, backoff_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                event.ts_ms,
                event.event,
                event.actor,
                event.user.as_ref().map(UserId::as_str),
                event.incarnation,
                event.reason,
                event.backoff_ms.map(|b| b as i64)
            ])?;
        Ok(())
    }

    pub fn load_trader_state(&mut self, user: &UserId) -> Result<TraderState, StoreError> {
        let mut state = TraderState { positions: self.load_positions(user)?, ..TraderState::default() };
        let stored_seq = self.connection.query_row(
            "SELECT COALESCE(MAX(intent_seq), 0) FROM intents WHERE user_id = ?1",
            params![user.as_str()],
            |row| row.get::<_, i64>(0),
        )? as u64;
        let pending_seq =
            self.pending_orders.values().filter(|o| &o.intent.user == user).map(|o| o.intent.intent_seq).max();
        state.last_intent_seq = stored_seq.max(pending_seq.unwrap_or(0));
        state.decision_count = self
            .connection
            .query_row("SELECT decision_count FROM users WHERE user_id = ?1", params![user.as_str()], |row| {
                row.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64;
        state.unresolved_orders = self.unresolved_orders(user, None)?;
        state.risk_memory = self.risk_memory(user)?;
        Ok(state)
    }

    /// Stores a user's risk memory (replacing the one before).
    pub fn save_risk_memory(
        &mut self,
        user: &UserId,
        memory: &crate::trader::memory::RiskMemory,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(memory).map_err(|e| StoreError::Io(format!("encoding risk memory: {e}")))?;
        self.connection
            .prepare_cached(
                "INSERT INTO risk_memory (user_id, body, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET body = excluded.body, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![user.as_str(), body, at_ms])?;
        Ok(())
    }

    /// A user's stored risk memory, if any.
    pub fn risk_memory(&mut self, user: &UserId) -> Result<Option<crate::trader::memory::RiskMemory>, StoreError> {
        if let Some(pending) = self.pending_risk_memory.get(user) {
            return Ok(Some(pending.clone()));
        }
        let body: Option<String> = self
            .connection
            .query_row("SELECT body FROM risk_memory WHERE user_id = ?1", params![user.as_str()], |row| row.get(0))
            .optional()?;
        body.map(|body| serde_json::from_str(&body).map_err(|e| corrupt("risk_memory", e))).transpose()
    }

    /// Commits an intent and its order row (state `pending`) in one transaction. Fails with
    /// [`StoreError::Conflict`] if the client order id or the user's sequence number is taken.
    pub fn commit_intent(&mut self, intent: &OrderIntent) -> Result<(), StoreError> {
        let transaction = self.connection.savepoint()?;
        let inserted = transaction.prepare_cached("INSERT OR IGNORE INTO intents (client_order_id, user_id, intent_seq, symbol, side, order_type, limit_price, quantity,
                 reduce_only, purpose, strategy, decision_candle_close_ms, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)")?.execute(params![
                intent.client_order_id.as_str(),
                intent.user.as_str(),
                intent.intent_seq as i64,
                intent.symbol.as_str(),
                intent.side.as_str(),
                intent.order_type.as_str(),
                intent.order_type.limit_price().map(|p| p.to_string()),
                intent.quantity.to_string(),
                intent.reduce_only,
                intent.purpose.as_str(),
                intent.strategy,
                intent.decision_candle_close_ms,
                intent.created_at_ms
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "intent {} (sequence {} of user {}) is already recorded",
                intent.client_order_id, intent.intent_seq, intent.user
            )));
        }
        transaction.prepare_cached("INSERT INTO orders (client_order_id, user_id, symbol, state, updated_at_ms) VALUES (?1, ?2, ?3, 'pending', ?4)")?.execute(params![intent.client_order_id.as_str(), intent.user.as_str(), intent.symbol.as_str(), intent.created_at_ms],
        )?;
        transaction.prepare_cached("INSERT INTO order_events (client_order_id, ts_ms, from_state, to_state, detail) VALUES (?1, ?2, NULL, 'pending', 'committed')")?.execute(params![intent.client_order_id.as_str(), intent.created_at_ms],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// Applies a compare-and-set transition and records its fills, atomically. `Ok(false)` when
    /// the order is no longer in `from` (another writer moved it first); nothing is written then.
    pub fn transition_order(&mut self, transition: &OrderTransition) -> Result<bool, StoreError> {
        if !transition.from.may_become(transition.to) {
            return Err(StoreError::Conflict(format!(
                "order {}: {} may not become {}",
                transition.client_order_id, transition.from, transition.to
            )));
        }
        let transaction = self.connection.savepoint()?;
        let user: Option<String> = transaction
            .query_row(
                "SELECT user_id FROM orders WHERE client_order_id = ?1",
                params![transition.client_order_id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        let Some(user) = user else {
            return Err(StoreError::Conflict(format!("order {} is not recorded", transition.client_order_id)));
        };
        let updated = transaction
            .prepare_cached(
                "UPDATE orders SET state = ?3,
                 exchange_order_id = COALESCE(?4, exchange_order_id),
                 filled_quantity = COALESCE(?5, filled_quantity),
                 average_price = COALESCE(?6, average_price),
                 sent_at_ms = COALESCE(?7, sent_at_ms),
                 last_error = COALESCE(?8, last_error),
                 updated_at_ms = ?9,
                 send_attempts = send_attempts + (?3 = 'sending')
             WHERE client_order_id = ?1 AND state = ?2 AND (?10 IS NULL OR send_attempts = ?10)",
            )?
            .execute(params![
                transition.client_order_id.as_str(),
                transition.from.as_str(),
                transition.to.as_str(),
                transition.exchange_order_id,
                transition.filled_quantity.map(|q| q.to_string()),
                transition.average_price.map(|p| p.to_string()),
                transition.sent_at_ms,
                transition.last_error,
                transition.at_ms,
                transition.expected_send_attempts
            ])?;
        if updated == 0 {
            return Ok(false);
        }
        transaction.prepare_cached("INSERT INTO order_events (client_order_id, ts_ms, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
                transition.client_order_id.as_str(),
                transition.at_ms,
                transition.from.as_str(),
                transition.to.as_str(),
                transition.last_error
            ],
        )?;
        for fill in &transition.fills {
            insert_fill(&transaction, &user, Some(&transition.client_order_id), fill, transition.at_ms)?;
        }
        transaction.commit()?;
        Ok(true)
    }

    /// Records fills idempotently; returns how many were new.
    pub fn record_fills(
        &mut self,
        user: &UserId,
        fills: &[(Fill, Option<ClientOrderId>)],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let transaction = self.connection.savepoint()?;
        let mut inserted = 0;
        for (fill, client_order_id) in fills {
            inserted += insert_fill(&transaction, user.as_str(), client_order_id.as_ref(), fill, now_ms)?;
        }
        transaction.commit()?;
        Ok(inserted)
    }

    /// Orders that are not final, oldest first; for one symbol or all.
    pub fn unresolved_orders(
        &mut self,
        user: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let mut statement = self.connection.prepare_cached(&format!(
            "{ORDER_SELECT} WHERE o.user_id = ?1 AND (?2 IS NULL OR o.symbol = ?2)
               AND o.state IN ('pending', 'sending', 'unknown', 'open')
             ORDER BY i.intent_seq"
        ))?;
        let rows =
            statement.query_map(params![user.as_str(), symbol.map(Symbol::as_str)], |row| Ok(order_from_row(row)))?;
        let stored: Vec<StoredOrder> = rows.map(|row| row?).collect::<Result<_, _>>()?;
        // An order the outbox moved to a final state is resolved; one it committed is not.
        let mut orders = self.with_pending(stored, user, |order| symbol.is_none_or(|s| *s == order.intent.symbol));
        orders.retain(|order| !order.state.is_final());
        Ok(orders)
    }

    pub fn order(&mut self, client_order_id: &ClientOrderId) -> Result<Option<StoredOrder>, StoreError> {
        if let Some(pending) = self.pending_orders.get(client_order_id) {
            return Ok(Some(pending.clone()));
        }
        let mut statement = self.connection.prepare_cached(&format!("{ORDER_SELECT} WHERE o.client_order_id = ?1"))?;
        let row = statement.query_row(params![client_order_id.as_str()], |row| Ok(order_from_row(row))).optional()?;
        row.transpose()
    }

    /// Every order of a user, oldest first (for audits and tests).
    pub fn orders_of(&mut self, user: &UserId) -> Result<Vec<StoredOrder>, StoreError> {
        let mut statement =
            self.connection.prepare_cached(&format!("{ORDER_SELECT} WHERE o.user_id = ?1 ORDER BY i.intent_seq"))?;
        let rows = statement.query_map(params![user.as_str()], |row| Ok(order_from_row(row)))?;
        let stored: Vec<StoredOrder> = rows.map(|row| row?).collect::<Result<_, _>>()?;
        Ok(self.with_pending(stored, user, |_| true))
    }

    /// `stored` (one user's orders from the database, by sequence) with what waits in the outbox
    /// laid over it: a pending version replaces the stored one, a pending commit is added.
    fn with_pending(
        &self,
        stored: Vec<StoredOrder>,
        user: &UserId,
        wanted: impl Fn(&StoredOrder) -> bool,
    ) -> Vec<StoredOrder> {
        if self.pending_orders.is_empty() {
            return stored;
        }
        let mut orders: BTreeMap<u64, StoredOrder> = stored
            .into_iter()
            .map(|order| match self.pending_orders.get(&order.intent.client_order_id) {
                Some(pending) => (pending.intent.intent_seq, pending.clone()),
                None => (order.intent.intent_seq, order),
            })
            .collect();
        for pending in self.pending_orders.values().filter(|o| &o.intent.user == user && wanted(o)) {
            orders.entry(pending.intent.intent_seq).or_insert_with(|| pending.clone());
        }
        orders.into_values().collect()
    }

    /// What a record about to wait in the outbox does to what this store's order reads show, as
    /// the database will have it once the outbox is replayed (records are replayed in the order
    /// they were held, on the same rows, so the result is the same). A compare-and-set changes
    /// nothing when the order is not in `from` (or not known); an intent whose id or sequence
    /// number is taken is [`StoreError::Conflict`], as in the database. Records other than
    /// orders change nothing here. Nothing is held until [`Store::hold_pending`].
    pub fn preview_pending(&mut self, write: &DurableWrite) -> Result<PendingChange, StoreError> {
        let unchanged = PendingChange { changed: false, order: None, risk: None };
        match write {
            DurableWrite::CommitIntent(intent) => {
                let taken_seq = self
                    .pending_orders
                    .values()
                    .any(|o| o.intent.user == intent.user && o.intent.intent_seq == intent.intent_seq);
                let stored_seq: Option<i64> = self
                    .connection
                    .query_row(
                        "SELECT 1 FROM intents WHERE user_id = ?1 AND intent_seq = ?2",
                        params![intent.user.as_str(), intent.intent_seq as i64],
                        |row| row.get(0),
                    )
                    .optional()?;
                if taken_seq || stored_seq.is_some() || self.order(&intent.client_order_id)?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "intent {} (sequence {} of user {}) is already recorded",
                        intent.client_order_id, intent.intent_seq, intent.user
                    )));
                }
                Ok(PendingChange { changed: true, order: Some(StoredOrder::committed(intent.clone())), risk: None })
            }
            DurableWrite::OrderTransition(transition) => {
                let Some(mut order) = self.order(&transition.client_order_id)? else { return Ok(unchanged) };
                if !order.apply(transition) {
                    return Ok(unchanged);
                }
                Ok(PendingChange { changed: true, order: Some(order), risk: None })
            }
            DurableWrite::RiskMemory { user, memory, .. } => Ok(PendingChange {
                changed: true,
                order: None,
                risk: Some(PendingState::Memory(user.clone(), memory.clone())),
            }),
            DurableWrite::GuardLock(lock) => {
                Ok(PendingChange { changed: true, order: None, risk: Some(PendingState::Lock(lock.clone())) })
            }
            DurableWrite::Position(record) => {
                Ok(PendingChange { changed: true, order: None, risk: Some(PendingState::Position(record.clone())) })
            }
            _ => Ok(PendingChange { changed: true, order: None, risk: None }),
        }
    }

    /// Holds what [`Store::preview_pending`] found, once its record is safely in the outbox.
    pub fn hold_pending(&mut self, change: PendingChange) {
        if let Some(order) = change.order {
            self.pending_orders.insert(order.intent.client_order_id.clone(), order);
        }
        match change.risk {
            Some(PendingState::Memory(user, memory)) => {
                self.pending_risk_memory.insert(user, memory);
            }
            Some(PendingState::Lock(lock)) => self.pending_guard_locks.push(lock),
            Some(PendingState::Position(record)) => {
                self.pending_positions.insert((record.user.clone(), record.symbol.clone()), record);
            }
            None => {}
        }
    }

    /// Lays every record of an outbox (oldest first) over this store's order reads, replacing what
    /// was laid before: what the server's own reads show while those records wait. A record that
    /// does not apply to what the database holds is skipped (it waits for its replay); returns
    /// how many were skipped.
    pub fn lay_outbox_over<'a>(&mut self, writes: impl IntoIterator<Item = &'a DurableWrite>) -> usize {
        self.clear_pending();
        let mut skipped = 0;
        for write in writes {
            match self.preview_pending(write) {
                Ok(change) => self.hold_pending(change),
                Err(_) => skipped += 1,
            }
        }
        skipped
    }

    /// The outbox is empty: the database has everything [`Store::hold_pending`] held.
    pub fn clear_pending(&mut self) {
        self.pending_orders.clear();
        self.pending_risk_memory.clear();
        self.pending_guard_locks.clear();
        self.pending_positions.clear();
    }

    /// How many orders wait in the outbox (for tests and status).
    pub fn pending_order_count(&self) -> usize {
        self.pending_orders.len()
    }

    pub fn fill_count(&mut self, user: &UserId) -> Result<u64, StoreError> {
        Ok(self.connection.query_row(
            "SELECT COUNT(*) FROM fills WHERE user_id = ?1",
            params![user.as_str()],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    /// The keys of a user's recorded fills: `(symbol, trade id)`, with each fill's quantity.
    pub fn fill_keys(&mut self, user: &UserId) -> Result<Vec<(Symbol, String, Decimal)>, StoreError> {
        let mut statement =
            self.connection.prepare_cached("SELECT symbol, trade_id, quantity FROM fills WHERE user_id = ?1")?;
        let rows = statement.query_map(params![user.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
        })?;
        let mut keys = Vec::new();
        for row in rows {
            let (symbol, trade_id, quantity) = row?;
            let symbol = Symbol::new(&symbol).map_err(|e| corrupt("fills", e))?;
            let quantity = Decimal::from_str(&quantity)
                .map_err(|e| corrupt("fills", format!("trade {trade_id}: quantity {quantity:?}: {e}")))?;
            keys.push((symbol, trade_id, quantity));
        }
        Ok(keys)
    }

    /// Every user with a row, by id.
    pub fn user_ids(&mut self) -> Result<Vec<UserId>, StoreError> {
        let mut statement = self.connection.prepare_cached("SELECT user_id FROM users ORDER BY user_id")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        let mut users = Vec::new();
        for row in rows {
            users.push(UserId::new(&row?).map_err(|e| corrupt("users", e))?);
        }
        Ok(users)
    }

    pub fn record_decision(&mut self, decision: &DecisionRecord) -> Result<(), StoreError> {
        let transaction = self.connection.savepoint()?;
        transaction.prepare_cached("INSERT INTO decisions (user_id, symbol, timeframe, strategy, candle_close_ms, decided_at_ms, outcome, reason, signal, score, client_order_id, cause)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)")?.execute(params![
                decision.user.as_str(),
                decision.symbol.as_str(),
                decision.timeframe,
                decision.strategy,
                decision.candle_close_ms,
                decision.decided_at_ms,
                decision.outcome,
                decision.reason,
                decision.signal,
                decision.score,
                decision.client_order_id.as_ref().map(ClientOrderId::as_str),
                decision.cause.map(DecisionCause::as_str)
            ],
        )?;
        let summary = format!("{} {}: {}", decision.symbol, decision.outcome, decision.reason);
        transaction.prepare_cached("UPDATE users SET decision_count = decision_count + ?2, last_decision = ?3, last_decision_at_ms = ?4 WHERE user_id = ?1")?.execute(params![decision.user.as_str(), i64::from(decision.counts_as_decision), summary, decision.decided_at_ms],
        )?;
        transaction.commit()?;
        Ok(())
    }

    pub fn save_position(&mut self, record: &PositionRecord) -> Result<(), StoreError> {
        self.connection.prepare_cached("INSERT INTO positions (user_id, symbol, quantity, entry_price, position_start_time_ms, active_order_id, verified_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user_id, symbol) DO UPDATE SET quantity = excluded.quantity, entry_price = excluded.entry_price,
                 position_start_time_ms = excluded.position_start_time_ms, active_order_id = excluded.active_order_id,
                 verified_at_ms = excluded.verified_at_ms")?.execute(params![
                record.user.as_str(),
                record.symbol.as_str(),
                record.quantity.to_string(),
                record.entry_price.to_string(),
                record.position_start_time_ms,
                record.active_order_id.as_ref().map(ClientOrderId::as_str),
                record.verified_at_ms
            ],
        )?;
        Ok(())
    }

    /// One stored position, if any.
    pub fn position(&mut self, user: &UserId, symbol: &Symbol) -> Result<Option<PositionRecord>, StoreError> {
        if let Some(pending) = self.pending_positions.get(&(user.clone(), symbol.clone())) {
            return Ok(Some(pending.clone()));
        }
        let mut statement = self.connection.prepare_cached(
            "SELECT quantity, entry_price, position_start_time_ms, active_order_id, verified_at_ms
             FROM positions WHERE user_id = ?1 AND symbol = ?2",
        )?;
        let row = statement
            .query_row(params![user.as_str(), symbol.as_str()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        let Some((quantity, entry_price, position_start_time_ms, active_order_id, verified_at_ms)) = row else {
            return Ok(None);
        };
        let corrupt = |detail: String| StoreError::Corrupt { table: "positions".into(), detail };
        Ok(Some(PositionRecord {
            user: user.clone(),
            symbol: symbol.clone(),
            quantity: Decimal::from_str(&quantity).map_err(|e| corrupt(format!("quantity {quantity:?}: {e}")))?,
            entry_price: Decimal::from_str(&entry_price)
                .map_err(|e| corrupt(format!("entry_price {entry_price:?}: {e}")))?,
            position_start_time_ms,
            active_order_id: active_order_id
                .map(|id| ClientOrderId::parse(&id))
                .transpose()
                .map_err(|e| corrupt(format!("active_order_id: {e}")))?,
            verified_at_ms,
        }))
    }

    pub fn record_reconcile_action(
        &mut self,
        user: &UserId,
        action: &str,
        client_order_id: Option<&ClientOrderId>,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.connection.prepare_cached("INSERT INTO reconcile_actions (ts_ms, user_id, action, client_order_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![now_ms, user.as_str(), action, client_order_id.map(ClientOrderId::as_str), detail],
        )?;
        Ok(())
    }

    /// Reconciliation actions of the given kinds since `since_ms`, every user, oldest first:
    /// `(ts_ms, user, action, detail)`.
    pub fn recent_reconcile_actions(
        &mut self,
        since_ms: i64,
        actions: &[&str],
    ) -> Result<Vec<(i64, UserId, String, String)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT ts_ms, user_id, action, detail FROM reconcile_actions
             WHERE ts_ms >= ?1 AND action IN (SELECT value FROM json_each(?2)) ORDER BY id",
        )?;
        let kinds = serde_json::to_string(actions).expect("Invariant: a list of strings encodes");
        let rows = statement.query_map(params![since_ms, kinds], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, String>(3)?))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (ts_ms, user, action, detail) = row?;
            let user = UserId::new(&user).map_err(|e| corrupt("reconcile_actions", e))?;
            found.push((ts_ms, user, action, detail));
        }
        Ok(found)
    }

    /// Reconciliation actions of a user, oldest first: `(action, client order id, detail)`.
    pub fn reconcile_actions(&mut self, user: &UserId) -> Result<Vec<(String, Option<String>, String)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT action, client_order_id, detail FROM reconcile_actions WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map(params![user.as_str()], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps the bounded tables bounded (decisions per user, and the event logs). The ledger
    /// (intents, orders, fills) is kept whole.
    pub fn prune(&mut self) -> Result<usize, StoreError> {
        let mut removed = self.connection.prepare_cached("DELETE FROM decisions WHERE id IN (
                 SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id DESC) AS newer FROM decisions)
                 WHERE newer > ?1)")?.execute(params![DECISIONS_PER_USER_MAX],
        )?;
        removed += self.connection.prepare_cached("DELETE FROM guard_decisions WHERE id IN (
                 SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id DESC) AS newer FROM guard_decisions)
                 WHERE newer > ?1)")?.execute(params![GUARD_DECISIONS_PER_USER_MAX],
        )?;
        removed += self.connection.prepare_cached("DELETE FROM guard_locks WHERE cleared_at_ms IS NOT NULL AND id IN (
                 SELECT id FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id DESC) AS newer FROM guard_locks WHERE cleared_at_ms IS NOT NULL)
                 WHERE newer > ?1)")?.execute(params![GUARD_LOCKS_CLEARED_MAX],
        )?;
        for (table, keep) in [
            ("supervisor_events", SUPERVISOR_EVENTS_MAX),
            ("order_events", ORDER_EVENTS_MAX),
            ("reconcile_actions", RECONCILE_ACTIONS_MAX),
            ("monitor_snapshots", MONITOR_SNAPSHOTS_MAX),
        ] {
            removed += self.connection.execute(
                &format!("DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?1"),
                params![keep],
            )?;
        }
        Ok(removed)
    }

    /// Per user: orders whose outcome is not known yet (`pending`, `sending`, `unknown`), how many,
    /// and when the oldest was created.
    pub fn unresolved_order_counts(&mut self) -> Result<Vec<(UserId, u32, i64)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT o.user_id, COUNT(*), MIN(i.created_at_ms) FROM orders o JOIN intents i USING (client_order_id)
             WHERE o.state IN ('pending', 'sending', 'unknown') GROUP BY o.user_id ORDER BY o.user_id",
        )?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?, row.get::<_, i64>(2)?)))?;
        let mut counts = Vec::new();
        for row in rows {
            let (user, count, oldest) = row?;
            counts.push((UserId::new(&user).map_err(|e| corrupt("orders", e))?, count, oldest));
        }
        Ok(counts)
    }

    /// Per user: how many symbols hold a position (non-zero quantity) in the bot's records.
    pub fn open_position_counts(&mut self) -> Result<Vec<(UserId, u32)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT u.user_id, COUNT(p.symbol) FROM users u
             LEFT JOIN positions p ON p.user_id = u.user_id AND CAST(p.quantity AS REAL) != 0
             GROUP BY u.user_id ORDER BY u.user_id",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?)))?;
        let mut counts = Vec::new();
        for row in rows {
            let (user, count) = row?;
            counts.push((UserId::new(&user).map_err(|e| corrupt("positions", e))?, count));
        }
        Ok(counts)
    }

    /// Per user: iterations skipped for a strategy error decided at or after `since_ms`.
    pub fn strategy_error_counts(&mut self, since_ms: i64) -> Result<BTreeMap<UserId, u64>, StoreError> {
        self.decision_counts(DecisionCause::StrategyError, since_ms)
    }

    /// Per user: iterations skipped for malformed candles decided at or after `since_ms`.
    pub fn bad_candle_counts(&mut self, since_ms: i64) -> Result<BTreeMap<UserId, u64>, StoreError> {
        self.decision_counts(DecisionCause::BadCandles, since_ms)
    }

    /// Per user: orders the exchange refused for insufficient margin (-2019) at or after `since_ms`.
    pub fn margin_rejection_counts(&mut self, since_ms: i64) -> Result<BTreeMap<UserId, u64>, StoreError> {
        self.decision_counts(DecisionCause::MarginRefused, since_ms)
    }

    /// Per user: decisions of this cause at or after `since_ms`.
    fn decision_counts(&mut self, cause: DecisionCause, since_ms: i64) -> Result<BTreeMap<UserId, u64>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT user_id, COUNT(*) FROM decisions
             WHERE cause = ?2 AND decided_at_ms >= ?1 GROUP BY user_id",
        )?;
        let rows = statement.query_map(params![since_ms, cause.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
        })?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let (user, count) = row?;
            counts.insert(UserId::new(&user).map_err(|e| corrupt("decisions", e))?, count);
        }
        Ok(counts)
    }

    /// SQLite's quick integrity check: true when it answers "ok".
    pub fn quick_check(&mut self) -> Result<bool, StoreError> {
        let answer: String = self.connection.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        Ok(answer == "ok")
    }

    /// Stores a new lock; returns its row id.
    pub fn insert_guard_lock(&mut self, lock: &GuardLock) -> Result<i64, StoreError> {
        self.connection
            .prepare_cached(
                "INSERT INTO guard_locks (user_id, failure_point, symbol, reason, values_json, set_at_ms, until_ms,
                 set_at_venue_ms, until_venue_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                lock.user.as_str(),
                lock.failure_point,
                lock.symbol.as_ref().map(Symbol::as_str),
                lock.reason,
                lock.values.to_string(),
                lock.set_at_ms,
                lock.until_ms,
                lock.set_at_venue_ms,
                lock.until_venue_ms
            ])?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Locks not cleared yet (holding, or past their expiry and not yet cleared), of one user or
    /// of everyone, oldest first.
    pub fn uncleared_guard_locks(&mut self, user: Option<&UserId>) -> Result<Vec<GuardLock>, StoreError> {
        Ok(self.guard_locks_where(user, true)?.into_iter().map(|(lock, _)| lock).collect())
    }

    /// Every lock ever set (for `user`, or everyone), cleared ones too, each with when it was
    /// cleared: what `bulwark verify` checks entries against.
    pub fn guard_lock_history(&mut self, user: Option<&UserId>) -> Result<Vec<(GuardLock, Option<i64>)>, StoreError> {
        self.guard_locks_where(user, false)
    }

    fn guard_locks_where(
        &mut self,
        user: Option<&UserId>,
        uncleared_only: bool,
    ) -> Result<Vec<(GuardLock, Option<i64>)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT id, user_id, failure_point, symbol, reason, values_json, set_at_ms, until_ms, cleared_at_ms,
                    COALESCE(set_at_venue_ms, set_at_ms), COALESCE(until_venue_ms, until_ms)
             FROM guard_locks
             WHERE (?2 = 0 OR cleared_at_ms IS NULL) AND (?1 IS NULL OR user_id = ?1) ORDER BY id",
        )?;
        let rows = statement.query_map(params![user.map(UserId::as_str), uncleared_only], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, i64>(7)?,
                row.get::<_, Option<i64>>(8)?,
                row.get::<_, i64>(9)?,
                row.get::<_, i64>(10)?,
            ))
        })?;
        let corrupt = |detail: String| StoreError::Corrupt { table: "guard_locks".into(), detail };
        let mut locks = Vec::new();
        for row in rows {
            let (
                id,
                user,
                failure_point,
                symbol,
                reason,
                values,
                set_at_ms,
                until_ms,
                cleared_at_ms,
                set_at_venue_ms,
                until_venue_ms,
            ) = row?;
            let lock = GuardLock {
                id,
                user: UserId::new(&user).map_err(|e| corrupt(format!("row {id}: {e}")))?,
                failure_point,
                symbol: symbol.map(|s| Symbol::new(&s)).transpose().map_err(|e| corrupt(format!("row {id}: {e}")))?,
                reason,
                values: serde_json::from_str(&values).map_err(|e| corrupt(format!("row {id}: {e}")))?,
                set_at_ms,
                until_ms,
                set_at_venue_ms,
                until_venue_ms,
            };
            locks.push((lock, cleared_at_ms));
        }
        // Locks still waiting in the outbox hold as much as stored ones (row id 0 until stored).
        locks.extend(
            self.pending_guard_locks
                .iter()
                .filter(|lock| user.is_none_or(|user| &lock.user == user))
                .map(|lock| (lock.clone(), None)),
        );
        Ok(locks)
    }

    /// Marks a lock cleared (once): `false` if it was cleared already or does not exist.
    pub fn clear_guard_lock(&mut self, id: i64, at_ms: i64, by: &str) -> Result<bool, StoreError> {
        let changed = self
            .connection
            .prepare_cached(
                "UPDATE guard_locks SET cleared_at_ms = ?2, cleared_by = ?3 WHERE id = ?1 AND cleared_at_ms IS NULL",
            )?
            .execute(params![id, at_ms, by])?;
        Ok(changed == 1)
    }

    pub fn record_guard_decision(&mut self, decision: &GuardDecisionRecord) -> Result<(), StoreError> {
        self.connection.prepare_cached("INSERT INTO guard_decisions (user_id, symbol, strategy, decided_at_ms, verdict, failure_point, reason, values_json, until_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?.execute(params![
                decision.user.as_str(),
                decision.symbol.as_str(),
                decision.strategy,
                decision.decided_at_ms,
                decision.verdict,
                decision.failure_point,
                decision.reason,
                decision.values.to_string(),
                decision.until_ms
            ],
        )?;
        Ok(())
    }

    /// A user's newest guard decisions, newest first.
    pub fn recent_guard_decisions(
        &mut self,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<GuardDecisionRecord>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT symbol, strategy, decided_at_ms, verdict, failure_point, reason, values_json, until_ms
             FROM guard_decisions WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(params![user.as_str(), limit], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, Option<i64>>(7)?,
            ))
        })?;
        let corrupt = |detail: String| StoreError::Corrupt { table: "guard_decisions".into(), detail };
        let mut decisions = Vec::new();
        for row in rows {
            let (symbol, strategy, decided_at_ms, verdict, failure_point, reason, values, until_ms) = row?;
            decisions.push(GuardDecisionRecord {
                user: user.clone(),
                symbol: Symbol::new(&symbol).map_err(|e| corrupt(e.to_string()))?,
                strategy,
                decided_at_ms,
                verdict,
                failure_point,
                reason,
                values: serde_json::from_str(&values).map_err(|e| corrupt(e.to_string()))?,
                until_ms,
            });
        }
        Ok(decisions)
    }

    /// Guard blocks per failure point since `since_ms`: (failure point, user) → count.
    pub fn guard_block_counts(&mut self, since_ms: i64) -> Result<Vec<(String, UserId, u64)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT failure_point, user_id, COUNT(*) FROM guard_decisions
             WHERE verdict = 'block' AND decided_at_ms >= ?1 GROUP BY failure_point, user_id ORDER BY failure_point, user_id",
        )?;
        let rows = statement.query_map(params![since_ms], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, u64>(2)?))
        })?;
        let mut counts = Vec::new();
        for row in rows {
            let (failure_point, user, count) = row?;
            let user = UserId::new(&user)
                .map_err(|e| StoreError::Corrupt { table: "guard_decisions".into(), detail: e.to_string() })?;
            counts.push((failure_point, user, count));
        }
        Ok(counts)
    }

    /// Positions whose recorded quantity (the exchange's, from the newest sync) differs from the
    /// net of the fills the database holds for that user and symbol (buys minus sells): a fill the
    /// bot missed, or a trade it did not make. Symbols with an order not yet final, or whose
    /// position was read before their newest fill, are left out (they are still settling).
    pub fn position_fill_mismatches(&mut self) -> Result<Vec<PositionMismatch>, StoreError> {
        self.position_fill_mismatches_of(None)
    }

    /// [`Store::position_fill_mismatches`] of one user (`None`: everyone).
    pub fn position_fill_mismatches_of(&mut self, user: Option<&UserId>) -> Result<Vec<PositionMismatch>, StoreError> {
        // Two texts rather than `?1 IS NULL OR user_id = ?1`, which no index can serve: one user's
        // check reads that user's fills through the primary key, not the whole table.
        let sql = if user.is_some() { POSITION_MISMATCHES_OF_USER } else { POSITION_MISMATCHES_OF_EVERYONE };
        let mut statement = self.connection.prepare_cached(sql)?;
        let parameters = match user {
            Some(user) => vec![user.as_str().to_owned()],
            None => Vec::new(),
        };
        let rows = statement.query_map(rusqlite::params_from_iter(parameters), |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, f64>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })?;
        let corrupt = |detail: String| StoreError::Corrupt { table: "positions".into(), detail };
        let mut mismatches = Vec::new();
        for row in rows {
            let (user, symbol, quantity, from_fills, verified_at_ms) = row?;
            let recorded: f64 = quantity.parse().map_err(|_| corrupt(format!("quantity {quantity:?}")))?;
            let tolerance = 1e-9 * recorded.abs().max(from_fills.abs()).max(1.0);
            if (recorded - from_fills).abs() > tolerance {
                mismatches.push(PositionMismatch {
                    user: UserId::new(&user).map_err(|e| corrupt(e.to_string()))?,
                    symbol: Symbol::new(&symbol).map_err(|e| corrupt(e.to_string()))?,
                    recorded,
                    from_fills,
                    verified_at_ms,
                });
            }
        }
        Ok(mismatches)
    }

    /// The exchange ids of `user`'s orders on `symbol` that bulwark placed (the fills of these,
    /// and only these, are the bot's own).
    pub fn exchange_order_ids(&mut self, user: &UserId, symbol: &Symbol) -> Result<Vec<String>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT exchange_order_id FROM orders WHERE user_id = ?1 AND symbol = ?2 AND exchange_order_id IS NOT NULL",
        )?;
        let rows = statement.query_map(params![user.as_str(), symbol.as_str()], |row| row.get(0))?;
        let mut ids: Vec<String> = rows.collect::<Result<_, _>>()?;
        ids.extend(
            self.pending_orders
                .values()
                .filter(|o| &o.intent.user == user && &o.intent.symbol == symbol)
                .filter_map(|o| o.exchange_order_id.clone()),
        );
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// One Monitor run, for history.
    pub fn record_monitor_snapshot(&mut self, ts_ms: i64, overall: &str, body: &str) -> Result<(), StoreError> {
        self.connection
            .prepare_cached("INSERT INTO monitor_snapshots (ts_ms, overall, body) VALUES (?1, ?2, ?3)")?
            .execute(params![ts_ms, overall, body])?;
        Ok(())
    }

    /// The newest Monitor run: (ts_ms, overall, body).
    pub fn latest_monitor_snapshot(&mut self) -> Result<Option<(i64, String, String)>, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT ts_ms, overall, body FROM monitor_snapshots ORDER BY id DESC LIMIT 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?)
    }

    /// Moves the write-ahead log into the main file (called at shutdown).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if !self.connection.is_autocommit() {
            return Err(StoreError::Unavailable(
                "a WAL checkpoint cannot run inside a transaction (commit the group commit first)".to_owned(),
            ));
        }
        self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The newest decisions of a user, newest first.
    pub fn recent_decisions(&mut self, user: &UserId, limit: u32) -> Result<Vec<DecisionRecord>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT user_id, symbol, timeframe, strategy, candle_close_ms, decided_at_ms, outcome, reason, signal, score, client_order_id, cause
             FROM decisions WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(params![user.as_str(), limit], |row| {
            Ok((|| -> Result<DecisionRecord, StoreError> {
                let outcome: String = row.get(6)?;
                Ok(DecisionRecord {
                    user: UserId::new(&row.get::<_, String>(0)?).map_err(|e| corrupt("decisions", e))?,
                    symbol: Symbol::new(&row.get::<_, String>(1)?).map_err(|e| corrupt("decisions", e))?,
                    timeframe: row.get(2)?,
                    strategy: row.get(3)?,
                    candle_close_ms: row.get(4)?,
                    decided_at_ms: row.get(5)?,
                    counts_as_decision: outcome != "skipped",
                    outcome,
                    reason: row.get(7)?,
                    signal: row.get(8)?,
                    score: row.get(9)?,
                    client_order_id: row
                        .get::<_, Option<String>>(10)?
                        .map(|id| ClientOrderId::parse(&id))
                        .transpose()
                        .map_err(|e| corrupt("decisions", e))?,
                    cause: row.get::<_, Option<String>>(11)?.as_deref().and_then(DecisionCause::parse),
                })
            })())
        })?;
        rows.map(|row| row?).collect()
    }

    /// Supervisor events of one user (or of shared actors when `user` is `None`), oldest first.
    pub fn supervisor_events(&mut self, user: Option<&UserId>) -> Result<Vec<SupervisorEventRecord>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT ts_ms, event, actor, user_id, incarnation, reason, backoff_ms FROM supervisor_events
             WHERE (?1 IS NULL AND user_id IS NULL) OR user_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map(params![user.map(UserId::as_str)], supervisor_event_from_row)?;
        rows.map(|row| row?).collect()
    }

    /// Every supervision event since `since_ms` (all actors and users), oldest first, at most
    /// `limit` (the newest ones when there are more).
    pub fn supervisor_events_since(
        &mut self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<SupervisorEventRecord>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT ts_ms, event, actor, user_id, incarnation, reason, backoff_ms FROM
               (SELECT * FROM supervisor_events WHERE ts_ms >= ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = statement.query_map(params![since_ms, limit], supervisor_event_from_row)?;
        rows.map(|row| row?).collect()
    }

    /// Monitor runs since `since_ms`, oldest first, at most `limit` (the newest when there are
    /// more): `(ts_ms, overall, line)`.
    pub fn monitor_snapshots_since(
        &mut self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT ts_ms, overall, body FROM
               (SELECT * FROM monitor_snapshots WHERE ts_ms >= ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = statement.query_map(params![since_ms, limit], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// One `supervisor_events` row (`ts_ms, event, actor, user_id, incarnation, reason, backoff_ms`).
fn supervisor_event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<SupervisorEventRecord, StoreError>> {
    Ok((|| -> Result<SupervisorEventRecord, StoreError> {
        Ok(SupervisorEventRecord {
            ts_ms: row.get(0)?,
            event: row.get(1)?,
            actor: row.get(2)?,
            user: row
                .get::<_, Option<String>>(3)?
                .map(|u| UserId::new(&u))
                .transpose()
                .map_err(|e| corrupt("supervisor_events", e))?,
            incarnation: row.get(4)?,
            reason: row.get(5)?,
            backoff_ms: row.get::<_, Option<i64>>(6)?.map(|b| b as u64),
        })
    })())
}

impl Store {
    /// Every user's status for `bulwark status`.
    pub fn user_statuses(&mut self) -> Result<Vec<UserStatus>, StoreError> {
        let mut statuses: Vec<UserStatus> = {
            let mut statement = self.connection.prepare(
            "SELECT u.user_id, u.supervisor_state, u.state_reason, u.state_since_ms, u.incarnation, u.restart_count,
                    u.decision_count, u.last_decision, u.last_decision_at_ms,
                    (SELECT COUNT(*) FROM orders o WHERE o.user_id = u.user_id),
                    (SELECT COUNT(*) FROM fills f WHERE f.user_id = u.user_id)
             FROM users u ORDER BY u.user_id",
        )?;
            let rows = statement.query_map([], |row| {
                Ok(UserStatus {
                    user: row.get(0)?,
                    state: row.get(1)?,
                    reason: row.get(2)?,
                    since_ms: row.get(3)?,
                    incarnation: row.get(4)?,
                    restart_count: row.get(5)?,
                    decision_count: row.get::<_, i64>(6)? as u64,
                    last_decision: row.get(7)?,
                    last_decision_at_ms: row.get(8)?,
                    positions: Vec::new(),
                    orders_total: row.get::<_, i64>(9)? as u64,
                    fills_total: row.get::<_, i64>(10)? as u64,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for status in &mut statuses {
            let user = UserId::new(&status.user).map_err(|e| corrupt("users", e))?;
            status.positions = self.load_positions(&user)?;
        }
        Ok(statuses)
    }

    /// Every stored position of a user (flat ones included), by symbol.
    pub fn load_positions(&mut self, user: &UserId) -> Result<Vec<PositionRecord>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT user_id, symbol, quantity, entry_price, position_start_time_ms, active_order_id, verified_at_ms
             FROM positions WHERE user_id = ?1 ORDER BY symbol",
        )?;
        let rows = statement.query_map(params![user.as_str()], |row| Ok(position_from_row(row)))?;
        let stored: Vec<PositionRecord> = rows.map(|row| row?).collect::<Result<_, _>>()?;
        if self.pending_positions.is_empty() {
            return Ok(stored);
        }
        // What waits in the outbox replaces the stored row (by symbol, as the upsert will).
        let mut positions: BTreeMap<Symbol, PositionRecord> =
            stored.into_iter().map(|record| (record.symbol.clone(), record)).collect();
        for ((owner, symbol), pending) in &self.pending_positions {
            if owner == user {
                positions.insert(symbol.clone(), pending.clone());
            }
        }
        Ok(positions.into_values().collect())
    }
}

const ORDER_SELECT: &str =
    "SELECT i.client_order_id, i.user_id, i.intent_seq, i.symbol, i.side, i.order_type, i.limit_price, i.quantity,
        i.reduce_only, i.purpose, i.strategy, i.decision_candle_close_ms, i.created_at_ms,
        o.state, o.exchange_order_id, o.filled_quantity, o.average_price, o.sent_at_ms, o.updated_at_ms, o.last_error,
        o.send_attempts
     FROM orders o JOIN intents i ON i.client_order_id = o.client_order_id";

/// Records one fill unless its trade is already recorded; returns 1 if it was new. A fill imported
/// without its client order id (an account's trade list does not carry it) is linked to the order
/// with its exchange order id; a later record that knows the id links an earlier unlinked one.
fn insert_fill(
    connection: &Connection,
    user: &str,
    client_order_id: Option<&ClientOrderId>,
    fill: &Fill,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let inserted = connection.execute(
        "INSERT OR IGNORE INTO fills (user_id, trade_id, client_order_id, exchange_order_id, symbol, side, price, quantity, fee,
             fee_asset, realized_pnl, filled_at_ms, recorded_at_ms)
         VALUES (?1, ?2,
             COALESCE(?3, (SELECT client_order_id FROM orders WHERE user_id = ?1 AND symbol = ?5 AND exchange_order_id = ?4)),
             ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            user,
            fill.trade_id,
            client_order_id.map(ClientOrderId::as_str),
            fill.exchange_order_id,
            fill.symbol.as_str(),
            fill.side.as_str(),
            fill.price.to_string(),
            fill.quantity.to_string(),
            fill.fee.to_string(),
            fill.fee_asset,
            fill.realized_pnl.to_string(),
            fill.time_ms,
            now_ms
        ],
    )?;
    if inserted == 0
        && let Some(client_order_id) = client_order_id
    {
        connection.execute(
            "UPDATE fills SET client_order_id = ?4
             WHERE user_id = ?1 AND symbol = ?2 AND trade_id = ?3 AND client_order_id IS NULL",
            params![user, fill.symbol.as_str(), fill.trade_id, client_order_id.as_str()],
        )?;
    }
    Ok(inserted)
}

fn corrupt(table: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table: table.to_owned(), detail: error.to_string() }
}

fn decimal_column(row: &Row<'_>, index: usize, table: &str) -> Result<Decimal, StoreError> {
    let text: String = row.get(index)?;
    Decimal::from_str(&text).map_err(|e| corrupt(table, format!("column {index} {text:?}: {e}")))
}

fn position_from_row(row: &Row<'_>) -> Result<PositionRecord, StoreError> {
    Ok(PositionRecord {
        user: UserId::new(&row.get::<_, String>(0)?).map_err(|e| corrupt("positions", e))?,
        symbol: Symbol::new(&row.get::<_, String>(1)?).map_err(|e| corrupt("positions", e))?,
        quantity: decimal_column(row, 2, "positions")?,
        entry_price: decimal_column(row, 3, "positions")?,
        position_start_time_ms: row.get(4)?,
        active_order_id: row
            .get::<_, Option<String>>(5)?
            .map(|id| ClientOrderId::parse(&id))
            .transpose()
            .map_err(|e| corrupt("positions", e))?,
        verified_at_ms: row.get(6)?,
    })
}

fn order_from_row(row: &Row<'_>) -> Result<StoredOrder, StoreError> {
    let table = "intents/orders";
    let bad = |e: String| corrupt(table, e);
    let limit_price = row
        .get::<_, Option<String>>(6)?
        .map(|text| {
            Decimal::from_str(&text)
                .map_err(|e| bad(e.to_string()))
                .and_then(|d| Price::new(d).map_err(|e| bad(e.to_string())))
        })
        .transpose()?;
    let order_type = match (row.get::<_, String>(5)?.as_str(), limit_price) {
        ("MARKET", _) => OrderType::Market,
        ("LIMIT", Some(price)) => OrderType::Limit { price },
        (other, _) => return Err(bad(format!("order type {other:?} without a usable price"))),
    };
    let intent = OrderIntent {
        client_order_id: ClientOrderId::parse(&row.get::<_, String>(0)?).map_err(|e| bad(e.to_string()))?,
        user: UserId::new(&row.get::<_, String>(1)?).map_err(|e| bad(e.to_string()))?,
        intent_seq: row.get::<_, i64>(2)? as u64,
        symbol: Symbol::new(&row.get::<_, String>(3)?).map_err(|e| bad(e.to_string()))?,
        side: Side::from_str(&row.get::<_, String>(4)?).map_err(bad)?,
        order_type,
        quantity: Quantity::new(decimal_column(row, 7, table)?).map_err(|e| bad(e.to_string()))?,
        reduce_only: row.get(8)?,
        purpose: IntentPurpose::from_str(&row.get::<_, String>(9)?).map_err(bad)?,
        strategy: row.get(10)?,
        decision_candle_close_ms: row.get(11)?,
        created_at_ms: row.get(12)?,
    };
    Ok(StoredOrder {
        intent,
        state: OrderState::from_str(&row.get::<_, String>(13)?).map_err(bad)?,
        exchange_order_id: row.get(14)?,
        filled_quantity: decimal_column(row, 15, table)?,
        average_price: row
            .get::<_, Option<String>>(16)?
            .map(|t| Decimal::from_str(&t).map_err(|e| bad(e.to_string())))
            .transpose()?,
        sent_at_ms: row.get(17)?,
        updated_at_ms: row.get(18)?,
        last_error: row.get(19)?,
        send_attempts: row.get(20)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::new("u1").unwrap()
    }

    fn symbol() -> Symbol {
        Symbol::new("XRPUSDT").unwrap()
    }

    fn intent(seq: u64) -> OrderIntent {
        OrderIntent {
            user: user(),
            intent_seq: seq,
            client_order_id: ClientOrderId::for_intent(&user(), seq),
            symbol: symbol(),
            side: Side::Buy,
            order_type: OrderType::Market,
            quantity: Quantity::new(Decimal::from(100)).unwrap(),
            reduce_only: false,
            purpose: IntentPurpose::Entry,
            strategy: "ema_crossover".into(),
            decision_candle_close_ms: 1_000,
            created_at_ms: 2_000,
        }
    }

    fn store() -> Store {
        let mut store = Store::open_in_memory().unwrap();
        store.ensure_users(&[user()], 0).unwrap();
        store
    }

    #[test]
    fn a_position_the_fills_do_not_add_up_to_is_a_mismatch_for_its_user_only() {
        let mut store = store();
        let other = UserId::new("u2").unwrap();
        store.ensure_users(std::slice::from_ref(&other), 0).unwrap();
        let position = |user: &UserId, quantity: i64| PositionRecord {
            user: user.clone(),
            symbol: symbol(),
            quantity: Decimal::from(quantity),
            entry_price: Decimal::from(1),
            position_start_time_ms: Some(3_000),
            active_order_id: None,
            verified_at_ms: 4_000,
        };
        // u1 holds 300 but its fills add up to 100; u2 holds 100, as its fills say.
        store.save_position(&position(&user(), 300)).unwrap();
        store.record_fills(&user(), &[(fill("1"), None)], 3_500).unwrap();
        store.save_position(&position(&other, 100)).unwrap();
        store.record_fills(&other, &[(fill("1"), None)], 3_500).unwrap();
        let everyone = store.position_fill_mismatches().unwrap();
        assert_eq!(everyone.len(), 1, "{everyone:?}");
        assert_eq!((everyone[0].user.as_str(), everyone[0].recorded, everyone[0].from_fills), ("u1", 300.0, 100.0));
        assert_eq!(store.position_fill_mismatches_of(Some(&user())).unwrap(), everyone);
        assert!(store.position_fill_mismatches_of(Some(&other)).unwrap().is_empty());
    }

    fn fill(trade_id: &str) -> Fill {
        Fill {
            trade_id: trade_id.into(),
            exchange_order_id: "7".into(),
            symbol: symbol(),
            side: Side::Buy,
            price: Decimal::from(1),
            quantity: Decimal::from(100),
            fee: Decimal::new(4, 2),
            fee_asset: "USDT".into(),
            realized_pnl: Decimal::ZERO,
            time_ms: 3_000,
        }
    }

    #[test]
    fn an_intent_is_committed_once_and_reads_back_whole() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        let again = store.commit_intent(&intent(1));
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let stored = store.order(&intent(1).client_order_id).unwrap().unwrap();
        assert_eq!(stored.intent, intent(1));
        assert_eq!(stored.state, OrderState::Pending);
    }

    #[test]
    fn the_same_sequence_cannot_get_a_second_id() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        let mut other = intent(1);
        other.client_order_id = ClientOrderId::parse("bw-u1-1b").unwrap();
        assert!(matches!(store.commit_intent(&other), Err(StoreError::Conflict(_)) | Err(StoreError::Sqlite(_))));
    }

    #[test]
    fn transitions_are_compare_and_set() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        let id = intent(1).client_order_id;
        let mut to_sending = OrderTransition::new(id.clone(), OrderState::Pending, OrderState::Sending, 2_100);
        to_sending.sent_at_ms = Some(2_100);
        assert!(store.transition_order(&to_sending).unwrap());
        // A second writer who also saw `pending` loses.
        let not_placed = OrderTransition::new(id.clone(), OrderState::Pending, OrderState::NotPlaced, 2_200);
        assert!(!store.transition_order(&not_placed).unwrap());
        // Illegal transitions are refused outright.
        let illegal = OrderTransition::new(id.clone(), OrderState::Sending, OrderState::Pending, 2_300);
        assert!(matches!(store.transition_order(&illegal), Err(StoreError::Conflict(_))));
        let stored = store.order(&id).unwrap().unwrap();
        assert_eq!((stored.state, stored.sent_at_ms, stored.send_attempts), (OrderState::Sending, Some(2_100), 1));
    }

    #[test]
    fn what_the_monitor_reads() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        store.commit_intent(&intent(2)).unwrap();
        let id = intent(2).client_order_id;
        let mut open = OrderTransition::new(id.clone(), OrderState::Pending, OrderState::Sending, 2_100);
        open.sent_at_ms = Some(2_100);
        store.transition_order(&open).unwrap();
        store.transition_order(&OrderTransition::new(id, OrderState::Sending, OrderState::Open, 2_200)).unwrap();
        assert_eq!(store.unresolved_order_counts().unwrap(), [(user(), 1, 2_000)], "open orders are live, not unknown");

        let position = PositionRecord {
            user: user(),
            symbol: symbol(),
            quantity: Decimal::new(-25, 1),
            entry_price: Decimal::from(1),
            position_start_time_ms: Some(3_000),
            active_order_id: None,
            verified_at_ms: 3_000,
        };
        store.save_position(&position).unwrap();
        assert_eq!(store.open_position_counts().unwrap(), [(user(), 1)]);
        store.save_position(&PositionRecord { quantity: Decimal::ZERO, ..position }).unwrap();
        assert_eq!(store.open_position_counts().unwrap(), [(user(), 0)]);

        let decision = |at_ms, reason: &str| DecisionRecord {
            user: user(),
            symbol: symbol(),
            timeframe: "5m".into(),
            strategy: "ema_crossover".into(),
            candle_close_ms: None,
            decided_at_ms: at_ms,
            outcome: "skipped".into(),
            reason: reason.into(),
            signal: None,
            score: None,
            client_order_id: None,
            counts_as_decision: false,
            cause: reason.starts_with("strategy error").then_some(DecisionCause::StrategyError),
        };
        store.record_decision(&decision(4_000, "strategy error: not enough candles")).unwrap();
        store.record_decision(&decision(5_000, "strategy error: not enough candles")).unwrap();
        store.record_decision(&decision(5_000, "candles unavailable: stale")).unwrap();
        // Counted by the typed cause, not the text: a reason that merely reads alike is not one.
        store
            .record_decision(&DecisionRecord { cause: None, ..decision(6_000, "strategy error: in words only") })
            .unwrap();
        assert_eq!(store.strategy_error_counts(4_500).unwrap(), BTreeMap::from([(user(), 1)]));
        let reread = store.recent_decisions(&user(), 10).unwrap();
        assert_eq!(reread.iter().filter(|d| d.cause == Some(DecisionCause::StrategyError)).count(), 2);

        assert!(store.quick_check().unwrap());
        assert_eq!(store.latest_monitor_snapshot().unwrap(), None);
        store.record_monitor_snapshot(6_000, "ok", "{}").unwrap();
        store.record_monitor_snapshot(7_000, "warn", "{\"checks\":[]}").unwrap();
        assert_eq!(store.latest_monitor_snapshot().unwrap(), Some((7_000, "warn".into(), "{\"checks\":[]}".into())));
    }

    #[test]
    fn a_resend_is_compare_and_set_on_the_send_count_too() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        let id = intent(1).client_order_id;
        let mut first = OrderTransition::new(id.clone(), OrderState::Pending, OrderState::Sending, 2_100);
        first.expected_send_attempts = Some(0);
        assert!(store.transition_order(&first).unwrap());
        // Two writers both read `sending` after one send: a retry and a takeover after the window.
        let resend = |at_ms| {
            let mut resend = OrderTransition::new(id.clone(), OrderState::Sending, OrderState::Sending, at_ms);
            resend.expected_send_attempts = Some(1);
            resend
        };
        assert!(store.transition_order(&resend(9_000)).unwrap(), "the first one sends again");
        assert!(!store.transition_order(&resend(9_001)).unwrap(), "the second one must not send");
        // Nor may the stale writer record an outcome for the attempt it no longer owns.
        let mut stale_outcome = OrderTransition::new(id.clone(), OrderState::Sending, OrderState::Unknown, 9_500);
        stale_outcome.expected_send_attempts = Some(1);
        assert!(!store.transition_order(&stale_outcome).unwrap());
        let stored = store.order(&id).unwrap().unwrap();
        assert_eq!((stored.state, stored.send_attempts), (OrderState::Sending, 2));
    }

    #[test]
    fn fills_commit_with_the_transition_and_only_once() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        let id = intent(1).client_order_id;
        store
            .transition_order(&OrderTransition::new(id.clone(), OrderState::Pending, OrderState::Sending, 2_100))
            .unwrap();
        let mut open = OrderTransition::new(id.clone(), OrderState::Sending, OrderState::Open, 2_200);
        open.exchange_order_id = Some("7".into());
        store.transition_order(&open).unwrap();
        let mut filled = OrderTransition::new(id.clone(), OrderState::Open, OrderState::Filled, 3_100);
        filled.fills = vec![fill("1")];
        filled.filled_quantity = Some(Decimal::from(100));
        assert!(store.transition_order(&filled).unwrap());
        assert_eq!(store.fill_count(&user()).unwrap(), 1);
        // Replaying the same fills (e.g. after a crash) changes nothing.
        assert_eq!(store.record_fills(&user(), &[(fill("1"), Some(id.clone())), (fill("2"), None)], 4_000).unwrap(), 1);
        assert_eq!(store.fill_count(&user()).unwrap(), 2);
        let stored = store.order(&id).unwrap().unwrap();
        assert_eq!((stored.state, stored.exchange_order_id.as_deref()), (OrderState::Filled, Some("7")));
        assert!(store.unresolved_orders(&user(), None).unwrap().is_empty());
    }

    #[test]
    fn trader_state_reloads_positions_sequence_and_unresolved_orders() {
        let mut store = store();
        store.commit_intent(&intent(1)).unwrap();
        store.commit_intent(&intent(2)).unwrap();
        store
            .transition_order(&OrderTransition::new(
                intent(1).client_order_id,
                OrderState::Pending,
                OrderState::NotPlaced,
                2_500,
            ))
            .unwrap();
        let position = PositionRecord {
            user: user(),
            symbol: symbol(),
            quantity: Decimal::from(-50),
            entry_price: Decimal::new(12, 1),
            position_start_time_ms: Some(1_234),
            active_order_id: Some(intent(2).client_order_id),
            verified_at_ms: 5_000,
        };
        store.save_position(&position).unwrap();
        let state = store.load_trader_state(&user()).unwrap();
        assert_eq!(state.last_intent_seq, 2);
        assert_eq!(state.positions, vec![position]);
        assert_eq!(state.unresolved_orders.len(), 1);
        assert_eq!(state.unresolved_orders[0].intent, intent(2));
    }

    #[test]
    fn decisions_count_and_prune() {
        let mut store = store();
        let decision = |outcome: &str, counts| DecisionRecord {
            user: user(),
            symbol: symbol(),
            timeframe: "5m".into(),
            strategy: "ema_crossover".into(),
            candle_close_ms: Some(1),
            decided_at_ms: 2,
            outcome: outcome.into(),
            reason: "because".into(),
            signal: None,
            score: None,
            client_order_id: None,
            counts_as_decision: counts,
            cause: None,
        };
        for _ in 0..3 {
            store.record_decision(&decision("hold", true)).unwrap();
        }
        store.record_decision(&decision("skipped", false)).unwrap();
        let status = store.user_statuses().unwrap();
        assert_eq!(status[0].decision_count, 3);
        assert_eq!(status[0].last_decision.as_deref(), Some("XRPUSDT skipped: because"));
        assert_eq!(store.recent_decisions(&user(), 10).unwrap().len(), 4);
        assert_eq!(store.prune().unwrap(), 0);
    }

    #[test]
    fn risk_records_waiting_in_the_outbox_are_what_a_restart_reads() {
        // A database outage: the trader's newest streak, the probation it set and the position it
        // last knew wait in the outbox. A restart during the outage must reload them, not the
        // older stored ones.
        use crate::trader::memory::{RiskMemory, SlotMemory};
        let mut store = store();
        let memory = |streak: u32| RiskMemory {
            equity_peaks: vec![(1_000, 10_000.0)],
            slots: vec![SlotMemory {
                symbol: symbol(),
                timeframe: "5m".into(),
                strategy: "ema_crossover".into(),
                loss_streak: streak,
                last_trade_pct: Some(-1.0),
            }],
        };
        store.save_risk_memory(&user(), &memory(1), 1_000).unwrap();
        let lock = GuardLock {
            id: 0,
            user: user(),
            failure_point: "SIG-SYMBOL-PROBATION".into(),
            symbol: Some(symbol()),
            reason: "2 losing trades in a row".into(),
            values: serde_json::json!({}),
            set_at_ms: 2_000,
            until_ms: 60_000,
            set_at_venue_ms: 2_000,
            until_venue_ms: 60_000,
        };
        let position = |quantity: i64| PositionRecord {
            user: user(),
            symbol: symbol(),
            quantity: Decimal::from(quantity),
            entry_price: Decimal::from(1),
            position_start_time_ms: None,
            active_order_id: None,
            verified_at_ms: 2_000,
        };
        store.save_position(&position(100)).unwrap();
        let waiting = [
            DurableWrite::RiskMemory { user: user(), memory: memory(2), at_ms: 2_000 },
            DurableWrite::GuardLock(lock.clone()),
            DurableWrite::Position(position(0)),
        ];
        for write in &waiting {
            let change = store.preview_pending(write).unwrap();
            store.hold_pending(change);
        }
        let state = store.load_trader_state(&user()).unwrap();
        assert_eq!(state.risk_memory.unwrap().slots[0].loss_streak, 2);
        assert_eq!(state.positions, vec![position(0)], "the position the trader last knew");
        assert_eq!(store.position(&user(), &symbol()).unwrap(), Some(position(0)));
        assert_eq!(store.uncleared_guard_locks(Some(&user())).unwrap(), vec![lock.clone()]);
        assert!(store.uncleared_guard_locks(Some(&UserId::new("u2").unwrap())).unwrap().is_empty());
        // Once the outbox is replayed the database holds them (here: stored, then cleared).
        store.save_risk_memory(&user(), &memory(2), 2_000).unwrap();
        store.insert_guard_lock(&lock).unwrap();
        store.clear_pending();
        assert_eq!(store.risk_memory(&user()).unwrap().unwrap().slots[0].loss_streak, 2);
        assert_eq!(store.uncleared_guard_locks(None).unwrap().len(), 1);
    }

    #[test]
    fn busy_errors_are_retryable() {
        let busy = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ));
        assert!(busy.is_retryable());
        assert!(!StoreError::Conflict("x".into()).is_retryable());
    }
}
