//! The account endpoints of `bulwark sim` that bulwark itself does not call but every other
//! Binance client does (`binance-shapes.md` §3.4–3.6): account and balance (v2, v3), position risk
//! (v2; v3 lives with the order endpoints), leverage and its brackets, margin type, position mode,
//! cancel-all, order history, one open order, and income. Shapes, parameters and error codes are
//! Binance's; what the paper engine does not model is said where it shows (README, "Against the
//! simulator").

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::domain::{ExchangeOrder, Fill, Symbol, UserId};
use crate::exchange::paper::venue::{AccountView, LEVERAGE_RANGE, SymbolView};
use crate::sim::binance_api::{
    Params, bad, exchange_error, known_symbol, neither_order_id, optional_symbol, order_json, time_param,
};
use crate::sim::{Answer, SimState};

/// Maintenance margin rate of the one leverage bracket every simulated symbol has.
const MAINT_MARGIN_RATIO: f64 = 0.004;
/// The notional cap of that bracket, as `leverageBracket` and `leverage` report it. The paper
/// engine does not enforce it.
const NOTIONAL_CAP: u64 = 1_000_000_000;
const DAY_MS: i64 = 86_400_000;

/// Whether [`answer`] serves `endpoint`.
pub fn serves(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "GET /fapi/v2/account"
            | "GET /fapi/v3/account"
            | "GET /fapi/v2/balance"
            | "GET /fapi/v3/balance"
            | "GET /fapi/v2/positionRisk"
            | "GET /fapi/v3/positionRisk"
            | "GET /fapi/v1/leverageBracket"
            | "POST /fapi/v1/leverage"
            | "POST /fapi/v1/marginType"
            | "GET /fapi/v1/positionSide/dual"
            | "POST /fapi/v1/positionSide/dual"
            | "DELETE /fapi/v1/allOpenOrders"
            | "GET /fapi/v1/allOrders"
            | "GET /fapi/v1/openOrder"
            | "GET /fapi/v1/income"
    )
}

/// Request weight of the endpoints served here (`binance-shapes.md` §3.4–3.6).
pub fn weight(endpoint: &str) -> u32 {
    match endpoint {
        "GET /fapi/v2/account" | "GET /fapi/v3/account" | "GET /fapi/v2/balance" | "GET /fapi/v3/balance" => 5,
        "GET /fapi/v2/positionRisk" | "GET /fapi/v3/positionRisk" => 5,
        "GET /fapi/v1/allOrders" => 5,
        "GET /fapi/v1/positionSide/dual" | "GET /fapi/v1/income" => 30,
        _ => 1,
    }
}

