//! One supervisor per user (OTP `one_for_one`, permanent child): it owns the lifecycle of that
//! user's trader and nothing else.
//!
//! When the trader's incarnation ends for any reason other than an orderly shutdown, the
//! supervisor records `crashed`, asks the [`RestartTracker`] what to do, and either schedules a
//! restart after an exponential backoff with jitter (`restarting`, then `restarted`) or, past
//! `max_restarts` within `within_secs`, **quarantines** the user: no new incarnation, so no new
//! orders, the user's open orders left as they are, the reason recorded. It never escalates to the
//! root: one user's crash loop never stops another user.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::actors::trader::{StopTrader, Trader, TraderReport, TraderSeed};
use crate::limits::TRADER_MAILBOX_CAPACITY;
use crate::supervision::journal::{ActorKind, ChildState, EventKind, SharedJournal, SupervisionEvent};
use crate::supervision::policy::{RestartDecision, RestartPolicy, RestartTracker, seed_from_name};
use crate::supervision::watch::{ChildExit, spawn_watched};

/// An incarnation of the trader ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TraderExited {
    pub incarnation: u32,
    pub exit: ChildExit,
}

/// Stop the trader and do not restart it; answers when it has stopped or the deadline passed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub deadline: Duration,
}

/// New strategies, limits or guards for this user (a config reload): the running trader is stopped
/// in order and a new incarnation starts on them. A trader restarting or quarantined picks them up
/// when it next starts; a halted one stays halted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    pub slots: Vec<crate::trader::core::SlotSpec>,
    pub limits: crate::trader::risk::RiskLimits,
    pub guards: Option<crate::guards::GuardSettings>,
    /// What changed, for the journal.
    pub reason: String,
}

/// Let a quarantined user trade again (the Healer, after `[healer] readmit_cooldown_secs`): its
/// restart history is forgotten and a new incarnation starts. Answers whether it was re-admitted
/// (`false`: not quarantined, halted, or shutting down).
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct Readmit {
    pub reason: String,
}

pub struct UserSupervisor {
    seed: TraderSeed,
    /// The trader arbiter this user's incarnations run on.
    arbiter: ArbiterHandle,
    tracker: RestartTracker,
    /// Incarnation number of the newest trader (0 before the first).
    incarnation: u32,
    /// The running incarnation's address; `None` while restarting, quarantined or stopped.
    child: Option<Addr<Trader>>,
    /// A start-up failure the trader reported before stopping (its crash reason).
    last_failure: Option<String>,
    journal: SharedJournal,
    quarantined: bool,
    /// Set when the trader reports that the exchange refuses the user's credentials; the trader
    /// then stops and is not restarted.
    halted: bool,
    shutting_down: bool,
    /// The running trader was told to stop for a reconfiguration: when it exits, the next
    /// incarnation starts at once, and the exit is not a failure.
    reconfiguring: bool,
    /// An operator paused the user: no incarnation runs until `Resume`.
    paused: bool,
    /// Answered when the trader has stopped during shutdown.
    stopped_waiters: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for UserSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSupervisor").field("user", &self.seed.user).field("incarnation", &self.incarnation).finish()
    }
}

impl UserSupervisor {
    pub fn new(seed: TraderSeed, arbiter: ArbiterHandle, policy: RestartPolicy, journal: SharedJournal) -> Self {
        let tracker = RestartTracker::new(policy, seed_from_name(seed.user.as_str()));
        journal.borrow_mut().register(ActorKind::Trader, Some(seed.user.clone()), Some(seed.counters.clone()));
        Self {
            seed,
            arbiter,
            tracker,
            incarnation: 0,
            child: None,
            last_failure: None,
            journal,
            quarantined: false,
            halted: false,
            shutting_down: false,
            reconfiguring: false,
            paused: false,
            stopped_waiters: Vec::new(),
        }
    }

    fn event(&self, event: EventKind, reason: Option<String>, backoff_ms: Option<u64>) {
        let mut journal = self.journal.borrow_mut();
        let ts_ms = journal.now_ms();
        journal.record(SupervisionEvent {
            ts_ms,
            event,
            actor: ActorKind::Trader,
            user: Some(self.seed.user.clone()),
            incarnation: self.incarnation,
            reason,
            backoff_ms,
        });
    }

