//! The HTTP API (`[http] listen`, default `127.0.0.1:8377`): health, status, `why`, failure-point
//! history, events, and the operator's admin actions, for people and for the CLI.
//!
//! It runs in the same process as a shared actor, [`HttpApi`], supervised by the root like the
//! others: its incarnation owns an actix-web server on one worker thread, listening on a socket
//! bound once at start-up (so a restarted incarnation serves the same address, and a port that
//! cannot be bound fails the start with a clear error). Handlers only read: the supervision tree
//! through the root, the shared state through the [`Directory`], the database through the
//! persistence actor; admin actions go to the user supervisors. Every handler runs inside
//! [`guarded`], so a panic answers 500 and is logged instead of taking anything down. Errors are
//! JSON `{"error": "..."}` naming the problem, the extractors' own refusals included; a value
//! from the request is echoed cut to its first characters and its length
//! (`crate::limits::excerpt`); request bodies are size-limited. (A request line the HTTP parser
//! itself refuses, such as raw `<` or `>` in the path, is answered by actix-http with a bare 400
//! before any of this runs.)
//!
//! Auth: admin requests need `Authorization: Bearer <token>` (the scheme in any case, RFC 7235),
//! the token read from the environment variable `[http] token_env` names (never logged or
//! echoed); without one configured they are refused. With `protect_reads` the read endpoints
//! need it too. Config validation refuses a non-loopback `listen` without a token.

// Handlers answer a refusal as the `Err` of a `Result<_, HttpResponse>` and return it as it is:
// boxing every refusal would buy nothing on this path.
#![allow(clippy::result_large_err)]

mod api;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures::FutureExt as _;
use serde_json::json;

use crate::actors::Directory;
use crate::actors::trader::UserCounters;
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::UserId;
use crate::limits::{excerpt, excerpt_lines};
use crate::secret::Secret;
use crate::supervision::root::RootSupervisor;

/// What the HTTP actor needs; cloned into every incarnation.
#[derive(Clone)]
pub struct HttpSettings {
    /// Bound once by `server::start`; each incarnation serves a clone of it.
    pub listener: Arc<TcpListener>,
    pub access: Access,
    /// The config the server started with (for `why`, which reads what `bulwark why` reads).
    pub config: Arc<Config>,
    /// The exchange (its circuit breakers are part of the status).
    pub exchange: Arc<dyn crate::exchange::Exchange>,
    /// When the server started (the Monitor's first run is not late before three intervals).
    pub started_at_ms: i64,
    /// Every user's decision counters (`/metrics`).
    pub counters: Arc<BTreeMap<UserId, Arc<UserCounters>>>,
    /// Which server this is (`/health` says it, so the command line can tell servers apart).
    pub instance: crate::instance::InstanceIdentity,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("listen", &self.listener.local_addr().ok())
            .field("token", &self.access.token.is_some())
            .field("protect_reads", &self.access.protect_reads)
            .finish()
    }
}

/// Who may ask what, and how big a request may be.
#[derive(Clone)]
pub struct Access {
    pub token: Option<Secret>,
    pub protect_reads: bool,
    pub body_limit_bytes: usize,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.is_some())
            .field("protect_reads", &self.protect_reads)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .finish()
    }
}

/// Shared by every request of one incarnation.
pub(crate) struct AppState {
    pub settings: HttpSettings,
    pub directory: Arc<Directory>,
    pub root: Addr<RootSupervisor>,
    pub clock: Arc<dyn Clock>,
}

pub struct HttpApi {
    settings: HttpSettings,
    directory: Arc<Directory>,
    root: Addr<RootSupervisor>,
    clock: Arc<dyn Clock>,
    /// The running server of this incarnation (stopped with it).
    server: Option<ServerHandle>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi").field("settings", &self.settings).finish()
    }
}

impl HttpApi {
    pub fn new(
        settings: HttpSettings,
        directory: Arc<Directory>,
        root: Addr<RootSupervisor>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { settings, directory, root, clock, server: None }
    }
}

