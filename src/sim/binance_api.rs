//! The Binance USDⓈ-M endpoints of `bulwark sim`: parameters, signatures, receive windows, JSON
//! shapes and error codes as Binance has them (`exchange-apis.md` §1), served by the paper matching
//! engine.

use std::str::FromStr;

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::domain::{
    ClientOrderId, ExchangeOrder, Fill, OrderRequest, OrderType, Price, Quantity, Side, Symbol, UserId,
};
use crate::exchange::binance::sign;
use crate::exchange::paper::market::{KlineInterval, KlineWindow};
use crate::exchange::paper::venue::TimeInForce;
use crate::exchange::{Exchange, ExchangeError};
use crate::sim::{Answer, SimState, binance_account, binance_market_data};

/// Request parameters from the query string and the form body (the query wins, as on Binance).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: &str, body: &str) -> Self {
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        for (key, value) in url::form_urlencoded::parse(body.as_bytes()).into_owned() {
            if !params.iter().any(|(k, _)| *k == key) {
                params.push((key, value));
            }
        }
        Self(params)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub(crate) fn required(&self, key: &str) -> Result<&str, (StatusCode, i64, String)> {
        self.get(key).ok_or_else(|| {
            bad(-1102, &format!("Mandatory parameter '{key}' was not sent, was empty/null, or malformed."))
        })
    }
}

pub(crate) fn bad(code: i64, msg: &str) -> (StatusCode, i64, String) {
    (StatusCode::BAD_REQUEST, code, msg.to_owned())
}

/// Request weight per endpoint (`exchange-apis.md` §1.3).
pub fn weight(endpoint: &str, params: &Params) -> u32 {
    match endpoint {
        "GET /fapi/v1/klines" => match params.get("limit").and_then(|l| l.parse::<u32>().ok()).unwrap_or(500) {
            0..100 => 1,
            100..500 => 2,
            500..=1000 => 5,
            _ => 10,
        },
        "GET /fapi/v1/userTrades" => 5,
        "GET /fapi/v1/openOrders" if params.get("symbol").is_none() => 40,
        "POST /fapi/v1/order" => 0,
        _ if binance_account::serves(endpoint) => binance_account::weight(endpoint),
        _ if binance_market_data::serves(endpoint) => binance_market_data::weight(endpoint, params),
        _ => 1,
    }
}

/// The account whose API key the request carries (security type `USER_STREAM`: no signature).
fn api_key_account(state: &SimState, request: &HttpRequest) -> Result<UserId, (StatusCode, i64, String)> {
    let Some(key) = request.headers().get("X-MBX-APIKEY").and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::UNAUTHORIZED, -2014, "API-key format invalid.".to_owned()));
    };
    state.accounts.get(key).map(|(user, _)| user.clone()).ok_or_else(|| {
        (
            StatusCode::UNAUTHORIZED,
            -2015,
            "Invalid API-key, IP, or permissions for action, request ip: 127.0.0.1".to_owned(),
        )
    })
}

