//! The durable outbox: where a record goes when the database cannot take it (seed §5, Gap 2).
//!
//! A write that fails because the database is busy, locked, read-only, full or failing I/O is
//! retried a few times; if it still fails, the record is appended to this file — JSON lines, one
//! entry each, fsynced before the writer is answered, separate from the database — and replayed in
//! order once the database takes writes again. While the outbox holds anything, every new durable
//! record is appended behind it (never written around it), so the database sees records in the
//! order they were made.
//!
//! Nothing is lost and nothing is applied twice:
//! - an entry is dropped from the queue only after the database committed it, together with its
//!   id in `outbox_applied`, in one transaction ([`Store::apply_outbox_entry`]); a replay after a
//!   crash skips the entries already applied;
//! - a torn last line (the process died while appending, before the writer was answered) is
//!   discarded; any other unreadable line, and an entry the database refuses for good (a conflict
//!   or a constraint, which no retry fixes), is moved to `<outbox>.rejected` and logged — kept for
//!   the operator, never silently dropped;
//! - the outbox is bounded: at `capacity` entries a new record is refused with
//!   [`StoreError::OutboxFull`], and the traders halt entries (SYS-DATABASE).
//!
//! The file is owned by the persistence actor alone (one writer); SQL stays in [`Store`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::domain::{ClientOrderId, Fill, OrderIntent, UserId};
use crate::failure_points::locks::GuardLock;
use crate::persistence::{
    DecisionRecord, GuardDecisionRecord, OrderTransition, PositionRecord, Store, StoreError, SupervisorEventRecord,
    UserSupervisionRecord,
};

/// A record whose loss would lose something: the facts the exchange reported (order states and
/// fills), what reconciliation did, what the traders decided and the supervisors saw. Writes whose
/// caller needs the database's answer before acting (committing an intent, marking an order
/// `sending`, a guard lock's id) are never queued: they fail, and the caller does not act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DurableWrite {
    /// An intent and its order row (`pending`), before anything is sent. Kept in the outbox only
    /// for an exit (reduce-only): while the database refuses writes no entry is committed, but a
    /// position can still be closed.
    CommitIntent(OrderIntent),
    /// A compare-and-set move of an order with its fills. On replay, a move the database has
    /// overtaken meanwhile (the order is no longer in `from`) still records its fills: fills are
    /// facts, and recording one twice changes nothing.
    OrderTransition(OrderTransition),
    /// Fills imported by reconciliation.
    Fills {
        user: UserId,
        fills: Vec<(Fill, Option<ClientOrderId>)>,
        at_ms: i64,
    },
    Position(PositionRecord),
    /// A user's risk locks' inputs (replaces the stored ones).
    RiskMemory {
        user: UserId,
        memory: crate::trader::memory::RiskMemory,
        at_ms: i64,
    },
    ReconcileAction {
        user: UserId,
        action: String,
        client_order_id: Option<ClientOrderId>,
        detail: String,
        at_ms: i64,
    },
    Decision(DecisionRecord),
    GuardDecision(GuardDecisionRecord),
    /// A kill switch or probation: the row that makes it outlive a restart.
    GuardLock(GuardLock),
    SupervisorEvent(SupervisorEventRecord),
    UserSupervision(UserSupervisionRecord),
}

