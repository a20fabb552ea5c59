//! The trader state machine, one test per path of the seed's loop (§1–4, §7) and per invariant the
//! core enforces. No actors, no I/O, no clock but the numbers passed in.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rust_decimal::Decimal;

use super::*;
use crate::domain::{Candle, OrderState, Position, Symbol, SymbolRules, Timeframe, UserId};
use crate::records::{PositionRecord, TraderState};
use crate::strategy::{Signal, SignalAction, Strategy, StrategyError};
use crate::trader::memory::RiskMemory;
use crate::trader::risk::RiskLimits;

const NOW_MS: i64 = 1_700_000_000_000;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn xrp() -> Symbol {
    Symbol::new("XRPUSDT").unwrap()
}

fn user() -> UserId {
    UserId::new("u1").unwrap()
}

/// A strategy that answers whatever the test scripts next.
#[derive(Debug, Default)]
struct Scripted {
    next: Mutex<Option<Result<Signal, StrategyError>>>,
}

impl Scripted {
    fn answer(&self, answer: Result<Signal, StrategyError>) {
        *self.next.lock().unwrap() = Some(answer);
    }

    fn signal(&self, action: SignalAction) {
        self.answer(Ok(Signal { action, score: 0.7, reason: format!("scripted {}", action.as_str()) }));
    }
}

impl Strategy for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn lookback_candles(&self) -> usize {
        5
    }

    fn evaluate(&self, _: &[Candle]) -> Result<Signal, StrategyError> {
        self.next.lock().unwrap().take().expect("the test scripts every evaluation")
    }
}

struct Harness {
    core: TraderCore,
    strategy: Arc<Scripted>,
    /// Close time of the newest candle fed.
    candle_open_ms: i64,
}

fn harness_with(limits: RiskLimits, other_slots: usize) -> Harness {
    let strategy = Arc::new(Scripted::default());
    let mut specs = vec![SlotSpec {
        symbol: xrp(),
        timeframe: Timeframe::M5,
        strategy: strategy.clone(),
        position_size_usdt: dec("200"),
    }];
    for i in 0..other_slots {
        specs.push(SlotSpec {
            symbol: Symbol::new(&format!("OTHER{i}USDT")).unwrap(),
            timeframe: Timeframe::M5,
            strategy: strategy.clone(),
            position_size_usdt: dec("200"),
        });
    }
    Harness { core: TraderCore::new(user(), specs, limits), strategy, candle_open_ms: 0 }
}

fn harness() -> Harness {
    harness_with(RiskLimits { max_open_positions: 3, max_position_notional_usdt: dec("1000") }, 0)
}

fn rules() -> SymbolRules {
    SymbolRules { tick_size: dec("0.0001"), step_size: dec("0.1"), min_quantity: dec("0.1"), min_notional: dec("5") }
}

fn window(last_open_ms: i64, n: usize) -> Arc<[Candle]> {
    (0..n)
        .map(|i| {
            let open_time_ms = last_open_ms - (n - 1 - i) as i64 * 300_000;
            Candle {
                open_time_ms,
                close_time_ms: open_time_ms + 299_999,
                open: 1.2,
                high: 1.21,
                low: 1.19,
                close: 1.2,
                volume: 10.0,
                taker_buy_volume: None,
                large_trades: None,
            }
        })
        .collect()
}

fn snapshot(quantity: &str, unresolved: Vec<UnresolvedOrder>) -> AccountSnapshot {
    AccountSnapshot {
        position: Position {
            symbol: xrp(),
            quantity: dec(quantity),
            entry_price: dec("1.2"),
            mark_price: dec("1.2"),
            unrealized_pnl: Decimal::ZERO,
        },
        rules: rules(),
        unresolved,
        fetched_at_ms: NOW_MS,
        equity_usdt: Ok(10_000.0),
        entries_halted: None,
    }
}

impl Harness {
    /// Delivers the next closed candle; returns the commands.
    fn candle(&mut self) -> Vec<TraderCommand> {
        self.candle_open_ms += 300_000;
        let candles = Ok(window(self.candle_open_ms, 20));
        self.core.process(TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candles }, NOW_MS)
    }

    /// Delivers a candle and expects a sync request; returns its iteration.
    fn candle_expecting_sync(&mut self) -> u64 {
        let commands = self.candle();
        match commands.as_slice() {
            [TraderCommand::SyncAccount { slot: 0, iteration, symbol }] if *symbol == xrp() => *iteration,
            other => panic!("expected one SyncAccount, got {other:?}"),
        }
    }

    fn synced(&mut self, iteration: u64, result: Result<AccountSnapshot, String>) -> Vec<TraderCommand> {
        let result = result.map_err(AccountError::other);
        self.core.process(TraderEvent::AccountSynced { slot: 0, iteration, result }, NOW_MS)
    }

    /// One full iteration up to the decision, with the scripted signal.
    fn decide(&mut self, action: SignalAction, snapshot: AccountSnapshot) -> Vec<TraderCommand> {
        let iteration = self.candle_expecting_sync();
        self.strategy.signal(action);
        self.synced(iteration, Ok(snapshot))
    }
}

fn records(commands: &[TraderCommand]) -> Vec<&DecisionRecord> {
    commands.iter().filter_map(|c| if let TraderCommand::Record(r) = c { Some(r) } else { None }).collect()
}

fn only_record(commands: &[TraderCommand]) -> &DecisionRecord {
    let records = records(commands);
    assert_eq!(records.len(), 1, "{commands:?}");
    records[0]
}

fn placed(commands: &[TraderCommand]) -> Vec<&OrderIntent> {
    commands
        .iter()
        .filter_map(|c| if let TraderCommand::PlaceIntent { intent, .. } = c { Some(intent.get()) } else { None })
        .collect()
}

// Seed §1: OHLCV fetch failure.

#[test]
fn unavailable_candles_skip_the_iteration_with_the_reason() {
    let mut h = harness();
    let commands = h.core.process(
        TraderEvent::CandleClosed {
            symbol: xrp(),
            timeframe: Timeframe::M5,
            candles: Err("klines XRPUSDT 5m: timeout".into()),
        },
        NOW_MS,
    );
    let record = only_record(&commands);
    assert_eq!(record.outcome, "skipped");
    assert!(record.reason.contains("candles unavailable: klines XRPUSDT 5m: timeout"), "{}", record.reason);
    assert!(!record.counts_as_decision);
    assert_eq!(commands.len(), 1, "no sync, no order");
}