/// Answers one signed account request for `user`.
pub async fn answer(state: &SimState, endpoint: &str, params: &Params, user: UserId) -> Answer {
    match endpoint {
        "GET /fapi/v3/account" => Ok(account_json(&account_view(state, &user).await?, false)),
        "GET /fapi/v2/account" => Ok(account_json(&account_view(state, &user).await?, true)),
        "GET /fapi/v2/balance" | "GET /fapi/v3/balance" => {
            Ok(json!([balance_json(&account_view(state, &user).await?)]))
        }
        "GET /fapi/v2/positionRisk" => {
            let only = optional_symbol(state, params)?;
            let view = account_view(state, &user).await?;
            let rows = view.symbols.iter().filter(|s| only.as_ref().is_none_or(|o| *o == s.position.symbol));
            Ok(Value::Array(rows.map(|s| position_risk_v2_json(s, view.time_ms)).collect()))
        }
        "GET /fapi/v3/positionRisk" => {
            let only = optional_symbol(state, params)?;
            let view = account_view(state, &user).await?;
            // As v3 on Binance: only symbols with a position or an open order.
            let rows = view
                .symbols
                .iter()
                .filter(|s| only.as_ref().is_none_or(|o| *o == s.position.symbol))
                .filter(|s| !s.position.quantity.is_zero() || s.has_open_orders);
            Ok(Value::Array(rows.map(|s| position_risk_v3_json(s, view.time_ms)).collect()))
        }
        "GET /fapi/v1/leverageBracket" => match optional_symbol(state, params)? {
            Some(symbol) => Ok(bracket_json(&symbol)),
            None => Ok(Value::Array(state.symbols.iter().map(|(symbol, _)| bracket_json(symbol)).collect())),
        },
        "POST /fapi/v1/leverage" => {
            let symbol = known_symbol(state, params)?;
            let leverage: u32 = params.required("leverage")?.parse().map_err(|_| {
                bad(-1100, "Illegal characters found in parameter 'leverage'; legal range is '^[0-9]{1,20}$'.")
            })?;
            let settings = state
                .exchange
                .call({
                    let (user, symbol) = (user.clone(), symbol.clone());
                    move |venue, _, changes| venue.set_leverage(&user, &symbol, leverage, changes)
                })
                .await
                .map_err(exchange_error)?;
            Ok(
                json!({ "leverage": settings.leverage, "maxNotionalValue": NOTIONAL_CAP.to_string(), "symbol": symbol.as_str() }),
            )
        }
        "POST /fapi/v1/marginType" => {
            let symbol = known_symbol(state, params)?;
            let isolated = match params.required("marginType")? {
                "ISOLATED" => true,
                "CROSSED" => false,
                _ => return Err(bad(-1130, "Data sent for parameter 'marginType' is not valid.")),
            };
            state
                .exchange
                .call(move |venue, wall_ms, changes| venue.set_margin_type(&user, &symbol, isolated, wall_ms, changes))
                .await
                .map_err(exchange_error)?;
            Ok(json!({ "code": 200, "msg": "success" }))
        }
        "GET /fapi/v1/positionSide/dual" => Ok(json!({ "dualSidePosition": false })),
        "POST /fapi/v1/positionSide/dual" => change_position_mode(state, params, &user).await,
        "DELETE /fapi/v1/allOpenOrders" => {
            let symbol = known_symbol(state, params)?;
            state
                .exchange
                .call(move |venue, wall_ms, changes| {
                    for order in venue.open_orders(&user, Some(&symbol), wall_ms, changes)? {
                        venue.cancel_order(&user, &order.client_order_id, wall_ms, changes)?;
                    }
                    Ok(())
                })
                .await
                .map_err(exchange_error)?;
            Ok(json!({ "code": 200, "msg": "The operation of cancel all open order is done." }))
        }
        "GET /fapi/v1/allOrders" => all_orders(state, params, &user).await,
        "GET /fapi/v1/openOrder" => {
            let symbol = known_symbol(state, params)?;
            let orders = account_orders(state, &user).await?;
            let found = match (params.get("orderId"), params.get("origClientOrderId")) {
                (Some(order_id), _) => orders.into_iter().find(|o| o.exchange_order_id == order_id),
                (None, Some(client_id)) => {
                    orders.into_iter().rev().find(|o| o.client_order_id.as_str() == client_id && o.status.is_open())
                }
                (None, None) => return Err(neither_order_id()),
            };
            match found {
                Some(order) if order.symbol == symbol && order.status.is_open() => Ok(order_json(&order)),
                _ => Err(bad(-2013, "Order does not exist.")),
            }
        }
        "GET /fapi/v1/income" => income(state, params, &user).await,
        _ => Err(bad(-1000, &format!("{endpoint} is not an account endpoint"))),
    }
}

async fn account_view(
    state: &SimState,
    user: &UserId,
) -> Result<AccountView, (actix_web::http::StatusCode, i64, String)> {
    let user = user.clone();
    state
        .exchange
        .call(move |venue, wall_ms, changes| venue.account_view(&user, wall_ms, changes))
        .await
        .map_err(exchange_error)
}

async fn account_orders(
    state: &SimState,
    user: &UserId,
) -> Result<Vec<ExchangeOrder>, (actix_web::http::StatusCode, i64, String)> {
    let user = user.clone();
    state
        .exchange
        .call(move |venue, wall_ms, changes| venue.account_orders(&user, wall_ms, changes))
        .await
        .map_err(exchange_error)
}

fn text(value: Decimal) -> String {
    value.normalize().to_string()
}

