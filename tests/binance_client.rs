//! The Binance client against scripted HTTP answers (wiremock on 127.0.0.1): signing, every
//! error class (a timeout after sending included), retries of reads only, the weight budget,
//! the 418 ban, clock re-sync on -1021, and secrets that never show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulwark::clock::{Clock, SystemClock};
use bulwark::domain::{ClientOrderId, OrderRequest, OrderType, Quantity, Side, Symbol, Timeframe, UserId};
use bulwark::exchange::binance::{BinanceClient, BinanceSettings, Credentials, sign};
use bulwark::exchange::retry::RetryPolicy;
use bulwark::exchange::{Exchange, ExchangeError};
use bulwark::secret::Secret;
use rust_decimal::Decimal;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "test-api-key-0123456789";
const SECRET: &str = "test-api-secret-abcdefghij";

fn user() -> UserId {
    UserId::new("u1").unwrap()
}

fn client(server: &MockServer, timeout_ms: u64) -> BinanceClient {
    let credentials = BTreeMap::from([(
        user(),
        Credentials { api_key: Secret::new(KEY.into()), api_secret: Secret::new(SECRET.into()) },
    )]);
    let settings = BinanceSettings {
        base_url: server.uri().parse().unwrap(),
        recv_window_ms: 5_000,
        timeout: Duration::from_millis(timeout_ms),
        weight_limit_per_minute: 2_400,
        credentials,
        credentials_missing: BTreeMap::new(),
        retry: RetryPolicy { attempts_max: 3, backoff_ms_initial: 150, backoff_ms_max: 1_000 },
        user_data_stream: false,
        market_stream: false,
        trade_stream: false,
        stream_url: "ws://127.0.0.1:9".parse().unwrap(),
        listen_key_keepalive: Duration::from_secs(1_800),
        stream_connects_per_second: 1_000,
        stream_rotation: Duration::from_secs(84_600),
        stream_silence_max: Duration::from_secs(60),
    };
    BinanceClient::new(settings, Arc::new(SystemClock)).unwrap()
}

/// Answers `/fapi/v1/time` with the local time (a real-time exchange).
async fn mount_time(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/fapi/v1/time"))
        .respond_with(move |_: &Request| {
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "serverTime": chrono::Utc::now().timestamp_millis() }))
        })
        .mount(server)
        .await;
}

/// Matches requests whose signature is valid for SECRET, last in the query, with the API key header.
struct ValidSignature;

impl Match for ValidSignature {
    fn matches(&self, request: &Request) -> bool {
        let query = request.url.query().unwrap_or("");
        let Some((payload, signature)) = query.rsplit_once("&signature=") else { return false };
        let keyed = request.headers.get("X-MBX-APIKEY").is_some_and(|v| v.to_str().unwrap_or("") == KEY);
        keyed
            && payload.contains("timestamp=")
            && payload.contains("recvWindow=5000")
            && sign::verify(&Secret::new(SECRET.into()), payload, signature)
    }
}

fn order_request(id: &str) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::parse(id).unwrap(),
        symbol: Symbol::new("BTCUSDT").unwrap(),
        side: Side::Buy,
        order_type: OrderType::Market,
        quantity: Quantity::new(Decimal::new(15, 3)).unwrap(),
        reduce_only: false,
        timestamp_ms: SystemClock.now_ms(),
    }
}

const ORDER_FILLED: &str = r#"{"orderId":42,"symbol":"BTCUSDT","status":"FILLED","clientOrderId":"bw-u1-1","price":"0","avgPrice":"60000.10","origQty":"0.015","executedQty":"0.015","type":"MARKET","reduceOnly":false,"side":"BUY","updateTime":1700000000000}"#;