#[test]
fn corrupt_candles_skip_the_iteration() {
    let mut h = harness();
    let mut candles: Vec<Candle> = window(300_000, 20).to_vec();
    candles[10].low = f64::NAN;
    let commands = h.core.process(
        TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candles: Ok(candles.into()) },
        NOW_MS,
    );
    assert!(only_record(&commands).reason.starts_with("bad candles: candle 10"), "{commands:?}");
}

#[test]
fn too_little_history_skips_the_iteration() {
    let mut h = harness();
    let commands = h.core.process(
        TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candles: Ok(window(300_000, 3)) },
        NOW_MS,
    );
    assert!(only_record(&commands).reason.contains("not enough candles: have 3, scripted needs 5"), "{commands:?}");
}

#[test]
fn a_candle_delivered_twice_is_acted_on_once() {
    let mut h = harness();
    let iteration = h.candle_expecting_sync();
    h.strategy.signal(SignalAction::Flat);
    h.synced(iteration, Ok(snapshot("0", vec![])));
    let again = h.core.process(
        TraderEvent::CandleClosed {
            symbol: xrp(),
            timeframe: Timeframe::M5,
            candles: Ok(window(h.candle_open_ms, 20)),
        },
        NOW_MS,
    );
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn candles_for_other_feeds_are_ignored() {
    let mut h = harness();
    let commands = h.core.process(
        TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M15, candles: Ok(window(900_000, 20)) },
        NOW_MS,
    );
    assert!(commands.is_empty());
}

// Seed §2: position fetch failure. Never an order without a freshly verified position.

#[test]
fn an_unavailable_position_skips_without_deciding() {
    let mut h = harness();
    let iteration = h.candle_expecting_sync();
    let commands = h.synced(iteration, Err("position: exchange unavailable".into()));
    let record = only_record(&commands);
    assert_eq!(record.outcome, "skipped");
    assert!(record.reason.contains("position unavailable: position: exchange unavailable"));
    assert!(placed(&commands).is_empty());
}

#[test]
fn a_stale_sync_answer_is_ignored() {
    let mut h = harness();
    let iteration = h.candle_expecting_sync();
    h.strategy.signal(SignalAction::Long);
    let late = h.synced(iteration + 7, Ok(snapshot("0", vec![])));
    assert!(late.is_empty(), "an answer to another request must not drive a decision: {late:?}");
    let current = h.synced(iteration, Ok(snapshot("0", vec![])));
    assert_eq!(placed(&current).len(), 1);
}

#[test]
fn a_position_verified_too_long_ago_is_not_traded_on() {
    let mut h = harness();
    let iteration = h.candle_expecting_sync();
    let mut old = snapshot("0", vec![]);
    old.fetched_at_ms = NOW_MS - POSITION_VERIFIED_AGE_MS_MAX - 1;
    let commands = h.synced(iteration, Ok(old));
    assert!(placed(&commands).is_empty());
    assert!(records(&commands).iter().any(|r| r.outcome == "skipped" && r.reason.contains("position verified")));
}

// Seed §3: signal generation failure.

#[test]
fn a_strategy_error_skips_the_iteration_with_the_error() {
    let mut h = harness();
    let iteration = h.candle_expecting_sync();
    h.strategy.answer(Err(StrategyError::NotFinite { strategy: "scripted", indicator: "ema", value: f64::NAN }));
    let commands = h.synced(iteration, Ok(snapshot("0", vec![])));
    let skipped: Vec<_> = records(&commands).into_iter().filter(|r| r.outcome == "skipped").collect();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].reason.starts_with("strategy error: scripted: indicator ema produced NaN"),
        "{}",
        skipped[0].reason
    );
    assert!(placed(&commands).is_empty());
}

// The decision itself.

#[test]
fn a_long_signal_when_flat_places_one_rounded_entry_with_a_deterministic_id() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    let intents = placed(&commands);
    assert_eq!(intents.len(), 1);
    let intent = intents[0];
    assert_eq!(intent.client_order_id.as_str(), "bw-u1-1");
    assert_eq!(intent.side, Side::Buy);
    assert_eq!(intent.quantity.get(), dec("166.6"), "200 USDT / 1.2, rounded down to the 0.1 step");
    assert!(!intent.reduce_only);
    let decision = records(&commands).into_iter().find(|r| r.counts_as_decision).unwrap();
    assert_eq!(decision.outcome, "enter");
    assert_eq!(decision.client_order_id.as_ref(), Some(&intent.client_order_id));
    assert!(commands.iter().any(|c| matches!(c, TraderCommand::SavePosition(_))));
}

#[test]
fn flat_signals_hold() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Flat, snapshot("0", vec![]));
    assert!(placed(&commands).is_empty());
    assert!(records(&commands).iter().any(|r| r.outcome == "hold" && r.counts_as_decision));
    let commands = h.decide(SignalAction::Long, snapshot("50", vec![]));
    assert!(placed(&commands).is_empty(), "already long");
}

#[test]
fn an_opposite_signal_exits_with_a_reduce_only_order_for_the_whole_position() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Short, snapshot("120.5", vec![]));
    let intent = placed(&commands)[0];
    assert!(intent.reduce_only);
    assert_eq!(intent.purpose, IntentPurpose::Exit);
    assert_eq!(intent.side, Side::Sell);
    assert_eq!(intent.quantity.get(), dec("120.5"));
    let commands = {
        h.core.process(
            TraderEvent::PlacementFinished {
                slot: 0,
                client_order_id: intent.client_order_id.clone(),
                outcome: PlacementOutcome::Recorded { state: OrderState::Filled, detail: "filled".into() },
            },
            NOW_MS,
        )
    };
    assert!(records(&commands).iter().any(|r| r.outcome == "order_placed"));
    let exit = h.decide(SignalAction::Exit, snapshot("-30", vec![]));
    let intent = placed(&exit)[0];
    assert_eq!((intent.side, intent.reduce_only), (Side::Buy, true));
}

