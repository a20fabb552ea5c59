//! The persistence actor: the one owner of the bot's database connection, on its own arbiter
//! thread, so a slow disk blocks nobody else. Callers send it [`Run`] closures over
//! [`Store`] (whose methods hold all the SQL) with `send().await`; its mailbox is bounded, so a
//! burst of writes applies back-pressure instead of growing a queue.
//!
//! Durable records ([`DurableWrite`]: order states and fills, reconciliation actions, decisions,
//! supervision events) go through [`write`] / [`submit_durable`]. When the database refuses one
//! (busy, locked, read-only, I/O, disk full) it is retried once, then kept in the durable outbox
//! (`persistence::outbox`, fsynced) and replayed in order, with backoff, once the database takes
//! writes again. While the outbox holds anything, new durable records queue behind it.
//!
//! Group commit: the records nobody waits on ([`submit_durable`]: decisions, guard decisions,
//! position snapshots, supervision records) are applied inside one open transaction, committed
//! after [`BATCH_RECORDS_MAX`] records or [`BATCH_LINGER`], and before any other request is
//! answered when that request wrote (an answered write, or a [`Run`] that changed rows) — so a
//! caller that waits is answered only once what it wrote is committed, and everything before it
//! too. What a kill -9 can take is at most the open batch of unanswered records (the next start
//! re-syncs positions from the exchange; decisions and journal mirrors are history). A batch the
//! database refuses is rolled back and its records applied one by one (to the outbox if need be).
//!
//! Owns failure points SYS-DATABASE and (with the filesystem checks) SYS-FILESYSTEM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::{DatabaseRefusal, DatabaseRefusalKind, Directory, OutboxGauge};
use crate::clock::{Clock, SystemClock};
use crate::limits::{
    OUTBOX_RECORDS_MAX_DEFAULT, OUTBOX_REPLAY_BACKOFF_MS_INITIAL, OUTBOX_REPLAY_BACKOFF_MS_MAX, OUTBOX_REPLAY_BATCH_MAX,
};
use crate::persistence::outbox::{Durability, DurableWrite, Outbox};
use crate::persistence::{Store, StoreError};

/// How often bounded tables are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the fault hook's file is looked for (only when one is configured).
const FAULT_HOOK_INTERVAL: Duration = Duration::from_millis(100);

/// The shared-memory file's writability is asked of the kernel at most this often (once per
/// request otherwise: a system call each).
const SHARED_MEMORY_CHECK_SPACING: Duration = Duration::from_millis(2);

/// While the database refuses writes, it is looked at this often even when no request comes (the
/// shared-memory file, the fault hook, a replay when its backoff allows).
const REFUSAL_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A replay probe waits at most this long for another connection's write lock (while one holds,
/// ordinary writes do not wait at all: see [`PersistenceActor::note_refusal`]).
const REPLAY_BUSY_TIMEOUT: Duration = Duration::from_millis(20);

/// Replayed entry ids are kept this long (a replay after a crash needs far less).
const OUTBOX_APPLIED_KEEP_MS: i64 = 24 * 3_600_000;

/// A group commit closes after this many records...
pub const BATCH_RECORDS_MAX: usize = 512;
/// ...or this long after it opened, whichever comes first.
pub const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Where the persistence actor keeps things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceSettings {
    pub database_path: PathBuf,
    pub outbox_path: PathBuf,
    pub outbox_capacity: usize,
    /// `[chaos] database_fault_file`: while it exists, the database refuses every write.
    pub database_fault_file: Option<PathBuf>,
}

impl PersistenceSettings {
    /// The database at `database_path`, its outbox beside it (`.outbox`), the default capacity.
    pub fn new(database_path: PathBuf) -> Self {
        Self {
            outbox_path: database_path.with_extension("outbox"),
            database_path,
            outbox_capacity: OUTBOX_RECORDS_MAX_DEFAULT,
            database_fault_file: None,
        }
    }
}

pub struct PersistenceActor {
    /// Written once at construction; read when the actor (re)starts.
    settings: PersistenceSettings,
    /// Opened in `started`, or later once SQLite may be touched; `None` until then.
    store: Option<Store>,
    /// Opened in `started` (loading what a previous run left); the only writer of its file.
    outbox: Option<Outbox>,
    /// Shared with the directory (the router, the Monitor and the HTTP API read it); written here
    /// only.
    gauge: Arc<OutboxGauge>,
    /// The wait before the next replay attempt (doubles while the database refuses writes).
    replay_backoff_ms: u64,
    /// A replay attempt is scheduled (at most one at a time).
    replay_scheduled: bool,
    /// The fault hook currently makes the database refuse writes.
    refusing_writes: bool,
    /// No replay is attempted before this wall time (ms) while the database keeps refusing: a
    /// failing database is probed with backoff, never once per request.
    replay_not_before_ms: i64,
    /// The unanswered records applied in the open group-commit transaction (copies, to apply one
    /// by one if the commit fails); `None` while no batch is open. Written and read here only.
    batch: Option<Vec<DurableWrite>>,
    /// When the shared-memory file was last asked about.
    shared_memory_checked_at: Option<std::time::Instant>,
    /// Why SQLite must not be touched now (the shared-memory file cannot be written); `None`: it
    /// may be.
    shared_memory_refusal: Option<String>,
    /// A transaction was left open when SQLite became untouchable: rolled back first thing once it
    /// may be touched again (its records went to the outbox).
    rollback_pending: bool,
    /// The store's view of orders waiting in the outbox (`Store::hold_pending`) misses records
    /// (kept while SQLite could not be read, or left by an earlier run): rebuilt from the outbox
    /// before the store answers anything.
    pending_stale: bool,
}

impl std::fmt::Debug for PersistenceActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistenceActor")
            .field("settings", &self.settings)
            .field("outbox_depth", &self.outbox.as_ref().map(Outbox::depth))
            .finish()
    }
}

impl PersistenceActor {
    pub fn new(settings: PersistenceSettings, gauge: Arc<OutboxGauge>) -> Self {
        Self {
            settings,
            store: None,
            outbox: None,
            gauge,
            replay_backoff_ms: OUTBOX_REPLAY_BACKOFF_MS_INITIAL,
            replay_scheduled: false,
            refusing_writes: false,
            replay_not_before_ms: 0,
            batch: None,
            shared_memory_checked_at: None,
            shared_memory_refusal: None,
            rollback_pending: false,
            pending_stale: true,
        }
    }