impl DurableWrite {
    /// For logs.
    pub fn what(&self) -> &'static str {
        match self {
            DurableWrite::CommitIntent(_) => "intent",
            DurableWrite::OrderTransition(_) => "order transition",
            DurableWrite::Fills { .. } => "fills",
            DurableWrite::Position(_) => "position",
            DurableWrite::RiskMemory { .. } => "risk memory",
            DurableWrite::ReconcileAction { .. } => "reconcile action",
            DurableWrite::Decision(_) => "decision",
            DurableWrite::GuardDecision(_) => "guard decision",
            DurableWrite::GuardLock(_) => "guard lock",
            DurableWrite::SupervisorEvent(_) => "supervisor event",
            DurableWrite::UserSupervision(_) => "user supervision state",
        }
    }

    /// Whose order rows this record may change (an intent, a move, fills, a reconciliation
    /// action): `Some(None)` when the user cannot be told, so everyone's may have changed.
    pub fn order_rows_of(&self) -> Option<Option<UserId>> {
        match self {
            DurableWrite::CommitIntent(intent) => Some(Some(intent.user.clone())),
            DurableWrite::OrderTransition(transition) => Some(transition.client_order_id.bulwark_user()),
            DurableWrite::Fills { user, .. } | DurableWrite::ReconcileAction { user, .. } => Some(Some(user.clone())),
            DurableWrite::Position(_)
            | DurableWrite::RiskMemory { .. }
            | DurableWrite::Decision(_)
            | DurableWrite::GuardDecision(_)
            | DurableWrite::GuardLock(_)
            | DurableWrite::SupervisorEvent(_)
            | DurableWrite::UserSupervision(_) => None,
        }
    }

    /// A record whose effect decides whether an order is sent: a committed intent, or a move to
    /// `sending`. Whether it applies must be judged against what the database holds, so it is
    /// never kept blind (while the database cannot even be read).
    pub fn decides_a_send(&self) -> bool {
        match self {
            DurableWrite::CommitIntent(_) => true,
            DurableWrite::OrderTransition(transition) => transition.to == crate::domain::OrderState::Sending,
            _ => false,
        }
    }

    /// The same fact seen again while the database is down (a sync reads the same order every
    /// candle) has the same key and is queued once: an order transition, whose second application
    /// would change nothing anyway. Records without a key are each distinct.
    pub fn dedupe_key(&self) -> Option<String> {
        match self {
            DurableWrite::OrderTransition(t) => {
                let trades: Vec<&str> = t.fills.iter().map(|f| f.trade_id.as_str()).collect();
                Some(format!(
                    "transition {} {}->{} sends={:?} filled={:?} exchange_id={:?} trades={trades:?}",
                    t.client_order_id, t.from, t.to, t.expected_send_attempts, t.filled_quantity, t.exchange_order_id
                ))
            }
            _ => None,
        }
    }

    /// A position snapshot replaces the one before it: one equal to the newest queued snapshot of
    /// the same (user, symbol) is not queued again (an older equal one is: A, B, A must end at A).
    fn position_slot(&self) -> Option<(String, String)> {
        match self {
            DurableWrite::Position(p) => Some((
                format!("{} {}", p.user, p.symbol),
                format!("{} {} {:?} {:?}", p.quantity, p.entry_price, p.position_start_time_ms, p.active_order_id),
            )),
            _ => None,
        }
    }
}

/// What became of a durable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The database took it. `changed` is false when it changed nothing (a compare-and-set whose
    /// order had moved on, fills already recorded).
    Applied { changed: bool },
    /// The database could not take it; it waits in the outbox (fsynced) at this depth. `changed`
    /// is what it does to what the store's reads show (the database and the records queued
    /// before it): false for a compare-and-set whose order is no longer in `from`.
    Queued { depth: usize, changed: bool },
}

/// One line of the outbox file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Unique across restarts: the opening time of the outbox that wrote it (ns) and a counter.
    pub id: String,
    pub queued_at_ms: i64,
    pub write: DurableWrite,
}

impl Store {
    /// Applies a durable write directly (no outbox bookkeeping).
    pub fn apply_durable(&mut self, write: &DurableWrite) -> Result<bool, StoreError> {
        match write {
            DurableWrite::CommitIntent(intent) => self.commit_intent(intent).map(|()| true),
            DurableWrite::OrderTransition(transition) => {
                let moved = self.transition_order(transition)?;
                Ok(moved)
            }
            DurableWrite::Fills { user, fills, at_ms } => Ok(self.record_fills(user, fills, *at_ms)? > 0),
            DurableWrite::Position(record) => self.save_position(record).map(|()| true),
            DurableWrite::RiskMemory { user, memory, at_ms } => {
                self.save_risk_memory(user, memory, *at_ms).map(|()| true)
            }
            DurableWrite::ReconcileAction { user, action, client_order_id, detail, at_ms } => {
                self.record_reconcile_action(user, action, client_order_id.as_ref(), detail, *at_ms).map(|()| true)
            }
            DurableWrite::Decision(record) => self.record_decision(record).map(|()| true),
            DurableWrite::GuardDecision(record) => self.record_guard_decision(record).map(|()| true),
            DurableWrite::GuardLock(lock) => self.insert_guard_lock(lock).map(|_| true),
            DurableWrite::SupervisorEvent(record) => self.record_supervisor_event(record).map(|()| true),
            DurableWrite::UserSupervision(record) => self.set_user_supervision(record).map(|()| true),
        }
    }