/// The position row a command saves (the only one in `commands`).
fn saved_position(commands: &[TraderCommand]) -> &PositionRecord {
    let saved: Vec<&PositionRecord> = commands
        .iter()
        .filter_map(|c| match c {
            TraderCommand::SavePosition(position) => Some(position),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1, "{commands:?}");
    saved[0]
}

#[test]
fn an_order_executed_with_its_placement_is_booked_on_the_stored_position_at_once() {
    let mut h = harness();
    // The one intent `decided` places, executed with its placement: `signed_quantity` at `price`.
    let execute = |h: &mut Harness, decided: Vec<TraderCommand>, signed_quantity: &str, price: &str| {
        let client_order_id = placed(&decided)[0].client_order_id.clone();
        let detail = format!("exchange order of {client_order_id} FILLED");
        let outcome =
            PlacementOutcome::Executed { detail, signed_quantity: dec(signed_quantity), average_price: dec(price) };
        h.core.process(TraderEvent::PlacementFinished { slot: 0, client_order_id, outcome }, NOW_MS)
    };
    let entry = h.decide(SignalAction::Long, snapshot("0", vec![]));
    let finished = execute(&mut h, entry, "166.6", "1.2002");
    assert!(records(&finished).iter().any(|r| r.outcome == "order_placed" && r.reason.contains("filled")));
    let row = saved_position(&finished);
    assert_eq!((row.quantity, row.entry_price), (dec("166.6"), dec("1.2002")), "the row follows the fill");
    assert_eq!(row.position_start_time_ms, Some(NOW_MS));
    assert_eq!(row.active_order_id, None);
    // The exit that closes it books the row back to flat.
    let exit = h.decide(SignalAction::Exit, snapshot("166.6", vec![]));
    let finished = execute(&mut h, exit, "-166.6", "1.25");
    let row = saved_position(&finished);
    assert_eq!((row.quantity, row.position_start_time_ms), (Decimal::ZERO, None));
}

// Seed §4: order creation failure. No automatic retry, no duplicate.

#[test]
fn a_rejected_order_is_recorded_and_not_retried() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    let id = placed(&commands)[0].client_order_id.clone();
    // While it is being placed, the next candle does not decide again.
    let busy = h.candle();
    assert!(only_record(&busy).reason.contains("previous iteration still running (placing order bw-u1-1)"), "{busy:?}");
    let rejected = h.core.process(
        TraderEvent::PlacementFinished {
            slot: 0,
            client_order_id: id,
            outcome: PlacementOutcome::Refused {
                code: -2019,
                detail: "rejected by the exchange (code -2019): Margin is insufficient.".into(),
            },
        },
        NOW_MS,
    );
    let record = records(&rejected).into_iter().find(|r| r.outcome == "order_rejected").unwrap();
    assert!(record.reason.contains("Margin is insufficient"));
    // RES-CAPITAL counts it by its typed cause, not by its words.
    assert_eq!(record.cause, Some(DecisionCause::MarginRefused));
    assert!(placed(&rejected).is_empty(), "never resubmitted automatically");
    // The next decision is a new intent with the next id.
    let next = h.decide(SignalAction::Long, snapshot("0", vec![]));
    assert_eq!(placed(&next)[0].client_order_id.as_str(), "bw-u1-2");
}

#[test]
fn an_unresolved_order_blocks_new_intents_on_its_symbol() {
    let mut h = harness();
    let unresolved =
        UnresolvedOrder { client_order_id: ClientOrderId::parse("bw-u1-9").unwrap(), state: OrderState::Unknown };
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![unresolved]));
    assert!(placed(&commands).is_empty());
    let record = records(&commands).into_iter().find(|r| r.outcome == "skipped").unwrap();
    assert_eq!(record.reason, "order bw-u1-9 is unknown; no new order until it resolves");
    let saved =
        commands.iter().find_map(|c| if let TraderCommand::SavePosition(p) = c { Some(p) } else { None }).unwrap();
    assert_eq!(saved.active_order_id.as_ref().map(ClientOrderId::as_str), Some("bw-u1-9"));
}

#[test]
fn an_unconfirmed_placement_keeps_the_order_active_until_a_sync_resolves_it() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    let id = placed(&commands)[0].client_order_id.clone();
    let unconfirmed = h.core.process(
        TraderEvent::PlacementFinished {
            slot: 0,
            client_order_id: id.clone(),
            outcome: PlacementOutcome::Unconfirmed { reason: "router did not answer".into() },
        },
        NOW_MS,
    );
    assert!(records(&unconfirmed).iter().any(|r| r.outcome == "order_unknown"));
    let saved =
        unconfirmed.iter().find_map(|c| if let TraderCommand::SavePosition(p) = c { Some(p) } else { None }).unwrap();
    assert_eq!(saved.active_order_id.as_ref(), Some(&id));
}

#[test]
fn an_intent_that_could_not_be_committed_frees_the_slot() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    let id = placed(&commands)[0].client_order_id.clone();
    let failed = h.core.process(
        TraderEvent::PlacementFinished {
            slot: 0,
            client_order_id: id,
            outcome: PlacementOutcome::NotCommitted { reason: "database is locked".into() },
        },
        NOW_MS,
    );
    assert!(records(&failed).iter().any(|r| r.outcome == "order_failed" && r.reason.contains("nothing sent")));
    let next = h.candle();
    assert!(matches!(next.as_slice(), [TraderCommand::SyncAccount { .. }]), "{next:?}");
}

// Risk.

#[test]
fn entries_beyond_the_position_limit_are_blocked_and_use_no_sequence_number() {
    let mut h = harness_with(RiskLimits { max_open_positions: 1, max_position_notional_usdt: dec("1000") }, 1);
    // Another slot holds a position (restored from the database).
    h.core.restore(&TraderState {
        positions: vec![PositionRecord {
            user: user(),
            symbol: Symbol::new("OTHER0USDT").unwrap(),
            quantity: dec("3"),
            entry_price: dec("10"),
            position_start_time_ms: Some(1),
            active_order_id: None,
            verified_at_ms: 1,
        }],
        ..TraderState::default()
    });
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    assert!(placed(&commands).is_empty());
    let record = records(&commands).into_iter().find(|r| r.outcome == "blocked").unwrap();
    assert!(record.reason.starts_with("RES-POSITION-LIMIT: 1 positions already open"), "{}", record.reason);
    assert_eq!(h.core.last_intent_seq(), 0);
}