    /// Whether SQLite may be touched now, and the database open. Asks the kernel whether the
    /// shared-memory file can be written (at most every [`SHARED_MEMORY_CHECK_SPACING`]): while it
    /// cannot, nothing goes near SQLite (a write through its mapping would be SIGBUS), an open
    /// group commit's records move to the outbox, and durable records wait there.
    fn sqlite_usable(&mut self) -> bool {
        let now = std::time::Instant::now();
        let due = self.shared_memory_checked_at.is_none_or(|at| now.duration_since(at) >= SHARED_MEMORY_CHECK_SPACING);
        if due {
            self.shared_memory_checked_at = Some(now);
            match crate::persistence::shared_memory_writable(&self.settings.database_path) {
                Ok(()) if self.shared_memory_refusal.is_some() => self.shared_memory_recovered(),
                Ok(()) => {}
                Err(why) if self.shared_memory_refusal.is_none() => self.shared_memory_lost(why),
                Err(_) => {}
            }
        }
        if self.shared_memory_refusal.is_some() {
            return false;
        }
        if self.store.is_none() {
            match Store::open(&self.settings.database_path) {
                Ok(store) => self.store = Some(store),
                // A restart with backoff, and the escalation's exit 70 if it persists.
                Err(error) => panic!("persistence: {error}"),
            }
        }
        if self.pending_stale {
            self.rebuild_pending();
        }
        true
    }