fn maint_margin(view: &SymbolView) -> Decimal {
    view.notional.abs() * Decimal::try_from(MAINT_MARGIN_RATIO).unwrap_or_default()
}

/// The account's totals, its one asset (USDT) and its positions: v3 lists symbols with a position
/// or open orders, v2 every symbol with its leverage.
fn account_json(view: &AccountView, v2: bool) -> Value {
    let balance = &view.balance;
    let position_margin: Decimal = view.symbols.iter().map(|s| s.position_margin).sum();
    let order_margin: Decimal = view.symbols.iter().map(|s| s.open_order_margin).sum();
    let maintenance: Decimal = view.symbols.iter().map(maint_margin).sum();
    let margin_balance = balance.wallet_balance + balance.unrealized_pnl;
    let mut asset = json!({
        "asset": balance.asset, "walletBalance": text(balance.wallet_balance),
        "unrealizedProfit": text(balance.unrealized_pnl), "marginBalance": text(margin_balance),
        "maintMargin": text(maintenance), "initialMargin": text(position_margin + order_margin),
        "positionInitialMargin": text(position_margin), "openOrderInitialMargin": text(order_margin),
        "crossWalletBalance": text(balance.wallet_balance), "crossUnPnl": text(balance.unrealized_pnl),
        "availableBalance": text(balance.available_balance), "maxWithdrawAmount": text(balance.available_balance),
        "updateTime": view.time_ms,
    });
    let positions: Vec<Value> = view
        .symbols
        .iter()
        .filter(|s| v2 || !s.position.quantity.is_zero() || s.has_open_orders)
        .map(|s| {
            let mut row = json!({
                "symbol": s.position.symbol.as_str(), "positionSide": "BOTH",
                "positionAmt": text(s.position.quantity), "unrealizedProfit": text(s.position.unrealized_pnl),
                "isolatedMargin": "0", "notional": text(s.notional), "isolatedWallet": "0",
                "initialMargin": text(s.position_margin + s.open_order_margin), "maintMargin": text(maint_margin(s)),
                "updateTime": view.time_ms,
            });
            if v2 {
                extend(&mut row, json!({
                    "positionInitialMargin": text(s.position_margin), "openOrderInitialMargin": text(s.open_order_margin),
                    "leverage": s.settings.leverage.to_string(), "isolated": s.settings.isolated,
                    "entryPrice": text(s.position.entry_price), "maxNotional": NOTIONAL_CAP.to_string(),
                    "bidNotional": "0", "askNotional": "0",
                }));
            }
            row
        })
        .collect();
    let mut account = json!({
        "totalInitialMargin": text(position_margin + order_margin), "totalMaintMargin": text(maintenance),
        "totalWalletBalance": text(balance.wallet_balance), "totalUnrealizedProfit": text(balance.unrealized_pnl),
        "totalMarginBalance": text(margin_balance), "totalPositionInitialMargin": text(position_margin),
        "totalOpenOrderInitialMargin": text(order_margin), "totalCrossWalletBalance": text(balance.wallet_balance),
        "totalCrossUnPnl": text(balance.unrealized_pnl), "availableBalance": text(balance.available_balance),
        "maxWithdrawAmount": text(balance.available_balance),
    });
    if v2 {
        extend(&mut asset, json!({ "marginAvailable": true }));
        extend(
            &mut account,
            json!({
                "feeTier": 0, "feeBurn": false, "canTrade": true, "canDeposit": true, "canWithdraw": true,
                "updateTime": view.time_ms, "multiAssetsMargin": false, "tradeGroupId": -1,
            }),
        );
    }
    extend(&mut account, json!({ "assets": [asset], "positions": positions }));
    account
}

fn extend(object: &mut Value, more: Value) {
    if let (Value::Object(fields), Value::Object(more)) = (object, more) {
        fields.extend(more);
    }
}

/// The one row (USDT) of `GET /fapi/v2/balance` and `/fapi/v3/balance` (the same shape).
fn balance_json(view: &AccountView) -> Value {
    let balance = &view.balance;
    json!({
        "accountAlias": "sim", "asset": balance.asset,
        "balance": text(balance.wallet_balance), "crossWalletBalance": text(balance.wallet_balance),
        "crossUnPnl": text(balance.unrealized_pnl), "availableBalance": text(balance.available_balance),
        "maxWithdrawAmount": text(balance.available_balance), "marginAvailable": true,
        "updateTime": view.time_ms,
    })
}