impl Actor for HttpApi {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A failure here ends the incarnation; the root restarts it with backoff.
        let listener = match self.settings.listener.try_clone() {
            Ok(listener) => listener,
            Err(error) => panic!("http: the listening socket cannot be shared: {error}"),
        };
        let state = web::Data::new(AppState {
            settings: self.settings.clone(),
            directory: self.directory.clone(),
            root: self.root.clone(),
            clock: self.clock.clone(),
        });
        let limit = self.settings.access.body_limit_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(limit))
                // The extractors' refusals are JSON like every other error (their default is a
                // plain-text or empty body).
                .app_data(web::PathConfig::default().error_handler(|refusal, _| extractor_error(refusal, "path")))
                .app_data(web::QueryConfig::default().error_handler(|refusal, _| extractor_error(refusal, "query")))
                .app_data(
                    web::JsonConfig::default()
                        .limit(limit)
                        .error_handler(|refusal, _| extractor_error(refusal, "body")),
                )
                .configure(api::routes)
                .default_service(web::to(|| async { error(404, "no such endpoint") }))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .listen(listener);
        let server = match server {
            Ok(server) => server.run(),
            Err(error) => panic!("http: cannot serve: {error}"),
        };
        self.server = Some(server.handle());
        ctx.spawn(server.into_actor(self).map(|result, _, ctx| {
            match result {
                Ok(()) => tracing::warn!("http: the server stopped"),
                Err(error) => tracing::error!(%error, "http: the server failed"),
            }
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(server) = self.server.take() {
            // Graceful: requests in progress finish (bounded by the shutdown timeout).
            actix::spawn(server.stop(true));
        }
    }
}

/// A JSON error answer.
pub(crate) fn error(status: u16, message: impl Into<String>) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

/// An extractor's refusal (a path, query or body that does not parse) as a JSON 400 naming it.
fn extractor_error(refusal: impl std::fmt::Display, part: &str) -> actix_web::Error {
    let message = format!("bad {part}: {}", excerpt_lines(&refusal.to_string()));
    actix_web::error::InternalError::from_response(message.clone(), error(400, message)).into()
}

/// Runs a handler's work; a panic in it answers 500 (logged) instead of dropping the connection.
pub(crate) async fn guarded(what: &'static str, work: impl Future<Output = HttpResponse>) -> HttpResponse {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(endpoint = what, panic = %message, "http: handler panicked; answered 500");
            error(500, format!("internal error in {what}; it is logged"))
        }
    }
}

/// Whether the request may proceed: admin requests need the bearer token (and one configured);
/// reads need it when `protect_reads`.
pub(crate) fn authorize(request: &HttpRequest, settings: &Access, admin: bool) -> Result<(), HttpResponse> {
    let declared_length = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > settings.body_limit_bytes) {
        return Err(error(
            413,
            format!("request body over {} bytes ([http] body_limit_bytes)", settings.body_limit_bytes),
        ));
    }
    if !admin && !settings.protect_reads {
        return Ok(());
    }
    let Some(token) = &settings.token else {
        return Err(error(403, "the admin API is off: set [http] token_env to the name of a variable holding a token"));
    };
    let presented = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) => Ok(()),
        Some(_) => Err(error(401, "wrong bearer token")),
        None => Err(error(401, "missing Authorization: Bearer <token>")),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is compared without regard
/// to case (RFC 7235 §2.1: `bearer`, `BEARER` and `Bearer` are one scheme); the token is taken as
/// it is.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without an early exit, so the time taken says nothing about how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The earliest time a `since` may name: 2000-01-01T00:00:00Z (bulwark records nothing older).
pub const SINCE_MS_MIN: i64 = 946_684_800_000;

/// How far after now a `since` may name (clocks of the command line and the server may differ).
pub const SINCE_AHEAD_MS_MAX: i64 = 86_400_000;