#[test]
fn a_halt_from_outside_blocks_entries_with_its_reason_but_never_an_exit() {
    let mut h = harness();
    let halt = EntryHalt {
        failure_point: crate::failure_points::catalog::SYS_DATABASE,
        reason: "the database refuses writes and 3 record(s) wait in the durable outbox".into(),
    };
    let mut halted = snapshot("0", vec![]);
    halted.entries_halted = Some(halt.clone());
    let commands = h.decide(SignalAction::Long, halted);
    assert!(placed(&commands).is_empty(), "{commands:?}");
    let record = records(&commands).into_iter().find(|r| r.outcome == "blocked").unwrap();
    assert_eq!(record.reason, format!("SYS-DATABASE: {}", halt.reason));
    assert_eq!(h.core.last_intent_seq(), 0, "no sequence number used");

    // Once it is lifted, entries go through again.
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    assert_eq!(placed(&commands).len(), 1, "{commands:?}");

    // Holding a position, the exit still goes out.
    let mut h = harness();
    let mut holding = snapshot("100", vec![]);
    holding.entries_halted = Some(halt);
    let commands = h.decide(SignalAction::Exit, holding);
    let exits = placed(&commands);
    assert_eq!(exits.len(), 1, "{commands:?}");
    assert_eq!(exits[0].purpose, IntentPurpose::Exit);
}

#[test]
fn entries_smaller_than_one_step_are_blocked() {
    let mut h = harness();
    let mut tiny_rules = snapshot("0", vec![]);
    tiny_rules.rules.step_size = dec("1000");
    tiny_rules.rules.min_quantity = dec("1000");
    let commands = h.decide(SignalAction::Long, tiny_rules);
    assert!(placed(&commands).is_empty());
    assert!(
        records(&commands).iter().any(|r| r.outcome == "blocked" && r.reason.contains("less than one tradable step"))
    );
}

// Restarts.

#[test]
fn a_restored_core_continues_the_sequence_and_keeps_position_start_time() {
    let mut h = harness();
    h.core.restore(&TraderState {
        positions: vec![PositionRecord {
            user: user(),
            symbol: xrp(),
            quantity: dec("10"),
            entry_price: dec("1.1"),
            position_start_time_ms: Some(123),
            active_order_id: None,
            verified_at_ms: 1,
        }],
        last_intent_seq: 42,
        unresolved_orders: vec![],
        decision_count: 7,
        risk_memory: None,
    });
    // The exchange still shows the same long: its start time survives the restart.
    let commands = h.decide(SignalAction::Flat, snapshot("10", vec![]));
    let saved =
        commands.iter().find_map(|c| if let TraderCommand::SavePosition(p) = c { Some(p) } else { None }).unwrap();
    assert_eq!(saved.position_start_time_ms, Some(123));
    // The next intent continues after the restored sequence.
    let exit = h.decide(SignalAction::Exit, snapshot("10", vec![]));
    assert_eq!(placed(&exit)[0].client_order_id.as_str(), "bw-u1-43");
}

#[test]
fn entries_in_flight_on_other_symbols_count_against_the_position_limit() {
    // Two symbols, room for one position: both slots decide on the same candle.
    let mut h = harness_with(RiskLimits { max_open_positions: 1, max_position_notional_usdt: dec("1000") }, 1);
    let other = Symbol::new("OTHER0USDT").unwrap();
    h.candle_open_ms += 300_000;
    let candles = Ok(window(h.candle_open_ms, 20));
    let first = h.core.process(
        TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candles: candles.clone() },
        NOW_MS,
    );
    let second =
        h.core.process(TraderEvent::CandleClosed { symbol: other.clone(), timeframe: Timeframe::M5, candles }, NOW_MS);
    let iteration = |commands: &[TraderCommand]| match commands {
        [TraderCommand::SyncAccount { iteration, .. }] => *iteration,
        other => panic!("{other:?}"),
    };
    let (first_iteration, second_iteration) = (iteration(&first), iteration(&second));
    h.strategy.signal(SignalAction::Long);
    let entered = h.synced(first_iteration, Ok(snapshot("0", vec![])));
    assert_eq!(placed(&entered).len(), 1);
    // The first entry is still being placed when the second slot decides: no second position.
    h.strategy.signal(SignalAction::Long);
    let mut other_snapshot = snapshot("0", vec![]);
    other_snapshot.position.symbol = other;
    let blocked = h.core.process(
        TraderEvent::AccountSynced { slot: 1, iteration: second_iteration, result: Ok(other_snapshot) },
        NOW_MS,
    );
    assert!(placed(&blocked).is_empty(), "{blocked:?}");
    assert!(records(&blocked).iter().any(|r| r.outcome == "blocked" && r.reason.starts_with("RES-POSITION-LIMIT")));
}

#[test]
fn refused_credentials_halt_the_account_with_the_reason() {
    let mut h = harness();
    let iteration = h.candle_expecting_sync();
    let refused =
        AccountError { detail: "authentication refused: -2015: Invalid API-key".into(), credentials_refused: true };
    let commands = h.core.process(TraderEvent::AccountSynced { slot: 0, iteration, result: Err(refused) }, NOW_MS);
    let reason = commands
        .iter()
        .find_map(|c| if let TraderCommand::Halt { reason } = c { Some(reason.clone()) } else { None })
        .unwrap();
    assert!(reason.contains("-2015") && reason.contains("trading halted"), "{reason}");
    assert!(records(&commands).iter().any(|r| r.reason.starts_with("halted: ")));
    assert_eq!(h.core.halted(), Some(reason.as_str()));
    // Nothing more is decided, whatever arrives.
    assert!(h.candle().is_empty());
    let placement = h.core.process(
        TraderEvent::PlacementFinished {
            slot: 0,
            client_order_id: ClientOrderId::for_intent(&user(), 1),
            outcome: PlacementOutcome::CredentialsRefused { detail: "x".into() },
        },
        NOW_MS,
    );
    assert!(placement.is_empty());
}

