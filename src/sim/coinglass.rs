//! CoinGlass-v4-shaped endpoints of `bulwark sim`, so that bulwark's CoinGlass client
//! ([`crate::intelligence::coinglass`]) and an operator's own scripts can be pointed at the
//! simulator unchanged: the pair-level history series, derived deterministically from the
//! simulator's own market.
//!
//! What CoinGlass documents, and what this module relies on (`../shared/reference/exchange-apis.md`
//! §5; the official docs `coinglass-api/coinglass-api-docs` @6ee3798, `rest/Futures/...` pages
//! and `errors-rate-limits.md`; `coinglass-official/coinglass-api-skills` @976b563):
//!
//! - Paths: `open-interest/history`, `funding-rate/history`, `liquidation/history`,
//!   `global-long-short-account-ratio/history` and `v2/taker-buy-sell-volume/history` under
//!   `/api/futures/`. The taker path without `v2` answers too: a public probe of the live API with
//!   a Hobbyist key (2026-04-30) found both paths served with the same fields.
//! - Parameters: `exchange` (e.g. `Binance`), `symbol` (a pair, e.g. `BTCUSDT`) and `interval`
//!   (`1m 3m 5m 15m 30m 1h 4h 6h 8h 12h 1d 1w`) are required; `limit` defaults to 1000, maximum
//!   1000; `start_time` and `end_time` are in milliseconds; open interest takes `unit=usd|coin`.
//! - The `CG-API-KEY` header on every request.
//! - The envelope `{"code": "0", "msg": "success", "data": [...]}`: `code` is a string. The
//!   documented codes are `0`, `400` (missing or invalid parameters), `401` (invalid or missing
//!   API key), `404`, `405` (unsupported HTTP method), `408`, `422` (parameters valid but not
//!   acceptable), `429` and `500`. The table lists `0`, so these are the body's `code`, not HTTP
//!   statuses; and the live API sends them over HTTP 200, in the same shape as success: observed
//!   `{"code":"401","msg":"API key missing."}` (no key), `{"code":"401","msg":"Upgrade plan"}`,
//!   `{"code":"400","msg":"Required String parameter 'exchange_list' is not present"}` and
//!   `{"code":"500","msg":"Server Error"}`, all HTTP 200 (public probes, 2026-04 and 2026-09).
//!   A path that is no endpoint answers HTTP 404 without the envelope: so does this one (its body
//!   is the simulator's own, as CoinGlass's 404 body is not recorded anywhere).
//!
//! The simulator's market is built of 5-minute base candles, so every series is derived from them
//! ([`derive`] per candle) and a row aggregates the base candles of its interval: what a 4h row
//! says is what its 48 5m rows say. Flows are summed over the row (taker buy/sell, liquidations);
//! levels are sampled after each base candle, over windows of a fixed *time* before it, and a row
//! shows their open (the level when it opened), high, low and close (the level when it closed):
//!
//! | series | per base candle |
//! |---|---|
//! | open interest (level) | 10 × the traded notional of the 4 hours (48 base candles) up to it |
//! | funding rate (level) | the close's distance from its 2-hour (24-candle) mean, in percent / 8, clamped to ±0.75 |
//! | long/short accounts (level) | 50 % ± 15 % by the return over the hour (12 candles) before it |
//! | liquidations (flow) | traded notional × the candle's fall (longs) or rise (shorts) × 5 |
//! | taker buy/sell (flow) | the taker-buy volume of its recorded tape × close, and the rest of its notional |
//!
//! Rows are closed intervals only, stamped with their open time; `1m` and `3m` are refused with
//! `422` (a 5-minute market cannot honestly say what happened inside one). Where CoinGlass's docs
//! are silent, the README's simulator section lists what the simulator chooses.

use std::ops::Range;

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use crate::domain::{Candle, Symbol};
use crate::exchange::ExchangeError;
use crate::exchange::paper::market::{BASE_TIMEFRAME, KlineInterval, KlineWindow};
use crate::intelligence::derive;
use crate::secret::Secret;
use crate::sim::binance_api::Params;
use crate::sim::{Answer, SimState};

