//! Exactly-once placement through the real tree when the exchange misbehaves on order creation:
//! a lost response, refusals that executed nothing, a request that never arrived, a rejection.
//! Whatever happens, one intent is at most one exchange order, and every intent is resolved.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bulwark::clock::ManualClock;
use bulwark::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, OrderState, Position, Symbol, SymbolRules,
    Timeframe, UserId,
};
use bulwark::exchange::paper::PaperExchange;
use bulwark::exchange::{Exchange, ExchangeError};
use common::{Tree, config_in, start_paper};

const ONE_USER: &str = r#"
[[users]]
id = "u1"
[[users.strategies]]
symbol = "XRPUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 3, slow = 8 }
position_size_usdt = 200
"#;

/// What the next order request meets.
#[derive(Debug, Clone)]
enum Fault {
    /// The exchange executes the order, and the answer is lost on the way back.
    LoseResponse,
    /// Refused before anything happened (connection refused, 503 "Service Unavailable").
    RefuseBeforeSend,
    /// The request never reaches the matching engine, and the caller times out.
    NeverArrives,
    /// The exchange rejects it.
    Reject,
}

/// The paper exchange, with scripted faults on order creation.
#[derive(Debug)]
struct Faulty {
    inner: PaperExchange,
    script: Mutex<VecDeque<Fault>>,
    /// Every create-order request that reached this wrapper.
    attempts: Mutex<Vec<ClientOrderId>>,
}

#[async_trait]
impl Exchange for Faulty {
    fn venue(&self) -> &'static str {
        "faulty"
    }
    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.inner.server_time_ms().await
    }
    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.inner.symbol_rules(symbol).await
    }
    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        self.inner.klines(symbol, timeframe, limit).await
    }
    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        self.inner.position(account, symbol).await
    }
    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        self.inner.balance(account).await
    }
    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        self.attempts.lock().unwrap().push(request.client_order_id.clone());
        let fault = self.script.lock().unwrap().pop_front();
        match fault {
            None => self.inner.create_order(account, request).await,
            Some(Fault::LoseResponse) => {
                self.inner.create_order(account, request).await?;
                Err(ExchangeError::UnknownOutcome { detail: "connection reset after the request was sent".into() })
            }
            Some(Fault::RefuseBeforeSend) => Err(ExchangeError::Retryable { detail: "connection refused".into() }),
            Some(Fault::NeverArrives) => {
                Err(ExchangeError::UnknownOutcome { detail: "no answer within 10000 ms".into() })
            }
            Some(Fault::Reject) => Err(ExchangeError::Rejected { code: -2019, msg: "Margin is insufficient.".into() }),
        }
    }
    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        self.inner.order_by_client_id(account, symbol, id).await
    }
    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.cancel_order(account, symbol, id).await
    }
    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.inner.open_orders(account, symbol).await
    }
    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        self.inner.fills(account, symbol, since_ms).await
    }
}

fn u1() -> UserId {
    UserId::new("u1").unwrap()
}

fn xrp() -> Symbol {
    Symbol::new("XRPUSDT").unwrap()
}

async fn tree_with(faults: Vec<Fault>) -> (tempfile::TempDir, Tree, Arc<Faulty>) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), ONE_USER);
    let clock = ManualClock::new(common::START_MS);
    let paper = start_paper(&config, clock.clone());
    let faulty =
        Arc::new(Faulty { inner: paper.clone(), script: Mutex::new(faults.into()), attempts: Mutex::new(Vec::new()) });
    let mut tree = Tree::start_with_exchange(config, clock, paper, faulty.clone());
    tree.wait_ready(&["u1"]).await;
    (dir, tree, faulty)
}

/// The state the database records for u1's first intent.
async fn first_order_state(tree: &mut Tree) -> OrderState {
    let id = ClientOrderId::for_intent(&u1(), 1);
    tree.store().order(&id).unwrap().expect("the first intent is committed").state
}

