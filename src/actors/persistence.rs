//! The persistence actor: the one owner of the bot's database connection, on its own arbiter
//! thread, so a slow disk blocks nobody else. Callers send it [`Run`] closures over
//! [`Store`] (whose methods hold all the SQL) with `send().await`; its mailbox is bounded, so a
//! burst of writes applies back-pressure instead of growing a queue.
//!
//! Owns failure points SYS-DATABASE and (with the filesystem checks) SYS-FILESYSTEM.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::Directory;
use crate::persistence::{Store, StoreError};

/// How often bounded tables are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

pub struct PersistenceActor {
    /// Written once at construction; read when the actor (re)starts.
    database_path: PathBuf,
    /// Opened in `started`; `None` only before that.
    store: Option<Store>,
}

impl std::fmt::Debug for PersistenceActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistenceActor").field("database_path", &self.database_path).finish()
    }
}

impl PersistenceActor {
    pub fn new(database_path: PathBuf) -> Self {
        Self { database_path, store: None }
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match Store::open(&self.database_path) {
            Ok(store) => self.store = Some(store),
            // A panic ends this incarnation; the root supervisor restarts it with backoff and
            // escalates (the process exits non-zero) if the database stays unusable.
            Err(error) => panic!("persistence: {error}"),
        }
        ctx.run_interval(PRUNE_INTERVAL, |actor, _| {
            if let Some(store) = actor.store.as_mut()
                && let Err(error) = store.prune()
            {
                tracing::warn!(%error, "persistence: pruning bounded tables failed");
            }
        });
    }
}

/// An operation on the store, run on the persistence thread.
pub type StoreOperation<R> = Box<dyn FnOnce(&mut Store) -> Result<R, StoreError> + Send>;

/// Runs a closure against the store on the persistence thread.
pub struct Run<R>(StoreOperation<R>);

impl<R> std::fmt::Debug for Run<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Run(..)")
    }
}

impl<R> Run<R> {
    pub fn new(operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static) -> Self {
        Self(Box::new(operation))
    }
}

impl<R: 'static> Message for Run<R> {
    type Result = Result<R, StoreError>;
}

impl<R: 'static> Handler<Run<R>> for PersistenceActor {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, message: Run<R>, _: &mut Context<Self>) -> Result<R, StoreError> {
        let store = self.store.as_mut().ok_or_else(|| StoreError::Unavailable("database not open".to_owned()))?;
        (message.0)(store)
    }
}

/// Runs an operation through whichever persistence incarnation is current, waiting for mailbox
/// space (bounded back-pressure). A missing or dying actor is [`StoreError::Unavailable`].
pub async fn run<R: Send + 'static>(
    directory: &Directory,
    operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let persistence = directory.persistence().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    persistence
        .send(Run::new(operation))
        .await
        .map_err(|error| StoreError::Unavailable(format!("persistence did not answer: {error}")))?
}

/// Queues an operation without waiting for it (fire-and-forget writes such as decision records).
/// Uses `try_send`, so it never grows the mailbox past its bound; when the mailbox is full the
/// write waits on a spawned task instead, still bounded by the mailbox.
pub fn submit(
    directory: &Directory,
    what: &'static str,
    operation: impl FnOnce(&mut Store) -> Result<(), StoreError> + Send + 'static,
) {
    let persistence = match directory.persistence() {
        Ok(persistence) => persistence,
        Err(error) => {
            tracing::warn!(%error, what, "persistence unavailable; record not written");
            return;
        }
    };
    let logged = Run::new(move |store| {
        if let Err(error) = operation(store) {
            tracing::warn!(%error, what, "persistence: write failed");
        }
        Ok(())
    });
    match persistence.try_send(logged) {
        Ok(()) => {}
        Err(SendError::Full(message)) => {
            actix::spawn(async move {
                if let Err(error) = persistence.send(message).await {
                    tracing::warn!(%error, what, "persistence did not take the record");
                }
            });
        }
        Err(SendError::Closed(_)) => tracing::warn!(what, "persistence is restarting; record not written"),
    }
}