/// The intervals CoinGlass v4's pair-level history endpoints take ("Supported values").
const INTERVALS: [&str; 12] = ["1m", "3m", "5m", "15m", "30m", "1h", "4h", "6h", "8h", "12h", "1d", "1w"];
/// Rows when `limit` is not sent, and the most a request gets (both 1000 in the v4 docs).
const LIMIT_DEFAULT: u16 = 1_000;
const LIMIT_MAX: u16 = 1_000;
/// The one exchange whose market the simulator has, spelled as CoinGlass spells it.
const EXCHANGE: &str = "Binance";
/// Base candles in the open interest window (4 hours).
const OPEN_INTEREST_WINDOW_CANDLES: i64 = 48;
/// Base candles in the funding rate's mean (2 hours).
const FUNDING_WINDOW_CANDLES: i64 = 24;
/// Base candles the long/short ratio looks back (1 hour): it compares a close with the one this
/// many candles before it.
const LONG_SHORT_LOOKBACK_CANDLES: i64 = 12;
/// Base candles fetched before a request's first row: the open interest window of the level at
/// that row's open (the level after the candle before it).
const WARM_UP_CANDLES: i64 = OPEN_INTEREST_WINDOW_CANDLES + 1;

/// The series an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Series {
    OpenInterest,
    FundingRate,
    Liquidations,
    LongShortAccounts,
    TakerVolume,
}

/// The series served at `path`, if it is an endpoint.
fn series_at(path: &str) -> Option<Series> {
    match path {
        "/api/futures/open-interest/history" => Some(Series::OpenInterest),
        "/api/futures/funding-rate/history" => Some(Series::FundingRate),
        "/api/futures/liquidation/history" => Some(Series::Liquidations),
        "/api/futures/global-long-short-account-ratio/history" => Some(Series::LongShortAccounts),
        "/api/futures/v2/taker-buy-sell-volume/history" | "/api/futures/taker-buy-sell-volume/history" => {
            Some(Series::TakerVolume)
        }
        _ => None,
    }
}

/// Why a request is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// The path is no endpoint: HTTP 404.
    NoSuchPath(String),
    /// A refusal in the envelope, over HTTP 200 as CoinGlass sends them: `{"code": "<code>", "msg"}`.
    Coded { code: u16, msg: String },
}

fn coded(code: u16, msg: impl Into<String>) -> Refusal {
    Refusal::Coded { code, msg: msg.into() }
}

fn missing(name: &str) -> Refusal {
    // Spring's message, as the live API words a missing parameter.
    coded(400, format!("Required String parameter '{name}' is not present"))
}

/// What a request under `/api/futures/` gets: the envelope over HTTP 200, with the rows or the
/// refusal; HTTP 404 for a path that is no endpoint.
pub async fn answer(state: &SimState, request: &HttpRequest, endpoint: &str, params: &Params) -> Answer {
    match serve(state, request, endpoint, params).await {
        Ok(rows) => Ok(json!({ "code": "0", "msg": "success", "data": rows })),
        Err(Refusal::NoSuchPath(msg)) => Err((StatusCode::NOT_FOUND, 404, msg)),
        Err(Refusal::Coded { code, msg }) => Ok(json!({ "code": code.to_string(), "msg": msg })),
    }
}

async fn serve(
    state: &SimState,
    request: &HttpRequest,
    endpoint: &str,
    params: &Params,
) -> Result<Vec<Value>, Refusal> {
    let key = request.headers().get("CG-API-KEY").map(|value| value.to_str().unwrap_or(""));
    check_key(key, state.coinglass_api_key.as_ref())?;
    let (method, path) = endpoint.split_once(' ').unwrap_or(("GET", endpoint));
    let series = series_at(path).ok_or_else(|| Refusal::NoSuchPath(format!("{path} is not served by bulwark sim")))?;
    if method != "GET" {
        return Err(coded(405, format!("Request method '{method}' not supported")));
    }
    let query = parse_query(series, params)?;
    if !state.symbols.iter().any(|(symbol, _)| *symbol == query.symbol) {
        let listed: Vec<&str> = state.symbols.iter().map(|(symbol, _)| symbol.as_str()).collect();
        return Err(coded(
            400,
            format!("symbol {} is not a {EXCHANGE} pair of bulwark sim (it lists {})", query.symbol, listed.join(", ")),
        ));
    }
    let window = closed_rows_window(&query, state.exchange_now_ms(0));
    let rows = state.exchange.klines_window(&query.symbol, query.interval, window).await.map_err(exchange_refusal)?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return Ok(Vec::new()) };
    let base_ms = BASE_TIMEFRAME.duration_ms();
    let base =
        base_candles(state, &query.symbol, first.open_time_ms - WARM_UP_CANDLES * base_ms, last.close_time_ms).await?;
    Ok(series_rows(series, query.open_interest_in_coin, &rows, &base))
}

