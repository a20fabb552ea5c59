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

/// Runs an operation through whichever persistence incarnation is current, first waiting for one of
/// the bounded in-flight permits (back-pressure). A missing or dying actor is
/// [`StoreError::Unavailable`].
pub async fn run<R: Send + 'static>(
    directory: &Directory,
    operation: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let persistence = directory.persistence().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let permit = directory
        .persistence_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let holding = move |store: &mut Store| {
        let result = operation(store);
        drop(permit);
        result
    };
    persistence
        .send(Run::new(holding))
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
    let persistence = match directory.persistence() {
        Ok(persistence) => persistence,
        Err(error) => {
            tracing::warn!(%error, what, "persistence unavailable; record not written");
            return;
        }
    };
    let Ok(permit) = directory.persistence_permits.clone().try_acquire_owned() else {
        let refused = directory.persistence_writes_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if refused == 1 || refused.is_power_of_two() {
            tracing::warn!(what, refused, "persistence saturated: record refused (counted)");
        }
        return;
    };
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
        let addr = spawn_watched(&arbiter.handle(), 16, move || PersistenceActor::new(path), |_| {});
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
}