#[test]
fn a_refused_order_halts_the_account_too() {
    let mut h = harness();
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    let id = placed(&commands)[0].client_order_id.clone();
    let refused = h.core.process(
        TraderEvent::PlacementFinished {
            slot: 0,
            client_order_id: id,
            outcome: PlacementOutcome::CredentialsRefused { detail: "-2015".into() },
        },
        NOW_MS,
    );
    assert!(refused.iter().any(|c| matches!(c, TraderCommand::Halt { .. })));
    assert!(h.core.halted().is_some());
}

// SIG-KILL-SWITCH through the loop, on an injected clock: a losing account trips it, no entry is
// sent while it holds (exits still are), and it clears by itself at blocked_until.

/// The guards at their defaults except a tiny drawdown limit and a 2-hour block.
fn kill_switch_settings() -> GuardSettings {
    GuardSettings { max_drawdown_pct: 0.5, block_hours: 2.0, ..GuardSettings::default() }
}

struct Clocked {
    h: Harness,
    now_ms: i64,
}

impl Clocked {
    fn new() -> Self {
        Self::with(kill_switch_settings())
    }

    fn with(settings: GuardSettings) -> Self {
        let mut h = harness();
        let limits = h.core.limits;
        let core = std::mem::replace(&mut h.core, TraderCore::new(user(), Vec::new(), limits));
        h.core = core.with_guards(settings);
        Self { h, now_ms: NOW_MS }
    }

    /// A new incarnation of this trader at the same time: a fresh core that reloads what the
    /// trader actor reloads from the database (here, the newest risk memory this one handed out).
    fn restarted(&self, settings: GuardSettings, memory: Option<RiskMemory>) -> Self {
        let mut restarted = Self::with(settings);
        restarted.now_ms = self.now_ms;
        restarted.h.candle_open_ms = self.h.candle_open_ms;
        restarted.h.core.restore(&TraderState { risk_memory: memory, ..TraderState::default() });
        restarted
    }

    /// One iteration at `now_ms` with the scripted signal, the position and the account equity. Its
    /// candle closes at `now_ms` (or one candle after the previous one, if that is later): locks
    /// are judged by the venue's clock, the close of the candle decided on.
    fn decide(&mut self, action: SignalAction, quantity: &str, equity: f64) -> Vec<TraderCommand> {
        self.decide_at_mark(action, quantity, "1.2", equity)
    }

    /// The same, with the exchange's mark price (the entry price is 1.2).
    fn decide_at_mark(&mut self, action: SignalAction, quantity: &str, mark: &str, equity: f64) -> Vec<TraderCommand> {
        self.h.candle_open_ms = (self.h.candle_open_ms + 300_000).max(self.now_ms - 299_999);
        let candles = Ok(window(self.h.candle_open_ms, 40));
        let commands = self
            .h
            .core
            .process(TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candles }, self.now_ms);
        let iteration = match commands.as_slice() {
            [TraderCommand::SyncAccount { iteration, .. }] => *iteration,
            other => panic!("expected one SyncAccount, got {other:?}"),
        };
        self.h.strategy.signal(action);
        let mut account = snapshot(quantity, Vec::new());
        account.fetched_at_ms = self.now_ms;
        account.equity_usdt = Ok(equity);
        account.position.mark_price = dec(mark);
        let commands =
            self.h.core.process(TraderEvent::AccountSynced { slot: 0, iteration, result: Ok(account) }, self.now_ms);
        // Finish any placement so the slot is idle for the next iteration.
        for intent in placed(&commands) {
            let outcome = PlacementOutcome::Recorded { state: OrderState::Filled, detail: "filled".into() };
            let id = intent.client_order_id.clone();
            self.h.core.process(TraderEvent::PlacementFinished { slot: 0, client_order_id: id, outcome }, self.now_ms);
        }
        commands
    }
}

fn saved_memory(commands: &[TraderCommand]) -> Option<RiskMemory> {
    commands.iter().rev().find_map(|c| if let TraderCommand::SaveRiskMemory(m) = c { Some(m.clone()) } else { None })
}

#[test]
fn a_trader_restarted_at_four_percent_down_trips_the_kill_switch_at_five_on_the_original_peak() {
    let settings = GuardSettings { max_drawdown_pct: 5.0, ..GuardSettings::default() };
    let mut first = Clocked::with(settings.clone());
    let mut memory = saved_memory(&first.decide(SignalAction::Flat, "0", 10_000.0));
    first.now_ms += 600_000;
    let commands = first.decide(SignalAction::Flat, "0", 9_600.0);
    assert!(locks_set(&commands).is_empty(), "4 % is below the limit: {commands:?}");
    memory = saved_memory(&commands).or(memory);
    assert_eq!(memory.as_ref().map(|m| m.equity_peaks[0]), Some((NOW_MS, 10_000.0)), "{memory:?}");

    // The trader crashes and restarts: equity falls to 5 % below the peak of before the crash.
    let mut second = first.restarted(settings.clone(), memory);
    second.now_ms += 600_000;
    let commands = second.decide(SignalAction::Long, "0", 9_500.0);
    let locks = locks_set(&commands);
    assert_eq!(locks.len(), 1, "the switch trips on the original peak: {commands:?}");
    assert_eq!(locks[0].failure_point, "SIG-KILL-SWITCH");
    assert_eq!(locks[0].values["peak_usdt"], 10_000.0);
    assert!(placed(&commands).is_empty());

    // What a restart that forgot would have done: measure from 9,500, and let the entry through.
    let mut forgetful = first.restarted(settings, None);
    forgetful.now_ms += 600_000;
    let commands = forgetful.decide(SignalAction::Long, "0", 9_500.0);
    assert!(locks_set(&commands).is_empty() && placed(&commands).len() == 1, "{commands:?}");
}

