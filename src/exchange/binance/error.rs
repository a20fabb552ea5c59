//! How every Binance answer maps to an [`ExchangeError`] class (see `exchange-apis.md` §1.1, §1.8):
//! whether nothing was executed (retry), the outcome is unknown (query the client order id), the
//! host is throttling or banning us, the credentials are bad, or the request was refused.

use serde::Deserialize;

use crate::exchange::{ExchangeError, Transport};

/// Binance's error body: `{"code": -1121, "msg": "Invalid symbol."}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: i64,
    msg: String,
}

/// Whether a request may change state on the exchange (orders, cancels): a write whose outcome is
/// unclear must be resolved, never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Read,
    Write,
}

/// How long a ban lasts when the exchange does not say.
const BAN_MS_DEFAULT: i64 = 120_000;
/// How long to back off after a 429 when the exchange does not say.
const RATE_LIMIT_MS_DEFAULT: u64 = 60_000;

/// Maps a non-2xx answer. `retry_after_secs` is the `Retry-After` header, if any.
pub fn from_response(
    status: u16,
    body: &str,
    retry_after_secs: Option<u64>,
    effect: Effect,
    now_ms: i64,
) -> ExchangeError {
    let parsed: Option<ErrorBody> = serde_json::from_str(body).ok();
    let unknown = |detail: String| match effect {
        Effect::Write => ExchangeError::UnknownOutcome { detail },
        Effect::Read => ExchangeError::Retryable { detail },
    };
    match status {
        418 => {
            let until_ms = retry_after_secs
                .map(|secs| now_ms + secs as i64 * 1_000)
                .or_else(|| parsed.as_ref().and_then(|b| banned_until_ms(&b.msg)))
                .unwrap_or(now_ms + BAN_MS_DEFAULT);
            return ExchangeError::Banned { until_ms };
        }
        429 => {
            let retry_after_ms = retry_after_secs.map(|secs| secs * 1_000).unwrap_or(RATE_LIMIT_MS_DEFAULT);
            return ExchangeError::RateLimited { retry_after_ms };
        }
        _ => {}
    }
    if let Some(ErrorBody { code, msg }) = parsed {
        return match code {
            // Nothing was executed; a retry after re-syncing the clock can succeed.
            -1021 => ExchangeError::Retryable { detail: format!("{code}: {msg} (clock re-synced)") },
            -1001 | -1008 => ExchangeError::Retryable { detail: format!("{code}: {msg}") },
            -1000 | -1006 | -1007 => unknown(format!("{code}: {msg}")),
            -1003 => ExchangeError::RateLimited { retry_after_ms: RATE_LIMIT_MS_DEFAULT },
            -1022 | -2008 | -2014 | -2015 => ExchangeError::Auth { detail: format!("{code}: {msg}") },
            -4116 => ExchangeError::Duplicate { code, msg },
            _ if status >= 500 && is_unknown_error(&msg) => unknown(format!("{status}: {msg}")),
            _ => ExchangeError::Rejected { code, msg },
        };
    }
    let excerpt: String = body.chars().take(200).collect();
    match status {
        401 => ExchangeError::Auth { detail: format!("401: {excerpt}") },
        // The web application firewall: back off as for a rate limit.
        403 => ExchangeError::RateLimited { retry_after_ms: RATE_LIMIT_MS_DEFAULT },
        408 => unknown(format!("408: {excerpt}")),
        500..=599 if body.contains("Service Unavailable") => {
            ExchangeError::Retryable { detail: format!("{status}: {excerpt}") }
        }
        500..=599 => unknown(format!("{status}: {excerpt}")),
        _ => ExchangeError::Rejected { code: -i64::from(status), msg: excerpt },
    }
}

/// Binance's 503 "Unknown error, please check your request or try again later.": the request may
/// have been executed.
fn is_unknown_error(msg: &str) -> bool {
    msg.contains("Unknown error") || msg.contains("unknown error")
}

/// The time in "Way too many requests; IP(...) banned until 1615183669840".
fn banned_until_ms(msg: &str) -> Option<i64> {
    let rest = &msg[msg.find("banned until")? + "banned until".len()..];
    rest.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Maps a transport failure (no HTTP answer). The URL is never part of the message.
pub fn from_transport(error: &reqwest::Error, effect: Effect) -> ExchangeError {
    let detail = error_chain(error);
    if error.is_connect() {
        // The connection was never made: nothing was sent.
        let transport = transport_of(error, &detail);
        return ExchangeError::Unreachable { transport, detail: format!("cannot connect: {detail}") };
    }
    let timed_out = error.is_timeout();
    let detail = if timed_out { format!("no answer in time: {detail}") } else { detail };
    match effect {
        Effect::Write => ExchangeError::UnknownOutcome { detail },
        Effect::Read if timed_out => ExchangeError::Unreachable { transport: Transport::Timeout, detail },
        Effect::Read => ExchangeError::Retryable { detail },
    }
}

/// Which connection failure this is: the io error kind where one is in the chain, else what the
/// resolver or the TLS layer said.
fn transport_of(error: &reqwest::Error, detail: &str) -> Transport {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Transport::Refused,
                std::io::ErrorKind::TimedOut => return Transport::Timeout,
                _ => {}
            }
        }
        source = current.source();
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        Transport::Dns
    } else if lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake") {
        Transport::Tls
    } else if lower.contains("refused") {
        Transport::Refused
    } else if error.is_timeout() || lower.contains("timed out") {
        Transport::Timeout
    } else {
        Transport::Other
    }
}

