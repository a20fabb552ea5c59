//! The supervision journal: the live table of every supervised actor's state, and the record of
//! every supervision event.
//!
//! Every event is written, in order, to `<log_dir>/supervisor.jsonl` (one JSON object per line,
//! flushed per line), to the human-readable tracing log, to the database (`supervisor_events`,
//! and the user's row in `users`), and to a bounded broadcast tap for live status surfaces. Every
//! `status_interval_secs` the whole table goes to the file as a `{"event": "tree", ...}` snapshot.
//!
//! All supervisors live on the System arbiter thread and share one journal through
//! [`SharedJournal`]; nothing else touches it, so no lock is needed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::actors::Directory;
use crate::actors::persistence;
use crate::actors::trader::UserCounters;
use crate::clock::{Clock, rfc3339_ms};
use crate::domain::UserId;
use crate::persistence::outbox::DurableWrite;
use crate::persistence::{SupervisorEventRecord, UserSupervisionRecord};

/// The kinds of supervised actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Persistence,
    MarketData,
    OrderRouter,
    Monitor,
    Healer,
    Intelligence,
    Notifier,
    /// The HTTP API (`crate::http`).
    Http,
    Trader,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Persistence => "persistence",
            ActorKind::MarketData => "market_data",
            ActorKind::OrderRouter => "order_router",
            ActorKind::Monitor => "monitor",
            ActorKind::Healer => "healer",
            ActorKind::Intelligence => "intelligence",
            ActorKind::Notifier => "notifier",
            ActorKind::Http => "http",
            ActorKind::Trader => "trader",
        }
    }
}

/// Supervision events, as named in `supervisor.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Crashed,
    Restarting,
    Restarted,
    Quarantined,
    /// A quarantined user was let back in after its cool-down (by the Healer); a new incarnation follows.
    Readmitted,
    /// The exchange refused the user's credentials; not restarted until an operator fixes them.
    Halted,
    Escalated,
    Stopped,
    /// The config was reloaded (SIGHUP) with new strategies or limits for this user; its trader is
    /// stopped in order and started again on them (not a failure: the restart history is untouched).
    /// Also recorded when an operator's action needs the trader to start afresh (a lock cleared).
    Reconfigured,
    /// An operator paused the user (the admin API): its trader is stopped and not restarted.
    Paused,
    /// An operator resumed a paused user: a new incarnation follows.
    Resumed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Crashed => "crashed",
            EventKind::Restarting => "restarting",
            EventKind::Restarted => "restarted",
            EventKind::Quarantined => "quarantined",
            EventKind::Readmitted => "readmitted",
            EventKind::Halted => "halted",
            EventKind::Escalated => "escalated",
            EventKind::Stopped => "stopped",
            EventKind::Reconfigured => "reconfigured",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
        }
    }
}

/// The state of a supervised actor in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Spawned; loading state and reconciling (traders) before it takes work.
    Starting,
    Running,
    Restarting,
    Quarantined,
    /// The exchange refused the user's credentials.
    Halted,
    Escalated,
    Stopped,
    /// An operator paused it; it trades again when resumed.
    Paused,
}

impl ChildState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Running => "running",
            ChildState::Restarting => "restarting",
            ChildState::Quarantined => "quarantined",
            ChildState::Halted => "halted",
            ChildState::Escalated => "escalated",
            ChildState::Stopped => "stopped",
            ChildState::Paused => "paused",
        }
    }
}

/// One supervision event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupervisionEvent {
    pub ts_ms: i64,
    pub event: EventKind,
    pub actor: ActorKind,
    pub user: Option<UserId>,
    pub incarnation: u32,
    pub reason: Option<String>,
    pub backoff_ms: Option<u64>,
}

impl SupervisionEvent {
    /// The `supervisor.jsonl` line.
    pub fn to_json(&self) -> serde_json::Value {
        let mut line = json!({
            "ts": rfc3339_ms(self.ts_ms),
            "event": self.event.as_str(),
            "actor": self.actor.as_str(),
            "incarnation": self.incarnation,
        });
        if let Some(user) = &self.user {
            line["user"] = json!(user.as_str());
        }
        if let Some(reason) = &self.reason {
            line["reason"] = json!(reason);
        }
        if let Some(backoff_ms) = self.backoff_ms {
            line["backoff_ms"] = json!(backoff_ms);
        }
        line
    }
}

/// What the journal's live tap carries: every supervision event, and every state change that is
/// not itself an event (a trader finishing its start-up is `starting` → `running`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEvent {
    Supervision(SupervisionEvent),
    StateChanged { actor: ActorKind, user: Option<UserId>, state: ChildState, reason: Option<String> },
}