#[test]
fn a_losing_streak_survives_a_restart_and_puts_the_symbol_on_probation_as_without_it() {
    let settings = GuardSettings { max_drawdown_pct: 50.0, probation_losses: 3, ..GuardSettings::default() };
    let mut first = Clocked::with(settings.clone());
    let mut memory = None;
    // Two losing trades (entry, then closed 0.83 % below the entry).
    for _ in 0..2 {
        assert_eq!(placed(&first.decide(SignalAction::Long, "0", 10_000.0)).len(), 1);
        first.now_ms += 300_000;
        first.decide(SignalAction::Flat, "100", 10_000.0);
        first.now_ms += 300_000;
        memory = saved_memory(&first.decide_at_mark(SignalAction::Flat, "0", "1.19", 10_000.0)).or(memory);
        first.now_ms += 300_000;
    }
    assert_eq!(memory.as_ref().map(|m| m.slots[0].loss_streak), Some(2), "{memory:?}");

    // Restarted: the third loss is the third in a row, and the next entry is refused.
    let mut second = first.restarted(settings, memory);
    assert_eq!(placed(&second.decide(SignalAction::Long, "0", 10_000.0)).len(), 1);
    second.now_ms += 300_000;
    second.decide(SignalAction::Flat, "100", 10_000.0);
    second.now_ms += 300_000;
    second.decide_at_mark(SignalAction::Flat, "0", "1.19", 10_000.0);
    second.now_ms += 300_000;
    let commands = second.decide(SignalAction::Long, "0", 10_000.0);
    assert!(placed(&commands).is_empty(), "{commands:?}");
    let locks = locks_set(&commands);
    assert_eq!((locks[0].failure_point.as_str(), locks[0].symbol.clone()), ("SIG-SYMBOL-PROBATION", Some(xrp())));
}

fn guard_records(commands: &[TraderCommand]) -> Vec<&GuardDecisionRecord> {
    commands.iter().filter_map(|c| if let TraderCommand::RecordGuards(r) = c { Some(r) } else { None }).collect()
}

fn locks_set(commands: &[TraderCommand]) -> Vec<&GuardLock> {
    commands.iter().filter_map(|c| if let TraderCommand::SetLock(l) = c { Some(l) } else { None }).collect()
}

#[test]
fn a_drawdown_trips_the_kill_switch_which_blocks_entries_until_blocked_until() {
    let mut clock = Clocked::new();
    let block_ms = 2 * 3_600_000;

    // Equity at its peak: the entry goes through every guard.
    let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
    assert_eq!(placed(&commands).len(), 1, "{commands:?}");
    assert_eq!(guard_records(&commands)[0].verdict, "allow");

    // The position lost 1 % of equity and was closed: the next entry trips the switch.
    clock.now_ms += 600_000;
    let tripped_at_ms = clock.now_ms;
    let commands = clock.decide(SignalAction::Long, "0", 9_900.0);
    assert!(placed(&commands).is_empty(), "no entry while the switch holds: {commands:?}");
    let locks = locks_set(&commands);
    assert_eq!(locks.len(), 1);
    assert_eq!((locks[0].failure_point.as_str(), locks[0].symbol.clone()), ("SIG-KILL-SWITCH", None));
    assert_eq!(locks[0].until_ms, tripped_at_ms + block_ms);
    let guard = guard_records(&commands)[0];
    assert_eq!((guard.verdict.as_str(), guard.failure_point.as_deref()), ("block", Some("SIG-KILL-SWITCH")));
    assert_eq!(guard.until_ms, Some(tripped_at_ms + block_ms));
    let blocked = records(&commands).into_iter().find(|r| r.outcome == "blocked").unwrap();
    assert!(blocked.reason.starts_with("SIG-KILL-SWITCH: "), "{}", blocked.reason);
    assert!(blocked.reason.contains("until"), "{}", blocked.reason);

    // Equity recovers, but the lock holds: still no entry, and no second lock.
    clock.now_ms += 3_600_000;
    let commands = clock.decide(SignalAction::Short, "0", 10_000.0);
    assert!(placed(&commands).is_empty(), "{commands:?}");
    assert!(locks_set(&commands).is_empty());
    assert!(guard_records(&commands)[0].reason.contains("kill switch holds"));

    // An exit is never blocked.
    let commands = clock.decide(SignalAction::Exit, "100", 10_000.0);
    let exits = placed(&commands);
    assert_eq!((exits.len(), exits.first().map(|i| i.purpose)), (1, Some(IntentPurpose::Exit)), "{commands:?}");

    // One millisecond before blocked_until: blocked. At blocked_until trading resumes, even with
    // equity still below the old peak (the switch served that drawdown; the peak starts afresh).
    clock.now_ms = tripped_at_ms + block_ms - 1;
    assert!(placed(&clock.decide(SignalAction::Long, "0", 9_900.0)).is_empty());
    clock.now_ms = tripped_at_ms + block_ms;
    let commands = clock.decide(SignalAction::Long, "0", 9_900.0);
    assert_eq!(placed(&commands).len(), 1, "trading resumes at blocked_until: {commands:?}");
    assert_eq!(guard_records(&commands)[0].verdict, "allow");
}

#[test]
fn the_kill_switch_fails_closed_when_equity_cannot_be_read_and_a_restored_lock_holds() {
    let mut clock = Clocked::new();
    // A sync whose balance read failed: entries are blocked, with the reason.
    clock.h.candle_open_ms += 300_000;
    let candles = Ok(window(clock.h.candle_open_ms, 40));
    let commands = clock
        .h
        .core
        .process(TraderEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candles }, clock.now_ms);
    let [TraderCommand::SyncAccount { iteration, .. }] = commands.as_slice() else { panic!("{commands:?}") };
    clock.h.strategy.signal(SignalAction::Long);
    let mut account = snapshot("0", Vec::new());
    account.fetched_at_ms = clock.now_ms;
    account.equity_usdt = Err("balance unavailable: timeout".into());
    let commands = clock
        .h
        .core
        .process(TraderEvent::AccountSynced { slot: 0, iteration: *iteration, result: Ok(account) }, clock.now_ms);
    assert!(placed(&commands).is_empty());
    assert!(guard_records(&commands)[0].reason.contains("fails closed"), "{commands:?}");

    // A lock stored by an earlier incarnation holds after a restart.
    let mut restarted = Clocked::new();
    restarted.h.core.restore_locks(vec![GuardLock {
        id: 3,
        user: user(),
        failure_point: "SIG-KILL-SWITCH".into(),
        symbol: None,
        reason: "drawdown".into(),
        values: serde_json::json!({}),
        set_at_ms: NOW_MS - 1_000,
        until_ms: NOW_MS + 60_000,
        set_at_venue_ms: NOW_MS - 1_000,
        until_venue_ms: NOW_MS + 60_000,
    }]);
    assert!(placed(&restarted.decide(SignalAction::Long, "0", 10_000.0)).is_empty());
    restarted.now_ms += 60_000;
    assert_eq!(placed(&restarted.decide(SignalAction::Long, "0", 10_000.0)).len(), 1);
}