/// Checks the API key, the signature (last parameter) and the receive window; returns the account.
fn authenticate(
    state: &SimState,
    request: &HttpRequest,
    query: &str,
    body: &str,
    params: &Params,
    skew_ms: i64,
) -> Result<UserId, (StatusCode, i64, String)> {
    let Some(key) = request.headers().get("X-MBX-APIKEY").and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::UNAUTHORIZED, -2014, "API-key format invalid.".to_owned()));
    };
    let Some((user, secret)) = state.accounts.get(key) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            -2015,
            "Invalid API-key, IP, or permissions for action, request ip: 127.0.0.1".to_owned(),
        ));
    };
    let total = format!("{query}{body}");
    let (payload, signature) = match total.rsplit_once("signature=") {
        Some((payload, signature)) if !signature.contains('&') => {
            (payload.strip_suffix('&').unwrap_or(payload), signature)
        }
        _ => return Err(bad(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")),
    };
    if !sign::verify(secret, payload, signature) {
        return Err(bad(-1022, "Signature for this request is not valid."));
    }
    let timestamp: i64 = params
        .required("timestamp")?
        .parse()
        .map_err(|_| bad(-1102, "Illegal characters found in parameter 'timestamp'."))?;
    let recv_window: i64 = match params.get("recvWindow") {
        Some(window) => window
            .parse()
            .ok()
            .filter(|w| (1..=60_000).contains(w))
            .ok_or_else(|| bad(-1131, "recvWindow must be less than 60000"))?,
        None => 5_000,
    };
    // Timestamps are in the exchange's clock; the window stands for network delay, in wall time.
    let sent_wall_ms = state.market_clock.wall_at_ms(timestamp - skew_ms);
    let now_ms = state.now_ms();
    if sent_wall_ms > now_ms + 1_000 {
        return Err(bad(-1021, "Timestamp for this request was 1000ms ahead of the server's time."));
    }
    if now_ms - sent_wall_ms > recv_window {
        return Err(bad(-1021, "Timestamp for this request is outside of the recvWindow."));
    }
    Ok(user.clone())
}

pub(crate) fn exchange_error(error: ExchangeError) -> (StatusCode, i64, String) {
    match error {
        ExchangeError::Rejected { code, msg } | ExchangeError::Duplicate { code, msg } => {
            (StatusCode::BAD_REQUEST, code, msg)
        }
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            -1001,
            format!("Internal error; unable to process your request. Please try again. ({other})"),
        ),
    }
}

fn symbol(params: &Params) -> Result<Symbol, (StatusCode, i64, String)> {
    Symbol::new(params.required("symbol")?).map_err(|_| bad(-1121, "Invalid symbol."))
}

/// The `symbol` parameter, one the simulator lists (`-1121` otherwise, as Binance answers).
pub(crate) fn known_symbol(state: &SimState, params: &Params) -> Result<Symbol, (StatusCode, i64, String)> {
    let symbol = symbol(params)?;
    if state.symbols.iter().any(|(listed, _)| *listed == symbol) {
        Ok(symbol)
    } else {
        Err(bad(-1121, "Invalid symbol."))
    }
}

/// An optional `symbol` parameter; when given, one the simulator lists.
pub(crate) fn optional_symbol(state: &SimState, params: &Params) -> Result<Option<Symbol>, (StatusCode, i64, String)> {
    match params.get("symbol") {
        Some(_) => known_symbol(state, params).map(Some),
        None => Ok(None),
    }
}

fn decimal(params: &Params, key: &str) -> Result<Decimal, (StatusCode, i64, String)> {
    Decimal::from_str(params.required(key)?)
        .map_err(|_| bad(-1102, &format!("Mandatory parameter '{key}' was not sent, was empty/null, or malformed.")))
}

/// The largest order quantity the simulator's symbols take (`LOT_SIZE.maxQty` in its
/// exchangeInfo); a larger one is refused with `-4005` before any margin check, as on Binance.
const SIM_QUANTITY_MAX: u64 = 100_000_000;