/// Whether the `CG-API-KEY` header (`None`: not sent) is the one configured.
fn check_key(given: Option<&str>, expected: Option<&Secret>) -> Result<(), Refusal> {
    match (given.filter(|key| !key.is_empty()), expected) {
        (None, _) => Err(coded(401, "API key missing.")),
        (Some(key), Some(expected)) if key == expected.expose() => Ok(()),
        (Some(_), _) => Err(coded(401, "Invalid API key.")),
    }
}

/// A request's parameters, checked.
#[derive(Debug, Clone, PartialEq)]
struct SeriesQuery {
    symbol: Symbol,
    interval: KlineInterval,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    limit: u16,
    /// `unit=coin` on open interest: contracts in the base asset rather than USD.
    open_interest_in_coin: bool,
}

fn parse_query(series: Series, params: &Params) -> Result<SeriesQuery, Refusal> {
    let exchange = params.get("exchange").ok_or_else(|| missing("exchange"))?;
    if exchange != EXCHANGE {
        return Err(coded(
            400,
            format!(
                "exchange {exchange} is not served: bulwark sim has only {EXCHANGE}'s market (exchange={EXCHANGE})"
            ),
        ));
    }
    let symbol_text = params.get("symbol").ok_or_else(|| missing("symbol"))?;
    let symbol = Symbol::new(symbol_text)
        .map_err(|_| coded(400, format!("symbol {symbol_text} is not a trading pair (e.g. BTCUSDT)")))?;
    let interval = parse_interval(params.get("interval").ok_or_else(|| missing("interval"))?)?;
    let limit = match params.get("limit") {
        None => LIMIT_DEFAULT,
        Some(text) => match text.parse::<u64>() {
            // Above the documented maximum: served as the maximum (README: what CoinGlass does is
            // not documented).
            Ok(limit) if limit >= 1 => u16::try_from(limit.min(u64::from(LIMIT_MAX))).unwrap_or(LIMIT_MAX),
            _ => return Err(coded(400, format!("limit {text} is not a whole number from 1 to {LIMIT_MAX}"))),
        },
    };
    let time = |name: &str| -> Result<Option<i64>, Refusal> {
        params
            .get(name)
            .map(|text| {
                text.parse::<i64>()
                    .ok()
                    .filter(|ms| *ms >= 0)
                    .ok_or_else(|| coded(400, format!("{name} {text} is not a time in milliseconds")))
            })
            .transpose()
    };
    let (start_ms, end_ms) = (time("start_time")?, time("end_time")?);
    let open_interest_in_coin = match (series, params.get("unit")) {
        (Series::OpenInterest, Some("coin")) => true,
        (Series::OpenInterest, Some("usd") | None) => false,
        (Series::OpenInterest, Some(unit)) => return Err(coded(400, format!("unit {unit} is not usd or coin"))),
        _ => false,
    };
    Ok(SeriesQuery { symbol, interval, start_ms, end_ms, limit, open_interest_in_coin })
}

fn parse_interval(text: &str) -> Result<KlineInterval, Refusal> {
    let unknown = || coded(400, format!("interval {text} is not one of {}", INTERVALS.join(" ")));
    if !INTERVALS.contains(&text) {
        return Err(unknown());
    }
    let interval = KlineInterval::parse(text).ok_or_else(unknown)?;
    let base_ms = BASE_TIMEFRAME.duration_ms();
    match interval {
        KlineInterval::Span { duration_ms, .. } if duration_ms % base_ms != 0 => Err(coded(
            422,
            format!(
                "interval {text} is finer than the {} candles bulwark sim's markets are built of: it serves {} and longer",
                BASE_TIMEFRAME.as_str(),
                BASE_TIMEFRAME.as_str()
            ),
        )),
        _ => Ok(interval),
    }
}