    /// Applies one outbox entry exactly once: skipped if its id is already in `outbox_applied`,
    /// else applied and its id recorded in the same transaction. A transition the database has
    /// overtaken still records its fills. Returns whether anything changed.
    pub fn apply_outbox_entry(&mut self, entry: &OutboxEntry, now_ms: i64) -> Result<bool, StoreError> {
        self.connection.execute_batch("SAVEPOINT outbox_entry")?;
        let result = self.apply_outbox_entry_inside(entry, now_ms).and_then(|changed| {
            self.connection.execute_batch("RELEASE outbox_entry").map(|()| changed).map_err(Into::into)
        });
        if result.is_err() {
            // Undo whatever part was written, the commit included if that is what failed; the
            // entry stays queued (or is rejected). The connection must not stay inside a
            // transaction: every later write would nest in it and never become durable.
            let _ = self.connection.execute_batch("ROLLBACK TO outbox_entry; RELEASE outbox_entry");
            if !self.connection.is_autocommit() {
                let _ = self.connection.execute_batch("ROLLBACK");
            }
        }
        result
    }

    fn apply_outbox_entry_inside(&mut self, entry: &OutboxEntry, now_ms: i64) -> Result<bool, StoreError> {
        let applied: Option<i64> = self
            .connection
            .query_row("SELECT 1 FROM outbox_applied WHERE entry_id = ?1", params![entry.id], |row| row.get(0))
            .optional()?;
        if applied.is_some() {
            return Ok(false);
        }
        let mut changed = self.apply_durable(&entry.write)?;
        if let DurableWrite::OrderTransition(transition) = &entry.write
            && !changed
            && !transition.fills.is_empty()
        {
            let user: Option<String> = self
                .connection
                .query_row(
                    "SELECT user_id FROM orders WHERE client_order_id = ?1",
                    params![transition.client_order_id.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(user) = user {
                let user = UserId::new(&user)
                    .map_err(|e| StoreError::Corrupt { table: "orders".into(), detail: e.to_string() })?;
                let fills: Vec<(Fill, Option<ClientOrderId>)> =
                    transition.fills.iter().map(|f| (f.clone(), Some(transition.client_order_id.clone()))).collect();
                changed = self.record_fills(&user, &fills, transition.at_ms)? > 0;
            }
        }
        self.connection.execute(
            "INSERT INTO outbox_applied (entry_id, applied_at_ms) VALUES (?1, ?2)",
            params![entry.id, now_ms],
        )?;
        Ok(changed)
    }

    /// Forgets replayed entry ids older than `before_ms` (an outbox is replayed within minutes of
    /// the database coming back; a day of ids is far more than a replay after a crash needs).
    pub fn prune_outbox_applied(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.connection.execute("DELETE FROM outbox_applied WHERE applied_at_ms < ?1", params![before_ms])?)
    }

    /// Fault injection (`[chaos] database_fault_file`): while set, the connection refuses every
    /// write with SQLite's own read-only error, as a read-only or failing disk would.
    pub fn set_refuse_writes(&mut self, refuse: bool) -> Result<(), StoreError> {
        self.connection.pragma_update(None, "query_only", refuse)?;
        Ok(())
    }
}

/// The outbox file and its queue.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    rejected_path: PathBuf,
    capacity: usize,
    /// Entries not yet applied, oldest first (mirrors the file's unapplied tail).
    queue: VecDeque<OutboxEntry>,
    /// Dedupe keys of the queued entries.
    keys: HashSet<String>,
    /// Per (user, symbol): the newest queued position snapshot's content, and how many
    /// snapshots of that slot are queued.
    newest_positions: HashMap<String, (String, usize)>,
    /// Entries popped since the file was last rewritten: the file is compacted once they
    /// outnumber the ones still queued (amortised), so it never grows far past its queue.
    popped_since_rewrite: usize,
    /// Distinguishes this opening's entry ids from every other's.
    opened_ns: u128,
    next_seq: u64,
    /// Open for appending while the queue is not empty.
    file: Option<File>,
}

/// What opening an outbox found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutboxOpened {
    pub queued: usize,
    /// Unreadable lines moved to the rejected file.
    pub rejected: usize,
    /// A torn last line was discarded.
    pub torn_tail: bool,
}