/// A LIMIT order's `timeInForce`: mandatory at Binance (`-1102` without it). GTC, IOC, FOK and
/// GTX are matched as Binance matches them ([`TimeInForce`]); GTD needs an expiry the matching
/// engine does not keep, so it is refused by name rather than silently kept as GTC (README,
/// "Against the simulator").
fn limit_time_in_force(params: &Params) -> Result<TimeInForce, (StatusCode, i64, String)> {
    match params.get("timeInForce") {
        None | Some("") => {
            Err(bad(-1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed."))
        }
        Some("GTC") => Ok(TimeInForce::GoodTillCancel),
        Some("IOC") => Ok(TimeInForce::ImmediateOrCancel),
        Some("FOK") => Ok(TimeInForce::FillOrKill),
        Some("GTX") => Ok(TimeInForce::PostOnly),
        Some("GTD") => {
            Err((StatusCode::BAD_REQUEST, -1000, "timeInForce GTD is not simulated by bulwark sim".to_owned()))
        }
        Some(_) => Err(bad(-1115, "Invalid timeInForce.")),
    }
}

/// Whether a new order's answer is the executed order (`RESULT`) or Binance's default `ACK`.
fn wants_result(params: &Params) -> Result<bool, (StatusCode, i64, String)> {
    match params.get("newOrderRespType") {
        None | Some("ACK") => Ok(false),
        Some("RESULT") => Ok(true),
        Some(_) => Err(bad(-1130, "Data sent for parameter 'newOrderRespType' is not valid.")),
    }
}

/// `user`'s order with this exchange `orderId`, if the venue keeps it.
async fn order_by_exchange_id(
    state: &SimState,
    user: &UserId,
    order_id: &str,
) -> Result<Option<ExchangeOrder>, (StatusCode, i64, String)> {
    let (user, order_id) = (user.clone(), order_id.to_owned());
    state
        .exchange
        .call(move |venue, wall_ms, changes| {
            let orders = venue.account_orders(&user, wall_ms, changes)?;
            Ok(orders.into_iter().find(|order| order.exchange_order_id == order_id))
        })
        .await
        .map_err(exchange_error)
}

/// Every simulated symbol is a USDT-margined perpetual.
const QUOTE_ASSET: &str = "USDT";
/// The delivery date Binance gives a perpetual (2100-12-25).
const PERPETUAL_DELIVERY_DATE_MS: i64 = 4_133_404_800_000;

/// The base asset of a USDT perpetual (`XRPUSDT` → `XRP`).
fn base_asset(symbol: &Symbol) -> &str {
    symbol.as_str().strip_suffix(QUOTE_ASSET).filter(|base| !base.is_empty()).unwrap_or(symbol.as_str())
}

/// Decimal places of a tick or step size (`0.0001` → 4), as exchangeInfo's precisions count them.
fn decimals(size: Decimal) -> u32 {
    size.normalize().scale()
}

/// An optional time parameter in epoch ms (`startTime`, `endTime`).
pub(crate) fn time_param(params: &Params, key: &str) -> Result<Option<i64>, (StatusCode, i64, String)> {
    params
        .get(key)
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                bad(-1100, &format!("Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'."))
            })
        })
        .transpose()
}

/// A query or cancel that names no order.
pub(crate) fn neither_order_id() -> (StatusCode, i64, String) {
    bad(-1102, "Param 'orderId' or 'origClientOrderId' must be sent, but both were empty/null!")
}

pub(crate) fn order_json(order: &ExchangeOrder) -> Value {
    let price = order.order_type.limit_price().map_or("0".to_owned(), |p| p.to_string());
    let average = order.average_price.map_or("0.00".to_owned(), |p| p.to_string());
    json!({
        "orderId": order.exchange_order_id.parse::<i64>().unwrap_or_default(),
        "symbol": order.symbol.as_str(),
        "status": order.status.as_str(),
        "clientOrderId": order.client_order_id.as_str(),
        "price": price,
        "avgPrice": average,
        "origQty": order.quantity.to_string(),
        "executedQty": order.filled_quantity.to_string(),
        "cumQty": order.filled_quantity.to_string(),
        "cumQuote": (order.filled_quantity * order.average_price.unwrap_or_default()).to_string(),
        "timeInForce": "GTC",
        "type": order.order_type.as_str(),
        "reduceOnly": order.reduce_only,
        "closePosition": false,
        "side": order.side.as_str(),
        "positionSide": "BOTH",
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": false,
        "origType": order.order_type.as_str(),
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "time": order.created_at_ms,
        "updateTime": order.updated_at_ms,
    })
}