    /// Rebuilds the store's view of the orders waiting in the outbox from the outbox itself (what
    /// an earlier run left, or what was kept while SQLite could not be read).
    fn rebuild_pending(&mut self) {
        let (Some(store), Some(outbox)) = (self.store.as_mut(), self.outbox.as_ref()) else { return };
        let skipped = store.lay_outbox_over(outbox.entries().map(|entry| &entry.write));
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "persistence: outbox records that do not apply to what the database holds wait for their replay"
            );
        }
        self.pending_stale = false;
    }

    fn shared_memory_lost(&mut self, why: String) {
        tracing::error!(failure_point = "SYS-DATABASE", reason = %why,
            "persistence: the database is not touched until its shared-memory file can be written again; durable records wait in the outbox");
        self.gauge.set_refusal(Some(DatabaseRefusal {
            kind: DatabaseRefusalKind::SharedMemoryUnwritable,
            since_ms: SystemClock.now_ms(),
            detail: why.clone(),
        }));
        self.gauge.set_last_error(why.clone());
        self.shared_memory_refusal = Some(why);
        // The open group commit cannot be committed (nor rolled back) now: its records go to the
        // outbox, and the transaction is rolled back once SQLite may be touched again.
        if let Some(writes) = self.batch.take() {
            self.rollback_pending = true;
            for write in writes {
                let _ = self.keep_in_outbox(write, true);
            }
        }
    }

    fn shared_memory_recovered(&mut self) {
        tracing::warn!("persistence: the database's shared-memory file can be written again; the outbox is replayed");
        self.shared_memory_refusal = None;
        if std::mem::take(&mut self.rollback_pending)
            && let Some(store) = self.store.as_mut()
        {
            store.rollback_batch();
        }
        if self.gauge.refusal().is_some_and(|r| r.kind == DatabaseRefusalKind::SharedMemoryUnwritable) {
            self.gauge.set_refusal(None);
        }
        self.replay_not_before_ms = 0;
        self.replay_backoff_ms = OUTBOX_REPLAY_BACKOFF_MS_INITIAL;
    }

    /// The database refused a write: says so (SYS-DATABASE, `/health`) and, when another
    /// connection holds the write lock, stops waiting for it on every write (writes fail at once
    /// and wait in the outbox; replay probes wait [`REPLAY_BUSY_TIMEOUT`]).
    fn note_refusal(&mut self, error: &StoreError) {
        let kind = if error.is_busy() { DatabaseRefusalKind::ForeignLock } else { DatabaseRefusalKind::Refused };
        if self.gauge.refusal().is_none_or(|held| held.kind != kind) {
            tracing::error!(failure_point = "SYS-DATABASE", %error, kind = kind.as_str(),
                "persistence: the database refuses writes; durable records wait in the outbox until it takes them again");
        }
        self.gauge.set_refusal(Some(DatabaseRefusal {
            kind,
            since_ms: SystemClock.now_ms(),
            detail: error.to_string(),
        }));
        self.gauge.set_last_error(error.to_string());
        self.restore_busy_timeout();
    }

    /// A write went through: the database takes writes again.
    fn note_writable(&mut self) {
        self.gauge.set_records_unkept(None);
        let Some(refusal) = self.gauge.refusal() else { return };
        if refusal.kind == DatabaseRefusalKind::SharedMemoryUnwritable {
            return;
        }
        tracing::warn!(kind = refusal.kind.as_str(), "persistence: the database takes writes again");
        self.gauge.set_refusal(None);
        self.restore_busy_timeout();
    }

    /// The busy timeout for ordinary writes: none while another connection holds the write lock
    /// (a write fails at once and waits in the outbox), [`crate::persistence::BUSY_TIMEOUT_MS`]
    /// otherwise.
    fn restore_busy_timeout(&mut self) {
        let foreign_lock = self.gauge.refusal().is_some_and(|r| r.kind == DatabaseRefusalKind::ForeignLock);
        let timeout =
            if foreign_lock { Duration::ZERO } else { Duration::from_millis(crate::persistence::BUSY_TIMEOUT_MS) };
        if let Some(store) = self.store.as_mut()
            && let Err(error) = store.set_busy_timeout(timeout)
        {
            tracing::warn!(%error, "persistence: the busy timeout could not be set");
        }
    }

    /// Follows the fault hook's file: present means the database refuses writes.
    fn follow_fault_hook(&mut self, ctx: &mut Context<Self>) {
        let Some(refuse) = self.settings.database_fault_file.as_deref().map(std::path::Path::exists) else { return };
        if refuse == self.refusing_writes || !self.sqlite_usable() {
            return;
        }
        let _ = self.commit_batch(ctx);
        let Some(path) = self.settings.database_fault_file.clone() else { return };
        if let Some(store) = self.store.as_mut() {
            match store.set_refuse_writes(refuse) {
                Ok(()) => {
                    self.refusing_writes = refuse;
                    if !refuse {
                        // The database takes writes again: the next request replays the outbox at
                        // once rather than waiting out the backoff meant for a database that keeps
                        // refusing (so the end of a fault is a point in the request order, which
                        // the deterministic simulation, tests/simulation.rs, relies on).
                        self.replay_not_before_ms = 0;
                        self.replay_backoff_ms = OUTBOX_REPLAY_BACKOFF_MS_INITIAL;
                    }
                    tracing::warn!(fault_file = %path.display(), refuse, "chaos: the database {} writes", if refuse { "now refuses" } else { "takes" });
                }
                Err(error) => tracing::error!(%error, "chaos: the fault hook could not be applied"),
            }
        }
    }

    fn publish_depth(&self) {
        if let Some(outbox) = &self.outbox {
            self.gauge.set_depth(outbox.depth(), outbox.capacity());
        }
    }

    /// Applies a record nobody waits on inside the open group commit (opening one if need be).
    /// While the outbox holds records or the database refuses writes, it takes the one-by-one
    /// path of [`Self::write`] instead.
    fn write_batched(&mut self, write: DurableWrite, ctx: &mut Context<Self>) -> Result<Durability, StoreError> {
        if !self.sqlite_usable() {
            return self.write(write, ctx);
        }
        self.follow_fault_hook(ctx);
        let batchable = !self.refusing_writes
            && self.gauge.refusal().is_none()
            && self.outbox.as_ref().is_some_and(Outbox::is_empty);
        let Some(store) = self.store.as_mut().filter(|_| batchable) else {
            let _ = self.commit_batch(ctx);
            return self.write(write, ctx);
        };
        if self.batch.is_none() {
            if let Err(error) = store.begin_batch() {
                tracing::warn!(%error, "persistence: a group commit could not begin; the record is written alone");
                return self.write(write, ctx);
            }
            self.batch = Some(Vec::new());
            ctx.run_later(BATCH_LINGER, |actor, ctx| {
                let _ = actor.commit_batch(ctx);
            });
        }
        match store.apply_durable(&write) {
            Ok(changed) => {
                let batch = self.batch.get_or_insert_with(Vec::new);
                batch.push(write);
                if batch.len() >= BATCH_RECORDS_MAX {
                    let _ = self.commit_batch(ctx);
                }
                Ok(Durability::Applied { changed })
            }
            // Refused inside the batch: the batch is undone and every record in it, this one
            // last, takes the one-by-one path (which keeps what the database refuses).
            Err(_) => {
                self.abandon_batch(ctx);
                self.write(write, ctx)
            }
        }
    }

    /// Commits the open group commit, if any. When the commit fails, the batch is rolled back
    /// and its records are applied one by one, and the commit's error is returned (a caller whose
    /// own writes were in the batch must not be told they are in).
    fn commit_batch(&mut self, ctx: &mut Context<Self>) -> Result<(), StoreError> {
        if self.batch.is_none() {
            return Ok(());
        }
        if !self.sqlite_usable() {
            // The batch's records went to the outbox as SQLite became untouchable.
            return Err(StoreError::Unavailable(self.shared_memory_refusal.clone().unwrap_or_default()));
        }
        let Some(writes) = self.batch.take() else { return Ok(()) };
        let Some(store) = self.store.as_mut() else { return Ok(()) };
        match store.commit_batch() {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, records = writes.len(), "persistence: a group commit failed; its records are written one by one");
                store.rollback_batch();
                self.rewrite_one_by_one(writes, ctx);
                Err(error)
            }
        }
    }

    /// Rolls the open group commit back and applies its records one by one.
    fn abandon_batch(&mut self, ctx: &mut Context<Self>) {
        let Some(writes) = self.batch.take() else { return };
        if let Some(store) = self.store.as_mut() {
            store.rollback_batch();
        }
        self.rewrite_one_by_one(writes, ctx);
    }

    fn rewrite_one_by_one(&mut self, writes: Vec<DurableWrite>, ctx: &mut Context<Self>) {
        for write in writes {
            let what = write.what();
            if let Err(error) = self.write(write, ctx) {
                tracing::error!(%error, what, "persistence: record not written");
            }
        }
    }

    /// Applies a durable record, or queues it in the outbox when the database refuses it.
    fn write(&mut self, write: DurableWrite, ctx: &mut Context<Self>) -> Result<Durability, StoreError> {
        if !self.sqlite_usable() {
            if write.decides_a_send() {
                // Whether it may apply cannot be judged without reading the database.
                let why = self.shared_memory_refusal.clone().unwrap_or_default();
                return Err(StoreError::Unavailable(format!("{why}; a {} is not kept meanwhile", write.what())));
            }
            self.pending_stale = true;
            let kept = self.keep_in_outbox(write, true);
            self.schedule_replay(ctx);
            return kept;
        }
        let _ = self.commit_batch(ctx);
        self.follow_fault_hook(ctx);
        self.catch_up();
        if self.outbox.as_ref().is_some_and(Outbox::is_empty)
            && let Some(store) = self.store.as_mut()
        {
            let refused = match store.apply_durable(&write) {
                Ok(changed) => {
                    self.note_writable();
                    return Ok(Durability::Applied { changed });
                }
                Err(error) if error.is_write_unavailable() => error,
                Err(error) => return Err(error),
            };
            // Busy and locked have already waited out SQLite's busy timeout; anything else gets
            // one more try after a moment before the record goes to the outbox.
            let refused = if refused.is_busy() {
                refused
            } else {
                std::thread::sleep(Duration::from_millis(20));
                match store.apply_durable(&write) {
                    Ok(changed) => {
                        self.note_writable();
                        return Ok(Durability::Applied { changed });
                    }
                    Err(error) if error.is_write_unavailable() => error,
                    Err(error) => return Err(error),
                }
            };
            self.note_refusal(&refused);
        }
        self.queue(write, ctx)
    }

    /// Queues a record behind the outbox (the database refuses writes, or records wait already),
    /// and lays what it does to an order over the store's reads, so that the next request sees it
    /// (a committed exit, an order marked `sending`, its outcome). An entry is not committed while
    /// the database refuses writes: no new risk is taken on records that are not in it.
    fn queue(&mut self, write: DurableWrite, ctx: &mut Context<Self>) -> Result<Durability, StoreError> {
        if let DurableWrite::CommitIntent(intent) = &write
            && intent.purpose == crate::domain::IntentPurpose::Entry
        {
            return Err(StoreError::Unavailable(format!(
                "the database refuses writes: entry {} is not committed until it takes them again",
                intent.client_order_id
            )));
        }
        let change = match self.store.as_mut() {
            Some(store) => Some(store.preview_pending(&write)?),
            None => None,
        };
        let changed = change.as_ref().is_none_or(|change| change.changed);
        let kept = self.keep_in_outbox(write, changed);
        if kept.is_ok()
            && let (Some(store), Some(change)) = (self.store.as_mut(), change)
        {
            store.hold_pending(change);
        }
        self.schedule_replay(ctx);
        kept
    }

    /// Keeps a record in the fsynced outbox (without touching SQLite). When the outbox cannot keep
    /// it either (full, or its own file refuses), the record is lost: counted, logged, and while
    /// that lasts the order router places no order (SYS-DATABASE says so).
    fn keep_in_outbox(&mut self, write: DurableWrite, changed: bool) -> Result<Durability, StoreError> {
        let what = write.what();
        let appended = match self.outbox.as_mut() {
            Some(outbox) => outbox.append(write, SystemClock.now_ms()),
            None => Err(StoreError::Unavailable("the outbox is not open".to_owned())),
        };
        self.publish_depth();
        match appended {
            Ok(depth) => {
                self.gauge.set_records_unkept(None);
                Ok(Durability::Queued { depth, changed })
            }
            Err(error) => {
                tracing::error!(failure_point = "SYS-DATABASE", %error, what,
                    "persistence: the database refuses writes and the outbox cannot keep the record either: it is lost; no order is placed while records cannot be kept");
                self.gauge.set_records_unkept(Some(format!(
                    "a {what} record could be kept neither in the database nor in the outbox: {error}"
                )));
                Err(error)
            }
        }
    }

    /// Before a request is served: if records wait in the outbox, replays all of them first, so
    /// that a request reads and compares against a database that has everything the outbox held.
    /// While the database keeps refusing, it is probed with backoff (never once per request), and
    /// a probe waits at most [`REPLAY_BUSY_TIMEOUT`] for another connection's lock.
    fn catch_up(&mut self) {
        if self.outbox.as_ref().is_none_or(Outbox::is_empty)
            || SystemClock.now_ms() < self.replay_not_before_ms
            || !self.sqlite_usable()
        {
            return;
        }
        let probing = self.gauge.refusal().is_some();
        if probing && let Some(store) = self.store.as_mut() {
            let _ = store.set_busy_timeout(REPLAY_BUSY_TIMEOUT);
        }
        loop {
            let before = self.outbox.as_ref().map_or(0, Outbox::depth);
            if self.replay_batch() {
                tracing::info!(replayed = before, "persistence: the outbox is replayed; the database has every record");
                self.replay_backoff_ms = OUTBOX_REPLAY_BACKOFF_MS_INITIAL;
                self.replay_not_before_ms = 0;
                self.note_writable();
                return;
            }
            if self.outbox.as_ref().map_or(0, Outbox::depth) >= before {
                // No progress: the next attempt waits out the backoff, which doubles.
                self.replay_not_before_ms = SystemClock.now_ms() + self.replay_backoff_ms as i64;
                self.replay_backoff_ms =
                    (self.replay_backoff_ms * 2).clamp(OUTBOX_REPLAY_BACKOFF_MS_INITIAL, OUTBOX_REPLAY_BACKOFF_MS_MAX);
                if probing {
                    self.restore_busy_timeout();
                }
                return;
            }
        }
    }

    /// Replays up to a batch of outbox entries. `Ok(true)` when the outbox is empty after.
    fn replay_batch(&mut self) -> bool {
        let (Some(store), Some(outbox)) = (self.store.as_mut(), self.outbox.as_mut()) else { return false };
        let now_ms = SystemClock.now_ms();
        let mut refused = None;
        for _ in 0..OUTBOX_REPLAY_BATCH_MAX {
            let Some(entry) = outbox.front() else { break };
            match store.apply_outbox_entry(entry, now_ms) {
                Ok(_) => {
                    if let Err(error) = outbox.pop_applied() {
                        tracing::error!(%error, "persistence: the outbox could not be truncated after its replay");
                    }
                    self.gauge.count_replayed();
                }
                Err(error) if error.is_write_unavailable() => {
                    refused = Some(error);
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, entry = %entry.id, what = entry.write.what(),
                        "persistence: the database refuses an outbox entry for good; it is kept in the rejected file");
                    if let Err(error) = outbox.reject_front() {
                        tracing::error!(%error, "persistence: the rejected entry could not be written aside; it stays queued");
                        break;
                    }
                    self.gauge.count_rejected();
                }
            }
        }
        let empty = outbox.is_empty();
        if empty {
            // The database has everything the store laid over its reads.
            store.clear_pending();
        }
        if let Some(error) = refused {
            self.note_refusal(&error);
        }
        self.publish_depth();
        empty
    }

    fn schedule_replay(&mut self, ctx: &mut Context<Self>) {
        if self.replay_scheduled || self.outbox.as_ref().is_none_or(Outbox::is_empty) {
            return;
        }
        self.replay_scheduled = true;
        let wait_ms = (self.replay_not_before_ms - SystemClock.now_ms()).max(self.replay_backoff_ms as i64).max(1);
        ctx.run_later(Duration::from_millis(wait_ms as u64), |actor, ctx| {
            actor.replay_scheduled = false;
            actor.follow_fault_hook(ctx);
            actor.catch_up();
            actor.schedule_replay(ctx);
        });
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        let _ = self.commit_batch(ctx);
        Running::Stop
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        // What an incarnation that died mid-write left is not known: every user's orders are read
        // again (and the outbox replayed below may hold anyone's).
        self.gauge.order_rows().note_changed(None);
        // A panic ends this incarnation; the root supervisor restarts it with backoff and
        // escalates (the process exits non-zero) if the database or the outbox stays unusable.
        match Outbox::open(&self.settings.outbox_path, self.settings.outbox_capacity) {
            Ok((outbox, opened)) => {
                if opened.queued > 0 || opened.rejected > 0 || opened.torn_tail {
                    tracing::warn!(
                        outbox = %self.settings.outbox_path.display(),
                        queued = opened.queued,
                        rejected = opened.rejected,
                        torn_tail = opened.torn_tail,
                        "persistence: the outbox holds records from before; replaying them first"
                    );
                }
                self.outbox = Some(outbox);
            }
            Err(error) => panic!("persistence: {error}"),
        }
        // Opens the database, unless its shared-memory file cannot be written (then it is opened
        // once it can be, and records wait in the outbox meanwhile).
        self.sqlite_usable();
        self.follow_fault_hook(ctx);
        // Whatever an earlier run left is applied before any request is served.
        self.catch_up();
        self.schedule_replay(ctx);
        self.publish_depth();
        if self.settings.database_fault_file.is_some() {
            ctx.run_interval(FAULT_HOOK_INTERVAL, |actor, ctx| actor.follow_fault_hook(ctx));
        }
        // While the database refuses writes, it is looked at even when no request comes, so that
        // the refusal's end is seen (and said) without waiting for traffic.
        ctx.run_interval(REFUSAL_PROBE_INTERVAL, |actor, ctx| {
            let refusing = actor.gauge.refusal().is_some() || actor.shared_memory_refusal.is_some();
            if refusing && actor.sqlite_usable() {
                actor.follow_fault_hook(ctx);
                actor.catch_up();
                actor.schedule_replay(ctx);
            }
        });
        ctx.run_interval(PRUNE_INTERVAL, |actor, ctx| {
            if !actor.sqlite_usable() {
                return;
            }
            let _ = actor.commit_batch(ctx);
            if let Some(store) = actor.store.as_mut() {
                let pruned = store
                    .prune()
                    .and_then(|_| store.prune_outbox_applied(SystemClock.now_ms() - OUTBOX_APPLIED_KEEP_MS));
                if let Err(error) = pruned {
                    tracing::warn!(%error, "persistence: pruning bounded tables failed");
                }
            }
        });
    }
}