/// A row of the tree.
#[derive(Debug, Clone)]
pub struct ChildStatus {
    pub actor: ActorKind,
    pub user: Option<UserId>,
    pub state: ChildState,
    pub incarnation: u32,
    pub restarts: u32,
    pub since_ms: i64,
    pub reason: Option<String>,
    /// Traders only: decision counters shared with every incarnation.
    pub counters: Option<Arc<UserCounters>>,
}

type ChildKey = (ActorKind, Option<UserId>);

/// The journal. See the module documentation.
pub struct SupervisionJournal {
    clock: Arc<dyn Clock>,
    directory: Arc<Directory>,
    /// Written by `record` and `set_state`; read by `snapshot` and status queries.
    children: BTreeMap<ChildKey, ChildStatus>,
    path: PathBuf,
    /// `supervisor.jsonl`, opened for append at start-up.
    writer: LineWriter<File>,
    /// Live events for status surfaces and tests; bounded, never blocks.
    tap: broadcast::Sender<TreeEvent>,
    /// Lines that could not be written (disk full, ...); reported in the next snapshot.
    write_failures: u64,
}

pub type SharedJournal = Rc<RefCell<SupervisionJournal>>;

impl Drop for SupervisionJournal {
    fn drop(&mut self) {
        crate::logging::clear_fatal_note_fd(std::os::fd::AsRawFd::as_raw_fd(self.writer.get_ref()));
    }
}

impl std::fmt::Debug for SupervisionJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisionJournal").field("path", &self.path).field("children", &self.children.len()).finish()
    }
}