async fn order_answer(status: u16, body: &str) -> Result<bulwark::domain::ExchangeOrder, ExchangeError> {
    let server = MockServer::start().await;
    mount_time(&server).await;
    Mock::given(method("POST"))
        .and(path("/fapi/v1/order"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .mount(&server)
        .await;
    client(&server, 2_000).create_order(&user(), &order_request("bw-u1-1")).await
}

#[tokio::test]
async fn a_signed_order_goes_out_with_decimal_strings_and_parses_back() {
    let server = MockServer::start().await;
    mount_time(&server).await;
    Mock::given(method("POST"))
        .and(path("/fapi/v1/order"))
        .and(ValidSignature)
        .and(query_param("quantity", "0.015"))
        .and(query_param("newClientOrderId", "bw-u1-1"))
        .and(query_param("type", "MARKET"))
        .and(header("X-MBX-APIKEY", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_string(ORDER_FILLED))
        .expect(1)
        .mount(&server)
        .await;
    let order = client(&server, 2_000).create_order(&user(), &order_request("bw-u1-1")).await.unwrap();
    assert_eq!(order.exchange_order_id, "42");
    assert_eq!(order.filled_quantity.to_string(), "0.015");
    assert_eq!(order.average_price.unwrap().to_string(), "60000.10");
}

#[tokio::test]
async fn every_error_class_of_an_order() {
    assert!(matches!(order_answer(503, "Service Unavailable.").await, Err(ExchangeError::Retryable { .. })));
    let unknown = r#"{"code":-1000,"msg":"Unknown error, please check your request or try again later."}"#;
    assert!(matches!(order_answer(503, unknown).await, Err(ExchangeError::UnknownOutcome { .. })));
    assert!(matches!(
        order_answer(400, r#"{"code":-1006,"msg":"Unexpected response"}"#).await,
        Err(ExchangeError::UnknownOutcome { .. })
    ));
    assert!(matches!(
        order_answer(500, r#"{"code":-1001,"msg":"Internal error"}"#).await,
        Err(ExchangeError::Retryable { .. })
    ));
    assert!(matches!(
        order_answer(429, r#"{"code":-1003,"msg":"Too many requests"}"#).await,
        Err(ExchangeError::RateLimited { .. })
    ));
    assert!(matches!(
        order_answer(418, r#"{"code":-1003,"msg":"Way too many requests; IP banned until 1900000000000."}"#).await,
        Err(ExchangeError::Banned { until_ms: 1_900_000_000_000 })
    ));
    assert!(matches!(
        order_answer(401, r#"{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action."}"#).await,
        Err(ExchangeError::Auth { .. })
    ));
    assert!(matches!(
        order_answer(400, r#"{"code":-2019,"msg":"Margin is insufficient."}"#).await,
        Err(ExchangeError::Rejected { code: -2019, .. })
    ));
    assert!(matches!(
        order_answer(400, r#"{"code":-4116,"msg":"ClientOrderId is duplicated."}"#).await,
        Err(ExchangeError::Duplicate { code: -4116, .. })
    ));
    let malformed = order_answer(200, "{\"orderId\": 42, garbage").await;
    assert!(
        matches!(&malformed, Err(error @ ExchangeError::Malformed { .. }) if error.order_may_exist()),
        "{malformed:?}"
    );
}

#[tokio::test]
async fn a_timeout_after_sending_is_an_unknown_outcome_and_is_not_retried() {
    let server = MockServer::start().await;
    mount_time(&server).await;
    Mock::given(method("POST"))
        .and(path("/fapi/v1/order"))
        .respond_with(ResponseTemplate::new(200).set_body_string(ORDER_FILLED).set_delay(Duration::from_millis(1_500)))
        .expect(1)
        .mount(&server)
        .await;
    let result = client(&server, 300).create_order(&user(), &order_request("bw-u1-1")).await;
    assert!(matches!(result, Err(ExchangeError::UnknownOutcome { .. })), "{result:?}");
}

#[tokio::test]
async fn a_refused_connection_executed_nothing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let settings = BinanceSettings {
        base_url: format!("http://{address}").parse().unwrap(),
        recv_window_ms: 5_000,
        timeout: Duration::from_millis(500),
        weight_limit_per_minute: 2_400,
        credentials: BTreeMap::new(),
        credentials_missing: BTreeMap::new(),
        retry: RetryPolicy { attempts_max: 3, backoff_ms_initial: 150, backoff_ms_max: 1_000 },
        user_data_stream: false,
        market_stream: false,
        trade_stream: false,
        stream_url: "ws://127.0.0.1:9".parse().unwrap(),
        listen_key_keepalive: Duration::from_secs(1_800),
        stream_connects_per_second: 1_000,
        stream_rotation: Duration::from_secs(84_600),
        stream_silence_max: Duration::from_secs(60),
    };
    let client = BinanceClient::new(settings, Arc::new(SystemClock)).unwrap();
    let result = client.klines(&Symbol::new("BTCUSDT").unwrap(), Timeframe::M5, 10).await;
    assert!(
        matches!(
            result,
            Err(ExchangeError::Unreachable { transport: bulwark::exchange::Transport::Refused, ref detail })
                if detail.starts_with("cannot connect")
        ),
        "a connection refused is told apart from an HTTP error: {result:?}"
    );
}

#[tokio::test]
async fn reads_are_retried_when_nothing_was_executed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fapi/v1/klines"))
        .respond_with(ResponseTemplate::new(503).set_body_string("Service Unavailable."))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    let row = r#"[[1700000000000,"1.0","1.1","0.9","1.05","100",1700000299999,"0",1,"0","0","0"]]"#;
    Mock::given(method("GET"))
        .and(path("/fapi/v1/klines"))
        .and(query_param("interval", "5m"))
        .respond_with(ResponseTemplate::new(200).set_body_string(row).insert_header("X-MBX-USED-WEIGHT-1M", "7"))
        .mount(&server)
        .await;
    let client = client(&server, 2_000);
    let candles = client.klines(&Symbol::new("BTCUSDT").unwrap(), Timeframe::M5, 10).await.unwrap();
    assert_eq!(candles.len(), 1);
    let stats = client.stats();
    assert_eq!(stats.by_endpoint["GET /fapi/v1/klines"], 3, "two refusals, then the answer");
    assert_eq!(stats.weight_used, 7, "the exchange's own count");
}

#[tokio::test]
async fn a_ban_stops_every_request_to_the_host_until_it_ends() {
    let server = MockServer::start().await;
    let until_ms = chrono::Utc::now().timestamp_millis() + 60_000;
    Mock::given(method("GET"))
        .and(path("/fapi/v1/klines"))
        .respond_with(
            ResponseTemplate::new(418).set_body_string(format!(
                r#"{{"code":-1003,"msg":"Way too many requests; IP banned until {until_ms}."}}"#
            )),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, 2_000);
    let btc = Symbol::new("BTCUSDT").unwrap();
    assert_eq!(client.klines(&btc, Timeframe::M5, 10).await, Err(ExchangeError::Banned { until_ms }));
    // Every later request, of any kind and any user, is refused here without being sent.
    for _ in 0..5 {
        assert_eq!(client.klines(&btc, Timeframe::M5, 10).await, Err(ExchangeError::Banned { until_ms }));
        assert_eq!(
            client.create_order(&user(), &order_request("bw-u1-2")).await,
            Err(ExchangeError::Banned { until_ms })
        );
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(client.stats().banned_until_ms, Some(until_ms));
}

#[tokio::test]
async fn a_timestamp_outside_the_window_resyncs_the_clock() {
    let server = MockServer::start().await;
    mount_time(&server).await;
    Mock::given(method("GET"))
        .and(path("/fapi/v3/balance"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_string(r#"{"code":-1021,"msg":"Timestamp for this request is outside of the recvWindow."}"#),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fapi/v3/balance"))
        .and(ValidSignature)
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(r#"[{"asset":"USDT","balance":"100.5","crossUnPnl":"1.5","availableBalance":"90"}]"#),
        )
        .mount(&server)
        .await;
    let client = client(&server, 2_000);
    let balance = client.balance(&user()).await.unwrap();
    assert_eq!(balance.wallet_balance.to_string(), "100.5");
    assert_eq!(client.stats().by_endpoint["GET /fapi/v1/time"], 2, "synced, then re-synced after -1021");
}

#[tokio::test]
async fn an_unknown_order_id_is_none_and_rules_come_from_exchange_info() {
    let server = MockServer::start().await;
    mount_time(&server).await;
    Mock::given(method("GET"))
        .and(path("/fapi/v1/order"))
        .and(query_param("origClientOrderId", "bw-u1-9"))
        .respond_with(ResponseTemplate::new(400).set_body_string(r#"{"code":-2013,"msg":"Order does not exist."}"#))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fapi/v1/exchangeInfo"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            r#"{"rateLimits":[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":1200}],"symbols":[{"symbol":"BTCUSDT","filters":[{"filterType":"PRICE_FILTER","tickSize":"0.10"},{"filterType":"LOT_SIZE","minQty":"0.001","stepSize":"0.001"},{"filterType":"MIN_NOTIONAL","notional":"100"}]}]}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, 2_000);
    let btc = Symbol::new("BTCUSDT").unwrap();
    assert_eq!(client.order_by_client_id(&user(), &btc, &ClientOrderId::parse("bw-u1-9").unwrap()).await, Ok(None));
    let rules = client.symbol_rules(&btc).await.unwrap();
    assert_eq!(rules.step_size.to_string(), "0.001");
    assert_eq!(client.symbol_rules(&btc).await.unwrap(), rules, "cached");
    assert_eq!(client.stats().weight_limit, 1_200, "the limit the exchange states");
    assert!(matches!(
        client.symbol_rules(&Symbol::new("DOGEUSDT").unwrap()).await,
        Err(ExchangeError::Rejected { code: -1121, .. })
    ));
}

#[tokio::test]
async fn an_account_snapshot_lists_open_orders_only_on_the_symbols_the_position_list_names() {
    use wiremock::matchers::query_param_is_missing;
    let server = MockServer::start().await;
    mount_time(&server).await;
    // v3 names every symbol with a position or an open order: BTCUSDT held, ETHUSDT flat with an
    // order (amount 0); a hedge-mode row of ETHUSDT is not one-way and names nothing new.
    let row = |symbol: &str, side: &str, amount: &str| {
        format!(
            r#"{{"symbol":"{symbol}","positionSide":"{side}","positionAmt":"{amount}","entryPrice":"60000","markPrice":"60010","unRealizedProfit":"0.15"}}"#
        )
    };
    let rows = format!(
        "[{},{},{}]",
        row("BTCUSDT", "BOTH", "0.015"),
        row("ETHUSDT", "BOTH", "0"),
        row("ETHUSDT", "LONG", "0")
    );
    Mock::given(method("GET"))
        .and(path("/fapi/v3/positionRisk"))
        .and(query_param_is_missing("symbol"))
        .respond_with(ResponseTemplate::new(200).set_body_string(rows))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fapi/v1/openOrders"))
        .and(query_param("symbol", "BTCUSDT"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .expect(1)
        .mount(&server)
        .await;
    let eth_order =
        ORDER_FILLED.replace("BTCUSDT", "ETHUSDT").replace("FILLED", "NEW").replace("\"0.015\",\"type", "\"0\",\"type");
    Mock::given(method("GET"))
        .and(path("/fapi/v1/openOrders"))
        .and(query_param("symbol", "ETHUSDT"))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!("[{eth_order}]")))
        .expect(1)
        .mount(&server)
        .await;
    // The listing of every symbol (weight 40) is never asked for.
    Mock::given(method("GET"))
        .and(path("/fapi/v1/openOrders"))
        .and(query_param_is_missing("symbol"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .expect(0)
        .mount(&server)
        .await;
    let client = client(&server, 2_000);
    let (positions, open_orders) = client.positions_and_open_orders(&user()).await.unwrap();
    let held: Vec<_> = positions.iter().map(|p| (p.symbol.as_str().to_owned(), p.quantity.to_string())).collect();
    assert_eq!(held, [("BTCUSDT".to_owned(), "0.015".to_owned())], "a flat listed symbol holds no position");
    assert_eq!(open_orders.len(), 1);
    assert_eq!(open_orders[0].symbol.as_str(), "ETHUSDT");
    // The position list (5), two symbols' orders (1 each) and the clock's first sync (1).
    assert_eq!(client.stats().weight_used, 5 + 1 + 1 + 1, "{:?}", client.stats());
}

#[tokio::test]
async fn secrets_never_appear_in_errors_or_debug_output() {
    let answer = order_answer(
        401,
        r#"{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action, request ip: 127.0.0.1"}"#,
    )
    .await;
    let text = format!("{answer:?} {}", answer.as_ref().unwrap_err());
    assert!(!text.contains(KEY) && !text.contains(SECRET), "{text}");
    let server = MockServer::start().await;
    let debug = format!("{:?}", client(&server, 100));
    assert!(!debug.contains(KEY) && !debug.contains(SECRET), "{debug}");
}

#[tokio::test]
async fn a_user_without_credentials_is_refused_before_anything_is_sent() {
    let server = MockServer::start().await;
    mount_time(&server).await;
    Mock::given(method("GET"))
        .and(path("/fapi/v3/balance"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let settings = BinanceSettings {
        base_url: server.uri().parse().unwrap(),
        recv_window_ms: 5_000,
        timeout: Duration::from_millis(2_000),
        weight_limit_per_minute: 2_400,
        credentials: BTreeMap::new(),
        credentials_missing: BTreeMap::from([(user(), "environment variable U1_SECRET is not set".to_owned())]),
        retry: RetryPolicy::default(),
        user_data_stream: false,
        market_stream: false,
        trade_stream: false,
        stream_url: "ws://127.0.0.1:9".parse().unwrap(),
        listen_key_keepalive: Duration::from_secs(1_800),
        stream_connects_per_second: 1_000,
        stream_rotation: Duration::from_secs(84_600),
        stream_silence_max: Duration::from_secs(60),
    };
    let client = BinanceClient::new(settings, Arc::new(SystemClock)).unwrap();
    let refused = client.balance(&user()).await;
    assert!(
        matches!(&refused, Err(ExchangeError::Auth { detail }) if detail.contains("U1_SECRET is not set")),
        "{refused:?}"
    );
    // Public data still works for everyone.
    Mock::given(method("GET"))
        .and(path("/fapi/v1/klines"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&server)
        .await;
    assert!(client.klines(&Symbol::new("BTCUSDT").unwrap(), Timeframe::M5, 10).await.unwrap().is_empty());
}

/// Matches a signed request whose `timestamp` is within 200 ms of `expected_ms`.
struct SignedAt {
    expected_ms: i64,
}

impl Match for SignedAt {
    fn matches(&self, request: &Request) -> bool {
        request
            .url
            .query_pairs()
            .find(|(key, _)| key == "timestamp")
            .and_then(|(_, value)| value.parse::<i64>().ok())
            .is_some_and(|timestamp| (timestamp - self.expected_ms).abs() < 200)
    }
}

#[tokio::test]
async fn an_order_is_signed_with_the_time_it_was_committed_and_not_sent_once_its_window_has_passed() {
    let server = MockServer::start().await;
    mount_time(&server).await;
    let committed_ms = SystemClock.now_ms() - 1_500;
    Mock::given(method("POST"))
        .and(path("/fapi/v1/order"))
        .and(ValidSignature)
        .and(SignedAt { expected_ms: committed_ms })
        .respond_with(ResponseTemplate::new(200).set_body_string(ORDER_FILLED))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, 2_000);
    let mut request = order_request("bw-u1-1");
    request.timestamp_ms = committed_ms;
    client.create_order(&user(), &request).await.expect("signed with the commit time, 1.5 s ago");

    // Committed 4.5 s ago with a 5 s window: it would arrive too late, so it is not sent at all
    // (and nothing executed, so the caller may retry with the same id).
    request.timestamp_ms = SystemClock.now_ms() - 4_500;
    let held = client.create_order(&user(), &request).await;
    assert!(matches!(&held, Err(ExchangeError::Retryable { detail }) if detail.starts_with("not sent")), "{held:?}");
}
