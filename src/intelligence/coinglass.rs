//! The CoinGlass API v4 client (`../shared/reference/exchange-apis.md` §5): pair-level history
//! series for one (symbol, interval) on Binance, merged by time into an [`IntelSnapshot`].
//!
//! Every request carries the `CG-API-KEY` header (marked sensitive; the key never appears in an
//! error). Success is HTTP 200 **and** `code == "0"`; numbers come as strings or floats. CoinGlass
//! sends its refusals over HTTP 200 with the code in the body (`{"code":"401","msg":"API key
//! missing."}`); an HTTP 401 or 429, as its docs word them, is read the same way. A series
//! that fails makes the whole snapshot fail with the reason (the guards then run without
//! intelligence and SYS-INTEL-API reports it).

use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::domain::{Symbol, Timeframe};
use crate::intelligence::{IntelInterval, IntelSnapshot};
use crate::secret::Secret;

const TAKER: &str = "/api/futures/v2/taker-buy-sell-volume/history";
const LIQUIDATIONS: &str = "/api/futures/liquidation/history";
const OPEN_INTEREST: &str = "/api/futures/open-interest/history";
const FUNDING: &str = "/api/futures/funding-rate/history";
const LONG_SHORT: &str = "/api/futures/global-long-short-account-ratio/history";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntelError {
    /// The request did not get an answer (connection, timeout): retry later.
    #[error("CoinGlass unreachable ({endpoint}): {detail}")]
    Unreachable { endpoint: &'static str, detail: String },
    /// 401: the key is missing, wrong, or the plan does not cover the endpoint: not retryable.
    #[error("CoinGlass refused the API key ({endpoint}): {msg}")]
    Auth { endpoint: &'static str, msg: String },
    /// 429: the plan's per-minute limit.
    #[error("CoinGlass rate limit ({endpoint}): {msg}")]
    RateLimited { endpoint: &'static str, msg: String },
    /// Any other refusal (HTTP status or business code), kept raw.
    #[error("CoinGlass error {code} ({endpoint}): {msg}")]
    Api { endpoint: &'static str, code: String, msg: String },
    /// A body that is not the documented shape.
    #[error("CoinGlass answered malformed data ({endpoint}): {detail}")]
    Malformed { endpoint: &'static str, detail: String },
}

impl IntelError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, IntelError::Auth { .. } | IntelError::Malformed { .. })
    }
}

#[derive(Debug, Clone)]
pub struct CoinGlassClient {
    http: reqwest::Client,
    base_url: Url,
    api_key: Secret,
    /// The exchange whose pairs are asked for (`Binance`).
    exchange: &'static str,
}

impl CoinGlassClient {
    pub fn new(base_url: Url, api_key: Secret, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the CoinGlass HTTP client: {e}"))?;
        Ok(Self { http, base_url, api_key, exchange: "Binance" })
    }

    /// The newest `limit` intervals of every series.
    pub async fn snapshot(
        &self,
        symbol: &Symbol,
        timeframe: Timeframe,
        limit: u16,
        now_ms: i64,
    ) -> Result<IntelSnapshot, IntelError> {
        // At once: five requests, one timeout's worth of waiting.
        let (taker, liquidations, open_interest, funding, long_short) = futures::try_join!(
            self.series(TAKER, symbol, timeframe, limit),
            self.series(LIQUIDATIONS, symbol, timeframe, limit),
            self.series(OPEN_INTEREST, symbol, timeframe, limit),
            self.series(FUNDING, symbol, timeframe, limit),
            self.series(LONG_SHORT, symbol, timeframe, limit),
        )?;
        merge(symbol, timeframe, now_ms, &taker, &liquidations, &open_interest, &funding, &long_short)
    }

    async fn series(
        &self,
        endpoint: &'static str,
        symbol: &Symbol,
        timeframe: Timeframe,
        limit: u16,
    ) -> Result<Vec<Value>, IntelError> {
        let mut url = self
            .base_url
            .join(endpoint)
            .map_err(|e| IntelError::Malformed { endpoint, detail: format!("bad base URL: {e}") })?;
        url.query_pairs_mut()
            .append_pair("exchange", self.exchange)
            .append_pair("symbol", symbol.as_str())
            .append_pair("interval", timeframe.as_str())
            .append_pair("limit", &limit.to_string());
        let mut key = reqwest::header::HeaderValue::from_str(self.api_key.expose())
            .map_err(|_| IntelError::Auth { endpoint, msg: "the API key is not a valid header value".to_owned() })?;
        key.set_sensitive(true);
        let response = self
            .http
            .get(url)
            .header("CG-API-KEY", key)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| IntelError::Unreachable { endpoint, detail: e.without_url().to_string() })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| IntelError::Unreachable { endpoint, detail: e.without_url().to_string() })?;
        parse_envelope(endpoint, status.as_u16(), &body)
    }
}

