//! Running an actor so that its death is always reported, panics included.
//!
//! In actix 0.13 a panic is not a supervisor failure: tokio catches it, drops the actor's task and
//! nothing is told (see `../shared/reference/actix-supervision.md`). [`spawn_watched`] runs each
//! incarnation of an actor as its own task on a chosen arbiter, awaits that task's join handle on
//! the same arbiter, and reports how it ended (normally, or with the panic message) to a callback.
//! Each incarnation has a fresh mailbox and a fresh address; callers find the current one through
//! the supervisor that owns it.

use std::any::Any;

use actix::dev::channel;
use actix::prelude::*;

/// How one incarnation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    /// The panic message, or `None` when the actor stopped on its own.
    pub panic: Option<String>,
}

/// Reports the exit exactly once, even if the watching task itself is dropped (its arbiter
/// stopped): then the exit reads "arbiter stopped".
struct ExitReport<F: FnOnce(ChildExit)>(Option<F>);

impl<F: FnOnce(ChildExit)> ExitReport<F> {
    fn send(mut self, exit: ChildExit) {
        if let Some(report) = self.0.take() {
            report(exit);
        }
    }
}

impl<F: FnOnce(ChildExit)> Drop for ExitReport<F> {
    fn drop(&mut self) {
        if let Some(report) = self.0.take() {
            report(ChildExit { panic: Some("arbiter stopped".to_owned()) });
        }
    }
}

/// Starts `make()` on `arbiter` with a mailbox of `mailbox_capacity` and calls `on_exit` when that
/// actor's task ends. The actor is built on the arbiter's own thread, so it need not be `Send`.
pub fn spawn_watched<A, F, E>(arbiter: &ArbiterHandle, mailbox_capacity: usize, make: F, on_exit: E) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
    F: FnOnce() -> A + Send + 'static,
    E: FnOnce(ChildExit) + Send + 'static,
{
    let (sender, receiver) = channel::channel(mailbox_capacity);
    let report = ExitReport(Some(on_exit));
    let accepted = arbiter.spawn(async move {
        let report = report;
        let context: Context<A> = Context::with_receiver(receiver);
        let task = actix_rt::spawn(context.into_future(make()));
        let panic = match task.await {
            Ok(()) => None,
            Err(error) if error.is_panic() => Some(panic_message(error.into_panic())),
            Err(error) => Some(format!("task cancelled: {error}")),
        };
        report.send(ChildExit { panic });
    });
    if !accepted {
        // The arbiter is gone; the report (moved into the refused future) has already fired from
        // its drop, so the supervisor hears about it.
        tracing::error!("spawn_watched: arbiter refused the actor (it is stopping)");
    }
    Addr::new(sender)
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}