    fn spawn_child(&mut self, ctx: &mut Context<Self>) {
        self.incarnation += 1;
        let incarnation = self.incarnation;
        let (seed, supervisor, on_exit) = (self.seed.clone(), ctx.address(), ctx.address());
        let child = spawn_watched(
            &self.arbiter,
            TRADER_MAILBOX_CAPACITY,
            move || Trader::new(seed, incarnation, supervisor.recipient()),
            // One message per incarnation, so `do_send` cannot grow the mailbox without bound.
            move |exit| on_exit.do_send(TraderExited { incarnation, exit }),
        );
        self.child = Some(child);
        let kind = if incarnation == 1 { EventKind::Started } else { EventKind::Restarted };
        self.event(kind, None, None);
    }
}

impl Actor for UserSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.spawn_child(ctx);
    }
}

impl Handler<TraderExited> for UserSupervisor {
    type Result = ();

    fn handle(&mut self, message: TraderExited, ctx: &mut Context<Self>) {
        if message.incarnation != self.incarnation {
            return;
        }
        self.child = None;
        if self.halted {
            // The halted trader stopped itself; it stays down (and stays "halted" in the status).
            for waiter in self.stopped_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        if self.shutting_down {
            self.event(EventKind::Stopped, Some("shutdown".to_owned()), None);
            for waiter in self.stopped_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        if self.paused && message.exit.panic.is_none() {
            // Stopped for the pause: it stays down until resumed.
            self.reconfiguring = false;
            return;
        }
        if std::mem::take(&mut self.reconfiguring) && message.exit.panic.is_none() && self.last_failure.is_none() {
            self.spawn_child(ctx);
            return;
        }
        let reason = match message.exit.panic {
            Some(panic) => format!("panic: {panic}"),
            None => self.last_failure.take().unwrap_or_else(|| "stopped unexpectedly".to_owned()),
        };
        self.event(EventKind::Crashed, Some(reason.clone()), None);
        let now_ms = self.journal.borrow().now_ms();
        match self.tracker.on_failure(now_ms) {
            RestartDecision::Restart { backoff_ms, .. } => {
                self.event(EventKind::Restarting, Some(reason), Some(backoff_ms));
                ctx.run_later(Duration::from_millis(backoff_ms), |supervisor, ctx| {
                    if !supervisor.shutting_down && !supervisor.paused && supervisor.child.is_none() {
                        supervisor.spawn_child(ctx);
                    }
                });
            }
            RestartDecision::GiveUp { failures_in_window } => {
                let policy = self.tracker.policy();
                self.quarantined = true;
                let why = format!(
                    "{failures_in_window} failures within {} s (max_restarts {}); last: {reason}",
                    policy.within_ms / 1_000,
                    policy.max_restarts
                );
                self.event(EventKind::Quarantined, Some(why), None);
            }
        }
    }
}

impl Handler<TraderReport> for UserSupervisor {
    type Result = ();

    fn handle(&mut self, report: TraderReport, _: &mut Context<Self>) {
        match report {
            TraderReport::Ready { incarnation, detail } if incarnation == self.incarnation => {
                self.journal.borrow_mut().set_state(
                    ActorKind::Trader,
                    Some(&self.seed.user),
                    ChildState::Running,
                    Some(detail),
                );
            }
            TraderReport::Failed { incarnation, reason } if incarnation == self.incarnation => {
                self.last_failure = Some(format!("start-up failed: {reason}"));
            }
            TraderReport::Halted { incarnation, reason } if incarnation == self.incarnation => {
                self.halted = true;
                self.event(EventKind::Halted, Some(reason), None);
            }
            _ => {}
        }
    }
}

impl Handler<Readmit> for UserSupervisor {
    type Result = bool;

    fn handle(&mut self, message: Readmit, ctx: &mut Context<Self>) -> bool {
        if !self.quarantined || self.halted || self.shutting_down || self.paused || self.child.is_some() {
            return false;
        }
        self.quarantined = false;
        self.tracker.reset();
        self.event(EventKind::Readmitted, Some(message.reason), None);
        self.spawn_child(ctx);
        true
    }
}

impl Handler<Reconfigure> for UserSupervisor {
    type Result = ();

    fn handle(&mut self, message: Reconfigure, _: &mut Context<Self>) {
        self.seed.slots = message.slots;
        self.seed.limits = message.limits;
        self.seed.guards = message.guards;
        self.restart_in_order(message.reason);
    }
}

impl UserSupervisor {
    /// Records `reconfigured` and has the running trader stop in order, its next incarnation
    /// starting at once (not a failure). A trader that is not running starts afresh later anyway.
    fn restart_in_order(&mut self, reason: String) {
        self.event(EventKind::Reconfigured, Some(reason), None);
        if self.halted || self.shutting_down || self.reconfiguring || self.paused {
            return;
        }
        if let Some(child) = &self.child {
            if child.try_send(StopTrader).is_ok() {
                self.reconfiguring = true;
            } else {
                // Its mailbox is full or closed: it runs on until its next restart, which takes
                // the new seed.
                tracing::warn!(user = %self.seed.user, "supervisor: could not deliver stop for the reconfiguration; the new settings apply at the trader's next start");
            }
        }
    }
}

/// An operator's request over the admin API. Answers what was done, or why it was not.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, String>")]
pub enum OperatorRequest {
    /// Stop the trader and keep it stopped (its open orders and positions are left as they are).
    Pause {
        reason: String,
    },
    Resume {
        reason: String,
    },
    /// Restart the trader in order so that it reloads its state (after a lock was cleared).
    Restart {
        reason: String,
    },
    /// Make the trader panic (`[chaos] enabled` only; the caller checks).
    Crash {
        reason: String,
    },
}

impl Handler<OperatorRequest> for UserSupervisor {
    type Result = Result<String, String>;

    fn handle(&mut self, request: OperatorRequest, ctx: &mut Context<Self>) -> Self::Result {
        let user = self.seed.user.clone();
        if self.shutting_down {
            return Err("the server is shutting down".to_owned());
        }
        match request {
            OperatorRequest::Pause { reason } => {
                if self.paused {
                    return Err(format!("{user} is already paused"));
                }
                if self.halted {
                    return Err(format!("{user} is halted (refused credentials); there is nothing to pause"));
                }
                if self.quarantined {
                    return Err(format!(
                        "{user} is quarantined; nothing trades (the Healer re-admits it after its cool-down)"
                    ));
                }
                if let Some(child) = &self.child
                    && child.try_send(StopTrader).is_err()
                {
                    return Err(format!("{user}'s trader did not take the stop (mailbox full or closed); not paused"));
                }
                self.paused = true;
                self.event(EventKind::Paused, Some(reason), None);
                Ok(format!("{user} paused: its trader stops and is not restarted until resumed"))
            }
            OperatorRequest::Resume { reason } => {
                if !self.paused {
                    return Err(format!("{user} is not paused"));
                }
                self.paused = false;
                self.event(EventKind::Resumed, Some(reason), None);
                if self.child.is_some() {
                    // Still stopping for the pause: its exit starts the next incarnation.
                    self.reconfiguring = true;
                } else if !self.quarantined && !self.halted {
                    self.spawn_child(ctx);
                }
                Ok(format!("{user} resumed"))
            }
            OperatorRequest::Restart { reason } => {
                self.restart_in_order(reason);
                Ok(format!("{user}'s trader restarts in order"))
            }
            OperatorRequest::Crash { reason } => match &self.child {
                Some(child) if child.try_send(crate::actors::trader::ChaosCrash { reason: reason.clone() }).is_ok() => {
                    Ok(format!("{user}'s trader was told to panic: {reason}"))
                }
                Some(_) => Err(format!("{user}'s trader did not take the request (mailbox full or closed)")),
                None => Err(format!("{user} has no running trader")),
            },
        }
    }
}

impl Handler<Shutdown> for UserSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, message: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let Some(child) = self.child.clone() else {
            if !self.quarantined && !self.halted {
                self.event(EventKind::Stopped, Some("shutdown".to_owned()), None);
            }
            return Box::pin(async {});
        };
        let (done, stopped) = oneshot::channel();
        self.stopped_waiters.push(done);
        if child.try_send(StopTrader).is_err() {
            // Mailbox full or closed: the exit report will still arrive (or the deadline passes).
            tracing::warn!(user = %self.seed.user, "supervisor: could not deliver stop to the trader");
        }
        let user = self.seed.user.clone();
        Box::pin(async move {
            if tokio::time::timeout(message.deadline, stopped).await.is_err() {
                tracing::warn!(%user, "supervisor: trader did not stop before the deadline");
            }
        })
    }
}