#[test]
fn three_losing_trades_in_a_row_put_the_symbol_on_probation() {
    let mut clock = Clocked::new();
    // Equity stays put so that only the probation guard can trip.
    for round in 1..=3 {
        let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
        assert_eq!(placed(&commands).len(), 1, "round {round}: {commands:?}");
        clock.now_ms += 300_000;
        clock.decide(SignalAction::Flat, "100", 10_000.0);
        clock.now_ms += 300_000;
        // Closed 0.83 % below the entry (a loss, not a big one): the streak grows.
        let commands = clock.decide_at_mark(SignalAction::Flat, "0", "1.19", 10_000.0);
        assert!(locks_set(&commands).is_empty());
        clock.now_ms += 300_000;
    }
    let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
    assert!(placed(&commands).is_empty(), "{commands:?}");
    let lock = locks_set(&commands)[0];
    assert_eq!((lock.failure_point.as_str(), lock.symbol.clone()), ("SIG-SYMBOL-PROBATION", Some(xrp())));
    assert_eq!(lock.until_ms, clock.now_ms + 6 * 3_600_000);
    // It holds until it expires; the streak it served is spent, so the symbol then trades again.
    let until = lock.until_ms;
    clock.now_ms = until - 1;
    assert!(placed(&clock.decide(SignalAction::Long, "0", 10_000.0)).is_empty());
    clock.now_ms = until;
    let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
    assert_eq!(placed(&commands).len(), 1, "{commands:?}");
    assert!(locks_set(&commands).is_empty());
}

#[test]
fn on_an_accelerated_venue_a_probation_lasts_its_hours_of_market_time() {
    // The paper exchange at one 5-minute candle per wall second: 6 h of market time are 72 candles
    // and 72 wall seconds, not 6 wall hours.
    let settings = GuardSettings { probation_losses: 1, ..kill_switch_settings() };
    let mut clock = Clocked::with(settings);
    let limits = clock.h.core.limits;
    clock.h.core = std::mem::replace(&mut clock.h.core, TraderCore::new(user(), Vec::new(), limits))
        .with_venue_pace(VenuePace::new(300_000, 1_000));
    clock.decide(SignalAction::Long, "0", 10_000.0);
    clock.now_ms += 1_000;
    clock.decide(SignalAction::Flat, "100", 10_000.0);
    clock.now_ms += 1_000;
    clock.decide_at_mark(SignalAction::Flat, "0", "1.19", 10_000.0);
    clock.now_ms += 1_000;
    let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
    let lock = locks_set(&commands)[0].clone();
    assert_eq!(lock.failure_point, "SIG-SYMBOL-PROBATION");
    assert_eq!(lock.until_ms, clock.now_ms + 72_000);
    assert_eq!(lock.set_at_venue_ms, clock.h.candle_open_ms + 299_999);
    assert_eq!(lock.until_venue_ms, lock.set_at_venue_ms + 6 * 3_600_000);
    // 71 more candles, one wall second each: blocked. The 72nd trades again.
    for candle in 1..72 {
        clock.now_ms += 1_000;
        assert!(placed(&clock.decide(SignalAction::Long, "0", 10_000.0)).is_empty(), "candle {candle}");
    }
    clock.now_ms += 1_000;
    assert_eq!(placed(&clock.decide(SignalAction::Long, "0", 10_000.0)).len(), 1);
}

fn stored_lock(id: i64, failure_point: &str, symbol: Option<Symbol>, until_ms: i64) -> GuardLock {
    GuardLock {
        id,
        user: user(),
        failure_point: failure_point.into(),
        symbol,
        reason: "set before the guards were turned off".into(),
        values: serde_json::json!({}),
        set_at_ms: NOW_MS - 1_000,
        until_ms,
        set_at_venue_ms: NOW_MS - 1_000,
        until_venue_ms: until_ms,
    }
}

#[test]
fn with_the_guards_off_a_lock_already_set_still_blocks_entries_until_it_expires() {
    // `[guards] enabled = false` (no settings) on a core that reloaded a probation on its symbol
    // and, later, a kill switch: turning the guards off must not lift either.
    let mut clock = Clocked::new();
    clock.h.core =
        TraderCore::new(user(), clock.h.core.slots.iter().map(|s| s.spec.clone()).collect(), clock.h.core.limits);
    let probation_until = NOW_MS + 60_000;
    clock.h.core.restore_locks(vec![stored_lock(7, "SIG-SYMBOL-PROBATION", Some(xrp()), probation_until)]);
    let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
    assert!(placed(&commands).is_empty(), "no entry under a probation: {commands:?}");
    let guard = guard_records(&commands)[0];
    assert_eq!((guard.verdict.as_str(), guard.failure_point.as_deref()), ("block", Some("SIG-SYMBOL-PROBATION")));
    let blocked = records(&commands).into_iter().find(|r| r.outcome == "blocked").unwrap();
    assert!(blocked.reason.starts_with("SIG-SYMBOL-PROBATION: "), "{}", blocked.reason);
    // Exits still go.
    let commands = clock.decide(SignalAction::Exit, "100", 10_000.0);
    assert_eq!(placed(&commands).len(), 1, "{commands:?}");
    // A probation on another symbol does not block this one; a kill switch blocks every symbol.
    // (Each decision is one candle later: an hour leaves room for them.)
    let kill_until = NOW_MS + 3_600_000;
    clock.h.core.restore_locks(vec![
        stored_lock(8, "SIG-SYMBOL-PROBATION", Some(Symbol::new("BTCUSDT").unwrap()), kill_until),
        stored_lock(9, "SIG-KILL-SWITCH", None, kill_until),
    ]);
    let commands = clock.decide(SignalAction::Long, "0", 10_000.0);
    assert!(placed(&commands).is_empty(), "no entry under a kill switch: {commands:?}");
    assert_eq!(guard_records(&commands)[0].failure_point.as_deref(), Some("SIG-KILL-SWITCH"));
    // A drawdown sets no new lock while the guards are off.
    clock.now_ms = kill_until;
    let commands = clock.decide(SignalAction::Long, "0", 1.0);
    assert_eq!(placed(&commands).len(), 1, "the lock expired; the guards are off: {commands:?}");
    assert!(locks_set(&commands).is_empty(), "{commands:?}");
}