#[actix_rt::test]
async fn a_lost_response_is_resolved_by_client_id_and_never_resent() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::LoseResponse]).await;
    let first = tree.step_and_settle(&["u1"]).await;
    let entered = &first.iterations[0];
    assert_eq!(entered.decision.outcome, "enter");
    assert_eq!(entered.follow_ups[0].outcome, "order_unknown", "{:?}", entered.follow_ups);
    assert_eq!(first_order_state(&mut tree).await, OrderState::Unknown);

    // The next sync finds the order by its id (filled on this candle) and adopts it.
    let second = tree.step_and_settle(&["u1"]).await;
    assert_eq!(second.iterations[0].decision.outcome, "hold", "{:?}", second.iterations[0].decision);
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!(order.state, OrderState::Filled);
    assert_eq!(tree.store().fill_count(&u1()).unwrap(), 1);
    assert_eq!(faulty.attempts.lock().unwrap().len(), 1, "the order was sent once");
    assert!(tree.paper.position(&u1(), &xrp()).await.unwrap().quantity > rust_decimal::Decimal::ZERO);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn refusals_that_executed_nothing_are_retried_with_the_same_id() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::RefuseBeforeSend, Fault::RefuseBeforeSend]).await;
    let first = tree.step_and_settle(&["u1"]).await;
    assert_eq!(first.iterations[0].follow_ups[0].outcome, "order_placed", "{:?}", first.iterations[0].follow_ups);
    let attempts = faulty.attempts.lock().unwrap().clone();
    assert_eq!(attempts, vec![ClientOrderId::for_intent(&u1(), 1); 3], "three attempts, one id");
    assert_eq!(first_order_state(&mut tree).await, OrderState::Open);
    tree.step_and_settle(&["u1"]).await;
    assert_eq!(first_order_state(&mut tree).await, OrderState::Filled);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn an_order_that_never_arrived_is_declared_not_placed_only_after_the_receive_window() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::NeverArrives]).await;
    tree.step_and_settle(&["u1"]).await;
    assert_eq!(first_order_state(&mut tree).await, OrderState::Unknown);
    // It was sent at step 1; the exchange would accept it until 5 s (recv_window) after that,
    // plus a 1 s clock-skew margin, and each step is one second of (manual) time. Until the window
    // has passed the order may still exist, so nothing new is decided on this symbol.
    for _ in 0..6 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        let decision = &outcome.iterations[0].decision;
        assert_eq!(decision.outcome, "skipped", "{decision:?}");
        assert_eq!(decision.reason, "order bw-u1-1 is unknown; no new order until it resolves");
        assert_eq!(first_order_state(&mut tree).await, OrderState::Unknown);
    }
    // The window has closed: not found means never placed, and trading resumes with a new intent.
    let outcome = tree.step_and_settle(&["u1"]).await;
    assert_eq!(first_order_state(&mut tree).await, OrderState::NotPlaced);
    let decision = &outcome.iterations[0].decision;
    assert_eq!(decision.client_order_id, Some(ClientOrderId::for_intent(&u1(), 2)), "{decision:?}");
    assert_eq!(faulty.attempts.lock().unwrap().len(), 2, "bw-u1-1 once, bw-u1-2 once");
    assert!(
        tree.paper.order_by_client_id(&u1(), &xrp(), &ClientOrderId::for_intent(&u1(), 1)).await.unwrap().is_none()
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_rejection_is_final_and_the_next_decision_is_a_new_intent() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::Reject]).await;
    let first = tree.step_and_settle(&["u1"]).await;
    let follow_up = &first.iterations[0].follow_ups[0];
    assert_eq!(follow_up.outcome, "order_rejected");
    assert!(follow_up.reason.contains("Margin is insufficient"), "{follow_up:?}");
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!(order.state, OrderState::Rejected);
    assert!(order.last_error.unwrap().contains("-2019"));
    let second = tree.step_and_settle(&["u1"]).await;
    assert_eq!(second.iterations[0].decision.client_order_id, Some(ClientOrderId::for_intent(&u1(), 2)));
    assert_eq!(faulty.attempts.lock().unwrap().len(), 2);
    tree.shutdown().await;
}