/// Checks the HTTP status and the `{code, msg, data}` envelope; returns the `data` rows.
pub fn parse_envelope(endpoint: &'static str, status: u16, body: &str) -> Result<Vec<Value>, IntelError> {
    let envelope: Option<Value> = serde_json::from_str(body).ok();
    let code = envelope.as_ref().map(|e| match &e["code"] {
        Value::String(code) => code.clone(),
        Value::Number(code) => code.to_string(),
        _ => String::new(),
    });
    let msg = envelope.as_ref().and_then(|e| e["msg"].as_str()).unwrap_or("").chars().take(200).collect::<String>();
    let code_is = |wanted: &str| code.as_deref() == Some(wanted);
    if status == 401 || code_is("401") {
        return Err(IntelError::Auth { endpoint, msg });
    }
    if status == 429 || code_is("429") {
        return Err(IntelError::RateLimited { endpoint, msg });
    }
    if status != 200 || !code_is("0") {
        return Err(IntelError::Api {
            endpoint,
            code: code.filter(|c| !c.is_empty()).unwrap_or_else(|| format!("HTTP {status}")),
            msg,
        });
    }
    match envelope.map(|mut e| e["data"].take()) {
        Some(Value::Array(rows)) => Ok(rows),
        _ => Err(IntelError::Malformed { endpoint, detail: "data is not a list".to_owned() }),
    }
}

/// A number that may be a JSON string or number.
fn number(row: &Value, field: &str, endpoint: &'static str) -> Result<f64, IntelError> {
    let value = match &row[field] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    value.filter(|v| v.is_finite()).ok_or_else(|| IntelError::Malformed {
        endpoint,
        detail: format!("{field} is missing or not a number in {}", truncate(row)),
    })
}

fn time(row: &Value, endpoint: &'static str) -> Result<i64, IntelError> {
    row["time"]
        .as_i64()
        .ok_or_else(|| IntelError::Malformed { endpoint, detail: format!("time is missing in {}", truncate(row)) })
}

fn truncate(row: &Value) -> String {
    row.to_string().chars().take(120).collect()
}