impl Outbox {
    /// Opens (or creates on first use) the outbox at `path`, loading the entries a previous run
    /// left. The rejected file is `path` with `.rejected` appended.
    pub fn open(path: &Path, capacity: usize) -> Result<(Self, OutboxOpened), StoreError> {
        let mut rejected_path = path.as_os_str().to_owned();
        rejected_path.push(".rejected");
        let opened_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut outbox = Self {
            path: path.to_path_buf(),
            rejected_path: PathBuf::from(rejected_path),
            capacity,
            queue: VecDeque::new(),
            keys: HashSet::new(),
            newest_positions: HashMap::new(),
            popped_since_rewrite: 0,
            opened_ns,
            next_seq: 0,
            file: None,
        };
        let mut opened = OutboxOpened::default();
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((outbox, opened)),
            Err(error) => return Err(io_error(format!("reading the outbox {}", path.display()), error)),
        };
        let complete = text.ends_with(b"\n");
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        for (index, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<OutboxEntry>(line) {
                Ok(entry) => outbox.remember(entry),
                Err(_) if index + 1 == lines.len() && !complete => opened.torn_tail = true,
                Err(error) => {
                    tracing::error!(path = %path.display(), line = index + 1, %error, "outbox: unreadable entry moved to the rejected file");
                    outbox.reject_line(line)?;
                    opened.rejected += 1;
                }
            }
        }
        opened.queued = outbox.queue.len();
        // Rewrite without the torn or unreadable lines (and with a final newline), so appends
        // start on a clean line.
        if !complete || opened.rejected > 0 {
            outbox.rewrite()?;
        }
        Ok((outbox, opened))
    }

    /// Queues an entry (read back or just appended) and its dedupe keys.
    fn remember(&mut self, entry: OutboxEntry) {
        if let Some(key) = entry.write.dedupe_key() {
            self.keys.insert(key);
        }
        if let Some((slot, content)) = entry.write.position_slot() {
            let newest = self.newest_positions.entry(slot).or_insert_with(|| (String::new(), 0));
            *newest = (content, newest.1 + 1);
        }
        self.queue.push_back(entry);
    }

    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn front(&self) -> Option<&OutboxEntry> {
        self.queue.front()
    }

    /// Every queued entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.queue.iter()
    }

    /// Appends a record and fsyncs it; returns the depth after. A record whose dedupe key is
    /// already queued is not appended again. At capacity the record is refused.
    pub fn append(&mut self, write: DurableWrite, now_ms: i64) -> Result<usize, StoreError> {
        if write.dedupe_key().is_some_and(|key| self.keys.contains(&key)) {
            return Ok(self.queue.len());
        }
        if let Some((slot, content)) = write.position_slot()
            && self.newest_positions.get(&slot).is_some_and(|(newest, _)| *newest == content)
        {
            return Ok(self.queue.len());
        }
        if self.queue.len() >= self.capacity {
            return Err(StoreError::OutboxFull { depth: self.queue.len() });
        }
        let entry = OutboxEntry { id: format!("{:x}-{}", self.opened_ns, self.next_seq), queued_at_ms: now_ms, write };
        let mut line = serde_json::to_vec(&entry)
            .map_err(|e| StoreError::Io(format!("outbox: cannot encode a {} record: {e}", entry.write.what())))?;
        line.push(b'\n');
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| io_error(format!("opening the outbox {}", self.path.display()), e))?,
            ),
        };
        let length_before = file.metadata().map(|m| m.len());
        if let Err(error) = file.write_all(&line).and_then(|()| file.sync_data()) {
            // A partial line may be on disk: cut it off, so the next record starts on a clean
            // line (if even that fails, the next opening finds the file without a final newline
            // and rewrites it; this handle is reopened on the next append).
            if let Ok(length) = length_before {
                let _ = file.set_len(length).and_then(|()| file.sync_data());
            }
            self.file = None;
            return Err(io_error(format!("appending to the outbox {}", self.path.display()), error));
        }
        self.next_seq += 1;
        self.remember(entry);
        Ok(self.queue.len())
    }

    /// Removes the oldest entry once the database has it. When the queue is empty the file is
    /// truncated (a crash before that replays entries the database skips as already applied).
    pub fn pop_applied(&mut self) -> Result<(), StoreError> {
        if let Some(entry) = self.queue.pop_front() {
            if let Some(key) = entry.write.dedupe_key() {
                self.keys.remove(&key);
            }
            if let Some((slot, _)) = entry.write.position_slot()
                && let Some(newest) = self.newest_positions.get_mut(&slot)
            {
                newest.1 -= 1;
                if newest.1 == 0 {
                    self.newest_positions.remove(&slot);
                }
            }
            self.popped_since_rewrite += 1;
        }
        if self.queue.is_empty() {
            self.popped_since_rewrite = 0;
            self.truncate()?;
        } else if self.popped_since_rewrite > self.queue.len() {
            // Applied entries outnumber the rest: drop them from the file (its replay after a
            // crash would skip them, but the file would grow past the capacity meanwhile).
            self.popped_since_rewrite = 0;
            self.rewrite()?;
        }
        Ok(())
    }

    /// Moves the oldest entry to the rejected file (the database refuses it for good).
    pub fn reject_front(&mut self) -> Result<(), StoreError> {
        if let Some(entry) = self.queue.front() {
            let line = serde_json::to_vec(entry).map_err(|e| StoreError::Io(format!("outbox: {e}")))?;
            self.reject_line(&line)?;
        }
        self.pop_applied()
    }

    fn reject_line(&self, line: &[u8]) -> Result<(), StoreError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.rejected_path)
            .map_err(|e| io_error(format!("opening {}", self.rejected_path.display()), e))?;
        file.write_all(line)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error(format!("writing {}", self.rejected_path.display()), e))
    }

    fn truncate(&mut self) -> Result<(), StoreError> {
        self.file = None;
        match OpenOptions::new().write(true).truncate(true).open(&self.path) {
            Ok(file) => file.sync_all().map_err(|e| io_error(format!("truncating {}", self.path.display()), e)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(format!("truncating {}", self.path.display()), error)),
        }
    }

    /// Replaces the file with the queued entries (written beside it, fsynced, renamed over it).
    fn rewrite(&mut self) -> Result<(), StoreError> {
        self.file = None;
        let mut temporary = self.path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temporary)?;
            for entry in &self.queue {
                let mut line = serde_json::to_vec(entry)?;
                line.push(b'\n');
                file.write_all(&line)?;
            }
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            if let Some(parent) = self.path.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| io_error(format!("rewriting {}", self.path.display()), e))
    }
}