/// The answer to a new order without `newOrderRespType=RESULT`: Binance's ACK, which in practice
/// is the whole order as accepted, `NEW` with nothing executed, even for a MARKET order that has
/// already filled (`binance-shapes.md` §3.7), and without `time`.
fn ack_json(order: &ExchangeOrder) -> Value {
    let mut answer = order_json(order);
    if let Value::Object(fields) = &mut answer {
        fields.remove("time");
        for (field, value) in
            [("status", "NEW"), ("avgPrice", "0.00"), ("executedQty", "0"), ("cumQty", "0"), ("cumQuote", "0")]
        {
            fields.insert(field.to_owned(), json!(value));
        }
    }
    answer
}

fn trade_json(fill: &Fill) -> Value {
    json!({
        "buyer": fill.side == Side::Buy,
        "commission": fill.fee.to_string(),
        "commissionAsset": fill.fee_asset,
        "id": fill.trade_id.parse::<i64>().unwrap_or_default(),
        "maker": false,
        "orderId": fill.exchange_order_id.parse::<i64>().unwrap_or_default(),
        "price": fill.price.to_string(),
        "qty": fill.quantity.to_string(),
        "quoteQty": (fill.price * fill.quantity).to_string(),
        "realizedPnl": fill.realized_pnl.to_string(),
        "side": fill.side.as_str(),
        "positionSide": "BOTH",
        "symbol": fill.symbol.as_str(),
        "time": fill.time_ms,
    })
}

fn float(value: f64) -> String {
    format!("{value}")
}