/// Joins the series on `time` (the taker series decides which intervals exist).
#[allow(clippy::too_many_arguments)]
pub fn merge(
    symbol: &Symbol,
    timeframe: Timeframe,
    now_ms: i64,
    taker: &[Value],
    liquidations: &[Value],
    open_interest: &[Value],
    funding: &[Value],
    long_short: &[Value],
) -> Result<IntelSnapshot, IntelError> {
    use std::collections::BTreeMap;
    let by_time = |rows: &[Value], endpoint: &'static str| -> Result<BTreeMap<i64, Value>, IntelError> {
        rows.iter().map(|row| Ok((time(row, endpoint)?, row.clone()))).collect()
    };
    let (liquidations, open_interest, funding, long_short) = (
        by_time(liquidations, LIQUIDATIONS)?,
        by_time(open_interest, OPEN_INTEREST)?,
        by_time(funding, FUNDING)?,
        by_time(long_short, LONG_SHORT)?,
    );
    let mut intervals = Vec::with_capacity(taker.len());
    for row in taker {
        let time_ms = time(row, TAKER)?;
        let (long_liquidation_usd, short_liquidation_usd) = match liquidations.get(&time_ms) {
            Some(l) => {
                (number(l, "long_liquidation_usd", LIQUIDATIONS)?, number(l, "short_liquidation_usd", LIQUIDATIONS)?)
            }
            None => (0.0, 0.0),
        };
        intervals.push(IntelInterval {
            time_ms,
            taker_buy_usd: number(row, "taker_buy_volume_usd", TAKER)?,
            taker_sell_usd: number(row, "taker_sell_volume_usd", TAKER)?,
            long_liquidation_usd,
            short_liquidation_usd,
            open_interest_usd: open_interest.get(&time_ms).map(|r| number(r, "close", OPEN_INTEREST)).transpose()?,
            funding_rate_pct: funding.get(&time_ms).map(|r| number(r, "close", FUNDING)).transpose()?,
            long_short_ratio: long_short
                .get(&time_ms)
                .map(|r| number(r, "global_account_long_short_ratio", LONG_SHORT))
                .transpose()?,
            large_trades: None,
        });
    }
    intervals.sort_by_key(|i| i.time_ms);
    Ok(IntelSnapshot { symbol: symbol.clone(), timeframe, source: "coinglass", fetched_at_ms: now_ms, intervals })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_envelope_needs_http_200_and_code_0() {
        let ok = parse_envelope(TAKER, 200, r#"{"code":"0","msg":"success","data":[{"time":1}]}"#).unwrap();
        assert_eq!(ok.len(), 1);
        assert!(
            matches!(parse_envelope(TAKER, 200, r#"{"code":"400","msg":"bad symbol","data":null}"#), Err(IntelError::Api { code, .. }) if code == "400")
        );
        assert!(matches!(
            parse_envelope(TAKER, 401, r#"{"code":"401","msg":"Invalid API key"}"#),
            Err(IntelError::Auth { .. })
        ));
        // As the live API refuses: HTTP 200, the code in the body.
        assert!(matches!(
            parse_envelope(TAKER, 200, r#"{"code":"401","msg":"API key missing."}"#),
            Err(IntelError::Auth { .. })
        ));
        assert!(
            matches!(parse_envelope(TAKER, 200, r#"{"code":"422","msg":"interval 1m"}"#), Err(IntelError::Api { code, .. }) if code == "422")
        );
        assert!(matches!(parse_envelope(TAKER, 429, "Too Many Requests"), Err(IntelError::RateLimited { .. })));
        assert!(
            matches!(parse_envelope(TAKER, 502, "<html>"), Err(IntelError::Api { code, .. }) if code == "HTTP 502")
        );
        assert!(matches!(
            parse_envelope(TAKER, 200, r#"{"code":0,"msg":"success","data":{}}"#),
            Err(IntelError::Malformed { .. })
        ));
        assert!(!IntelError::Auth { endpoint: TAKER, msg: String::new() }.is_retryable());
    }

    #[test]
    fn numbers_as_strings_or_floats_merge_on_time() {
        let symbol = Symbol::new("BTCUSDT").unwrap();
        let taker = [
            json!({"time": 2, "taker_buy_volume_usd": "60.5", "taker_sell_volume_usd": 40}),
            json!({"time": 1, "taker_buy_volume_usd": 10, "taker_sell_volume_usd": "30"}),
        ];
        let liquidations = [json!({"time": 2, "long_liquidation_usd": "5", "short_liquidation_usd": 1.5})];
        let oi = [json!({"time": 1, "open": "1", "high": "2", "low": "1", "close": "2644845344"})];
        let funding = [json!({"time": 2, "close": "0.009229"})];
        let long_short = [json!({"time": 2, "global_account_long_short_ratio": 2.83})];
        let snapshot = merge(&symbol, Timeframe::M5, 99, &taker, &liquidations, &oi, &funding, &long_short).unwrap();
        assert_eq!(snapshot.intervals.len(), 2);
        assert_eq!(snapshot.intervals[0].time_ms, 1);
        assert_eq!(snapshot.intervals[0].open_interest_usd, Some(2_644_845_344.0));
        assert_eq!(snapshot.intervals[1].taker_buy_usd, 60.5);
        assert_eq!(snapshot.intervals[1].long_liquidation_usd, 5.0);
        assert_eq!(snapshot.intervals[1].funding_rate_pct, Some(0.009229));
        assert_eq!(snapshot.intervals[1].long_short_ratio, Some(2.83));
        let bad = [json!({"time": 3, "taker_buy_volume_usd": "n/a", "taker_sell_volume_usd": 1})];
        let error = merge(&symbol, Timeframe::M5, 0, &bad, &[], &[], &[], &[]).unwrap_err();
        assert!(error.to_string().contains("taker_buy_volume_usd"), "{error}");
    }
}