// The main-loop error policy: a slot whose iterations keep failing tells the operator once, then
// backs off (sits out candles, 1, 2, 4, ...) instead of asking the exchange every candle.

#[test]
fn failing_iterations_alert_once_then_back_off_and_a_good_one_ends_the_streak() {
    let mut h = harness();
    let mut alerts = 0;
    for _ in 0..5 {
        let iteration = h.candle_expecting_sync();
        let commands = h.synced(iteration, Err("position: timeout".into()));
        assert_eq!(only_record(&commands).outcome, "skipped");
        alerts += commands.iter().filter(|c| matches!(c, TraderCommand::Alert { .. })).count();
    }
    assert_eq!(alerts, 1, "one alert for the streak");
    // Fifth failure: the slot sits out the next candle (no sync), then tries again.
    let commands = h.candle();
    assert!(!commands.iter().any(|c| matches!(c, TraderCommand::SyncAccount { .. })), "{commands:?}");
    assert!(only_record(&commands).reason.starts_with("paused after 5 failing iterations"));
    let iteration = h.candle_expecting_sync();
    h.synced(iteration, Err("position: timeout".into()));
    // Still failing: the next pause is twice as long.
    for _ in 0..2 {
        let commands = h.candle();
        assert!(!commands.iter().any(|c| matches!(c, TraderCommand::SyncAccount { .. })), "{commands:?}");
    }
    // A good iteration ends the streak: no pause after the next failure.
    let commands = h.decide(SignalAction::Flat, snapshot("0", Vec::new()));
    assert_eq!(only_record(&commands).outcome, "hold");
    let iteration = h.candle_expecting_sync();
    h.synced(iteration, Err("position: timeout".into()));
    h.candle_expecting_sync();
}

fn stored_position(quantity: &str, verified_at_ms: i64) -> PositionRecord {
    PositionRecord {
        user: user(),
        symbol: xrp(),
        quantity: dec(quantity),
        entry_price: dec("1.1"),
        position_start_time_ms: Some(1),
        active_order_id: None,
        verified_at_ms,
    }
}

fn stored_state(positions: Vec<PositionRecord>) -> TraderState {
    TraderState { positions, last_intent_seq: 3, unresolved_orders: vec![], decision_count: 0, risk_memory: None }
}

/// A core restored with a stored long of 10, its entries held for `waiting`.
fn holding_with_entries_held(waiting: &str) -> Harness {
    let mut h = harness();
    h.core.restore(&stored_state(vec![stored_position("10", NOW_MS)]));
    h.core.hold_entries(waiting);
    h
}

#[test]
fn only_a_recent_complete_picture_with_a_position_exits_before_reconciliation() {
    let recent = NOW_MS - START_UP_EXITS_STATE_AGE_MS_MAX;
    assert_eq!(exits_before_reconciliation(&stored_state(vec![stored_position("10", recent)]), NOW_MS), Ok(1));
    let flat = exits_before_reconciliation(&stored_state(vec![stored_position("0", recent)]), NOW_MS).unwrap_err();
    assert!(flat.contains("no open position"), "{flat}");
    let stale =
        exits_before_reconciliation(&stored_state(vec![stored_position("-5", recent - 1)]), NOW_MS).unwrap_err();
    assert!(stale.contains("XRPUSDT position was verified 900 s ago"), "{stale}");
    // An order the previous incarnation left unresolved: its fill may have moved the position.
    let mut h = harness();
    let intent = placed(&h.decide(SignalAction::Long, snapshot("0", vec![])))[0].clone();
    let mut unresolved = stored_state(vec![stored_position("10", recent)]);
    unresolved.unresolved_orders.push(crate::records::StoredOrder {
        intent,
        state: OrderState::Unknown,
        exchange_order_id: None,
        filled_quantity: Decimal::ZERO,
        average_price: None,
        sent_at_ms: Some(NOW_MS - 1_000),
        updated_at_ms: NOW_MS - 1_000,
        last_error: None,
        send_attempts: 1,
    });
    let why = exits_before_reconciliation(&unresolved, NOW_MS).unwrap_err();
    assert!(why.contains("bw-u1-1 is unresolved"), "{why}");
}

#[test]
fn held_entries_are_blocked_with_their_reason_while_exits_go_out() {
    let waiting = "entries wait for the start-up reconciliation";
    // Flat, entries waiting: nothing to decide, and no account read spent on it.
    let mut h = harness();
    h.core.hold_entries(waiting);
    let commands = h.candle();
    assert_eq!(only_record(&commands).outcome, "skipped");
    assert_eq!(only_record(&commands).reason, format!("flat: {waiting}"));
    // Holding a position (as stored): the exit goes out after the account read.
    let mut h = holding_with_entries_held(waiting);
    let exit = h.decide(SignalAction::Exit, snapshot("10", vec![]));
    assert_eq!(placed(&exit).len(), 1, "{exit:?}");
    assert_eq!(placed(&exit)[0].purpose, IntentPurpose::Exit);
    // The read finds it flat after all (closed meanwhile): an entry signal is blocked.
    let mut h = holding_with_entries_held(waiting);
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    assert!(placed(&commands).is_empty(), "{commands:?}");
    let record = records(&commands).into_iter().find(|r| r.outcome == "blocked").unwrap();
    assert_eq!(record.reason, waiting);
    // Released (the reconciliation is done): entries go out again.
    h.core.release_entries();
    let commands = h.decide(SignalAction::Long, snapshot("0", vec![]));
    assert_eq!(placed(&commands).len(), 1, "{commands:?}");
    assert_eq!(placed(&commands)[0].purpose, IntentPurpose::Entry);
}