/// A time given as RFC 3339, epoch milliseconds, or an age before `now_ms` (`90s`, `30m`, `24h`,
/// `7d`), from [`SINCE_MS_MIN`] to a day after `now_ms`. Anything else is refused naming the
/// value (cut): a number too large for a time (`9223372036854775807`, which was echoed back as
/// `invalid-timestamp(…)`), an age whose milliseconds overflow, a time before 2000.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    let latest_ms = now_ms.saturating_add(SINCE_AHEAD_MS_MAX);
    let out_of_range = || {
        format!(
            "since={:?} is out of range: give a time from {} to {} (a day after now)",
            excerpt(text),
            crate::clock::rfc3339_ms(SINCE_MS_MIN),
            crate::clock::rfc3339_ms(latest_ms)
        )
    };
    let in_range = |ms: Option<i64>| ms.filter(|ms| (SINCE_MS_MIN..=latest_ms).contains(ms)).ok_or_else(out_of_range);
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Epoch milliseconds (too many digits for an i64 is out of range too).
        return in_range(text.parse::<i64>().ok());
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return in_range(Some(time.timestamp_millis()));
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    if unit_ms == 0 || number.is_empty() {
        return Err(format!(
            "since={:?} is not a time: give RFC 3339 (2026-11-22T10:00:00Z), epoch milliseconds, or an age like 30m, 24h, 7d",
            excerpt(text)
        ));
    }
    let age_ms = number.parse::<i64>().ok().and_then(|count| count.checked_mul(unit_ms));
    in_range(age_ms.and_then(|age_ms| now_ms.checked_sub(age_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_panicking_handler_answers_500() {
        let response = guarded("test", async { panic!("boom") }).await;
        assert_eq!(response.status(), 500);
        let fine = guarded("test", async { HttpResponse::Ok().finish() }).await;
        assert_eq!(fine.status(), 200);
    }

    #[test]
    fn since_takes_times_and_ages_and_names_what_it_refuses() {
        let now_ms = 1_800_000_000_000;
        assert_eq!(parse_since("24h", now_ms), Ok(now_ms - 86_400_000));
        assert_eq!(parse_since("30m", now_ms), Ok(now_ms - 1_800_000));
        assert_eq!(parse_since("1700000000000", now_ms), Ok(1_700_000_000_000));
        assert_eq!(parse_since("2026-11-22T10:00:00Z", now_ms), Ok(1_795_341_600_000));
        let refused = parse_since("yesterday", now_ms).unwrap_err();
        assert!(refused.contains("\"yesterday\" is not a time"), "{refused}");
        assert!(parse_since("5w", now_ms).is_err());
    }

    #[test]
    fn since_refuses_times_out_of_range_naming_them() {
        let now_ms = 1_800_000_000_000;
        // Was accepted, and echoed back as `invalid-timestamp(9223372036854775807)`.
        for text in ["9223372036854775807", "-9223372036854775808", "99999999999999999999", "-1", "0"] {
            let refused = parse_since(text, now_ms).unwrap_err();
            assert!(
                refused.starts_with(&format!(
                    "since=\"{text}\" is out of range: give a time from 2000-01-01T00:00:00.000Z to "
                )),
                "{refused}"
            );
        }
        // Ages whose milliseconds overflow, or that reach before 2000.
        for text in ["9223372036854775807d", "99999999999999999999s", "365000d"] {
            assert!(parse_since(text, now_ms).unwrap_err().contains("is out of range"), "{text}");
        }
        for text in ["1999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"] {
            assert!(parse_since(text, now_ms).unwrap_err().contains("is out of range"), "{text}");
        }
        // The edges are inside.
        assert_eq!(parse_since("946684800000", now_ms), Ok(SINCE_MS_MIN));
        assert_eq!(parse_since(&(now_ms + SINCE_AHEAD_MS_MAX).to_string(), now_ms), Ok(now_ms + SINCE_AHEAD_MS_MAX));
        assert!(parse_since(&(now_ms + SINCE_AHEAD_MS_MAX + 1).to_string(), now_ms).is_err());
        // A huge value is echoed cut.
        let refused = parse_since(&"9".repeat(20_000), now_ms).unwrap_err();
        assert!(refused.len() < 300 && refused.contains("(20000 bytes)"), "{refused}");
        let refused = parse_since(&"x".repeat(20_000), now_ms).unwrap_err();
        assert!(refused.len() < 300 && refused.contains("(20000 bytes)"), "{refused}");
    }

    #[actix_rt::test]
    async fn an_extractor_refusal_is_a_json_400_with_the_value_cut() {
        let refusal = format!("cannot parse {:?} to an i64", "9".repeat(20_000));
        let response = extractor_error(refusal, "path").error_response();
        assert_eq!(response.status(), 400);
        let body = actix_web::body::to_bytes(response.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.starts_with("bad path: cannot parse \"999") && message.len() < 400, "{message}");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR  s3cret"] {
            assert_eq!(bearer_token(value), Some("s3cret"), "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "Bearer", "Bearer ", "Token s3cret"] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
        use actix_web::test::TestRequest;
        let open = access(Some("s3cret"), false);
        for scheme in ["bearer", "BEARER", "Bearer"] {
            let request =
                TestRequest::default().insert_header(("Authorization", format!("{scheme} s3cret"))).to_http_request();
            assert_eq!(status_of(authorize(&request, &open, true)), 200, "{scheme}");
        }
        let lower_wrong = TestRequest::default().insert_header(("Authorization", "bearer nope")).to_http_request();
        assert_eq!(status_of(authorize(&lower_wrong, &open, true)), 401);
    }

    fn access(token: Option<&str>, protect_reads: bool) -> Access {
        Access { token: token.map(|t| Secret::new(t.to_owned())), protect_reads, body_limit_bytes: 100 }
    }

    fn status_of(result: Result<(), HttpResponse>) -> u16 {
        result.err().map_or(200, |response| response.status().as_u16())
    }

    #[test]
    fn admin_needs_a_configured_token_reads_only_when_protected_and_bodies_are_bounded() {
        use actix_web::test::TestRequest;
        let plain = TestRequest::default().to_http_request();
        let right = TestRequest::default().insert_header(("Authorization", "Bearer s3cret")).to_http_request();
        let wrong = TestRequest::default().insert_header(("Authorization", "Bearer nope")).to_http_request();
        let large = TestRequest::default()
            .insert_header(("Authorization", "Bearer s3cret"))
            .insert_header(("Content-Length", "101"))
            .to_http_request();
        // No token configured: reads pass, admin is off.
        assert_eq!(status_of(authorize(&plain, &access(None, false), false)), 200);
        assert_eq!(status_of(authorize(&right, &access(None, false), true)), 403);
        // A token configured: admin needs it, reads do not (unless protected).
        let open = access(Some("s3cret"), false);
        assert_eq!(status_of(authorize(&plain, &open, true)), 401);
        assert_eq!(status_of(authorize(&wrong, &open, true)), 401);
        assert_eq!(status_of(authorize(&right, &open, true)), 200);
        assert_eq!(status_of(authorize(&plain, &open, false)), 200);
        let protected = access(Some("s3cret"), true);
        assert_eq!(status_of(authorize(&plain, &protected, false)), 401);
        assert_eq!(status_of(authorize(&right, &protected, false)), 200);
        assert_eq!(status_of(authorize(&large, &open, true)), 413);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