/// Lines of an outbox file that hold an entry (for status commands reading it from outside).
/// The records queued in the outbox at `path`, oldest first, read without touching the file (for a
/// reader beside the server: the simulation's checks during a database outage). A torn or
/// unreadable line is skipped, as the server's own opening would set it aside.
pub fn queued_writes(path: &Path) -> std::io::Result<Vec<DurableWrite>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<OutboxEntry>(line).ok())
        .map(|entry| entry.write)
        .collect())
}

pub fn count_entries(path: &Path) -> std::io::Result<usize> {
    match File::open(path) {
        Ok(file) => Ok(BufReader::new(file).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).count()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

fn io_error(doing: String, error: std::io::Error) -> StoreError {
    StoreError::Io(format!("{doing}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderState, Side, Symbol};
    use crate::persistence::{DecisionRecord, PositionRecord};
    use rust_decimal::Decimal;

    fn decision(n: i64) -> DurableWrite {
        DurableWrite::Decision(DecisionRecord {
            user: UserId::new("u1").unwrap(),
            symbol: Symbol::new("BTCUSDT").unwrap(),
            timeframe: "5m".into(),
            strategy: "s".into(),
            candle_close_ms: Some(n),
            decided_at_ms: n,
            outcome: "hold".into(),
            reason: format!("r{n}"),
            signal: None,
            score: Some(0.5),
            client_order_id: None,
            counts_as_decision: true,
            cause: None,
        })
    }

    fn fill(trade_id: &str) -> Fill {
        Fill {
            trade_id: trade_id.into(),
            exchange_order_id: "9".into(),
            symbol: Symbol::new("BTCUSDT").unwrap(),
            side: Side::Buy,
            price: Decimal::new(100, 0),
            quantity: Decimal::new(1, 0),
            fee: Decimal::ZERO,
            fee_asset: "USDT".into(),
            realized_pnl: Decimal::ZERO,
            time_ms: 1,
        }
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let (mut outbox, opened) = Outbox::open(&path, 10).unwrap();
        assert_eq!(opened, OutboxOpened::default());
        assert_eq!(outbox.append(decision(1), 5).unwrap(), 1);
        assert_eq!(outbox.append(decision(2), 6).unwrap(), 2);
        drop(outbox);
        // A crash while appending a third entry leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"id\":\"x\",\"queued_at").unwrap();
        drop(file);
        let (mut outbox, opened) = Outbox::open(&path, 10).unwrap();
        assert_eq!(opened, OutboxOpened { queued: 2, rejected: 0, torn_tail: true });
        assert_eq!(outbox.front().unwrap().write, decision(1));
        // Appends continue on a clean line.
        outbox.append(decision(3), 7).unwrap();
        drop(outbox);
        let (outbox, opened) = Outbox::open(&path, 10).unwrap();
        assert_eq!(opened.queued, 3);
        assert!(!opened.torn_tail);
        let ids: HashSet<&str> = outbox.queue.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 3, "ids are unique across openings");
    }

    #[test]
    fn a_corrupt_line_in_the_middle_is_kept_in_the_rejected_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let (mut outbox, _) = Outbox::open(&path, 10).unwrap();
        outbox.append(decision(1), 5).unwrap();
        drop(outbox);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"not json\n").unwrap();
        drop(file);
        let (mut outbox, _) = Outbox::open(&path, 10).unwrap();
        outbox.append(decision(2), 6).unwrap();
        drop(outbox);
        let (outbox, opened) = Outbox::open(&path, 10).unwrap();
        assert_eq!(opened.queued, 2);
        assert_eq!(outbox.depth(), 2);
        let rejected = std::fs::read_to_string(dir.path().join("outbox.jsonl.rejected")).unwrap();
        assert_eq!(rejected, "not json\n");
    }

    #[test]
    fn the_outbox_is_bounded_and_the_same_fact_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.jsonl"), 2).unwrap();
        let mut transition =
            OrderTransition::new(ClientOrderId::parse("bw-u1-1").unwrap(), OrderState::Open, OrderState::Filled, 10);
        transition.fills = vec![fill("1")];
        outbox.append(DurableWrite::OrderTransition(transition.clone()), 1).unwrap();
        // Seen again on the next sync, at a later time: the same fact.
        transition.at_ms = 20;
        assert_eq!(outbox.append(DurableWrite::OrderTransition(transition), 2).unwrap(), 1);
        outbox.append(decision(1), 3).unwrap();
        assert!(matches!(outbox.append(decision(2), 4), Err(StoreError::OutboxFull { depth: 2 })));
        outbox.pop_applied().unwrap();
        outbox.pop_applied().unwrap();
        assert!(outbox.is_empty());
        assert_eq!(count_entries(outbox.path()).unwrap(), 0, "an empty outbox is an empty file");
    }

    #[test]
    fn a_position_equal_to_the_newest_queued_one_is_not_queued_but_a_return_to_an_older_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.jsonl"), 10).unwrap();
        let position = |quantity: i64, verified_at_ms: i64| {
            DurableWrite::Position(PositionRecord {
                user: UserId::new("u1").unwrap(),
                symbol: Symbol::new("BTCUSDT").unwrap(),
                quantity: Decimal::from(quantity),
                entry_price: Decimal::ONE,
                position_start_time_ms: None,
                active_order_id: None,
                verified_at_ms,
            })
        };
        assert_eq!(outbox.append(position(1, 1), 1).unwrap(), 1);
        assert_eq!(outbox.append(position(1, 2), 2).unwrap(), 1, "the same position seen again");
        assert_eq!(outbox.append(position(2, 3), 3).unwrap(), 2);
        assert_eq!(outbox.append(position(1, 4), 4).unwrap(), 3, "back to 1: the newest must win");
        outbox.pop_applied().unwrap();
        outbox.pop_applied().unwrap();
        assert_eq!(outbox.append(position(1, 5), 5).unwrap(), 1, "still the newest queued");
        outbox.pop_applied().unwrap();
        assert_eq!(outbox.append(position(1, 6), 6).unwrap(), 1, "nothing queued: queued again");
    }

    #[test]
    fn a_replayed_entry_applies_once_even_when_replayed_again_after_a_crash() {
        let mut store = Store::open_in_memory().unwrap();
        let entry = OutboxEntry { id: "a-1".into(), queued_at_ms: 1, write: decision(1) };
        assert!(store.apply_outbox_entry(&entry, 2).unwrap());
        assert!(!store.apply_outbox_entry(&entry, 3).unwrap(), "already applied");
        let decisions = store.recent_decisions(&UserId::new("u1").unwrap(), 10).unwrap();
        assert_eq!(decisions.len(), 1);
    }

    #[test]
    fn writes_refused_by_a_read_only_database_are_classified_as_unavailable() {
        let mut store = Store::open_in_memory().unwrap();
        store.set_refuse_writes(true).unwrap();
        let error = store.apply_durable(&decision(1)).unwrap_err();
        assert!(error.is_write_unavailable(), "{error}");
        store.set_refuse_writes(false).unwrap();
        store.apply_durable(&decision(1)).unwrap();
    }
}
