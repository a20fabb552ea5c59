//! The public market-data endpoints of `bulwark sim` beyond klines (`binance-shapes.md` §3.3):
//! last price, 24-hour ticker, order book, premium index and funding history, all read from the
//! simulator's one market at the same moment its orders fill, so a ticker, a book and a MARKET
//! order agree. The book is synthetic (levels a tick apart around the current price) and no
//! funding is charged, so the funding rate is 0 everywhere (README, "Against the simulator").

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::domain::{Candle, Symbol, SymbolRules, decimal_from_f64};
use crate::exchange::paper::market::{KlineInterval, KlineWindow};
use crate::sim::binance_api::{Params, bad, exchange_error, optional_symbol, time_param};
use crate::sim::{Answer, SimState};

const HOUR_MS: i64 = 3_600_000;
/// Binance charges funding every 8 hours (00:00, 08:00, 16:00 UTC).
const FUNDING_INTERVAL_MS: i64 = 8 * HOUR_MS;
/// The interest rate premiumIndex reports (Binance's usual 0.01 %).
const INTEREST_RATE: &str = "0.00010000";
/// Book depths Binance takes.
const DEPTH_LIMITS: [usize; 7] = [5, 10, 20, 50, 100, 500, 1_000];

type Refusal = (actix_web::http::StatusCode, i64, String);

/// Whether [`answer`] serves `endpoint`.
pub fn serves(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "GET /fapi/v1/ticker/price"
            | "GET /fapi/v2/ticker/price"
            | "GET /fapi/v1/ticker/24hr"
            | "GET /fapi/v1/depth"
            | "GET /fapi/v1/premiumIndex"
            | "GET /fapi/v1/fundingRate"
    )
}

/// Request weight (`binance-shapes.md` §3.3): more without a symbol; the book by its depth.
pub fn weight(endpoint: &str, params: &Params) -> u32 {
    let all_symbols = params.get("symbol").is_none();
    match endpoint {
        "GET /fapi/v1/ticker/price" | "GET /fapi/v2/ticker/price" if all_symbols => 2,
        "GET /fapi/v1/ticker/24hr" if all_symbols => 40,
        "GET /fapi/v1/premiumIndex" if all_symbols => 10,
        "GET /fapi/v1/depth" => match params.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(500) {
            ..=50 => 2,
            51..=100 => 5,
            101..=500 => 10,
            _ => 20,
        },
        _ => 1,
    }
}

pub async fn answer(state: &SimState, endpoint: &str, params: &Params) -> Answer {
    let only = optional_symbol(state, params)?;
    let symbols: Vec<(Symbol, SymbolRules)> =
        state.symbols.iter().filter(|(s, _)| only.as_ref().is_none_or(|o| o == s)).cloned().collect();
    let one_or_all = |rows: Vec<Value>| {
        if only.is_some() { rows.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(rows) }
    };
    match endpoint {
        "GET /fapi/v1/ticker/price" | "GET /fapi/v2/ticker/price" => {
            let mut rows = Vec::new();
            for (symbol, _) in &symbols {
                let price = current_price(state, symbol).await?;
                rows.push(
                    json!({ "symbol": symbol.as_str(), "price": price.to_string(), "time": state.exchange_now_ms(0) }),
                );
            }
            Ok(one_or_all(rows))
        }
        "GET /fapi/v1/ticker/24hr" => {
            let mut rows = Vec::new();
            for (symbol, _) in &symbols {
                rows.push(ticker_24h(state, symbol).await?);
            }
            Ok(one_or_all(rows))
        }
        "GET /fapi/v1/depth" => {
            let (symbol, rules) = symbols.first().cloned().ok_or_else(|| {
                bad(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
            })?;
            let depth = match params.get("limit") {
                Some(text) => text
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| DEPTH_LIMITS.contains(limit))
                    .ok_or_else(|| bad(-1130, "Data sent for parameter 'limit' is not valid."))?,
                None => 500,
            };
            let price = current_price(state, &symbol).await?;
            let now_ms = state.exchange_now_ms(0);
            let (bids, asks) = book(price, &rules, depth);
            Ok(json!({ "lastUpdateId": now_ms, "E": now_ms, "T": now_ms, "bids": bids, "asks": asks }))
        }
        "GET /fapi/v1/premiumIndex" => {
            let mut rows = Vec::new();
            let now_ms = state.exchange_now_ms(0);
            for (symbol, _) in &symbols {
                let price = current_price(state, symbol).await?.to_string();
                rows.push(json!({
                    "symbol": symbol.as_str(), "markPrice": price, "indexPrice": price, "estimatedSettlePrice": price,
                    "lastFundingRate": "0.00000000", "interestRate": INTEREST_RATE,
                    "nextFundingTime": (now_ms.div_euclid(FUNDING_INTERVAL_MS) + 1) * FUNDING_INTERVAL_MS, "time": now_ms,
                }));
            }
            Ok(one_or_all(rows))
        }
        "GET /fapi/v1/fundingRate" => funding_history(state, params, &symbols).await,
        _ => Err(bad(-1000, &format!("{endpoint} is not a market data endpoint"))),
    }
}

async fn current_price(state: &SimState, symbol: &Symbol) -> Result<Decimal, Refusal> {
    state.exchange.current_price(symbol).await.map_err(exchange_error)
}

async fn candles(
    state: &SimState,
    symbol: &Symbol,
    interval: &str,
    window: KlineWindow,
) -> Result<Vec<Candle>, Refusal> {
    let interval = KlineInterval::parse(interval).ok_or_else(|| bad(-1120, "Invalid interval."))?;
    state.exchange.klines_window(symbol, interval, window).await.map_err(exchange_error)
}