/// The klines window of the rows a query asks for, closed intervals only: the row still forming
/// at `market_now_ms` is left out (its end is capped before it).
fn closed_rows_window(query: &SeriesQuery, market_now_ms: i64) -> KlineWindow {
    let newest_closed_end_ms = query.interval.open_of(market_now_ms) - 1;
    KlineWindow {
        start_ms: query.start_ms,
        end_ms: Some(query.end_ms.map_or(newest_closed_end_ms, |end_ms| end_ms.min(newest_closed_end_ms))),
        limit: query.limit,
    }
}

fn exchange_refusal(error: ExchangeError) -> Refusal {
    match error {
        ExchangeError::Rejected { code: -1120, msg } => coded(422, msg),
        ExchangeError::Rejected { msg, .. } => coded(400, msg),
        other => coded(500, format!("Server Error: {other}")),
    }
}

/// The base candles opening in `[from_ms, to_ms]`, in order (in pieces of at most `u16::MAX`, the
/// most one klines window holds).
async fn base_candles(state: &SimState, symbol: &Symbol, from_ms: i64, to_ms: i64) -> Result<Vec<Candle>, Refusal> {
    let base_ms = BASE_TIMEFRAME.duration_ms();
    let interval = KlineInterval::of(BASE_TIMEFRAME);
    let mut candles: Vec<Candle> = Vec::new();
    let mut start_ms = from_ms;
    while start_ms <= to_ms {
        let window = KlineWindow { start_ms: Some(start_ms), end_ms: Some(to_ms), limit: u16::MAX };
        let piece = state.exchange.klines_window(symbol, interval, window).await.map_err(exchange_refusal)?;
        start_ms = match piece.last() {
            Some(last) => last.open_time_ms + base_ms,
            None => start_ms + i64::from(u16::MAX) * base_ms,
        };
        candles.extend(piece);
    }
    candles.dedup_by_key(|candle| candle.open_time_ms);
    Ok(candles)
}

/// Every level after each base candle.
#[derive(Debug, Clone, PartialEq)]
struct Levels {
    open_interest_usd: Vec<f64>,
    funding_rate_pct: Vec<f64>,
    long_percent: Vec<f64>,
}

/// For each base candle, the index of the oldest one among the `candles_in_window` base candles
/// (by time) ending at it; fewer where the history starts.
fn window_starts(base: &[Candle], candles_in_window: i64) -> Vec<usize> {
    let span_ms = candles_in_window * BASE_TIMEFRAME.duration_ms();
    let mut oldest = 0;
    base.iter()
        .map(|candle| {
            while base[oldest].open_time_ms <= candle.open_time_ms - span_ms {
                oldest += 1;
            }
            oldest
        })
        .collect()
}

/// The mean of `value` over `base[oldest..=newest]`, added up in order: the same candles give the
/// same number, bit for bit, whatever else a request fetched.
fn window_mean(base: &[Candle], oldest: usize, newest: usize, value: fn(&Candle) -> f64) -> f64 {
    base[oldest..=newest].iter().map(value).sum::<f64>() / (newest + 1 - oldest) as f64
}

/// The levels after each of `base` (base candles in order, a window of time before each): what
/// they are at a moment does not depend on the interval a row is asked in.
fn levels(base: &[Candle]) -> Levels {
    let open_interest_usd = window_starts(base, OPEN_INTEREST_WINDOW_CANDLES)
        .into_iter()
        .enumerate()
        // Where the history starts, the window's mean notional stands for the missing candles.
        .map(|(i, oldest)| window_mean(base, oldest, i, derive::notional) * OPEN_INTEREST_WINDOW_CANDLES as f64 * 10.0)
        .collect();
    let funding_rate_pct = window_starts(base, FUNDING_WINDOW_CANDLES)
        .into_iter()
        .enumerate()
        .map(|(i, oldest)| {
            let average = window_mean(base, oldest, i, |candle| candle.close);
            ((base[i].close - average) / average * 100.0 / 8.0).clamp(-0.75, 0.75)
        })
        .collect();
    let long_percent = window_starts(base, LONG_SHORT_LOOKBACK_CANDLES + 1)
        .into_iter()
        .enumerate()
        .map(|(i, oldest)| {
            let back = base[oldest].close;
            50.0 + 15.0 * ((base[i].close - back) / back * 50.0).tanh()
        })
        .collect();
    Levels { open_interest_usd, funding_rate_pct, long_percent }
}

