//! The Notifier: tells operators about trader crashes, quarantines, re-admissions, halts,
//! escalations, kill switches, failure points turning critical (and recovering) and healing
//! actions that failed — on Telegram (`sendMessage`) and/or a JSON webhook, as `[notify]` says.
//!
//! Senders use `try_send` and never wait: a full mailbox drops the notification (counted and
//! logged). Each dedup key gets one message per `rate_window`, then a count ([`RateLimiter`]).
//! Delivery runs in the background, one message at a time from a bounded queue, with retries and
//! backoff; a destination that keeps failing is logged and the message dropped — trading never
//! waits for it. The bot token and the webhook URL live in [`Secret`]s: no log line, error or
//! message carries them (reqwest errors are logged without their URL).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use crate::clock::Clock;
use crate::exchange::breaker::{BreakerPolicy, CircuitBreaker, log_transition};
use crate::notify::{Notification, RateLimiter, Severity};
use crate::secret::Secret;

/// Notifications waiting for delivery; beyond it the oldest is dropped (counted).
pub const NOTIFY_QUEUE_MAX: usize = 256;
/// Attempts per destination per message.
const DELIVERY_ATTEMPTS_MAX: u32 = 3;
const DELIVERY_BACKOFF_MS_INITIAL: u64 = 1_000;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where notifications go (secrets resolved from the environment at start).
#[derive(Clone, Default)]
pub struct Destinations {
    /// (sendMessage URL base, bot token, chat id).
    pub telegram: Option<(url::Url, Secret, String)>,
    pub webhook: Option<Secret>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations")
            .field("telegram", &self.telegram.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

/// Something an operator should know.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Notify {
    pub key: String,
    pub severity: Severity,
    pub text: String,
}

/// Delivery counters (for status surfaces and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub dropped_full: u64,
    /// Deliveries to a destination skipped because its circuit breaker was open.
    pub skipped_breaker_open: u64,
}

#[derive(Debug, Message)]
#[rtype(result = "NotifierStats")]
pub struct GetNotifierStats;

pub struct Notifier {
    destinations: Destinations,
    clock: Arc<dyn Clock>,
    limiter: RateLimiter,
    queue: VecDeque<Notification>,
    delivering: bool,
    http: reqwest::Client,
    stats: NotifierStats,
    flush_interval: Duration,
    /// One circuit breaker per destination (Telegram, webhook): a destination that keeps failing
    /// is not asked again until its probe; the other still gets every message. Transitions are
    /// logged (a broken notifier cannot tell anyone through itself). Written and read here only.
    telegram_breaker: CircuitBreaker,
    webhook_breaker: CircuitBreaker,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("destinations", &self.destinations).field("queue", &self.queue.len()).finish()
    }
}