impl SupervisionJournal {
    pub fn open(
        log_dir: &Path,
        clock: Arc<dyn Clock>,
        directory: Arc<Directory>,
        tap: broadcast::Sender<TreeEvent>,
    ) -> std::io::Result<Self> {
        let path = log_dir.join("supervisor.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A fatal signal's last-resort handler (the binary) appends its line here.
        crate::logging::set_fatal_note_fd(std::os::fd::AsRawFd::as_raw_fd(&file));
        Ok(Self {
            clock,
            directory,
            children: BTreeMap::new(),
            path,
            writer: LineWriter::new(file),
            tap,
            write_failures: 0,
        })
    }

    pub fn shared(self) -> SharedJournal {
        Rc::new(RefCell::new(self))
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Adds a child to the tree (before its first event).
    pub fn register(&mut self, actor: ActorKind, user: Option<UserId>, counters: Option<Arc<UserCounters>>) {
        let since_ms = self.now_ms();
        self.children.insert(
            (actor, user.clone()),
            ChildStatus {
                actor,
                user,
                state: ChildState::Starting,
                incarnation: 0,
                restarts: 0,
                since_ms,
                reason: None,
                counters,
            },
        );
    }

    /// Records an event: updates the tree, then writes it everywhere (see the module doc).
    pub fn record(&mut self, event: SupervisionEvent) {
        let key = (event.actor, event.user.clone());
        if let Some(child) = self.children.get_mut(&key) {
            child.incarnation = event.incarnation;
            let state = match event.event {
                EventKind::Started | EventKind::Restarted => Some(ChildState::Starting),
                EventKind::Crashed | EventKind::Readmitted | EventKind::Reconfigured | EventKind::Resumed => None,
                EventKind::Paused => Some(ChildState::Paused),
                EventKind::Restarting => Some(ChildState::Restarting),
                EventKind::Quarantined => Some(ChildState::Quarantined),
                EventKind::Halted => Some(ChildState::Halted),
                EventKind::Escalated => Some(ChildState::Escalated),
                EventKind::Stopped => Some(ChildState::Stopped),
            };
            if event.event == EventKind::Restarting {
                child.restarts += 1;
            }
            if let Some(state) = state {
                child.state = state;
                child.since_ms = event.ts_ms;
                child.reason = event.reason.clone();
            }
        }
        self.write_line(&event.to_json());
        self.trace(&event);
        self.mirror_to_database(&event);
        let _ = self.tap.send(TreeEvent::Supervision(event));
    }

    /// A state change that is not itself a supervision event (a trader finished starting).
    pub fn set_state(&mut self, actor: ActorKind, user: Option<&UserId>, state: ChildState, reason: Option<String>) {
        let now_ms = self.now_ms();
        let Some(child) = self.children.get_mut(&(actor, user.cloned())) else { return };
        if child.state == state {
            return;
        }
        child.state = state;
        child.since_ms = now_ms;
        child.reason = reason.clone();
        if let Some(user) = user {
            let record = supervision_record(child, user);
            persistence::submit_durable(&self.directory, DurableWrite::UserSupervision(record));
        }
        let _ = self.tap.send(TreeEvent::StateChanged { actor, user: user.cloned(), state, reason });
    }

    pub fn status(&self, actor: ActorKind, user: Option<&UserId>) -> Option<ChildStatus> {
        self.children.get(&(actor, user.cloned())).cloned()
    }

    pub fn children(&self) -> impl Iterator<Item = &ChildStatus> {
        self.children.values()
    }

    /// Lines that could not be written to `supervisor.jsonl` since start.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// Writes a `tree` snapshot line.
    pub fn snapshot(&mut self) {
        let now_ms = self.now_ms();
        let actors: Vec<serde_json::Value> = self
            .children
            .values()
            .map(|child| {
                let mut row = json!({
                    "actor": child.actor.as_str(),
                    "state": child.state.as_str(),
                    "incarnation": child.incarnation,
                    "restarts": child.restarts,
                    "since": rfc3339_ms(child.since_ms),
                });
                if let Some(user) = &child.user {
                    row["user"] = json!(user.as_str());
                }
                if let Some(reason) = &child.reason {
                    row["reason"] = json!(reason);
                }
                if let Some(counters) = &child.counters {
                    row["decisions"] = json!(counters.decisions.load(Ordering::Relaxed));
                    row["skipped"] = json!(counters.skipped.load(Ordering::Relaxed));
                    row["orders"] = json!(counters.orders.load(Ordering::Relaxed));
                }
                row
            })
            .collect();
        let mut counts = BTreeMap::<&str, u32>::new();
        for child in self.children.values() {
            *counts.entry(child.state.as_str()).or_default() += 1;
        }
        let line = json!({
            "ts": rfc3339_ms(now_ms),
            "event": "tree",
            "counts": counts,
            "journal_write_failures": self.write_failures,
            "persistence_writes_refused": self.directory.persistence_writes_refused(),
            "actors": actors,
        });
        self.write_line(&line);
    }

    fn write_line(&mut self, line: &serde_json::Value) {
        let result = serde_json::to_writer(&mut self.writer, line)
            .map_err(std::io::Error::from)
            .and_then(|()| self.writer.write_all(b"\n"));
        if let Err(error) = result {
            self.write_failures += 1;
            tracing::error!(%error, path = %self.path.display(), "supervisor journal: write failed");
        }
    }

    fn trace(&self, event: &SupervisionEvent) {
        let user = event.user.as_ref().map(UserId::as_str).unwrap_or("-");
        let reason = event.reason.as_deref().unwrap_or("");
        let (actor, kind, incarnation) = (event.actor.as_str(), event.event.as_str(), event.incarnation);
        match event.event {
            EventKind::Started
            | EventKind::Restarted
            | EventKind::Stopped
            | EventKind::Readmitted
            | EventKind::Reconfigured
            | EventKind::Paused
            | EventKind::Resumed => {
                tracing::info!(target: "supervisor", actor, user, incarnation, "{kind} {reason}")
            }
            EventKind::Crashed | EventKind::Restarting => {
                tracing::warn!(target: "supervisor", actor, user, incarnation, backoff_ms = event.backoff_ms, "{kind}: {reason}")
            }
            EventKind::Quarantined | EventKind::Halted | EventKind::Escalated => {
                tracing::error!(target: "supervisor", actor, user, incarnation, "{kind}: {reason}")
            }
        }
    }

    fn mirror_to_database(&self, event: &SupervisionEvent) {
        if event.actor == ActorKind::Persistence
            && matches!(event.event, EventKind::Stopped | EventKind::Crashed | EventKind::Escalated)
        {
            // Persistence is down by definition; the line in supervisor.jsonl is the record.
            return;
        }
        let record = SupervisorEventRecord {
            ts_ms: event.ts_ms,
            event: event.event.as_str().to_owned(),
            actor: event.actor.as_str().to_owned(),
            user: event.user.clone(),
            incarnation: Some(event.incarnation),
            reason: event.reason.clone(),
            backoff_ms: event.backoff_ms,
        };
        let supervision = event.user.as_ref().and_then(|user| {
            self.children.get(&(event.actor, Some(user.clone()))).map(|child| supervision_record(child, user))
        });
        persistence::submit_durable(&self.directory, DurableWrite::SupervisorEvent(record));
        if let Some(supervision) = supervision {
            persistence::submit_durable(&self.directory, DurableWrite::UserSupervision(supervision));
        }
    }
}

fn supervision_record(child: &ChildStatus, user: &UserId) -> UserSupervisionRecord {
    UserSupervisionRecord {
        user: user.clone(),
        state: child.state.as_str().to_owned(),
        reason: child.reason.clone(),
        since_ms: child.since_ms,
        incarnation: child.incarnation,
        restart_count: child.restarts,
    }
}