/// What every position-risk row carries (v2 and v3): no liquidation price, since the engine does
/// not liquidate.
fn position_risk_common_json(view: &SymbolView, time_ms: i64) -> Value {
    let position = &view.position;
    json!({
        "symbol": position.symbol.as_str(), "positionSide": "BOTH",
        "positionAmt": text(position.quantity), "entryPrice": text(position.entry_price),
        "breakEvenPrice": text(position.entry_price), "markPrice": text(position.mark_price),
        "unRealizedProfit": text(position.unrealized_pnl), "liquidationPrice": "0",
        "isolatedMargin": "0", "isolatedWallet": "0", "notional": text(view.notional), "updateTime": time_ms,
    })
}

/// One row of `GET /fapi/v3/positionRisk`: margins at the symbol's leverage.
fn position_risk_v3_json(view: &SymbolView, time_ms: i64) -> Value {
    let mut row = position_risk_common_json(view, time_ms);
    extend(
        &mut row,
        json!({
            "marginAsset": "USDT",
            "initialMargin": text(view.position_margin + view.open_order_margin), "maintMargin": text(maint_margin(view)),
            "positionInitialMargin": text(view.position_margin), "openOrderInitialMargin": text(view.open_order_margin),
            "adl": 0, "bidNotional": "0", "askNotional": "0",
        }),
    );
    row
}

/// One row of `GET /fapi/v2/positionRisk`: every symbol, flat ones too (one-way mode), with its
/// leverage and margin type.
fn position_risk_v2_json(view: &SymbolView, time_ms: i64) -> Value {
    let mut row = position_risk_common_json(view, time_ms);
    extend(
        &mut row,
        json!({
            "leverage": view.settings.leverage.to_string(),
            "marginType": if view.settings.isolated { "isolated" } else { "cross" },
            "isAutoAddMargin": "false", "maxNotionalValue": NOTIONAL_CAP.to_string(),
        }),
    );
    row
}

/// The one leverage bracket of a simulated symbol (numbers, as Binance sends them).
fn bracket_json(symbol: &Symbol) -> Value {
    json!({
        "symbol": symbol.as_str(),
        "brackets": [{
            "bracket": 1, "initialLeverage": LEVERAGE_RANGE.end(), "notionalCap": NOTIONAL_CAP,
            "notionalFloor": 0, "maintMarginRatio": MAINT_MARGIN_RATIO, "cum": 0,
        }],
    })
}

/// `POST /fapi/v1/positionSide/dual`: accounts stay in one-way mode. Asking for it again is
/// `-4059`; asking for Hedge mode is refused with Binance's codes while orders or positions exist,
/// and otherwise by name, since the engine keeps one position per symbol.
async fn change_position_mode(state: &SimState, params: &Params, user: &UserId) -> Answer {
    let dual = match params.required("dualSidePosition")? {
        "true" => true,
        "false" => false,
        _ => return Err(bad(-1130, "Data sent for parameter 'dualSidePosition' is not valid.")),
    };
    if !dual {
        return Err(bad(-4059, "No need to change position side."));
    }
    let view = account_view(state, user).await?;
    if view.symbols.iter().any(|s| s.has_open_orders) {
        return Err(bad(-4067, "Position side cannot be changed if there exists open orders."));
    }
    if view.symbols.iter().any(|s| !s.position.quantity.is_zero()) {
        return Err(bad(-4068, "Position side cannot be changed if there exists position."));
    }
    Err((
        actix_web::http::StatusCode::BAD_REQUEST,
        -1000,
        "Hedge mode is not simulated by bulwark sim (accounts are in one-way mode)".to_owned(),
    ))
}

/// `limit` between 1 and `max`, `default` when absent.
fn limit_param(
    params: &Params,
    default: usize,
    max: usize,
) -> Result<usize, (actix_web::http::StatusCode, i64, String)> {
    match params.get("limit") {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| bad(-1130, "Data sent for parameter 'limit' is not valid.")),
    }
}

