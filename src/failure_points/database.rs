//! The database's write health as the Monitor, the order router and `/health` see it: the durable
//! outbox's depth, and whether (and why) the database refuses writes. Plain data: the persistence
//! actor publishes it through `actors::OutboxGauge`; the judgement (SYS-DATABASE) reads it.

/// Why the database takes no writes now, as the persistence actor found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRefusalKind {
    /// Another connection holds the write lock (SQLite busy / locked): an operator's `sqlite3`
    /// session, a tool. Writes are not attempted again until a probe gets through.
    ForeignLock,
    /// SQLite refuses the write: read-only, I/O error, disk full, cannot open.
    Refused,
    /// The shared-memory file cannot be written: SQLite is not touched at all, reads included (it
    /// would crash the process on it).
    SharedMemoryUnwritable,
}

impl DatabaseRefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseRefusalKind::ForeignLock => "foreign_lock",
            DatabaseRefusalKind::Refused => "refused",
            DatabaseRefusalKind::SharedMemoryUnwritable => "shared_memory_unwritable",
        }
    }
}

/// The database refusing writes: since when, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseRefusal {
    pub kind: DatabaseRefusalKind,
    pub since_ms: i64,
    pub detail: String,
}

/// The durable outbox and the database's write health now (a copy of `actors::OutboxGauge`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStatus {
    pub depth: usize,
    pub capacity: usize,
    pub replayed_total: u64,
    pub rejected_total: u64,
    pub last_error: Option<String>,
    pub refusal: Option<DatabaseRefusal>,
    pub records_lost_total: u64,
    pub records_unkept: Option<String>,
}

impl OutboxStatus {
    pub fn is_full(&self) -> bool {
        self.capacity > 0 && self.depth >= self.capacity
    }

    /// Records wait for the database, or it refuses writes, or records cannot be kept at all.
    pub fn is_degraded(&self) -> bool {
        self.depth > 0 || self.refusal.is_some() || self.records_unkept.is_some()
    }
}