/// The error and its causes, with the request's URL cut down to its path: the query string holds
/// the signed parameters, which have no place in a log.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    match error.url() {
        Some(url) => text.replace(url.as_str(), url.path()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn write(status: u16, body: &str) -> ExchangeError {
        from_response(status, body, None, Effect::Write, NOW)
    }

    fn read(status: u16, body: &str) -> ExchangeError {
        from_response(status, body, None, Effect::Read, NOW)
    }

    #[test]
    fn service_unavailable_is_retryable_and_unknown_error_is_ambiguous() {
        assert!(matches!(write(503, "Service Unavailable."), ExchangeError::Retryable { .. }));
        let unknown = r#"{"code":-1000,"msg":"Unknown error, please check your request or try again later."}"#;
        assert!(matches!(write(503, unknown), ExchangeError::UnknownOutcome { .. }));
        assert!(matches!(read(503, unknown), ExchangeError::Retryable { .. }), "a read is simply retried");
        assert!(matches!(write(502, "<html>bad gateway</html>"), ExchangeError::UnknownOutcome { .. }));
    }

    #[test]
    fn codes_map_to_their_classes() {
        let body = |code: i64| format!(r#"{{"code":{code},"msg":"m"}}"#);
        assert!(matches!(write(500, &body(-1001)), ExchangeError::Retryable { .. }));
        assert!(matches!(write(503, &body(-1008)), ExchangeError::Retryable { .. }));
        assert!(matches!(write(400, &body(-1006)), ExchangeError::UnknownOutcome { .. }));
        assert!(matches!(write(408, &body(-1007)), ExchangeError::UnknownOutcome { .. }));
        assert!(matches!(write(400, &body(-1021)), ExchangeError::Retryable { .. }));
        assert!(matches!(write(400, &body(-2014)), ExchangeError::Auth { .. }));
        assert!(matches!(write(401, &body(-2015)), ExchangeError::Auth { .. }));
        assert!(matches!(write(400, &body(-1022)), ExchangeError::Auth { .. }));
        assert!(matches!(write(400, &body(-4116)), ExchangeError::Duplicate { code: -4116, .. }));
        assert!(matches!(write(400, &body(-2019)), ExchangeError::Rejected { code: -2019, .. }));
        assert!(matches!(write(400, &body(-4164)), ExchangeError::Rejected { code: -4164, .. }));
        assert!(matches!(write(400, &body(-2010)), ExchangeError::Rejected { code: -2010, .. }));
    }

    #[test]
    fn unknown_codes_keep_the_raw_code_and_message() {
        let error = write(400, r#"{"code":-9999,"msg":"Something new."}"#);
        assert_eq!(error, ExchangeError::Rejected { code: -9999, msg: "Something new.".into() });
    }

    #[test]
    fn rate_limits_and_bans_carry_their_times() {
        let throttled = from_response(429, r#"{"code":-1003,"msg":"Too many requests"}"#, Some(7), Effect::Read, NOW);
        assert_eq!(throttled, ExchangeError::RateLimited { retry_after_ms: 7_000 });
        let banned_by_header = from_response(418, "", Some(30), Effect::Read, NOW);
        assert_eq!(banned_by_header, ExchangeError::Banned { until_ms: NOW + 30_000 });
        let body = r#"{"code":-1003,"msg":"Way too many requests; IP(1.2.3.4) banned until 1700000123456. Please use the websocket."}"#;
        assert_eq!(read(418, body), ExchangeError::Banned { until_ms: 1_700_000_123_456 });
        assert_eq!(read(418, "teapot"), ExchangeError::Banned { until_ms: NOW + BAN_MS_DEFAULT });
    }

    #[test]
    fn bodies_that_are_not_binance_errors() {
        assert!(matches!(read(401, "Unauthorized"), ExchangeError::Auth { .. }));
        assert!(matches!(read(403, "WAF"), ExchangeError::RateLimited { .. }));
        assert_eq!(read(404, "Not Found"), ExchangeError::Rejected { code: -404, msg: "Not Found".into() });
    }
}