/// `GET /fapi/v1/allOrders`: from `orderId` on (ascending), or the newest `limit` in the time
/// window (the last 7 days when none is given).
async fn all_orders(state: &SimState, params: &Params, user: &UserId) -> Answer {
    let only = optional_symbol(state, params)?;
    let limit = limit_param(params, 500, 1_000)?;
    let (start_ms, end_ms) = (time_param(params, "startTime")?, time_param(params, "endTime")?);
    let now_ms = state.exchange_now_ms(0);
    let from_id: Option<u64> = match params.get("orderId") {
        Some(id) => Some(id.parse().map_err(|_| bad(-1100, "Illegal characters found in parameter 'orderId'."))?),
        None => None,
    };
    let (start_ms, end_ms) = match (start_ms, end_ms, from_id) {
        (None, None, None) => (now_ms - 7 * DAY_MS, now_ms),
        (start, end, _) => (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX)),
    };
    let mut orders: Vec<ExchangeOrder> = account_orders(state, user)
        .await?
        .into_iter()
        .filter(|o| only.as_ref().is_none_or(|symbol| o.symbol == *symbol))
        .filter(|o| from_id.is_none_or(|id| o.exchange_order_id.parse::<u64>().is_ok_and(|own| own >= id)))
        .filter(|o| (start_ms..=end_ms).contains(&o.created_at_ms))
        .collect();
    if from_id.is_some() {
        orders.truncate(limit);
    } else {
        orders.drain(..orders.len().saturating_sub(limit));
    }
    Ok(Value::Array(orders.iter().map(order_json).collect()))
}

/// `GET /fapi/v1/income`: each fill's commission (negative) and realized PnL, oldest first, in the
/// time window (the last 7 days when none is given), `limit` a page. The venue charges no funding,
/// so there are no `FUNDING_FEE` rows.
async fn income(state: &SimState, params: &Params, user: &UserId) -> Answer {
    let only = optional_symbol(state, params)?;
    let income_type = params.get("incomeType");
    let limit = limit_param(params, 100, 1_000)?;
    let page: usize = match params.get("page") {
        Some(text) => text
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| bad(-1130, "Data sent for parameter 'page' is not valid."))?,
        None => 1,
    };
    let now_ms = state.exchange_now_ms(0);
    let start_ms = time_param(params, "startTime")?;
    let end_ms = time_param(params, "endTime")?;
    let (start_ms, end_ms) = match (start_ms, end_ms) {
        (None, None) => (now_ms - 7 * DAY_MS, now_ms),
        (start, end) => (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX)),
    };
    let user = user.clone();
    let fills: Vec<Fill> = state
        .exchange
        .call(move |venue, wall_ms, changes| venue.account_fills(&user, wall_ms, changes))
        .await
        .map_err(exchange_error)?;
    let rows: Vec<Value> = fills
        .iter()
        .filter(|f| only.as_ref().is_none_or(|symbol| f.symbol == *symbol))
        .filter(|f| (start_ms..=end_ms).contains(&f.time_ms))
        .flat_map(income_rows)
        .filter(|row| income_type.is_none_or(|wanted| row["incomeType"] == wanted))
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    Ok(Value::Array(rows))
}

/// A fill's income rows: its commission, and its realized PnL when it closed anything.
fn income_rows(fill: &Fill) -> Vec<Value> {
    let trade_id: i64 = fill.trade_id.parse().unwrap_or_default();
    let row = |kind: &str, amount: Decimal, sequence: i64| {
        json!({
            "symbol": fill.symbol.as_str(), "incomeType": kind, "income": text(amount), "asset": fill.fee_asset,
            "info": kind, "time": fill.time_ms, "tranId": trade_id * 10 + sequence, "tradeId": fill.trade_id,
        })
    };
    let mut rows = vec![row("COMMISSION", -fill.fee, 1)];
    if !fill.realized_pnl.is_zero() {
        rows.push(row("REALIZED_PNL", fill.realized_pnl, 2));
    }
    rows
}