/// Replay the outbox now, whatever the backoff says (the Healer's SYS-DATABASE action). Answers
/// how many records still wait after it.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct ReplayNow;

impl Handler<ReplayNow> for PersistenceActor {
    type Result = usize;

    fn handle(&mut self, _: ReplayNow, ctx: &mut Context<Self>) -> usize {
        self.replay_not_before_ms = 0;
        self.follow_fault_hook(ctx);
        self.catch_up();
        self.schedule_replay(ctx);
        self.outbox.as_ref().map_or(0, Outbox::depth)
    }
}

/// A durable record to apply, or to keep in the outbox if the database refuses it.
#[derive(Debug)]
pub struct Write {
    write: DurableWrite,
    /// Nobody waits for the answer: a failure is logged here.
    unanswered: bool,
    /// Released when the write has been handled (see [`Directory`]'s permits).
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Message for Write {
    type Result = Result<Durability, StoreError>;
}

impl Handler<Write> for PersistenceActor {
    type Result = Result<Durability, StoreError>;

    fn handle(&mut self, message: Write, ctx: &mut Context<Self>) -> Self::Result {
        let what = message.write.what();
        let order_rows_of = message.write.order_rows_of();
        let result =
            if message.unanswered { self.write_batched(message.write, ctx) } else { self.write(message.write, ctx) };
        // Applied, queued or failed half-way: whoever reads the user's orders next reads them again.
        if let Some(user) = order_rows_of {
            self.gauge.order_rows().note_changed(user.as_ref());
        }
        if message.unanswered
            && let Err(error) = &result
        {
            tracing::error!(%error, what, "persistence: record not written");
        }
        result
    }
}

/// An operation on the store, run on the persistence thread.
pub type StoreOperation<R> = Box<dyn FnOnce(&mut Store) -> Result<R, StoreError> + Send>;

/// Runs a closure against the store on the persistence thread.
pub struct Run<R> {
    operation: StoreOperation<R>,
    /// Commit the open group commit first: the closure runs outside any transaction.
    after_commit: bool,
}

impl<R> std::fmt::Debug for Run<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("after_commit", &self.after_commit).finish_non_exhaustive()
    }
}