fn number(value: f64) -> String {
    decimal_from_f64(value).map_or_else(|_| format!("{value}"), |d| d.normalize().to_string())
}

/// The 24 hours up to now, from the market's 5-minute candles (the forming one included).
async fn ticker_24h(state: &SimState, symbol: &Symbol) -> Result<Value, Refusal> {
    let now_ms = state.exchange_now_ms(0);
    let open_ms = now_ms - 24 * HOUR_MS;
    let window = KlineWindow { start_ms: Some(open_ms), end_ms: None, limit: 289 };
    let rows = candles(state, symbol, "5m", window).await?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(bad(-1121, "Invalid symbol."));
    };
    let high = rows.iter().map(|c| c.high).fold(f64::MIN, f64::max);
    let low = rows.iter().map(|c| c.low).fold(f64::MAX, f64::min);
    let volume: f64 = rows.iter().map(|c| c.volume).sum();
    let quote_volume: f64 = rows.iter().map(|c| c.volume * c.close).sum();
    let count: u64 = rows.iter().map(crate::sim::market_stream::trade_count).sum();
    let change = last.close - first.open;
    Ok(json!({
        "symbol": symbol.as_str(), "priceChange": number(change),
        "priceChangePercent": format!("{:.3}", change / first.open * 100.0),
        "weightedAvgPrice": number(if volume > 0.0 { quote_volume / volume } else { last.close }),
        "lastPrice": number(last.close), "lastQty": "0", "openPrice": number(first.open),
        "highPrice": number(high), "lowPrice": number(low), "volume": number(volume), "quoteVolume": number(quote_volume),
        "openTime": open_ms, "closeTime": now_ms, "firstId": 1, "lastId": count, "count": count,
    }))
}

/// A synthetic book around `price`: the best bid at or below it, the best ask a tick above, then a
/// level a tick apart, each one minimum quantity deeper than the one before.
fn book(price: Decimal, rules: &SymbolRules, depth: usize) -> (Vec<[String; 2]>, Vec<[String; 2]>) {
    let tick = if rules.tick_size > Decimal::ZERO { rules.tick_size } else { Decimal::new(1, 8) };
    let step = if rules.min_quantity > Decimal::ZERO { rules.min_quantity } else { rules.step_size.max(Decimal::ONE) };
    let best_bid = (price / tick).floor() * tick;
    let level = |price: Decimal, depth: usize| {
        [price.normalize().to_string(), (step * Decimal::from(depth as u64 + 1) * Decimal::TEN).normalize().to_string()]
    };
    let bids = (0..depth)
        .map(|i| best_bid - tick * Decimal::from(i as u64))
        .take_while(|p| *p > Decimal::ZERO)
        .enumerate()
        .map(|(i, p)| level(p, i))
        .collect();
    let asks = (0..depth).map(|i| level(best_bid + tick * Decimal::from(i as u64 + 1), i)).collect();
    (bids, asks)
}

/// `GET /fapi/v1/fundingRate`: one row per 8-hour funding time in the window (rate 0: the venue
/// charges no funding), the mark price the market had then; the latest `limit` without times.
async fn funding_history(state: &SimState, params: &Params, symbols: &[(Symbol, SymbolRules)]) -> Answer {
    let limit: u16 = match params.get("limit") {
        Some(text) => text
            .parse()
            .ok()
            .filter(|l| (1..=1_000).contains(l))
            .ok_or_else(|| bad(-1130, "Data sent for parameter 'limit' is not valid."))?,
        None => 100,
    };
    let window =
        KlineWindow { start_ms: time_param(params, "startTime")?, end_ms: time_param(params, "endTime")?, limit };
    let mut rows: Vec<(i64, Value)> = Vec::new();
    for (symbol, _) in symbols {
        for candle in candles(state, symbol, "8h", window).await? {
            rows.push((
                candle.open_time_ms,
                json!({
                    "symbol": symbol.as_str(), "fundingRate": "0.00000000",
                    "fundingTime": candle.open_time_ms, "markPrice": number(candle.open),
                }),
            ));
        }
    }
    rows.sort_by_key(|(time_ms, _)| *time_ms);
    let keep = usize::from(limit);
    if window.start_ms.is_some() {
        rows.truncate(keep);
    } else {
        rows.drain(..rows.len().saturating_sub(keep));
    }
    Ok(Value::Array(rows.into_iter().map(|(_, row)| row).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_is_a_tick_apart_around_the_price_and_never_crosses() {
        let rules = SymbolRules {
            tick_size: Decimal::new(1, 4),
            step_size: Decimal::new(1, 1),
            min_quantity: Decimal::new(1, 1),
            min_notional: Decimal::from(5),
        };
        let (bids, asks) = book(Decimal::new(12_345, 4), &rules, 5);
        assert_eq!((bids.len(), asks.len()), (5, 5));
        assert_eq!(bids[0][0], "1.2345");
        assert_eq!(asks[0][0], "1.2346");
        assert_eq!(bids[4][0], "1.2341");
        let (bids, asks) = book(Decimal::new(123_456, 5), &rules, 2);
        assert_eq!((bids[0][0].as_str(), asks[0][0].as_str()), ("1.2345", "1.2346"), "a price between ticks");
        assert!(bids.iter().zip(&bids[1..]).all(|(a, b)| a[1] < b[1]), "deeper levels hold more");
    }
}
