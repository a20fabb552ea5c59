//! Binance USDⓈ-M JSON shapes (`exchange-apis.md` §1.6) and their conversion to domain types.
//! Prices and quantities arrive as decimal strings and stay decimals; anything that does not parse
//! is an error naming the field, never a default.

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, ExchangeOrderStatus, Fill, OrderType, Position, Price, Quantity,
    Side, Symbol, SymbolRules,
};
use crate::exchange::ExchangeError;
use crate::intelligence::large_trades::MarketTrade;

fn malformed(what: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Malformed { detail: what.to_string() }
}

/// Parses a JSON body, naming the endpoint on failure.
pub fn parse<T: for<'de> Deserialize<'de>>(endpoint: &str, body: &str) -> Result<T, ExchangeError> {
    serde_json::from_str(body).map_err(|error| {
        let excerpt: String = body.chars().take(120).collect();
        malformed(format!("{endpoint}: {error} in {excerpt:?}"))
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTime {
    pub server_time: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeInfo {
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    pub symbols: Vec<SymbolInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub rate_limit_type: String,
    pub interval: String,
    pub interval_num: u32,
    pub limit: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymbolInfo {
    pub symbol: String,
    #[serde(default)]
    pub filters: Vec<HashMap<String, Value>>,
}

impl ExchangeInfo {
    /// The request-weight limit per minute, if the exchange states one.
    pub fn weight_limit_per_minute(&self) -> Option<u32> {
        self.rate_limits
            .iter()
            .find(|r| r.rate_limit_type == "REQUEST_WEIGHT" && r.interval == "MINUTE" && r.interval_num == 1)
            .map(|r| r.limit)
    }

    /// Each symbol's rules from its PRICE_FILTER, LOT_SIZE and MIN_NOTIONAL filters. Symbols
    /// without the filters a rounding needs are left out.
    pub fn rules(&self) -> HashMap<Symbol, SymbolRules> {
        let decimal = |filter: &HashMap<String, Value>, key: &str| -> Option<Decimal> {
            filter.get(key)?.as_str().and_then(|text| Decimal::from_str(text).ok())
        };
        let mut rules = HashMap::new();
        for info in &self.symbols {
            let Ok(symbol) = Symbol::new(&info.symbol) else { continue };
            let filter =
                |kind: &str| info.filters.iter().find(|f| f.get("filterType").and_then(Value::as_str) == Some(kind));
            let (Some(price), Some(lot)) = (filter("PRICE_FILTER"), filter("LOT_SIZE")) else { continue };
            let (Some(tick_size), Some(step_size), Some(min_quantity)) =
                (decimal(price, "tickSize"), decimal(lot, "stepSize"), decimal(lot, "minQty"))
            else {
                continue;
            };
            let min_notional = filter("MIN_NOTIONAL").and_then(|f| decimal(f, "notional")).unwrap_or(Decimal::ZERO);
            rules.insert(symbol, SymbolRules { tick_size, step_size, min_quantity, min_notional });
        }
        rules
    }
}

/// A klines row: `[openTime, "open", "high", "low", "close", "volume", closeTime, ...]`.
pub fn candle(row: &[Value]) -> Result<Candle, ExchangeError> {
    let integer = |index: usize| {
        row.get(index)
            .and_then(Value::as_i64)
            .ok_or_else(|| malformed(format!("kline field {index} is not an integer")))
    };
    let number = |index: usize| -> Result<f64, ExchangeError> {
        let value = row.get(index).ok_or_else(|| malformed(format!("kline field {index} is missing")))?;
        let parsed = match value {
            Value::String(text) => text.parse::<f64>().ok(),
            Value::Number(number) => number.as_f64(),
            _ => None,
        };
        parsed
            .filter(|n| n.is_finite())
            .ok_or_else(|| malformed(format!("kline field {index} is not a number: {value}")))
    };
    Ok(Candle {
        open_time_ms: integer(0)?,
        open: number(1)?,
        high: number(2)?,
        low: number(3)?,
        close: number(4)?,
        volume: number(5)?,
        close_time_ms: integer(6)?,
        // Field 9, the taker-buy base volume, is in every Binance row; a shorter row has none.
        taker_buy_volume: if row.len() > 9 { Some(number(9)?) } else { None },
        large_trades: None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PositionRow {
    pub symbol: String,
    #[serde(default)]
    pub position_side: Option<String>,
    pub position_amt: Decimal,
    pub entry_price: Decimal,
    pub mark_price: Decimal,
    pub un_realized_profit: Decimal,
}

/// The one-way position of `symbol` from `positionRisk` rows (none means flat).
pub fn position(symbol: &Symbol, rows: &[PositionRow]) -> Position {
    let row =
        rows.iter().find(|r| r.symbol == symbol.as_str() && r.position_side.as_deref().is_none_or(|s| s == "BOTH"));
    match row {
        Some(row) => Position {
            symbol: symbol.clone(),
            quantity: row.position_amt,
            entry_price: row.entry_price,
            mark_price: row.mark_price,
            unrealized_pnl: row.un_realized_profit,
        },
        None => Position::flat(symbol.clone(), Decimal::ZERO),
    }
}

/// Every one-way (`BOTH`) position the rows list with a non-zero amount.
/// The symbols `positionRisk` (v3, no symbol) lists in one-way mode: every symbol with a position
/// or an open order, in the order listed.
pub fn listed_symbols(rows: &[PositionRow]) -> Result<Vec<Symbol>, ExchangeError> {
    let mut symbols: Vec<Symbol> = Vec::new();
    for row in rows.iter().filter(|row| row.position_side.as_deref().is_none_or(|s| s == "BOTH")) {
        let symbol = Symbol::new(&row.symbol).map_err(|e| ExchangeError::Malformed {
            detail: format!("GET /fapi/v3/positionRisk: symbol {:?}: {e}", row.symbol),
        })?;
        if !symbols.contains(&symbol) {
            symbols.push(symbol);
        }
    }
    Ok(symbols)
}

pub fn positions(rows: &[PositionRow]) -> Result<Vec<Position>, ExchangeError> {
    rows.iter()
        .filter(|row| row.position_side.as_deref().is_none_or(|s| s == "BOTH") && !row.position_amt.is_zero())
        .map(|row| {
            let symbol = Symbol::new(&row.symbol).map_err(|e| ExchangeError::Malformed {
                detail: format!("GET /fapi/v3/positionRisk: symbol {:?}: {e}", row.symbol),
            })?;
            Ok(position(&symbol, std::slice::from_ref(row)))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceRow {
    pub asset: String,
    pub balance: Decimal,
    pub cross_un_pnl: Decimal,
    pub available_balance: Decimal,
}

pub fn balance(rows: &[BalanceRow]) -> Balance {
    match rows.iter().find(|r| r.asset == "USDT") {
        Some(row) => Balance {
            asset: row.asset.clone(),
            wallet_balance: row.balance,
            unrealized_pnl: row.cross_un_pnl,
            available_balance: row.available_balance,
        },
        None => Balance {
            asset: "USDT".into(),
            wallet_balance: Decimal::ZERO,
            unrealized_pnl: Decimal::ZERO,
            available_balance: Decimal::ZERO,
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderBody {
    pub order_id: i64,
    pub client_order_id: String,
    pub symbol: String,
    pub side: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub orig_qty: Decimal,
    pub executed_qty: Decimal,
    #[serde(default)]
    pub avg_price: Option<Decimal>,
    #[serde(default)]
    pub price: Option<Decimal>,
    pub status: String,
    #[serde(default)]
    pub reduce_only: bool,
    #[serde(default)]
    pub update_time: i64,
    /// When the order was accepted (RESULT answers and queries carry it; ACK answers do not).
    #[serde(default)]
    pub time: i64,
}

impl OrderBody {
    pub fn into_order(self) -> Result<ExchangeOrder, ExchangeError> {
        let order_type = match self.order_type.as_str() {
            "MARKET" => OrderType::Market,
            "LIMIT" => {
                let price = self
                    .price
                    .and_then(|p| Price::new(p).ok())
                    .ok_or_else(|| malformed("LIMIT order without a price"))?;
                OrderType::Limit { price }
            }
            other => return Err(malformed(format!("order type {other} is not one bulwark places"))),
        };
        let filled = self.executed_qty;
        Ok(ExchangeOrder {
            exchange_order_id: self.order_id.to_string(),
            client_order_id: ClientOrderId::parse(&self.client_order_id).map_err(malformed)?,
            symbol: Symbol::new(&self.symbol).map_err(malformed)?,
            side: Side::from_str(&self.side).map_err(malformed)?,
            order_type,
            quantity: Quantity::new(self.orig_qty).map_err(malformed)?,
            filled_quantity: filled,
            average_price: self.avg_price.filter(|p| !p.is_zero() && !filled.is_zero()),
            status: ExchangeOrderStatus::from_str(&self.status).map_err(malformed)?,
            reduce_only: self.reduce_only,
            updated_at_ms: self.update_time,
            created_at_ms: self.time,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeRow {
    pub id: i64,
    pub order_id: i64,
    pub symbol: String,
    pub side: String,
    pub price: Decimal,
    pub qty: Decimal,
    pub commission: Decimal,
    pub commission_asset: String,
    pub realized_pnl: Decimal,
    pub time: i64,
}

impl TradeRow {
    pub fn into_fill(self) -> Result<Fill, ExchangeError> {
        Ok(Fill {
            trade_id: self.id.to_string(),
            exchange_order_id: self.order_id.to_string(),
            symbol: Symbol::new(&self.symbol).map_err(malformed)?,
            side: Side::from_str(&self.side).map_err(malformed)?,
            price: self.price,
            quantity: self.qty,
            fee: self.commission.abs(),
            fee_asset: self.commission_asset,
            realized_pnl: self.realized_pnl,
            time_ms: self.time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_user_data_events_parse_and_an_unknown_one_is_ignored() {
        use crate::domain::AccountEvent;
        // A real fill (binance-shapes.md §2.3, a 2025-03 capture).
        let fill = r#"{"e":"ORDER_TRADE_UPDATE","T":1742585119595,"E":1742585119596,"o":{"s":"BTCUSDT","c":"KWsJ1UBaWM1C0IhvgdXxZb","S":"BUY","o":"MARKET","f":"GTC","q":"0.100","p":"0","ap":"84146.50000","sp":"0","x":"TRADE","X":"FILLED","i":4129479931,"l":"0.100","z":"0.100","L":"84146.50","n":"3.36586000","N":"USDT","T":1742585119595,"t":310194316,"b":"0","a":"0","m":false,"R":false,"wt":"CONTRACT_PRICE","ot":"MARKET","ps":"BOTH","cp":false,"rp":"0","pP":false,"si":0,"ss":0,"V":"EXPIRE_MAKER","pm":"NONE","gtd":0}}"#;
        let UserStreamMessage::Event(event) = user_stream_message(fill).unwrap() else { panic!("an event") };
        let AccountEvent::Order { order, fill: Some(fill), times } = *event else {
            panic!("an order update with its fill")
        };
        assert_eq!((times.transaction_ms, times.event_ms), (1_742_585_119_595, 1_742_585_119_596));
        assert_eq!((order.exchange_order_id.as_str(), order.status), ("4129479931", ExchangeOrderStatus::Filled));
        assert_eq!(order.filled_quantity, "0.100".parse::<Decimal>().unwrap());
        assert_eq!((fill.trade_id.as_str(), fill.price), ("310194316", "84146.50".parse::<Decimal>().unwrap()));
        assert_eq!(fill.fee, "3.36586000".parse::<Decimal>().unwrap());
        // The documented account update: a position and a balance, each absolute.
        let account = r#"{"e":"ACCOUNT_UPDATE","E":1564745798939,"T":1564745798938,"a":{"m":"ORDER","B":[{"a":"USDT","wb":"122624.12345678","cw":"100.12345678","bc":"50.12345678"}],"P":[{"s":"BTCUSDT","pa":"20","ep":"6563.66500","bep":"0","cr":"0","up":"2850.21200","mt":"isolated","iw":"13200.70726908","ps":"BOTH"}]}}"#;
        let UserStreamMessage::Event(event) = user_stream_message(account).unwrap() else { panic!("an event") };
        let AccountEvent::Account { positions, balances, .. } = *event else { panic!("an account update") };
        assert_eq!((positions[0].symbol.as_str(), positions[0].quantity), ("BTCUSDT", Decimal::from(20)));
        assert_eq!(balances[0].wallet_balance, "122624.12345678".parse::<Decimal>().unwrap());
        // The key's end, with `E` as the string the docs show; an event bulwark does not use.
        let expired = r#"{"e":"listenKeyExpired","E":"1736996475556","listenKey":"WsCM"}"#;
        assert_eq!(user_stream_message(expired).unwrap(), UserStreamMessage::ListenKeyExpired);
        let margin_call = r#"{"e":"MARGIN_CALL","E":1587727187525,"cw":"3.16812045","p":[]}"#;
        assert_eq!(user_stream_message(margin_call).unwrap(), UserStreamMessage::Ignored("MARGIN_CALL".into()));
        // A field that does not parse is named.
        let broken = fill_with_quantity("x");
        assert!(
            matches!(user_stream_message(&broken), Err(ExchangeError::Malformed { detail }) if detail.contains("ORDER_TRADE_UPDATE"))
        );
    }

    fn fill_with_quantity(quantity: &str) -> String {
        format!(
            r#"{{"e":"ORDER_TRADE_UPDATE","T":1,"E":2,"o":{{"s":"BTCUSDT","c":"bw-u1-1","S":"BUY","o":"MARKET","q":"{quantity}","p":"0","ap":"0","x":"NEW","X":"NEW","i":1,"l":"0","z":"0","L":"0","T":1,"t":0,"R":false}}}}"#
        )
    }

    #[test]
    fn the_documented_kline_row_parses() {
        let row: Vec<Value> = serde_json::from_str(
            r#"[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","17928899.62484339"]"#,
        )
        .unwrap();
        let candle = candle(&row).unwrap();
        assert_eq!((candle.open_time_ms, candle.close_time_ms), (1_499_040_000_000, 1_499_644_799_999));
        assert_eq!(candle.high, 0.8);
        assert_eq!(candle.taker_buy_volume, Some(1756.87402397), "field 9");
        let short: Vec<Value> = serde_json::from_str(r#"[1,"1","1","1","1","1",2]"#).unwrap();
        assert_eq!(super::candle(&short).unwrap().taker_buy_volume, None, "a row without field 9");
        let bad: Vec<Value> = serde_json::from_str(r#"[1,"x","1","1","1","1",2]"#).unwrap();
        assert!(matches!(super::candle(&bad), Err(ExchangeError::Malformed { .. })));
    }

    #[test]
    fn the_captured_exchange_info_gives_rules_and_limits() {
        let body = r#"{"timezone":"UTC","serverTime":1715054406944,"rateLimits":[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":2400},{"rateLimitType":"ORDERS","interval":"MINUTE","intervalNum":1,"limit":1200}],
          "symbols":[{"symbol":"BTCUSDT","status":"TRADING","filters":[{"filterType":"PRICE_FILTER","minPrice":"556.80","maxPrice":"4529764","tickSize":"0.10"},{"filterType":"LOT_SIZE","minQty":"0.001","maxQty":"1000","stepSize":"0.001"},{"filterType":"MIN_NOTIONAL","notional":"100"}]}]}"#;
        let info: ExchangeInfo = parse("exchangeInfo", body).unwrap();
        assert_eq!(info.weight_limit_per_minute(), Some(2400));
        let rules = info.rules();
        let btc = rules[&Symbol::new("BTCUSDT").unwrap()];
        assert_eq!(btc.tick_size.to_string(), "0.10");
        assert_eq!(btc.step_size.to_string(), "0.001");
        assert_eq!(btc.min_notional.to_string(), "100");
    }

    #[test]
    fn the_captured_order_and_position_parse() {
        let order: OrderBody = parse(
            "order",
            r#"{"orderId":4087922044,"symbol":"BTCUSDT","status":"NEW","clientOrderId":"bw-u1-7","price":"110001.00","avgPrice":"0.00","origQty":"0.200","executedQty":"0.000","cumQty":"0.000","cumQuote":"0.00000","timeInForce":"GTC","type":"LIMIT","reduceOnly":false,"closePosition":false,"side":"SELL","positionSide":"BOTH","stopPrice":"0.00","workingType":"CONTRACT_PRICE","priceProtect":false,"origType":"LIMIT","priceMatch":"NONE","selfTradePreventionMode":"NONE","goodTillDate":0,"updateTime":1739781831932}"#,
        )
        .unwrap();
        let order = order.into_order().unwrap();
        assert_eq!(order.exchange_order_id, "4087922044");
        assert_eq!(order.status, ExchangeOrderStatus::New);
        assert_eq!(order.average_price, None, "0.00 with nothing filled is no price");
        let rows: Vec<PositionRow> = parse(
            "positionRisk",
            r#"[{"symbol":"BTCUSDT","positionSide":"BOTH","positionAmt":"0.009","entryPrice":"67445.9","breakEvenPrice":"67479.62295","markPrice":"67502.68519858","unRealizedProfit":"0.51106678","liquidationPrice":"64846.98753790","isolatedMargin":"0","notional":"607.52416678","marginAsset":"USDT","isolatedWallet":"0","initialMargin":"7.59405208","maintMargin":"2.43009666","positionInitialMargin":"7.59405208","openOrderInitialMargin":"0","adl":2,"bidNotional":"0","askNotional":"0","updateTime":1722161166529}]"#,
        )
        .unwrap();
        let btc = Symbol::new("BTCUSDT").unwrap();
        assert_eq!(position(&btc, &rows).quantity.to_string(), "0.009");
        assert!(position(&Symbol::new("ETHUSDT").unwrap(), &rows).quantity.is_zero(), "no row means flat");
    }

    #[test]
    fn a_closed_kline_is_a_candle_and_everything_else_on_a_market_stream_is_a_sign_of_life() {
        let kline = |closed: bool| {
            format!(
                r#"{{"stream":"btcusdt@kline_5m","data":{{"e":"kline","E":1638747960123,"s":"BTCUSDT","k":{{"t":1638747660000,"T":1638747959999,"s":"BTCUSDT","i":"5m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":{closed},"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}}}}}"#
            )
        };
        let MarketStreamMessage::ClosedCandle { symbol, timeframe, candle, event_ms } =
            market_stream_message(&kline(true)).unwrap()
        else {
            panic!("a closed candle")
        };
        assert_eq!((symbol.as_str(), timeframe, event_ms), ("BTCUSDT", crate::domain::Timeframe::M5, 1638747960123));
        assert_eq!((candle.open_time_ms, candle.close_time_ms), (1638747660000, 1638747959999));
        assert_eq!(
            (candle.open, candle.high, candle.low, candle.close, candle.volume),
            (0.001, 0.0025, 0.0015, 0.002, 1000.0)
        );
        assert_eq!((candle.taker_buy_volume, candle.large_trades), (Some(500.0), None), "V; the stream's own");
        assert_eq!(market_stream_message(&kline(false)).unwrap(), MarketStreamMessage::Alive, "still forming");
        let raw = kline(true);
        let bare = &raw[raw.find("\"data\":").unwrap() + 7..raw.len() - 1];
        assert!(matches!(market_stream_message(bare).unwrap(), MarketStreamMessage::ClosedCandle { .. }), "raw mode");
        assert_eq!(market_stream_message(r#"{"result":null,"id":1}"#).unwrap(), MarketStreamMessage::Alive);
        assert_eq!(
            market_stream_message(r#"{"code":2,"msg":"Invalid request: too many parameters"}"#).unwrap(),
            MarketStreamMessage::Refused { code: 2, msg: "Invalid request: too many parameters".into() }
        );
        let broken = kline(true).replace(r#""o":"0.0010""#, r#""o":"abc""#);
        assert!(market_stream_message(&broken).unwrap_err().to_string().contains("kline field o is not a number"));
    }

    #[test]
    fn a_candle_read_from_the_stream_equals_the_same_candle_read_by_rest_to_the_last_bit() {
        // The simulator writes both with `{}`; a detour through `Decimal` read 2084624.903340849
        // one bit off, and the trader would have decided on two versions of one candle.
        let mut values = vec![2_084_624.903_340_849, 1.2079, 0.1, 4_608_466.2];
        values.extend((1..2_000).map(|i| f64::from(i) * 1_042.312_345_678_9 + 1.0 / f64::from(i)));
        for value in values {
            let text = format!("{value}");
            let row: Vec<Value> = serde_json::from_str(&format!(
                r#"[1,"{text}","{text}","{text}","{text}","{text}",2,"0",0,"{text}","0","0"]"#
            ))
            .unwrap();
            let rest = candle(&row).unwrap();
            let event = format!(
                r#"{{"e":"kline","E":3,"s":"XRPUSDT","k":{{"t":1,"T":2,"s":"XRPUSDT","i":"5m","o":"{text}","c":"{text}","h":"{text}","l":"{text}","v":"{text}","x":true,"V":"{text}"}}}}"#
            );
            let MarketStreamMessage::ClosedCandle { candle: streamed, .. } = market_stream_message(&event).unwrap()
            else {
                panic!("a closed candle")
            };
            assert_eq!(streamed, rest, "{text}");
            assert_eq!(streamed.taker_buy_volume, Some(value), "{text}");
        }
    }

    #[test]
    fn an_aggregate_trade_is_a_trade_with_the_takers_side() {
        // binance-shapes.md §1.5, with the newer `nq`.
        let sold = r#"{"e":"aggTrade","E":123456789,"s":"BTCUSDT","a":5933014,"p":"0.001","q":"100","nq":"100","f":100,"l":105,"T":123456785,"m":true}"#;
        let MarketStreamMessage::Trade { symbol, trade } = market_stream_message(sold).unwrap() else {
            panic!("a trade")
        };
        assert_eq!(symbol.as_str(), "BTCUSDT");
        assert_eq!(
            trade,
            MarketTrade { id: 5933014, time_ms: 123456785, price: 0.001, quantity: 100.0, taker_buys: false }
        );
        let bought =
            format!(r#"{{"stream":"btcusdt@aggTrade","data":{}}}"#, sold.replace(r#""m":true"#, r#""m":false"#));
        assert!(
            matches!(market_stream_message(&bought).unwrap(), MarketStreamMessage::Trade { trade, .. } if trade.taker_buys)
        );
        let broken = sold.replace(r#""q":"100""#, r#""q":"lots""#);
        assert!(market_stream_message(&broken).unwrap_err().to_string().contains("aggTrade field q is not a number"));
    }

    #[test]
    fn malformed_bodies_name_the_endpoint() {
        let error = parse::<ServerTime>("GET /fapi/v1/time", "{not json").unwrap_err();
        assert!(error.to_string().contains("GET /fapi/v1/time"), "{error}");
    }
}

/// One message of a user data stream, as bulwark uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum UserStreamMessage {
    Event(Box<crate::domain::AccountEvent>),
    /// `listenKeyExpired`: nothing more arrives on this connection.
    ListenKeyExpired,
    /// An event bulwark does not use (`MARGIN_CALL`, `TRADE_LITE`, ...).
    Ignored(String),
}

#[derive(Debug, Deserialize)]
struct StreamHead {
    e: String,
}

#[derive(Debug, Deserialize)]
struct OrderTradeUpdate {
    #[serde(rename = "E")]
    event_ms: i64,
    #[serde(rename = "T")]
    transaction_ms: i64,
    o: OrderUpdate,
}

/// `ORDER_TRADE_UPDATE.o` (`binance-shapes.md` §2.3).
#[derive(Debug, Deserialize)]
struct OrderUpdate {
    s: String,
    c: String,
    #[serde(rename = "S")]
    side: String,
    o: String,
    q: Decimal,
    p: Decimal,
    ap: Decimal,
    x: String,
    #[serde(rename = "X")]
    status: String,
    i: i64,
    l: Decimal,
    z: Decimal,
    #[serde(rename = "L")]
    last_price: Decimal,
    #[serde(default)]
    n: Option<Decimal>,
    #[serde(rename = "N", default)]
    fee_asset: Option<String>,
    #[serde(rename = "T")]
    trade_time_ms: i64,
    t: i64,
    #[serde(rename = "R", default)]
    reduce_only: bool,
    #[serde(default)]
    rp: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
struct AccountUpdate {
    #[serde(rename = "E")]
    event_ms: i64,
    #[serde(rename = "T")]
    transaction_ms: i64,
    a: AccountUpdateBody,
}

#[derive(Debug, Deserialize)]
struct AccountUpdateBody {
    #[serde(rename = "B", default)]
    balances: Vec<BalanceChange>,
    #[serde(rename = "P", default)]
    positions: Vec<PositionChange>,
}

#[derive(Debug, Deserialize)]
struct BalanceChange {
    a: String,
    wb: Decimal,
}

#[derive(Debug, Deserialize)]
struct PositionChange {
    s: String,
    pa: Decimal,
    ep: Decimal,
    up: Decimal,
    #[serde(default)]
    ps: Option<String>,
}

/// Reads one user data stream message (`binance-shapes.md` §2); anything that does not parse is an
/// error naming the field.
pub fn user_stream_message(text: &str) -> Result<UserStreamMessage, ExchangeError> {
    use crate::domain::{AccountEvent, BalanceUpdate, EventTimes, PositionUpdate};
    let head: StreamHead = parse("user data stream", text)?;
    match head.e.as_str() {
        "ORDER_TRADE_UPDATE" => {
            let update: OrderTradeUpdate = parse("ORDER_TRADE_UPDATE", text)?;
            let times = EventTimes { transaction_ms: update.transaction_ms, event_ms: update.event_ms };
            let o = update.o;
            let fill = if o.x == "TRADE" {
                Some(Fill {
                    trade_id: o.t.to_string(),
                    exchange_order_id: o.i.to_string(),
                    symbol: Symbol::new(&o.s).map_err(malformed)?,
                    side: Side::from_str(&o.side).map_err(malformed)?,
                    price: o.last_price,
                    quantity: o.l,
                    fee: o.n.unwrap_or_default(),
                    fee_asset: o.fee_asset.clone().unwrap_or_else(|| "USDT".to_owned()),
                    realized_pnl: o.rp.unwrap_or_default(),
                    time_ms: o.trade_time_ms,
                })
            } else {
                None
            };
            let order = OrderBody {
                order_id: o.i,
                client_order_id: o.c,
                symbol: o.s,
                side: o.side,
                order_type: o.o,
                orig_qty: o.q,
                executed_qty: o.z,
                avg_price: Some(o.ap),
                price: Some(o.p),
                status: o.status,
                reduce_only: o.reduce_only,
                update_time: o.trade_time_ms,
                // The event does not say when the order was accepted.
                time: 0,
            }
            .into_order()?;
            Ok(UserStreamMessage::Event(Box::new(AccountEvent::Order { order, fill, times })))
        }
        "ACCOUNT_UPDATE" => {
            let update: AccountUpdate = parse("ACCOUNT_UPDATE", text)?;
            let times = EventTimes { transaction_ms: update.transaction_ms, event_ms: update.event_ms };
            let positions = update
                .a
                .positions
                .into_iter()
                .filter(|p| p.ps.as_deref().is_none_or(|side| side == "BOTH"))
                .map(|p| {
                    Ok(PositionUpdate {
                        symbol: Symbol::new(&p.s).map_err(malformed)?,
                        quantity: p.pa,
                        entry_price: p.ep,
                        unrealized_pnl: p.up,
                    })
                })
                .collect::<Result<Vec<_>, ExchangeError>>()?;
            let balances =
                update.a.balances.into_iter().map(|b| BalanceUpdate { asset: b.a, wallet_balance: b.wb }).collect();
            Ok(UserStreamMessage::Event(Box::new(AccountEvent::Account { positions, balances, times })))
        }
        "listenKeyExpired" => Ok(UserStreamMessage::ListenKeyExpired),
        other => Ok(UserStreamMessage::Ignored(other.to_owned())),
    }
}

/// One message of a market stream connection, as bulwark uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketStreamMessage {
    /// A kline whose candle has closed (`k.x`), with the event time `E`.
    ClosedCandle { symbol: Symbol, timeframe: crate::domain::Timeframe, candle: Candle, event_ms: i64 },
    /// One aggregate trade (`<symbol>@aggTrade`).
    Trade { symbol: Symbol, trade: MarketTrade },
    /// A control request refused (`{"code":2,"msg":...}`): a subscription that did not happen.
    Refused { code: i64, msg: String },
    /// Anything else that shows the connection is alive: a candle still forming, a control answer
    /// (`{"result":null,"id":1}`), another stream's event.
    Alive,
}

#[derive(Debug, Deserialize)]
struct KlineEvent {
    #[serde(rename = "E")]
    event_ms: i64,
    k: KlineBody,
}

#[derive(Debug, Deserialize)]
struct KlineBody {
    t: i64,
    #[serde(rename = "T")]
    close_time_ms: i64,
    s: String,
    i: String,
    o: String,
    h: String,
    l: String,
    c: String,
    v: String,
    /// Taker-buy base volume.
    #[serde(rename = "V", default)]
    taker_buy_volume: Option<String>,
    x: bool,
}

/// Binance's aggregate trade event (`binance-shapes.md` §1.5).
#[derive(Debug, Deserialize)]
struct AggTradeEvent {
    s: String,
    a: u64,
    p: String,
    q: String,
    #[serde(rename = "T")]
    trade_ms: i64,
    /// The buyer was the maker: the taker sold.
    m: bool,
}

/// Reads one market stream message (`binance-shapes.md` §1.2, §1.4), raw or wrapped
/// (`{"stream":...,"data":...}`); a kline that does not parse is an error naming the field.
pub fn market_stream_message(text: &str) -> Result<MarketStreamMessage, ExchangeError> {
    let value: Value = parse("market stream", text)?;
    let payload = match value.get("data") {
        Some(data) if value.get("stream").is_some() => data,
        _ => &value,
    };
    if let (Some(code), None) = (payload.get("code").and_then(Value::as_i64), payload.get("e")) {
        let msg = payload.get("msg").and_then(Value::as_str).unwrap_or_default().to_owned();
        return Ok(MarketStreamMessage::Refused { code, msg });
    }
    match payload.get("e").and_then(Value::as_str) {
        Some("kline") => {}
        Some("aggTrade") => return agg_trade_message(payload),
        _ => return Ok(MarketStreamMessage::Alive),
    }
    let event: KlineEvent =
        serde_json::from_value(payload.clone()).map_err(|e| malformed(format!("kline event: {e}")))?;
    if !event.k.x {
        return Ok(MarketStreamMessage::Alive);
    }
    let number = |field: &str, text: &str| stream_number("kline", field, text);
    let k = event.k;
    Ok(MarketStreamMessage::ClosedCandle {
        symbol: Symbol::new(&k.s).map_err(malformed)?,
        timeframe: k.i.parse().map_err(|e| malformed(format!("kline interval {}: {e}", k.i)))?,
        candle: Candle {
            open_time_ms: k.t,
            close_time_ms: k.close_time_ms,
            open: number("o", &k.o)?,
            high: number("h", &k.h)?,
            low: number("l", &k.l)?,
            close: number("c", &k.c)?,
            volume: number("v", &k.v)?,
            taker_buy_volume: k.taker_buy_volume.as_deref().map(|volume| number("V", volume)).transpose()?,
            large_trades: None,
        },
        event_ms: event.event_ms,
    })
}

fn agg_trade_message(payload: &Value) -> Result<MarketStreamMessage, ExchangeError> {
    let event: AggTradeEvent =
        serde_json::from_value(payload.clone()).map_err(|e| malformed(format!("aggTrade event: {e}")))?;
    let number = |field: &str, text: &str| stream_number("aggTrade", field, text);
    Ok(MarketStreamMessage::Trade {
        symbol: Symbol::new(&event.s).map_err(malformed)?,
        trade: MarketTrade {
            id: event.a,
            time_ms: event.trade_ms,
            price: number("p", &event.p)?,
            quantity: number("q", &event.q)?,
            taker_buys: !event.m,
        },
    })
}

/// A stream event's number text read as the REST klines row reads it (`candle`): straight to
/// `f64`, so a candle that came by stream equals the same candle read by REST to the last bit (a
/// detour through `Decimal` rounds some values differently, and the trader would decide on two
/// versions of one candle).
fn stream_number(event: &str, field: &str, text: &str) -> Result<f64, ExchangeError> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| malformed(format!("{event} field {field} is not a number: {text:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenKey {
    pub listen_key: String,
}
