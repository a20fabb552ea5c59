//! CoinGlass-v4-shaped endpoints of `bulwark sim` (`exchange-apis.md` §5): the `CG-API-KEY`
//! header, the `{"code": "0", "msg": "success", "data": ...}` envelope, and pair-level history
//! series derived deterministically from the simulator's own candles:
//!
//! | endpoint | derived from each candle |
//! |---|---|
//! | open-interest/history | a rolling 48-candle traded notional, as OHLC strings |
//! | funding-rate/history | the close's distance from its 24-candle mean, in percent, clamped to ±0.75 |
//! | liquidation/history | traded notional × the candle's fall (longs) or rise (shorts) × 5 |
//! | global-long-short-account-ratio/history | 50 % ± 15 % by the 12-candle return |
//! | v2/taker-buy-sell-volume/history | the candle's taker-buy volume (its recorded tape, [`crate::intelligence::tape`]) × close, and the rest of its notional |

use std::str::FromStr;

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use crate::domain::{Candle, Symbol, Timeframe};
use crate::exchange::Exchange;
use crate::intelligence::derive;
use crate::sim::binance_api::Params;
use crate::sim::{Answer, SimState};

/// Extra candles fetched before the requested ones, for the rolling windows.
const WARM_UP: u16 = 48;

fn refused(status: StatusCode, msg: &str) -> (StatusCode, i64, String) {
    (status, i64::from(status.as_u16()), msg.to_owned())
}

pub async fn answer(state: &SimState, request: &HttpRequest, endpoint: &str, params: &Params) -> Answer {
    let key = request.headers().get("CG-API-KEY").and_then(|v| v.to_str().ok());
    let authorised = matches!((key, &state.coinglass_api_key), (Some(key), Some(expected)) if key == expected.expose());
    if !authorised {
        return Err(refused(StatusCode::UNAUTHORIZED, "Invalid API key"));
    }
    let symbol = params
        .get("symbol")
        .and_then(|s| Symbol::new(s).ok())
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, "symbol is required"))?;
    let timeframe = params
        .get("interval")
        .and_then(|i| Timeframe::from_str(i).ok())
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, "interval must be one of 5m 15m 30m 1h 2h 4h 6h 8h"))?;
    let limit: u16 =
        params.get("limit").and_then(|l| l.parse().ok()).filter(|l| (1..=1_000).contains(l)).unwrap_or(100);
    let candles = state
        .exchange
        .klines(&symbol, timeframe, limit + WARM_UP)
        .await
        .map_err(|e| refused(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let rows = match endpoint {
        "GET /api/futures/open-interest/history" => open_interest(&candles),
        "GET /api/futures/funding-rate/history" => funding(&candles),
        "GET /api/futures/liquidation/history" => liquidations(&candles),
        "GET /api/futures/global-long-short-account-ratio/history" => long_short(&candles),
        "GET /api/futures/v2/taker-buy-sell-volume/history" => taker_volume(&candles),
        _ => return Err(refused(StatusCode::NOT_FOUND, &format!("{endpoint} is not served by bulwark sim"))),
    };
    let skip = rows.len().saturating_sub(usize::from(limit));
    Ok(json!({ "code": "0", "msg": "success", "data": rows[skip..] }))
}

fn text(value: f64) -> String {
    format!("{value:.6}")
}

/// OHLC rows of a per-candle series (open = the previous close).
fn ohlc(candles: &[Candle], series: &[f64], widen: f64) -> Vec<Value> {
    let mut previous = None;
    candles
        .iter()
        .zip(series)
        .map(|(candle, &close)| {
            let open = previous.unwrap_or(close);
            previous = Some(close);
            json!({ "time": candle.open_time_ms, "open": text(open), "high": text(open.max(close) * (1.0 + widen)), "low": text(open.min(close) * (1.0 - widen)), "close": text(close) })
        })
        .collect()
}

fn open_interest(candles: &[Candle]) -> Vec<Value> {
    ohlc(candles, &derive::open_interest(candles), 0.001)
}

fn funding(candles: &[Candle]) -> Vec<Value> {
    ohlc(candles, &derive::funding_rate_pct(candles), 0.0)
}

fn liquidations(candles: &[Candle]) -> Vec<Value> {
    candles
        .iter()
        .map(|c| {
            let (long, short) = derive::liquidations(c);
            json!({ "time": c.open_time_ms, "long_liquidation_usd": text(long), "short_liquidation_usd": text(short) })
        })
        .collect()
}

fn long_short(candles: &[Candle]) -> Vec<Value> {
    candles
        .iter()
        .zip(derive::long_percent(candles))
        .map(|(candle, long)| {
            let short = 100.0 - long;
            json!({
                "time": candle.open_time_ms,
                "global_account_long_percent": (long * 100.0).round() / 100.0,
                "global_account_short_percent": (short * 100.0).round() / 100.0,
                "global_account_long_short_ratio": (long / short * 100.0).round() / 100.0,
            })
        })
        .collect()
}

fn taker_volume(candles: &[Candle]) -> Vec<Value> {
    candles
        .iter()
        .map(|c| {
            let (buy, sell) = derive::taker_split(c);
            json!({ "time": c.open_time_ms, "taker_buy_volume_usd": text(buy), "taker_sell_volume_usd": text(sell) })
        })
        .collect()
}