impl<R> Run<R> {
    pub fn new(operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static) -> Self {
        Self { operation: Box::new(operation), after_commit: false }
    }

    /// Runs once the open group commit is committed, outside any transaction (what a WAL
    /// checkpoint needs).
    pub fn after_commit(operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static) -> Self {
        Self { operation: Box::new(operation), after_commit: true }
    }
}

impl<R: 'static> Message for Run<R> {
    type Result = Result<R, StoreError>;
}

impl<R: 'static> Handler<Run<R>> for PersistenceActor {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, message: Run<R>, ctx: &mut Context<Self>) -> Result<R, StoreError> {
        if !self.sqlite_usable() {
            return Err(StoreError::Unavailable(self.shared_memory_refusal.clone().unwrap_or_default()));
        }
        self.follow_fault_hook(ctx);
        self.catch_up();
        if message.after_commit {
            self.commit_batch(ctx)?;
        }
        let store = self.store.as_mut().ok_or_else(|| StoreError::Unavailable("database not open".to_owned()))?;
        // Reads run inside an open group commit (this connection sees its own records); an
        // operation that wrote is answered only once its rows, and the batch's, are committed.
        let changes_before = store.total_changes();
        let result = (message.operation)(store);
        let wrote = self.store.as_ref().is_some_and(|store| store.total_changes() != changes_before);
        match &result {
            Err(error) if error.is_write_unavailable() && !matches!(error, StoreError::Unavailable(_)) => {
                self.note_refusal(error)
            }
            Ok(_) if wrote && self.outbox.as_ref().is_some_and(Outbox::is_empty) => self.note_writable(),
            _ => {}
        }
        if wrote {
            // Which rows it wrote is not known here: every user's orders are read again.
            self.gauge.order_rows().note_changed(None);
            self.commit_batch(ctx)?;
        }
        result
    }
}