/// The base candles of a row: those opening inside it.
fn row_span(base: &[Candle], row: &Candle) -> Range<usize> {
    base.partition_point(|candle| candle.open_time_ms < row.open_time_ms)
        ..base.partition_point(|candle| candle.open_time_ms <= row.close_time_ms)
}

/// A level's (open, high, low, close) over a row's base candles: open is the level when the row
/// opened (after the candle before it), close the level when it closed.
fn level_ohlc(level: &[f64], span: Range<usize>) -> (f64, f64, f64, f64) {
    let open = level[span.start.saturating_sub(1)];
    let close = level[span.end - 1];
    let (high, low) = level[span].iter().fold((open, open), |(high, low), &value| (high.max(value), low.min(value)));
    (open, high, low, close)
}

fn text(value: f64) -> String {
    format!("{value:.6}")
}

fn hundredths(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The `data` rows of `series` for `rows` (the requested intervals, closed), from `base` (the base
/// candles of those rows and the warm-up before them). A row without base candles is left out.
fn series_rows(series: Series, open_interest_in_coin: bool, rows: &[Candle], base: &[Candle]) -> Vec<Value> {
    let levels = levels(base);
    let open_interest: Vec<f64> = if open_interest_in_coin {
        levels.open_interest_usd.iter().zip(base).map(|(usd, candle)| usd / candle.close).collect()
    } else {
        levels.open_interest_usd.clone()
    };
    rows.iter()
        .filter_map(|row| {
            let span = row_span(base, row);
            if span.is_empty() {
                return None;
            }
            let time = row.open_time_ms;
            let ohlc = |level: &[f64]| {
                let (open, high, low, close) = level_ohlc(level, span.clone());
                json!({ "time": time, "open": text(open), "high": text(high), "low": text(low), "close": text(close) })
            };
            let flows = |flow: fn(&Candle) -> (f64, f64)| {
                base[span.clone()].iter().map(flow).fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y))
            };
            Some(match series {
                Series::OpenInterest => ohlc(&open_interest),
                Series::FundingRate => ohlc(&levels.funding_rate_pct),
                Series::Liquidations => {
                    let (long, short) = flows(derive::liquidations);
                    json!({ "time": time, "long_liquidation_usd": text(long), "short_liquidation_usd": text(short) })
                }
                Series::LongShortAccounts => {
                    let long = levels.long_percent[span.end - 1];
                    let short = 100.0 - long;
                    json!({
                        "time": time,
                        "global_account_long_percent": hundredths(long),
                        "global_account_short_percent": hundredths(short),
                        "global_account_long_short_ratio": hundredths(long / short),
                    })
                }
                Series::TakerVolume => {
                    let (buy, sell) = flows(derive::taker_split);
                    json!({ "time": time, "taker_buy_volume_usd": text(buy), "taker_sell_volume_usd": text(sell) })
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_MS: i64 = 300_000;
    const HOUR_MS: i64 = 3_600_000;

    /// `count` contiguous base candles from `first_open_ms`, prices and volumes varying.
    fn base_candles(first_open_ms: i64, count: usize) -> Vec<Candle> {
        (0..count)
            .map(|i| {
                let wave = (i as f64 * 0.37).sin();
                let open = 100.0 + 5.0 * (i as f64 * 0.11).sin();
                let close = open * (1.0 + 0.004 * wave);
                let volume = 1_000.0 + 300.0 * (i as f64 * 0.23).cos();
                Candle {
                    open_time_ms: first_open_ms + i as i64 * BASE_MS,
                    close_time_ms: first_open_ms + (i as i64 + 1) * BASE_MS - 1,
                    open,
                    high: open.max(close) * 1.001,
                    low: open.min(close) * 0.999,
                    close,
                    volume,
                    taker_buy_volume: Some(volume * (0.5 + 0.2 * wave)),
                    large_trades: None,
                }
            })
            .collect()
    }

    /// Rows of `interval_ms` covering `[first_open_ms, first_open_ms + count × interval_ms)`.
    fn rows(first_open_ms: i64, interval_ms: i64, count: usize) -> Vec<Candle> {
        (0..count as i64)
            .map(|i| Candle {
                open_time_ms: first_open_ms + i * interval_ms,
                close_time_ms: first_open_ms + (i + 1) * interval_ms - 1,
                open: 1.0,
                high: 1.0,
                low: 1.0,
                close: 1.0,
                volume: 0.0,
                taker_buy_volume: None,
                large_trades: None,
            })
            .collect()
    }

    fn number(row: &Value, field: &str) -> f64 {
        match &row[field] {
            Value::String(text) => text.parse().unwrap(),
            other => other.as_f64().unwrap(),
        }
    }

    fn params(query: &str) -> Params {
        Params::parse(query, "")
    }

    fn refusal_code(result: Result<SeriesQuery, Refusal>) -> u16 {
        match result {
            Err(Refusal::Coded { code, .. }) => code,
            other => panic!("expected a coded refusal, got {other:?}"),
        }
    }

    #[test]
    fn every_documented_path_is_served_and_the_taker_path_with_or_without_v2() {
        assert_eq!(series_at("/api/futures/v2/taker-buy-sell-volume/history"), Some(Series::TakerVolume));
        assert_eq!(series_at("/api/futures/taker-buy-sell-volume/history"), Some(Series::TakerVolume));
        assert_eq!(series_at("/api/futures/open-interest/history"), Some(Series::OpenInterest));
        assert_eq!(series_at("/api/futures/funding-rate/history"), Some(Series::FundingRate));
        assert_eq!(series_at("/api/futures/liquidation/history"), Some(Series::Liquidations));
        assert_eq!(series_at("/api/futures/global-long-short-account-ratio/history"), Some(Series::LongShortAccounts));
        assert_eq!(series_at("/api/futures/open-interest/aggregated-history"), None);
    }

    #[test]
    fn a_missing_or_wrong_key_is_code_401() {
        let key = Secret::new("cg-key".to_owned());
        assert_eq!(check_key(Some("cg-key"), Some(&key)), Ok(()));
        assert_eq!(check_key(None, Some(&key)), Err(coded(401, "API key missing.")));
        assert_eq!(check_key(Some(""), Some(&key)), Err(coded(401, "API key missing.")));
        assert_eq!(check_key(Some("other"), Some(&key)), Err(coded(401, "Invalid API key.")));
        assert_eq!(check_key(Some("cg-key"), None), Err(coded(401, "Invalid API key.")));
    }

    #[test]
    fn parameters_are_checked_as_documented() {
        let query = parse_query(Series::TakerVolume, &params("exchange=Binance&symbol=XRPUSDT&interval=1w")).unwrap();
        assert_eq!(query.limit, 1_000, "the documented default");
        assert_eq!((query.start_ms, query.end_ms, query.interval.as_str()), (None, None, "1w"));
        let query = parse_query(
            Series::OpenInterest,
            &params("exchange=Binance&symbol=XRPUSDT&interval=4h&limit=5000&start_time=1700000000000&end_time=1700003600000&unit=coin"),
        )
        .unwrap();
        assert_eq!(query.limit, 1_000, "above the maximum: the maximum");
        assert_eq!((query.start_ms, query.end_ms), (Some(1_700_000_000_000), Some(1_700_003_600_000)));
        assert!(query.open_interest_in_coin);

        let missing = parse_query(Series::TakerVolume, &params("symbol=XRPUSDT&interval=1h"));
        assert_eq!(missing, Err(coded(400, "Required String parameter 'exchange' is not present")));
        assert_eq!(refusal_code(parse_query(Series::TakerVolume, &params("exchange=Binance&interval=1h"))), 400);
        assert_eq!(refusal_code(parse_query(Series::TakerVolume, &params("exchange=Binance&symbol=XRPUSDT"))), 400);
        for (query, code) in [
            ("exchange=OKX&symbol=XRPUSDT&interval=1h", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=2h", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=h1", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=1h&limit=0", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=1h&limit=ten", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=1h&start_time=yesterday", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=1h&end_time=-5", 400),
            ("exchange=Binance&symbol=XRPUSDT&interval=1m", 422),
            ("exchange=Binance&symbol=XRPUSDT&interval=3m", 422),
        ] {
            assert_eq!(refusal_code(parse_query(Series::FundingRate, &params(query))), code, "{query}");
        }
        let Err(Refusal::Coded { msg, .. }) =
            parse_query(Series::TakerVolume, &params("exchange=Binance&symbol=XRPUSDT&interval=1m"))
        else {
            panic!("1m is refused")
        };
        assert!(msg.contains("5m candles"), "the refusal names the reason: {msg}");
        let unit = parse_query(Series::OpenInterest, &params("exchange=Binance&symbol=XRPUSDT&interval=1h&unit=eur"));
        assert_eq!(refusal_code(unit), 400);
        // `unit` belongs to open interest only; elsewhere it is ignored.
        assert!(
            parse_query(Series::TakerVolume, &params("exchange=Binance&symbol=XRPUSDT&interval=1h&unit=eur")).is_ok()
        );
    }

    #[test]
    fn the_forming_row_is_never_asked_for() {
        let query =
            parse_query(Series::OpenInterest, &params("exchange=Binance&symbol=XRPUSDT&interval=1h&limit=3")).unwrap();
        let forming_open_ms: i64 = 1_700_006_400_000;
        let now_ms = forming_open_ms + 20 * 60_000; // 20 minutes into the hour
        let window = closed_rows_window(&query, now_ms);
        assert_eq!(window, KlineWindow { start_ms: None, end_ms: Some(forming_open_ms - 1), limit: 3 });
        // An earlier end is kept; a later one is capped; a start is passed on.
        let earlier = SeriesQuery { end_ms: Some(forming_open_ms - 5 * HOUR_MS), ..query.clone() };
        assert_eq!(closed_rows_window(&earlier, now_ms).end_ms, Some(forming_open_ms - 5 * HOUR_MS));
        let later = SeriesQuery { start_ms: Some(5), end_ms: Some(now_ms + HOUR_MS), ..query };
        assert_eq!(
            closed_rows_window(&later, now_ms),
            KlineWindow { start_ms: Some(5), end_ms: Some(forming_open_ms - 1), limit: 3 }
        );
    }

    #[test]
    fn levels_at_one_time_are_the_same_in_every_interval_and_flows_add_up() {
        let start_ms = 1_700_006_400_000; // a multiple of 4 hours
        let base = base_candles(start_ms - WARM_UP_CANDLES * BASE_MS, WARM_UP_CANDLES as usize + 8 * 48);
        let five_minutes = rows(start_ms, BASE_MS, 8 * 48);
        let hours = rows(start_ms, HOUR_MS, 32);
        let four_hours = rows(start_ms, 4 * HOUR_MS, 8);
        for series in [Series::OpenInterest, Series::FundingRate] {
            let (small, large) =
                (series_rows(series, false, &hours, &base), series_rows(series, false, &four_hours, &base));
            let fine = series_rows(series, false, &five_minutes, &base);
            assert_eq!((small.len(), large.len(), fine.len()), (32, 8, 384));
            for (i, row) in large.iter().enumerate() {
                let (first, last) = (&small[4 * i], &small[4 * i + 3]);
                assert_eq!(row["time"], first["time"]);
                // The same moment, the same level: a 4h row opens where its first hour opens and
                // closes where its last hour closes.
                assert_eq!(row["open"], first["open"], "{series:?} row {i}");
                assert_eq!(row["close"], last["close"], "{series:?} row {i}");
                assert_eq!(last["close"], fine[48 * i + 47]["close"], "{series:?} row {i}");
                let high = small[4 * i..4 * i + 4].iter().map(|r| number(r, "high")).fold(f64::MIN, f64::max);
                let low = small[4 * i..4 * i + 4].iter().map(|r| number(r, "low")).fold(f64::MAX, f64::min);
                assert_eq!((number(row, "high"), number(row, "low")), (high, low), "{series:?} row {i}");
            }
            // Each row opens where the one before closed.
            assert!(small.windows(2).all(|pair| pair[0]["close"] == pair[1]["open"]), "{series:?}");
        }
        let (hourly, four_hourly) = (
            series_rows(Series::LongShortAccounts, false, &hours, &base),
            series_rows(Series::LongShortAccounts, false, &four_hours, &base),
        );
        for (i, row) in four_hourly.iter().enumerate() {
            assert_eq!(row["global_account_long_percent"], hourly[4 * i + 3]["global_account_long_percent"]);
            let (long, short) =
                (number(row, "global_account_long_percent"), number(row, "global_account_short_percent"));
            assert!((long + short - 100.0).abs() < 1e-9 && (35.0..=65.0).contains(&long), "{row}");
        }
        for (series, fields) in [
            (Series::TakerVolume, ["taker_buy_volume_usd", "taker_sell_volume_usd"]),
            (Series::Liquidations, ["long_liquidation_usd", "short_liquidation_usd"]),
        ] {
            let (small, large) =
                (series_rows(series, false, &hours, &base), series_rows(series, false, &four_hours, &base));
            for (i, row) in large.iter().enumerate() {
                for field in fields {
                    let sum: f64 = small[4 * i..4 * i + 4].iter().map(|r| number(r, field)).sum();
                    assert!((number(row, field) - sum).abs() < 1e-3, "{series:?} {field} row {i}: {row} vs {sum}");
                }
            }
        }
    }

    #[test]
    fn a_level_is_the_same_number_whatever_else_was_fetched() {
        // A 4h request fetches its warm-up from further back than a 1h one: the levels after a
        // candle must not depend on where the fetch began.
        let base = base_candles(1_700_006_400_000, 400);
        let (all, later) = (levels(&base), levels(&base[37..]));
        for i in 37 + 48..base.len() {
            assert_eq!(all.open_interest_usd[i].to_bits(), later.open_interest_usd[i - 37].to_bits(), "candle {i}");
            assert_eq!(all.funding_rate_pct[i].to_bits(), later.funding_rate_pct[i - 37].to_bits(), "candle {i}");
            assert_eq!(all.long_percent[i].to_bits(), later.long_percent[i - 37].to_bits(), "candle {i}");
        }
    }

    #[test]
    fn open_interest_is_a_level_not_a_flow() {
        // Steady trading: the open interest is the same whatever the interval, where the old
        // derivation (48 rows of the requested interval) grew with it.
        let start_ms = 1_700_006_400_000;
        let mut base = base_candles(start_ms - WARM_UP_CANDLES * BASE_MS, WARM_UP_CANDLES as usize + 288);
        for candle in &mut base {
            (candle.open, candle.close, candle.volume) = (100.0, 100.0, 1_000.0);
        }
        let expected = 48.0 * 100.0 * 1_000.0 * 10.0;
        for interval_ms in [BASE_MS, HOUR_MS, 4 * HOUR_MS, 24 * HOUR_MS] {
            let rows = rows(start_ms, interval_ms, (24 * HOUR_MS / interval_ms) as usize);
            for row in series_rows(Series::OpenInterest, false, &rows, &base) {
                assert!((number(&row, "close") - expected).abs() < 1e-6, "{interval_ms}: {row}");
            }
            let in_coin = series_rows(Series::OpenInterest, true, &rows, &base);
            assert!((number(&in_coin[0], "close") - expected / 100.0).abs() < 1e-6);
        }
    }

    #[test]
    fn where_the_history_starts_the_windows_are_shorter_and_a_row_without_candles_is_left_out() {
        let start_ms = 1_700_006_400_000;
        let base = base_candles(start_ms, 24); // no warm-up: the market's first two hours
        let hours = rows(start_ms - HOUR_MS, HOUR_MS, 3);
        let rows = series_rows(Series::OpenInterest, false, &hours, &base);
        assert_eq!(rows.len(), 2, "the hour before the history is not served");
        assert_eq!(rows[0]["time"], json!(start_ms));
        let first = &base[0];
        assert!((number(&rows[0], "open") - derive::notional(first) * 480.0).abs() < 1e-6, "{}", rows[0]);
        assert_eq!(window_starts(&base, 12)[5], 0);
        assert_eq!(window_starts(&base, 12)[20], 9);
    }

    #[test]
    fn refusals_keep_the_envelopes_string_code() {
        assert_eq!(
            exchange_refusal(ExchangeError::Rejected { code: -1120, msg: "5m base".into() }),
            coded(422, "5m base")
        );
        assert_eq!(
            exchange_refusal(ExchangeError::Rejected { code: -1121, msg: "Invalid symbol.".into() }),
            coded(400, "Invalid symbol.")
        );
    }
}