impl Notifier {
    pub fn new(
        destinations: Destinations,
        rate_window: Duration,
        clock: Arc<dyn Clock>,
        breaker: BreakerPolicy,
    ) -> Self {
        let http = reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build().unwrap_or_default();
        Self {
            destinations,
            clock,
            limiter: RateLimiter::new(rate_window.as_millis() as i64),
            queue: VecDeque::new(),
            delivering: false,
            http,
            stats: NotifierStats::default(),
            flush_interval: (rate_window / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            telegram_breaker: CircuitBreaker::new(breaker),
            webhook_breaker: CircuitBreaker::new(breaker),
        }
    }

    fn enqueue(&mut self, notification: Notification, ctx: &mut Context<Self>) {
        tracing::info!(target: "notify", key = %notification.key, severity = notification.severity.as_str(), "{}", notification.text);
        if self.destinations.telegram.is_none() && self.destinations.webhook.is_none() {
            return;
        }
        if self.queue.len() >= NOTIFY_QUEUE_MAX {
            self.queue.pop_front();
            self.stats.dropped_full += 1;
            tracing::warn!(target: "notify", "notification queue full: the oldest was dropped");
        }
        self.queue.push_back(notification);
        self.deliver_next(ctx);
    }

    /// Sends the oldest queued notification to every destination, then the next.
    fn deliver_next(&mut self, ctx: &mut Context<Self>) {
        if self.delivering {
            return;
        }
        let Some(notification) = self.queue.pop_front() else { return };
        self.delivering = true;
        let now_ms = self.clock.now_ms();
        let admit = |breaker: &mut CircuitBreaker, name: &str, configured: bool| -> bool {
            if !configured {
                return false;
            }
            match breaker.admit(now_ms) {
                Ok(transition) => {
                    if let Some(transition) = transition {
                        log_transition(name, &transition);
                    }
                    true
                }
                Err(_) => false,
            }
        };
        let telegram_admitted =
            admit(&mut self.telegram_breaker, "notify:telegram", self.destinations.telegram.is_some());
        let webhook_admitted = admit(&mut self.webhook_breaker, "notify:webhook", self.destinations.webhook.is_some());
        let skipped = u64::from(self.destinations.telegram.is_some() && !telegram_admitted)
            + u64::from(self.destinations.webhook.is_some() && !webhook_admitted);
        self.stats.skipped_breaker_open += skipped;
        let (http, destinations) = (self.http.clone(), self.destinations.clone());
        let work = async move {
            let (mut telegram, mut webhook) = (None, None);
            if let (Some((base, token, chat_id)), true) = (&destinations.telegram, telegram_admitted) {
                let text = format!("[bulwark {}] {}", notification.severity.as_str(), notification.text);
                let body = json!({ "chat_id": chat_id, "text": text, "disable_web_page_preview": true });
                let url = format!("{}bot{}/sendMessage", with_slash(base), token.expose());
                telegram = Some(post_with_retries(&http, &url, &body).await);
            }
            if let (Some(webhook_url), true) = (&destinations.webhook, webhook_admitted) {
                let body = serde_json::to_value(&notification).unwrap_or_default();
                webhook = Some(post_with_retries(&http, webhook_url.expose(), &body).await);
            }
            (telegram, webhook)
        };
        ctx.spawn(work.into_actor(self).map(move |(telegram, webhook), notifier, ctx| {
            notifier.delivering = false;
            let now_ms = notifier.clock.now_ms();
            let mut failures = Vec::new();
            for (name, outcome, breaker) in [
                ("notify:telegram", telegram, &mut notifier.telegram_breaker),
                ("notify:webhook", webhook, &mut notifier.webhook_breaker),
            ] {
                let transition = match outcome {
                    Some(Ok(())) => breaker.on_success(),
                    Some(Err(error)) => {
                        let transition = breaker.on_failure(now_ms, &error);
                        failures.push(format!("{}: {error}", name.trim_start_matches("notify:")));
                        transition
                    }
                    None => None,
                };
                if let Some(transition) = transition {
                    log_transition(name, &transition);
                }
            }
            if skipped > 0 {
                failures.push(format!("{skipped} destination(s) skipped: circuit breaker open"));
            }
            if failures.is_empty() {
                notifier.stats.delivered += 1;
            } else {
                notifier.stats.failed += 1;
                tracing::warn!(target: "notify", "notification not delivered: {}", failures.join("; "));
            }
            notifier.deliver_next(ctx);
        }));
    }
}

fn with_slash(url: &url::Url) -> String {
    let text = url.as_str();
    if text.ends_with('/') { text.to_owned() } else { format!("{text}/") }
}

/// POSTs JSON; retries a failure that may pass (connection, 429, 5xx) with backoff. Errors never
/// carry the URL (it may hold a token).
async fn post_with_retries(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match http.post(url).json(body).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let retryable = status.as_u16() == 429 || status.is_server_error();
                (format!("HTTP {status}"), retryable)
            }
            Err(error) => (error.without_url().to_string(), true),
        };
        let (error, retryable) = outcome;
        if !retryable || attempt >= DELIVERY_ATTEMPTS_MAX {
            return Err(format!("{error} after {attempt} attempt(s)"));
        }
        tokio::time::sleep(Duration::from_millis(DELIVERY_BACKOFF_MS_INITIAL << (attempt - 1))).await;
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.flush_interval, |notifier, ctx| {
            let now_ms = notifier.clock.now_ms();
            for summary in notifier.limiter.flush(now_ms) {
                notifier.enqueue(summary, ctx);
            }
        });
    }
}

impl Handler<Notify> for Notifier {
    type Result = ();

    fn handle(&mut self, message: Notify, ctx: &mut Context<Self>) {
        let now_ms = self.clock.now_ms();
        match self.limiter.admit(&message.key, message.severity, &message.text, now_ms) {
            Some(notification) => self.enqueue(notification, ctx),
            None => self.stats.suppressed += 1,
        }
    }
}

impl Handler<GetNotifierStats> for Notifier {
    type Result = MessageResult<GetNotifierStats>;

    fn handle(&mut self, _: GetNotifierStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}

/// Sends a notification without waiting; a notifier that is restarting or full drops it (logged).
pub fn notify(
    directory: &crate::actors::Directory,
    key: impl Into<String>,
    severity: Severity,
    text: impl Into<String>,
) {
    let message = Notify { key: key.into(), severity, text: text.into() };
    match directory.notifier() {
        Ok(notifier) => {
            if let Err(error) = notifier.try_send(message) {
                tracing::warn!(target: "notify", %error, "notification dropped (notifier busy or restarting)");
            }
        }
        Err(error) => {
            tracing::warn!(target: "notify", %error, key = %message.key, "notification dropped: {}", message.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[actix_rt::test]
    async fn a_destination_that_keeps_failing_is_not_asked_while_its_breaker_is_open() {
        let telegram = wiremock::MockServer::start().await;
        // A refusal that no retry fixes: each notification is one failure, at once.
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(400))
            .mount(&telegram)
            .await;
        let destinations = Destinations {
            telegram: Some((telegram.uri().parse().unwrap(), Secret::new("1:token".to_owned()), "42".to_owned())),
            webhook: None,
        };
        let policy = BreakerPolicy { failures_max: 5, window_ms: 60_000, open_ms: 300_000 };
        let notifier = Notifier::new(destinations, Duration::from_secs(60), Arc::new(SystemClock), policy).start();
        for n in 0..7 {
            notifier
                .send(Notify { key: format!("key-{n}"), severity: Severity::Warning, text: format!("message {n}") })
                .await
                .unwrap();
        }
        let settled = async {
            loop {
                let stats = notifier.send(GetNotifierStats).await.unwrap();
                if stats.failed == 7 {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let stats = tokio::time::timeout(Duration::from_secs(30), settled).await.expect("every message handled");
        assert_eq!(stats.skipped_breaker_open, 2, "{stats:?}");
        let requests = telegram.received_requests().await.unwrap();
        assert_eq!(requests.len(), 5, "five failures open the breaker; the next two are not sent");
    }
}