/// Runs an operation through whichever persistence incarnation is current, first waiting for one of
/// the bounded in-flight permits (back-pressure). A missing or dying actor is
/// [`StoreError::Unavailable`].
pub async fn run<R: Send + 'static>(
    directory: &Directory,
    operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    run_with(directory, operation, false).await
}

/// Flushes the database: commits what is batched, then checkpoints the WAL into the main file
/// (at shutdown and before an escalation's exit).
pub async fn checkpoint(directory: &Directory) -> Result<(), StoreError> {
    run_with(directory, |store| store.checkpoint(), true).await
}

async fn run_with<R: Send + 'static>(
    directory: &Directory,
    operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    after_commit: bool,
) -> Result<R, StoreError> {
    let (persistence, permit) = address_and_permit(directory).await?;
    let holding = move |store: &mut Store| {
        let result = operation(store);
        drop(permit);
        result
    };
    let message = if after_commit { Run::after_commit(holding) } else { Run::new(holding) };
    persistence
        .send(message)
        .await
        .map_err(|error| StoreError::Unavailable(format!("persistence did not answer: {error}")))?
}

/// Queues a write without waiting for it (decision records, position snapshots, journal mirrors).
/// It is enqueued at once, so writes from one caller keep their order. When every in-flight permit
/// is taken the write is refused, counted and logged, never queued without bound.
pub fn submit(
    directory: &Directory,
    what: &'static str,
    operation: impl FnOnce(&mut Store) -> Result<(), StoreError> + Send + 'static,
) {
    let Some((persistence, permit)) = address_and_permit_now(directory, what) else { return };
    let logged = Run::new(move |store: &mut Store| {
        if let Err(error) = operation(store) {
            tracing::warn!(%error, what, "persistence: write failed");
        }
        drop(permit);
        Ok(())
    });
    // A fresh address is never parked, so this only fails when the actor is gone.
    if persistence.try_send(logged).is_err() {
        tracing::warn!(what, "persistence is restarting; record not written");
    }
}

/// The current persistence incarnation and an in-flight permit, waiting for one (back-pressure).
async fn address_and_permit(
    directory: &Directory,
) -> Result<(Addr<PersistenceActor>, tokio::sync::OwnedSemaphorePermit), StoreError> {
    let persistence = directory.persistence().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let permit = directory
        .persistence_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok((persistence, permit))
}

/// The current persistence incarnation and an in-flight permit, without waiting; `None` (logged
/// and counted) when there is no incarnation or every permit is taken.
fn address_and_permit_now(
    directory: &Directory,
    what: &'static str,
) -> Option<(Addr<PersistenceActor>, tokio::sync::OwnedSemaphorePermit)> {
    let persistence = match directory.persistence() {
        Ok(persistence) => persistence,
        Err(error) => {
            tracing::warn!(%error, what, "persistence unavailable; record not written");
            return None;
        }
    };
    let Ok(permit) = directory.persistence_permits.clone().try_acquire_owned() else {
        let refused = directory.persistence_writes_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if refused == 1 || refused.is_power_of_two() {
            tracing::warn!(what, refused, "persistence saturated: record refused (counted)");
        }
        return None;
    };
    Some((persistence, permit))
}

/// Writes a durable record and waits for its fate: applied (and whether it changed anything), or
/// queued in the outbox because the database refuses writes. Waits for an in-flight permit first.
pub async fn write(directory: &Directory, write: DurableWrite) -> Result<Durability, StoreError> {
    let (persistence, permit) = address_and_permit(directory).await?;
    persistence
        .send(Write { write, unanswered: false, _permit: permit })
        .await
        .map_err(|error| StoreError::Unavailable(format!("persistence did not answer: {error}")))?
}

/// [`write`] for a record that must outlive its writer (a guard lock set just before its trader
/// crashes): whenever a permit is free it is in persistence's mailbox before this returns, not when
/// the returned future is first polled, so the writer's death cannot take it along. Without a free
/// permit the future waits for one, as [`write`] does.
pub fn write_enqueued(
    directory: &Arc<Directory>,
    write: DurableWrite,
) -> impl Future<Output = Result<Durability, StoreError>> + use<> {
    let free = directory.persistence().ok().zip(directory.persistence_permits.clone().try_acquire_owned().ok());
    // `Addr::send` puts the message in the mailbox at once when it has room.
    let enqueued = match free {
        Some((persistence, permit)) => Ok(persistence.send(Write { write, unanswered: false, _permit: permit })),
        None => Err(write),
    };
    let directory = directory.clone();
    async move {
        match enqueued {
            Ok(request) => request
                .await
                .map_err(|error| StoreError::Unavailable(format!("persistence did not answer: {error}")))?,
            Err(write) => self::write(&directory, write).await,
        }
    }
}