pub async fn answer(
    state: &SimState,
    request: &HttpRequest,
    endpoint: &str,
    query: &str,
    body: &str,
    params: &Params,
    skew_ms: i64,
) -> Answer {
    let exchange = &state.exchange;
    let signed = |state: &SimState| authenticate(state, request, query, body, params, skew_ms);
    match endpoint {
        "GET /fapi/v1/ping" => Ok(json!({})),
        "POST /fapi/v1/listenKey" => {
            let user = api_key_account(state, request)?;
            let key = state.listen_keys.lock().create(&user, state.now_ms(), state.seed);
            Ok(json!({ "listenKey": key }))
        }
        "PUT /fapi/v1/listenKey" => {
            let user = api_key_account(state, request)?;
            match state.listen_keys.lock().keepalive(&user, state.now_ms()) {
                Some(key) => Ok(json!({ "listenKey": key })),
                None => Err(bad(-1125, "This listenKey does not exist.")),
            }
        }
        "DELETE /fapi/v1/listenKey" => {
            let user = api_key_account(state, request)?;
            state.listen_keys.lock().delete(&user);
            Ok(json!({}))
        }
        "GET /fapi/v1/time" => Ok(json!({ "serverTime": state.exchange_now_ms(skew_ms) })),
        "GET /fapi/v1/exchangeInfo" => {
            let limit = state.limiter.lock().limit;
            let symbols: Vec<Value> = state
                .symbols
                .iter()
                .map(|(symbol, rules)| {
                    json!({
                        "symbol": symbol.as_str(), "pair": symbol.as_str(), "contractType": "PERPETUAL",
                        "deliveryDate": PERPETUAL_DELIVERY_DATE_MS, "onboardDate": state.market_clock.origin_market_ms,
                        "status": "TRADING", "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
                        "baseAsset": base_asset(symbol), "quoteAsset": QUOTE_ASSET, "marginAsset": QUOTE_ASSET,
                        "pricePrecision": decimals(rules.tick_size), "quantityPrecision": decimals(rules.step_size),
                        "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
                        "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
                        "maxMoveOrderLimit": 10000,
                        "filters": [
                            { "filterType": "PRICE_FILTER", "minPrice": rules.tick_size.to_string(), "maxPrice": "10000000", "tickSize": rules.tick_size.to_string() },
                            { "filterType": "LOT_SIZE", "minQty": rules.min_quantity.to_string(), "maxQty": SIM_QUANTITY_MAX.to_string(), "stepSize": rules.step_size.to_string() },
                            { "filterType": "MARKET_LOT_SIZE", "minQty": rules.min_quantity.to_string(), "maxQty": SIM_QUANTITY_MAX.to_string(), "stepSize": rules.step_size.to_string() },
                            { "filterType": "MIN_NOTIONAL", "notional": rules.min_notional.to_string() },
                        ],
                        "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                    })
                })
                .collect();
            Ok(json!({
                "timezone": "UTC",
                "serverTime": state.exchange_now_ms(skew_ms),
                "futuresType": "U_MARGINED",
                "rateLimits": [
                    { "rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limit },
                    { "rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200 },
                ],
                "exchangeFilters": [],
                "assets": [{ "asset": "USDT", "marginAvailable": true, "autoAssetExchange": "-10000" }],
                "symbols": symbols,
            }))
        }
        "GET /fapi/v1/klines" => {
            let symbol = symbol(params)?;
            let interval =
                KlineInterval::parse(params.required("interval")?).ok_or_else(|| bad(-1120, "Invalid interval."))?;
            let limit: u16 = match params.get("limit") {
                Some(limit) => limit
                    .parse()
                    .ok()
                    .filter(|l| (1..=1_500).contains(l))
                    .ok_or_else(|| bad(-1130, "Invalid data sent for a parameter."))?,
                None => 500,
            };
            let (start_ms, end_ms) = (time_param(params, "startTime")?, time_param(params, "endTime")?);
            if start_ms.zip(end_ms).is_some_and(|(start, end)| start > end) {
                return Err(bad(-1023, "Start time is greater than end time."));
            }
            let window = KlineWindow { start_ms, end_ms, limit };
            let candles = state.exchange.klines_window(&symbol, interval, window).await.map_err(exchange_error)?;
            let rows: Vec<Value> = candles
                .iter()
                .map(|c| {
                    // The market's candles carry their tape's taker-buy volume (`crate::intelligence::tape`).
                    let taker_buy_volume = c.taker_buy_volume.unwrap_or(0.0);
                    json!([
                        c.open_time_ms,
                        float(c.open),
                        float(c.high),
                        float(c.low),
                        float(c.close),
                        float(c.volume),
                        c.close_time_ms,
                        float(c.volume * c.close),
                        crate::sim::market_stream::trade_count(c),
                        float(taker_buy_volume),
                        float(taker_buy_volume * c.close),
                        "0"
                    ])
                })
                .collect();
            Ok(Value::Array(rows))
        }
        "POST /fapi/v1/order" => {
            let user = signed(state)?;
            let symbol = symbol(params)?;
            let side = Side::from_str(params.required("side")?).map_err(|_| bad(-1117, "Invalid side."))?;
            let quantity = Quantity::new(decimal(params, "quantity")?)
                .map_err(|_| bad(-4003, "Quantity less than or equal to zero."))?;
            if quantity.get() > Decimal::from(SIM_QUANTITY_MAX) {
                return Err(bad(-4005, "Quantity greater than max quantity."));
            }
            // One-way mode (the only one the simulator keeps, as a fresh Binance account): a
            // position side other than BOTH does not match the account's setting.
            if params.get("positionSide").is_some_and(|side| side != "BOTH") {
                return Err(bad(-4061, "Order's position side does not match user's setting."));
            }
            let (order_type, time_in_force) = match params.required("type")? {
                "MARKET" => {
                    if params.get("price").is_some() {
                        return Err(bad(-1106, "Parameter 'price' sent when not required."));
                    }
                    (OrderType::Market, TimeInForce::GoodTillCancel)
                }
                "LIMIT" => {
                    let time_in_force = limit_time_in_force(params)?;
                    let price = Price::new(decimal(params, "price")?).map_err(|_| bad(-4001, "Price less than 0."))?;
                    (OrderType::Limit { price }, time_in_force)
                }
                _ => return Err(bad(-1116, "Invalid orderType.")),
            };
            let result = wants_result(params)?;
            let client_order_id = match params.get("newClientOrderId") {
                Some(id) => ClientOrderId::parse(id).map_err(|_| bad(-4015, "Client order id is not valid."))?,
                None => {
                    ClientOrderId::parse(&format!("sim-{}", state.now_ms())).expect("Invariant: a valid generated id")
                }
            };
            let reduce_only = params.get("reduceOnly") == Some("true");
            let order = OrderRequest {
                client_order_id,
                symbol,
                side,
                order_type,
                quantity,
                reduce_only,
                timestamp_ms: state.now_ms(),
            };
            let accepted =
                state.exchange.create_order_in_force(&user, &order, time_in_force).await.map_err(exchange_error)?;
            tracing::info!(account = %user, client_order_id = %accepted.client_order_id, side = accepted.side.as_str(), quantity = %accepted.quantity, "sim: order accepted");
            Ok(if result { order_json(&accepted) } else { ack_json(&accepted) })
        }
        "GET /fapi/v1/order" => {
            let user = signed(state)?;
            let symbol = symbol(params)?;
            let found = match (params.get("origClientOrderId"), params.get("orderId")) {
                (Some(id), _) => {
                    let id = ClientOrderId::parse(id).map_err(|_| bad(-2013, "Order does not exist."))?;
                    exchange.order_by_client_id(&user, &symbol, &id).await.map_err(exchange_error)?
                }
                (None, Some(order_id)) => order_by_exchange_id(state, &user, order_id).await?,
                (None, None) => return Err(neither_order_id()),
            };
            match found {
                Some(order) if order.symbol == symbol => Ok(order_json(&order)),
                _ => Err(bad(-2013, "Order does not exist.")),
            }
        }
        "DELETE /fapi/v1/order" => {
            let user = signed(state)?;
            let symbol = symbol(params)?;
            let id = match (params.get("origClientOrderId"), params.get("orderId")) {
                (Some(id), _) => ClientOrderId::parse(id).map_err(|_| bad(-2011, "Unknown order sent."))?,
                (None, Some(order_id)) => order_by_exchange_id(state, &user, order_id)
                    .await?
                    .filter(|order| order.symbol == symbol)
                    .map(|order| order.client_order_id)
                    .ok_or_else(|| bad(-2011, "Unknown order sent."))?,
                (None, None) => return Err(neither_order_id()),
            };
            let cancelled = exchange.cancel_order(&user, &symbol, &id).await.map_err(exchange_error)?;
            Ok(order_json(&cancelled))
        }
        "GET /fapi/v1/openOrders" => {
            let user = signed(state)?;
            let symbol = optional_symbol(state, params)?;
            let orders = exchange.open_orders(&user, symbol.as_ref()).await.map_err(exchange_error)?;
            Ok(Value::Array(orders.iter().map(order_json).collect()))
        }
        "GET /fapi/v1/userTrades" => {
            let user = signed(state)?;
            let symbol = symbol(params)?;
            let fills = match (params.get("orderId"), params.get("startTime")) {
                (Some(order_id), _) => exchange.order_fills(&user, &symbol, order_id).await,
                (None, Some(start)) => {
                    let since_ms =
                        start.parse().map_err(|_| bad(-1102, "Illegal characters found in parameter 'startTime'."))?;
                    exchange.fills(&user, &symbol, since_ms).await
                }
                (None, None) => exchange.fills(&user, &symbol, state.exchange_now_ms(skew_ms) - 7 * 86_400_000).await,
            }
            .map_err(exchange_error)?;
            Ok(Value::Array(fills.iter().map(trade_json).collect()))
        }
        _ if binance_account::serves(endpoint) => {
            binance_account::answer(state, endpoint, params, signed(state)?).await
        }
        _ if binance_market_data::serves(endpoint) => binance_market_data::answer(state, endpoint, params).await,
        _ => Err((StatusCode::NOT_FOUND, -1000, format!("{endpoint} is not served by bulwark sim"))),
    }
}