/// Hands a durable record to persistence without waiting (decisions, positions, supervision
/// events). It is enqueued at once, so one caller's records keep their order; a failure is logged
/// by the persistence actor. Refused (logged and counted) only when every permit is taken.
pub fn submit_durable(directory: &Directory, write: DurableWrite) {
    let what = write.what();
    let Some((persistence, permit)) = address_and_permit_now(directory, what) else { return };
    // A fresh address is never parked, so this only fails when the actor is gone.
    if persistence.try_send(Write { write, unanswered: true, _permit: permit }).is_err() {
        tracing::warn!(what, "persistence is restarting; record not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::PERSISTENCE_IN_FLIGHT_MAX;
    use crate::supervision::watch::spawn_watched;

    #[actix_rt::test]
    async fn requests_in_flight_are_bounded_across_every_caller() {
        let dir = tempfile::tempdir().unwrap();
        let directory = Directory::default();
        let arbiter = Arbiter::new();
        let path = dir.path().join("bulwark.db");
        let gauge = directory.outbox.clone();
        let addr = spawn_watched(
            &arbiter.handle(),
            16,
            move || PersistenceActor::new(PersistenceSettings::new(path), gauge),
            |_| {},
        );
        directory.set_persistence(Some(addr));

        // Hold the persistence thread until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        submit(&directory, "blocker", move |_| {
            let _ = held.recv();
            Ok(())
        });
        // Every other permit can be taken, by writers with fresh addresses each time...
        for _ in 1..PERSISTENCE_IN_FLIGHT_MAX {
            submit(&directory, "filler", |_| Ok(()));
        }
        assert_eq!(directory.persistence_writes_refused(), 0);
        // ...and then the next write is refused and counted instead of queued.
        submit(&directory, "one too many", |_| Ok(()));
        assert_eq!(directory.persistence_writes_refused(), 1);

        // Once the thread is free the queue drains, and awaited requests go through again.
        release.send(()).unwrap();
        let answer = run(&directory, |store| store.user_statuses().map(|users| users.len())).await.unwrap();
        assert_eq!(answer, 0);
        assert_eq!(directory.persistence_permits.available_permits(), PERSISTENCE_IN_FLIGHT_MAX);
        arbiter.stop();
    }

    fn intent(seq: u64) -> crate::domain::OrderIntent {
        use crate::domain::{ClientOrderId, IntentPurpose, OrderIntent, OrderType, Quantity, Side, Symbol, UserId};
        let user = UserId::new("u1").unwrap();
        OrderIntent {
            client_order_id: ClientOrderId::for_intent(&user, seq),
            user,
            intent_seq: seq,
            symbol: Symbol::new("XRPUSDT").unwrap(),
            side: Side::Buy,
            order_type: OrderType::Market,
            quantity: Quantity::new(rust_decimal::Decimal::from(10)).unwrap(),
            reduce_only: false,
            purpose: IntentPurpose::Entry,
            strategy: "s".into(),
            decision_candle_close_ms: 1,
            created_at_ms: 2,
        }
    }

    fn filled(seq: u64, trade_id: &str) -> DurableWrite {
        use crate::domain::{ClientOrderId, Fill, OrderState, Side, Symbol, UserId};
        use crate::persistence::OrderTransition;
        let id = ClientOrderId::for_intent(&UserId::new("u1").unwrap(), seq);
        let mut transition = OrderTransition::new(id, OrderState::Sending, OrderState::Filled, 10);
        transition.exchange_order_id = Some(format!("x{seq}"));
        transition.fills = vec![Fill {
            trade_id: trade_id.into(),
            exchange_order_id: format!("x{seq}"),
            symbol: Symbol::new("XRPUSDT").unwrap(),
            side: Side::Buy,
            price: rust_decimal::Decimal::ONE,
            quantity: rust_decimal::Decimal::from(10),
            fee: rust_decimal::Decimal::ZERO,
            fee_asset: "USDT".into(),
            realized_pnl: rust_decimal::Decimal::ZERO,
            time_ms: 5,
        }];
        DurableWrite::OrderTransition(transition)
    }

    fn decision(at_ms: i64) -> DurableWrite {
        use crate::domain::{Symbol, UserId};
        DurableWrite::Decision(crate::persistence::DecisionRecord {
            user: UserId::new("u1").unwrap(),
            symbol: Symbol::new("XRPUSDT").unwrap(),
            timeframe: "5m".into(),
            strategy: "s".into(),
            candle_close_ms: None,
            decided_at_ms: at_ms,
            outcome: "hold".into(),
            reason: format!("decision at {at_ms}"),
            signal: None,
            score: None,
            client_order_id: None,
            counts_as_decision: true,
            cause: None,
        })
    }

    /// Decisions in the database as another process sees it (committed rows only).
    fn committed_decisions(path: &std::path::Path) -> usize {
        let mut store = Store::open_read_only(path).unwrap();
        store.recent_decisions(&crate::domain::UserId::new("u1").unwrap(), 10_000).unwrap().len()
    }

    #[actix_rt::test]
    async fn unanswered_records_are_group_committed_before_a_waiting_writer_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.db");
        let directory = Directory::default();
        let arbiter = Arbiter::new();
        let gauge = directory.outbox.clone();
        let settings = PersistenceSettings::new(path.clone());
        let addr = spawn_watched(&arbiter.handle(), 4_096, move || PersistenceActor::new(settings, gauge), |_| {});
        directory.set_persistence(Some(addr));
        run(&directory, |store| store.ensure_users(&[crate::domain::UserId::new("u1").unwrap()], 0)).await.unwrap();

        // More unanswered records than one batch holds, then a writer that waits: once it is
        // answered, every record before it is committed (seen from another connection).
        let records = BATCH_RECORDS_MAX + 100;
        for at_ms in 0..records as i64 {
            submit_durable(&directory, decision(at_ms));
        }
        run(&directory, |store| store.commit_intent(&intent(1))).await.unwrap();
        assert_eq!(committed_decisions(&path), records);
        let mut reader = Store::open_read_only(&path).unwrap();
        assert!(reader.order(&intent(1).client_order_id).unwrap().is_some());
        // A read inside an open batch sees the batch's records (the same connection).
        submit_durable(&directory, decision(records as i64));
        let seen = run(&directory, |store| {
            store.recent_decisions(&crate::domain::UserId::new("u1").unwrap(), 10_000).map(|d| d.len())
        })
        .await
        .unwrap();
        assert_eq!(seen, records + 1);
        assert_eq!(directory.persistence_writes_refused(), 0);
        arbiter.stop();
    }

    #[actix_rt::test]
    async fn a_batch_the_database_refuses_goes_to_the_outbox_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.db");
        let fault = dir.path().join("fault");
        let mut settings = PersistenceSettings::new(path.clone());
        settings.database_fault_file = Some(fault.clone());
        let directory = Arc::new(Directory::default());
        let arbiter = Arbiter::new();
        let gauge = directory.outbox.clone();
        let addr = spawn_watched(&arbiter.handle(), 256, move || PersistenceActor::new(settings, gauge), |_| {});
        directory.set_persistence(Some(addr));
        run(&directory, |store| store.ensure_users(&[crate::domain::UserId::new("u1").unwrap()], 0)).await.unwrap();
        for at_ms in 0..10 {
            submit_durable(&directory, decision(at_ms));
        }
        // The disk turns read-only with a batch open: the batch is rolled back and its records,
        // and those after, are kept in the outbox; none is lost.
        std::fs::write(&fault, b"").unwrap();
        for at_ms in 10..20 {
            submit_durable(&directory, decision(at_ms));
        }
        let refused = run(&directory, |store| store.commit_intent(&intent(1))).await;
        assert!(refused.is_err_and(|e| e.is_write_unavailable()));
        let queued = directory.outbox().depth;
        assert!(queued >= 10, "the records after the fault wait in the outbox ({queued})");
        std::fs::remove_file(&fault).unwrap();
        until_depth(&directory, 0).await;
        run(&directory, |store| store.commit_intent(&intent(1))).await.unwrap();
        assert_eq!(committed_decisions(&path), 20);
        arbiter.stop();
    }

    /// Waits (bounded) until the outbox gauge shows `depth`; the replay runs on the actor's timer.
    async fn until_depth(directory: &Directory, depth: usize) {
        let waiting = async {
            while directory.outbox().depth != depth {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .unwrap_or_else(|_| panic!("outbox depth {} never became {depth}", directory.outbox().depth));
    }

    #[actix_rt::test]
    async fn writes_the_database_refuses_wait_in_the_outbox_and_are_replayed_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let fault = dir.path().join("fault");
        let mut settings = PersistenceSettings::new(dir.path().join("bulwark.db"));
        settings.database_fault_file = Some(fault.clone());
        settings.outbox_capacity = 3;
        let directory = Arc::new(Directory::default());
        let arbiter = Arbiter::new();
        let start = |settings: PersistenceSettings| {
            let gauge = directory.outbox.clone();
            let addr = spawn_watched(&arbiter.handle(), 64, move || PersistenceActor::new(settings, gauge), |_| {});
            directory.set_persistence(Some(addr));
        };
        start(settings.clone());
        // Two orders sent while the database worked.
        run(&directory, |store| {
            store.ensure_users(&[crate::domain::UserId::new("u1").unwrap()], 0)?;
            for seq in [1, 2] {
                store.commit_intent(&intent(seq))?;
                let id = intent(seq).client_order_id;
                let mut sending = crate::persistence::OrderTransition::new(
                    id,
                    crate::domain::OrderState::Pending,
                    crate::domain::OrderState::Sending,
                    3,
                );
                sending.sent_at_ms = Some(3);
                store.transition_order(&sending)?;
            }
            Ok(())
        })
        .await
        .unwrap();

        // The disk turns read-only: their fills go to the outbox (fsynced), not lost.
        std::fs::write(&fault, b"").unwrap();
        let first = write(&directory, filled(1, "t1")).await.unwrap();
        assert_eq!(first, Durability::Queued { depth: 1, changed: true });
        // The same fact seen again on the next sync is queued once.
        // (what it does was done by the first: the order reads as filled already)
        assert_eq!(write(&directory, filled(1, "t1")).await.unwrap(), Durability::Queued { depth: 1, changed: false });
        assert_eq!(write(&directory, filled(2, "t2")).await.unwrap(), Durability::Queued { depth: 2, changed: true });
        // Reads through persistence see what waits in the outbox.
        let seen = run(&directory, |store| store.order(&intent(1).client_order_id)).await.unwrap().unwrap();
        assert_eq!(seen.state, crate::domain::OrderState::Filled);
        let status = directory.outbox();
        assert!(status.last_error.as_deref().is_some_and(|e| e.contains("readonly")), "{status:?}");
        // An intent cannot be committed meanwhile: it fails, so nothing would be sent.
        let refused = run(&directory, |store| store.commit_intent(&intent(3))).await;
        assert!(refused.is_err_and(|e| e.is_write_unavailable()));
        // At capacity a record is refused, never dropped silently.
        write(&directory, filled(9, "t9")).await.unwrap();
        let full = write(&directory, filled(8, "t8")).await;
        assert!(matches!(full, Err(StoreError::OutboxFull { depth: 3 })), "{full:?}");
        assert!(directory.outbox().is_full());
        // Kept nowhere: counted and said (the router places no order while this holds).
        let status = directory.outbox();
        assert_eq!(status.records_lost_total, 1, "{status:?}");
        assert!(status.records_unkept.as_deref().is_some_and(|why| why.contains("order transition")), "{status:?}");
        assert!(status.is_degraded());

        // A crash now: the next incarnation finds the records in the file.
        arbiter.stop();
        arbiter.join().unwrap();
        let arbiter = Arbiter::new();
        let gauge = directory.outbox.clone();
        let restarted = settings.clone();
        let addr = spawn_watched(&arbiter.handle(), 64, move || PersistenceActor::new(restarted, gauge), |_| {});
        directory.set_persistence(Some(addr));
        let held = run(&directory, |store| store.fill_count(&crate::domain::UserId::new("u1").unwrap())).await;
        assert_eq!(held.unwrap(), 0, "still refused: nothing applied yet");
        until_depth(&directory, 3).await;

        // The disk recovers: replayed in order; the order with no row is kept aside, not lost.
        std::fs::remove_file(&fault).unwrap();
        until_depth(&directory, 0).await;
        let status = directory.outbox();
        assert_eq!((status.replayed_total, status.rejected_total), (2, 1), "{status:?}");
        let rejected = std::fs::read_to_string(dir.path().join("bulwark.outbox.rejected")).unwrap();
        assert!(rejected.contains("bw-u1-9"), "{rejected}");
        let (fills, states) = run(&directory, |store| {
            let user = crate::domain::UserId::new("u1").unwrap();
            let orders = store.orders_of(&user)?;
            Ok((store.fill_count(&user)?, orders.into_iter().map(|o| o.state).collect::<Vec<_>>()))
        })
        .await
        .unwrap();
        assert_eq!(fills, 2, "each fill once");
        assert_eq!(states, vec![crate::domain::OrderState::Filled; 2]);
        assert_eq!(crate::persistence::outbox::count_entries(&settings.outbox_path).unwrap(), 0);
        // Writes go straight to the database again, and records are kept again.
        assert_eq!(directory.outbox().records_unkept, None);
        assert_eq!(
            write(&directory, filled(1, "t1")).await.unwrap(),
            Durability::Applied { changed: false },
            "already filled: the compare-and-set changes nothing"
        );
        arbiter.stop();
    }
}
