//! The paper exchange's market: price series per symbol on an accelerated clock.
//!
//! Every symbol has a series of 5-minute *base* candles addressed by a global index. A replayed
//! symbol plays recorded candles forwards, then backwards (with open and close swapped), then
//! forwards again: the path stays continuous and bounded however long the server runs. Any other
//! symbol is an Ornstein-Uhlenbeck random walk on the log price, seeded from the configured seed
//! and the symbol name, so it is the same series on every run. Longer timeframes aggregate base
//! candles on their own boundaries.
//!
//! [`MarketClock`] maps wall time to market time: one base candle per `candle_interval_ms` of wall
//! time, with the newest closed candle ending "now" when the market is first created.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::domain::{Candle, Symbol, Timeframe};
use crate::intelligence::tape;
use crate::limits::PAPER_RANDOM_WALK_HISTORY_MAX;

/// The granularity of every paper price series.
pub const BASE_TIMEFRAME: Timeframe = Timeframe::M5;

/// Market index of the first candle that forms after a fresh start. Everything before it is
/// history that strategies can look back on from their very first decision. For a replayed
/// symbol it is a multiple of nothing in particular; for a random walk it is how many candles are
/// generated at start-up.
pub const START_INDEX: u64 = 12_000;

/// Recorded OHLCV values of one candle, without its time (the market clock assigns times).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ohlcv {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("{source_name}: not a JSON array of [open_time_ms, open, high, low, close, volume] rows: {detail}")]
    Shape { source_name: String, detail: String },
    #[error("{source_name}: row {row}: {what}")]
    Row { source_name: String, row: usize, what: String },
    #[error("{source_name}: needs at least {need} rows, has {have}")]
    TooShort { source_name: String, have: usize, need: usize },
}

/// Parses and checks a recorded candle file (rows `[open_time_ms, open, high, low, close,
/// volume]`, 5-minute spacing). Any bad row is an error naming the row; nothing is half-loaded.
pub fn parse_replay(source_name: &str, bytes: &[u8]) -> Result<Arc<[Ohlcv]>, ReplayError> {
    let rows: Vec<Vec<serde_json::Value>> = serde_json::from_slice(bytes).map_err(|error| ReplayError::Shape {
        source_name: source_name.to_owned(),
        detail: crate::limits::excerpt_lines(&error.to_string()),
    })?;
    const ROWS_MIN: usize = 2;
    if rows.len() < ROWS_MIN {
        return Err(ReplayError::TooShort { source_name: source_name.to_owned(), have: rows.len(), need: ROWS_MIN });
    }
    let row_error = |row: usize, what: String| ReplayError::Row { source_name: source_name.to_owned(), row, what };
    let mut candles = Vec::with_capacity(rows.len());
    let mut previous_open_time_ms: Option<i64> = None;
    for (row, values) in rows.iter().enumerate() {
        if values.len() != 6 {
            return Err(row_error(row, format!("has {} values, expected 6", values.len())));
        }
        let open_time_ms = values[0].as_i64().ok_or_else(|| row_error(row, "open time is not an integer".into()))?;
        let mut numbers = [0.0_f64; 5];
        for (slot, value) in numbers.iter_mut().zip(&values[1..]) {
            *slot = value.as_f64().filter(|n| n.is_finite()).ok_or_else(|| {
                row_error(row, format!("{} is not a finite number", crate::limits::excerpt(&value.to_string())))
            })?;
        }
        let [open, high, low, close, volume] = numbers;
        if open <= 0.0 || high <= 0.0 || low <= 0.0 || close <= 0.0 || volume < 0.0 {
            return Err(row_error(row, "a price is not positive or the volume is negative".into()));
        }
        if high < open.max(close) || low > open.min(close) {
            return Err(row_error(
                row,
                format!("high {high} / low {low} do not contain open {open} and close {close}"),
            ));
        }
        if let Some(previous) = previous_open_time_ms
            && open_time_ms - previous != BASE_TIMEFRAME.duration_ms()
        {
            return Err(row_error(row, format!("open time {open_time_ms} is not 5 minutes after {previous}")));
        }
        previous_open_time_ms = Some(open_time_ms);
        candles.push(Ohlcv { open, high, low, close, volume });
    }
    Ok(candles.into())
}

/// Parameters of a random-walk symbol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomWalkParams {
    pub start_price: f64,
    /// Standard deviation of the log return per base candle (0.003 = 0.3 % per 5 minutes, about
    /// what BTC does on a normal day).
    pub volatility: f64,
    /// Pull back towards the start price per candle (0.001 = the gap halves in about 700 candles).
    pub mean_reversion: f64,
    /// Typical volume per candle, in base units.
    pub base_volume: f64,
}

/// Where a symbol's candles come from.
#[derive(Debug, Clone)]
pub enum SeriesSource {
    Replay { source_name: String, candles: Arc<[Ohlcv]> },
    RandomWalk(RandomWalkParams),
}

/// Sub-steps simulated inside one random-walk candle to give it a high and a low.
const WALK_SUBSTEPS: usize = 6;

/// A random-walk series, generated forwards on demand; keeps a bounded history.
#[derive(Debug)]
struct RandomWalk {
    params: RandomWalkParams,
    tick_size: f64,
    rng: ChaCha8Rng,
    log_price: f64,
    /// Candles `[first_index, first_index + history.len())`.
    history: VecDeque<Ohlcv>,
    first_index: u64,
}

impl RandomWalk {
    fn new(params: RandomWalkParams, tick_size: f64, seed: u64, symbol: &Symbol) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(symbol.as_str().as_bytes()));
        Self { params, tick_size, rng, log_price: params.start_price.ln(), history: VecDeque::new(), first_index: 0 }
    }

    fn next_index(&self) -> u64 {
        self.first_index + self.history.len() as u64
    }

    fn generate_next(&mut self) {
        let params = self.params;
        let anchor = params.start_price.ln();
        let step_volatility = params.volatility / (WALK_SUBSTEPS as f64).sqrt();
        let step_reversion = params.mean_reversion / WALK_SUBSTEPS as f64;
        let open = self.log_price;
        let (mut high, mut low) = (open, open);
        for _ in 0..WALK_SUBSTEPS {
            let z: f64 = StandardNormal.sample(&mut self.rng);
            self.log_price += step_reversion * (anchor - self.log_price) + step_volatility * z;
            high = high.max(self.log_price);
            low = low.min(self.log_price);
        }
        let volume_noise: f64 = StandardNormal.sample(&mut self.rng);
        let move_size = (self.log_price - open).abs() / params.volatility.max(f64::EPSILON);
        let volume = params.base_volume * (0.5 * volume_noise).exp() * (0.5 + 0.5 * move_size);
        let tick = |log_price: f64| round_to_tick(log_price.exp(), self.tick_size);
        let candle = Ohlcv { open: tick(open), high: tick(high), low: tick(low), close: tick(self.log_price), volume };
        self.history.push_back(candle);
        if self.history.len() > PAPER_RANDOM_WALK_HISTORY_MAX {
            self.history.pop_front();
            self.first_index += 1;
        }
    }

    fn candle(&mut self, index: u64) -> Option<Ohlcv> {
        while self.next_index() <= index {
            self.generate_next();
        }
        let offset = index.checked_sub(self.first_index)?;
        self.history.get(offset as usize).copied()
    }
}

fn round_to_tick(price: f64, tick_size: f64) -> f64 {
    if tick_size <= 0.0 {
        return price;
    }
    let ticks = (price / tick_size).round().max(1.0);
    // Printing through a decimal string keeps values like 1.1893 from becoming 1.1893000000000002.
    let decimals = (-tick_size.log10()).ceil().max(0.0) as usize;
    format!("{:.*}", decimals, ticks * tick_size).parse().unwrap_or(ticks * tick_size)
}

/// FNV-1a: a stable hash of the symbol name for per-symbol seeds (std's hasher is not stable
/// across releases, and determinism across builds matters here).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[derive(Debug)]
enum Series {
    Replay(Arc<[Ohlcv]>),
    Walk(Box<RandomWalk>),
}

impl Series {
    fn candle(&mut self, index: u64) -> Option<Ohlcv> {
        match self {
            Series::Replay(candles) => Some(ping_pong(candles, index)),
            Series::Walk(walk) => walk.candle(index),
        }
    }
}

/// Candle `index` of a recording played forwards, backwards, forwards, ...
fn ping_pong(candles: &[Ohlcv], index: u64) -> Ohlcv {
    let len = candles.len() as u64;
    let position = index % (2 * len);
    if position < len {
        candles[position as usize]
    } else {
        let recorded = candles[(2 * len - 1 - position) as usize];
        Ohlcv { open: recorded.close, close: recorded.open, ..recorded }
    }
}

/// Maps wall time to market time. Persisted by the paper exchange so that the market continues
/// where it was across restarts (it keeps moving while bulwark is down, like a real market).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketClock {
    pub anchor_wall_ms: i64,
    pub anchor_market_ms: i64,
    /// Open time of base candle 0.
    pub origin_market_ms: i64,
    /// Wall-clock time per base candle.
    pub candle_interval_ms: i64,
}

impl MarketClock {
    /// A new market whose candle [`START_INDEX`] is forming at `wall_ms`. A real-time market is
    /// at wall time, its forming candle part-way through as Binance's is; an accelerated one
    /// starts that candle at `wall_ms`.
    pub fn fresh(wall_ms: i64, candle_interval_ms: i64) -> Self {
        let base_ms = BASE_TIMEFRAME.duration_ms();
        let forming_open_ms = wall_ms.div_euclid(base_ms) * base_ms;
        let anchor_market_ms = if candle_interval_ms == base_ms { wall_ms } else { forming_open_ms };
        Self {
            anchor_wall_ms: wall_ms,
            anchor_market_ms,
            origin_market_ms: forming_open_ms - START_INDEX as i64 * base_ms,
            candle_interval_ms: candle_interval_ms.max(1),
        }
    }

    /// Runs one market candle per candle of wall time.
    pub fn is_real_time(&self) -> bool {
        self.candle_interval_ms == BASE_TIMEFRAME.duration_ms()
    }

    /// The stored market, continuing from `wall_ms` at `candle_interval_ms`. In real time the
    /// market is at wall time again (it went on trading while its venue was down); a market stored
    /// ahead of the wall (it ran accelerated) cannot run in real time, since market time never
    /// goes back: the answer is how far ahead it is, in ms.
    pub fn resumed(self, wall_ms: i64, candle_interval_ms: i64) -> Result<Self, i64> {
        if candle_interval_ms != BASE_TIMEFRAME.duration_ms() {
            return Ok(self.with_candle_interval(wall_ms, candle_interval_ms));
        }
        let ahead_ms = self.market_now_ms(wall_ms) - wall_ms;
        if ahead_ms > 0 {
            return Err(ahead_ms);
        }
        Ok(Self {
            anchor_wall_ms: wall_ms,
            anchor_market_ms: wall_ms,
            origin_market_ms: self.origin_market_ms,
            candle_interval_ms,
        })
    }

    /// The same market, continuing from `wall_ms` at a new speed.
    pub fn with_candle_interval(self, wall_ms: i64, candle_interval_ms: i64) -> Self {
        if candle_interval_ms == self.candle_interval_ms {
            return self;
        }
        Self {
            anchor_wall_ms: wall_ms,
            anchor_market_ms: self.market_now_ms(wall_ms),
            origin_market_ms: self.origin_market_ms,
            candle_interval_ms: candle_interval_ms.max(1),
        }
    }

    pub fn market_now_ms(&self, wall_ms: i64) -> i64 {
        let elapsed_wall_ms = (wall_ms - self.anchor_wall_ms).max(0);
        self.anchor_market_ms + elapsed_wall_ms * BASE_TIMEFRAME.duration_ms() / self.candle_interval_ms
    }

    /// Index of the base candle forming at `wall_ms`; every lower index is closed.
    pub fn forming_index(&self, wall_ms: i64) -> u64 {
        let elapsed_market_ms = (self.market_now_ms(wall_ms) - self.origin_market_ms).max(0);
        (elapsed_market_ms / BASE_TIMEFRAME.duration_ms()) as u64
    }

    /// The wall time at which the market reaches `market_ms` (the inverse of `market_now_ms`).
    pub fn wall_at_ms(&self, market_ms: i64) -> i64 {
        let market_elapsed_ms = (market_ms - self.anchor_market_ms) as i128;
        self.anchor_wall_ms
            + (market_elapsed_ms * self.candle_interval_ms as i128 / BASE_TIMEFRAME.duration_ms() as i128) as i64
    }

    pub fn open_time_ms(&self, index: u64) -> i64 {
        self.origin_market_ms + index as i64 * BASE_TIMEFRAME.duration_ms()
    }
}

/// Why the market cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    #[error("unknown symbol {0}")]
    UnknownSymbol(Symbol),
    #[error("interval {0} is finer than this market's recorded 5m candles")]
    UnsupportedInterval(&'static str),
    #[error("candle {index} of {symbol} is older than the history the paper exchange keeps")]
    HistoryExhausted { symbol: Symbol, index: u64 },
}

/// All paper symbols on one clock.
#[derive(Debug)]
pub struct PaperMarket {
    clock: MarketClock,
    series: std::collections::BTreeMap<Symbol, Series>,
    /// What each base candle's tape showed (taker-buy volume, large trades), by symbol and index:
    /// a window slides one candle per close, so each candle's tape is drawn once. Written and read
    /// by `traded_base_candle`; emptied when it holds `TAPE_FLOWS_MAX` candles.
    tape_flows: std::collections::HashMap<Symbol, std::collections::HashMap<u64, TapeFlow>>,
    /// Each symbol's tick size: a price read part-way along a candle's path is rounded to it.
    tick_sizes: std::collections::BTreeMap<Symbol, f64>,
}

/// A base candle's taker-buy volume and large trades, from its tape.
type TapeFlow = (f64, Option<crate::domain::LargeTrades>);

/// Candles whose tape flow is kept, over every symbol (a few MB at most).
const TAPE_FLOWS_MAX: usize = 200_000;

impl PaperMarket {
    /// `symbols`: each symbol with its source and tick size (random walks round to it).
    pub fn new(clock: MarketClock, seed: u64, symbols: &[(Symbol, SeriesSource, f64)]) -> Self {
        let series = symbols
            .iter()
            .map(|(symbol, source, tick_size)| {
                let series = match source {
                    SeriesSource::Replay { candles, .. } => Series::Replay(candles.clone()),
                    SeriesSource::RandomWalk(params) => {
                        Series::Walk(Box::new(RandomWalk::new(*params, *tick_size, seed, symbol)))
                    }
                };
                (symbol.clone(), series)
            })
            .collect();
        let tick_sizes = symbols.iter().map(|(symbol, _, tick_size)| (symbol.clone(), *tick_size)).collect();
        Self { clock, series, tape_flows: std::collections::HashMap::new(), tick_sizes }
    }

    pub fn clock(&self) -> MarketClock {
        self.clock
    }

    pub fn set_clock(&mut self, clock: MarketClock) {
        self.clock = clock;
    }

    pub fn knows(&self, symbol: &Symbol) -> bool {
        self.series.contains_key(symbol)
    }

    /// Base candle `index` of `symbol` with its market times (prices and volume only).
    pub fn base_candle(&mut self, symbol: &Symbol, index: u64) -> Result<Candle, MarketError> {
        let clock = self.clock;
        let series = self.series.get_mut(symbol).ok_or_else(|| MarketError::UnknownSymbol(symbol.clone()))?;
        let ohlcv =
            series.candle(index).ok_or_else(|| MarketError::HistoryExhausted { symbol: symbol.clone(), index })?;
        let open_time_ms = clock.open_time_ms(index);
        Ok(Candle {
            open_time_ms,
            close_time_ms: open_time_ms + BASE_TIMEFRAME.duration_ms() - 1,
            open: ohlcv.open,
            high: ohlcv.high,
            low: ohlcv.low,
            close: ohlcv.close,
            volume: ohlcv.volume,
            taker_buy_volume: None,
            large_trades: None,
        })
    }

    /// Base candle `index` with what its trades on the recorded tape show: its taker-buy volume,
    /// and its large trades against the candle before's (a candle with none before it in the series
    /// is not measured).
    fn traded_base_candle(&mut self, symbol: &Symbol, index: u64) -> Result<Candle, MarketError> {
        let mut candle = self.base_candle(symbol, index)?;
        let known = self.tape_flows.get(symbol).and_then(|flows| flows.get(&index)).copied();
        let (taker_buy_volume, large_trades) = match known {
            Some(flow) => flow,
            None => {
                let trades = tape::candle_trades(&candle);
                let previous = index.checked_sub(1).and_then(|previous| self.base_candle(symbol, previous).ok());
                let large_trades = previous.and_then(|previous| {
                    tape::large_trades(&tape::candle_trades(&previous), &trades, BASE_TIMEFRAME.duration_ms())
                });
                let flow = (tape::taker_buy_volume(&trades), large_trades);
                if self.tape_flows.values().map(std::collections::HashMap::len).sum::<usize>() >= TAPE_FLOWS_MAX {
                    self.tape_flows.clear();
                }
                self.tape_flows.entry(symbol.clone()).or_default().insert(index, flow);
                flow
            }
        };
        candle.taker_buy_volume = Some(taker_buy_volume);
        candle.large_trades = large_trades;
        Ok(candle)
    }

    /// The last `limit` closed candles of `timeframe` at `wall_ms`, oldest first.
    pub fn closed_candles(
        &mut self,
        symbol: &Symbol,
        timeframe: Timeframe,
        limit: u16,
        wall_ms: i64,
    ) -> Result<Vec<Candle>, MarketError> {
        let interval = KlineInterval::of(timeframe);
        let forming_open_ms = interval.open_of(self.clock.market_now_ms(wall_ms));
        let window = KlineWindow { start_ms: None, end_ms: Some(forming_open_ms - 1), limit };
        self.klines(symbol, interval, window, wall_ms)
    }

    /// Binance's klines at `wall_ms` (`binance-shapes.md` §3.2): rows identified by their open
    /// time, ascending, the newest possibly the candle still forming (traded up to now along
    /// [`path_price`]). Only `start_ms`: `limit` rows from the first opening at or after it; only
    /// `end_ms` (or neither): the `limit` rows up to the one open at `end_ms` (or now); both: the
    /// first `limit` rows between them. Rows opening before the market's first candle are not
    /// served.
    pub fn klines(
        &mut self,
        symbol: &Symbol,
        interval: KlineInterval,
        window: KlineWindow,
        wall_ms: i64,
    ) -> Result<Vec<Candle>, MarketError> {
        let finest_ms = match self.series.get(symbol) {
            None => return Err(MarketError::UnknownSymbol(symbol.clone())),
            Some(Series::Replay(_)) => BASE_TIMEFRAME.duration_ms(),
            Some(Series::Walk(_)) => GENERATED_FINEST_MS,
        };
        if !interval.is_built_of(finest_ms) {
            return Err(MarketError::UnsupportedInterval(interval.as_str()));
        }
        let market_now_ms = self.clock.market_now_ms(wall_ms);
        let newest_open_ms = match window.end_ms {
            Some(end_ms) => interval.open_of(end_ms).min(interval.open_of(market_now_ms)),
            None => interval.open_of(market_now_ms),
        };
        let oldest_open_ms = {
            let origin_ms = self.clock.origin_market_ms;
            let open_ms = interval.open_of(origin_ms);
            if open_ms < origin_ms { interval.next_open(open_ms) } else { open_ms }
        };
        let limit = usize::from(window.limit);
        let mut opens = Vec::with_capacity(limit.min(1_500));
        match window.start_ms {
            Some(start_ms) => {
                let first_ms = interval.open_of(start_ms);
                let mut open_ms = if first_ms < start_ms { interval.next_open(first_ms) } else { first_ms };
                open_ms = open_ms.max(oldest_open_ms);
                while open_ms <= newest_open_ms && opens.len() < limit {
                    opens.push(open_ms);
                    open_ms = interval.next_open(open_ms);
                }
            }
            None => {
                let mut open_ms = newest_open_ms;
                while open_ms >= oldest_open_ms && opens.len() < limit {
                    opens.push(open_ms);
                    open_ms = interval.previous_open(open_ms);
                }
                opens.reverse();
            }
        }
        let mut candles = Vec::with_capacity(opens.len());
        for open_ms in opens {
            match self.interval_candle(symbol, open_ms, interval.next_open(open_ms), wall_ms) {
                Ok(candle) => candles.push(candle),
                // Older than a random walk keeps: not served, as a listing's first days are not.
                Err(MarketError::HistoryExhausted { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(candles)
    }

    /// The candle of the interval `[open_ms, next_open_ms)`: its closed base candles with their
    /// tape, the parts of base candles it cuts (a generated market's 1-minute candles) along their
    /// paths, and the forming base candle as far as it has traded.
    fn interval_candle(
        &mut self,
        symbol: &Symbol,
        open_ms: i64,
        next_open_ms: i64,
        wall_ms: i64,
    ) -> Result<Candle, MarketError> {
        let base_ms = BASE_TIMEFRAME.duration_ms();
        let origin_ms = self.clock.origin_market_ms;
        let forming_index = self.clock.forming_index(wall_ms);
        let forming_fraction = self.forming_fraction(wall_ms);
        let first_index = ((open_ms - origin_ms) / base_ms) as u64;
        let last_index = (((next_open_ms - 1 - origin_ms) / base_ms) as u64).min(forming_index);
        let mut aggregate: Option<Candle> = None;
        for index in first_index..=last_index {
            let base_open_ms = origin_ms + index as i64 * base_ms;
            let from = (open_ms - base_open_ms).max(0) as f64 / base_ms as f64;
            let mut to = (next_open_ms - base_open_ms).min(base_ms) as f64 / base_ms as f64;
            if index == forming_index {
                to = to.min(forming_fraction);
            }
            if to <= from && !(index == forming_index && aggregate.is_none()) {
                continue;
            }
            let piece = self.base_candle_part(symbol, index, from, to.max(from))?;
            aggregate = Some(match aggregate {
                None => piece,
                Some(sum) => Candle {
                    high: sum.high.max(piece.high),
                    low: sum.low.min(piece.low),
                    close: piece.close,
                    volume: sum.volume + piece.volume,
                    taker_buy_volume: sum.taker_buy_volume.zip(piece.taker_buy_volume).map(|(a, b)| a + b),
                    large_trades: sum.large_trades.zip(piece.large_trades).map(|(a, b)| a + b),
                    ..sum
                },
            });
        }
        let mut candle =
            aggregate.ok_or(MarketError::HistoryExhausted { symbol: symbol.clone(), index: first_index })?;
        candle.open_time_ms = open_ms;
        candle.close_time_ms = next_open_ms - 1;
        Ok(candle)
    }

    /// How far through its time the forming base candle is at `wall_ms` (0 to 1).
    fn forming_fraction(&self, wall_ms: i64) -> f64 {
        let base_ms = BASE_TIMEFRAME.duration_ms();
        let forming_open_ms = self.clock.open_time_ms(self.clock.forming_index(wall_ms));
        ((self.clock.market_now_ms(wall_ms) - forming_open_ms) as f64 / base_ms as f64).clamp(0.0, 1.0)
    }

    /// Base candle `index` between `from` and `to` (fractions of its time): the whole traded
    /// candle, or the part of its path walked then with that share of its volume (no large
    /// trades: they are measured on whole candles).
    fn base_candle_part(&mut self, symbol: &Symbol, index: u64, from: f64, to: f64) -> Result<Candle, MarketError> {
        let whole = self.traded_base_candle(symbol, index)?;
        if from <= 0.0 && to >= 1.0 {
            return Ok(whole);
        }
        let ohlcv =
            Ohlcv { open: whole.open, high: whole.high, low: whole.low, close: whole.close, volume: whole.volume };
        // On the tick, as every traded price is (the candle's own high and low are ticks, so a
        // rounded price stays between them).
        let tick_size = self.tick_sizes.get(symbol).copied().unwrap_or(0.0);
        let (open, high, low, close) = path_segment(&ohlcv, from, to);
        let [open, high, low, close] = [open, high, low, close].map(|price| round_to_tick(price, tick_size));
        let share = (to - from).max(0.0);
        Ok(Candle {
            open,
            high,
            low,
            close,
            volume: whole.volume * share,
            taker_buy_volume: whole.taker_buy_volume.map(|bought| bought * share),
            large_trades: None,
            ..whole
        })
    }

    /// The base candle forming at `wall_ms`, traded so far: the part of its path already walked
    /// ([`path_price`]), with that share of its volume. Its high and low never pass the whole
    /// candle's.
    pub fn forming_base_candle(&mut self, symbol: &Symbol, wall_ms: i64) -> Result<Candle, MarketError> {
        let index = self.clock.forming_index(wall_ms);
        let fraction = self.forming_fraction(wall_ms);
        self.base_candle_part(symbol, index, 0.0, fraction)
    }

    /// The price the market trades at `wall_ms`: where the forming base candle's path is now.
    pub fn last_price(&mut self, symbol: &Symbol, wall_ms: i64) -> Result<f64, MarketError> {
        Ok(self.forming_base_candle(symbol, wall_ms)?.close)
    }
}

/// A Binance kline interval as the simulator serves it: a fixed span aligned as Binance aligns it
/// (weeks open on Monday 00:00 UTC), or the calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlineInterval {
    Span { name: &'static str, duration_ms: i64, offset_ms: i64 },
    CalendarMonth,
}

/// The finest candle a generated market serves: its 5-minute candles cut along their paths.
const GENERATED_FINEST_MS: i64 = 60_000;

/// 1970-01-05, the first Monday after the epoch.
const FIRST_MONDAY_MS: i64 = 4 * 86_400_000;

impl KlineInterval {
    /// Every interval Binance's klines take (`1m` … `1M`); anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "1M" {
            return Some(Self::CalendarMonth);
        }
        let span = |name: &'static str, duration_ms: i64| Self::Span { name, duration_ms, offset_ms: 0 };
        match text {
            "3d" => Some(span("3d", 3 * 86_400_000)),
            "1w" => Some(Self::Span { name: "1w", duration_ms: 7 * 86_400_000, offset_ms: FIRST_MONDAY_MS }),
            _ => text.parse::<Timeframe>().ok().map(Self::of),
        }
    }

    pub fn of(timeframe: Timeframe) -> Self {
        Self::Span { name: timeframe.as_str(), duration_ms: timeframe.duration_ms(), offset_ms: 0 }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Span { name, .. } => name,
            Self::CalendarMonth => "1M",
        }
    }

    /// Whether candles `finest_ms` long tile this interval.
    fn is_built_of(self, finest_ms: i64) -> bool {
        match self {
            Self::Span { duration_ms, offset_ms, .. } => duration_ms % finest_ms == 0 && offset_ms % finest_ms == 0,
            Self::CalendarMonth => true,
        }
    }

    /// Open time of the interval holding `market_ms`.
    pub fn open_of(self, market_ms: i64) -> i64 {
        match self {
            Self::Span { duration_ms, offset_ms, .. } => {
                (market_ms - offset_ms).div_euclid(duration_ms) * duration_ms + offset_ms
            }
            Self::CalendarMonth => {
                let (year, month) = year_month(market_ms);
                month_start_ms(year, month)
            }
        }
    }

    pub fn next_open(self, open_ms: i64) -> i64 {
        match self {
            Self::Span { duration_ms, .. } => open_ms + duration_ms,
            Self::CalendarMonth => {
                let (year, month) = year_month(open_ms);
                if month == 12 { month_start_ms(year + 1, 1) } else { month_start_ms(year, month + 1) }
            }
        }
    }

    fn previous_open(self, open_ms: i64) -> i64 {
        self.open_of(open_ms - 1)
    }
}

fn year_month(market_ms: i64) -> (i32, u32) {
    use chrono::Datelike;
    let time = chrono::DateTime::from_timestamp_millis(market_ms).unwrap_or_default();
    (time.year(), time.month())
}

fn month_start_ms(year: i32, month: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map_or(0, |time| time.and_utc().timestamp_millis())
}

/// Which rows a klines request asks for (`startTime`, `endTime`, `limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlineWindow {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub limit: u16,
}

/// Where a candle's price is `fraction` (0 to 1) of the way through it. The path runs open → low
/// → high → close for a candle that closes up, open → high → low → close for one that closes
/// down, at a steady speed along the distance travelled: it touches the high and the low once
/// each and never passes them.
pub fn path_price(candle: &Ohlcv, fraction: f64) -> f64 {
    walked_range(candle, fraction).2
}

/// The high, low and price of the part of `candle`'s path walked by `fraction` ([`path_price`]).
fn walked_range(candle: &Ohlcv, fraction: f64) -> (f64, f64, f64) {
    let (_, high, low, close) = path_segment(candle, 0.0, fraction);
    (high, low, close)
}

/// Open, high, low and close of `candle`'s path between `from` and `to` ([`path_price`]).
fn path_segment(candle: &Ohlcv, from: f64, to: f64) -> (f64, f64, f64, f64) {
    let (from, to) = (from.clamp(0.0, 1.0), to.clamp(0.0, 1.0).max(from.clamp(0.0, 1.0)));
    let stops = path_stops(candle);
    let total: f64 = stops.windows(2).map(|leg| (leg[1] - leg[0]).abs()).sum();
    if total <= 0.0 {
        return (candle.open, candle.open, candle.open, candle.open);
    }
    let (open, close) = (price_at(&stops, total * from), price_at(&stops, total * to));
    let (mut high, mut low) = (open.max(close), open.min(close));
    let mut travelled = 0.0;
    for leg in stops.windows(2) {
        travelled += (leg[1] - leg[0]).abs();
        // A turning point walked past inside the segment.
        if travelled > total * from && travelled < total * to {
            high = high.max(leg[1]);
            low = low.min(leg[1]);
        }
    }
    (open, high, low, close)
}

/// The path's turning points: open, the nearer extreme, the other, close.
fn path_stops(candle: &Ohlcv) -> [f64; 4] {
    if candle.close >= candle.open {
        [candle.open, candle.low, candle.high, candle.close]
    } else {
        [candle.open, candle.high, candle.low, candle.close]
    }
}

/// The price `distance` along the path.
fn price_at(stops: &[f64; 4], distance: f64) -> f64 {
    let mut left = distance;
    for leg in stops.windows(2) {
        let length = (leg[1] - leg[0]).abs();
        if left <= length {
            return if length > 0.0 { leg[0] + (leg[1] - leg[0]) * left / length } else { leg[1] };
        }
        left -= length;
    }
    stops[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validate_candles;

    const XRP: &[u8] = include_bytes!("../../../data/replay/XRP_USDT_USDT-5m-futures.json");

    fn symbol(s: &str) -> Symbol {
        Symbol::new(s).unwrap()
    }

    fn walk_params() -> RandomWalkParams {
        RandomWalkParams { start_price: 60_000.0, volatility: 0.003, mean_reversion: 0.001, base_volume: 50.0 }
    }

    fn market(seed: u64, wall_ms: i64) -> PaperMarket {
        let xrp = parse_replay("xrp", XRP).unwrap();
        PaperMarket::new(
            MarketClock::fresh(wall_ms, 1_000),
            seed,
            &[
                (symbol("XRPUSDT"), SeriesSource::Replay { source_name: "xrp".into(), candles: xrp }, 0.0001),
                (symbol("BTCUSDT"), SeriesSource::RandomWalk(walk_params()), 0.1),
            ],
        )
    }

    #[test]
    fn the_recording_parses_whole() {
        let candles = parse_replay("xrp", XRP).unwrap();
        assert_eq!(candles.len(), 1_999);
        assert_eq!(candles[0].open, 1.1893);
    }

    #[test]
    fn bad_rows_are_named() {
        let bad = br#"[[0,1,2,0.5,1.5,10],[300000,1,0.5,0.9,1,10]]"#;
        let error = parse_replay("file.json", bad).unwrap_err();
        assert!(matches!(error, ReplayError::Row { row: 1, .. }), "{error}");
        assert!(error.to_string().contains("file.json: row 1"), "{error}");
        let gap = br#"[[0,1,2,0.5,1.5,10],[900000,1,2,0.5,1.5,10]]"#;
        assert!(parse_replay("gap", gap).unwrap_err().to_string().contains("not 5 minutes after"));
        assert!(matches!(parse_replay("x", b"{}"), Err(ReplayError::Shape { .. })));
    }

    #[test]
    fn ping_pong_is_continuous_at_both_seams() {
        let candles = parse_replay("xrp", XRP).unwrap();
        let len = candles.len() as u64;
        let last_forward = ping_pong(&candles, len - 1);
        let first_backward = ping_pong(&candles, len);
        assert_eq!(last_forward.close, first_backward.open);
        let last_backward = ping_pong(&candles, 2 * len - 1);
        let next_forward = ping_pong(&candles, 2 * len);
        assert_eq!(last_backward.close, next_forward.open);
    }

    #[test]
    fn a_real_time_market_is_at_wall_time_and_resumes_there() {
        let start_ms = 1_700_000_123_456;
        let clock = MarketClock::fresh(start_ms, 300_000);
        assert!(clock.is_real_time());
        assert_eq!(clock.market_now_ms(start_ms), start_ms);
        assert_eq!(clock.market_now_ms(start_ms + 61_000), start_ms + 61_000);
        assert_eq!(clock.open_time_ms(clock.forming_index(start_ms)), start_ms.div_euclid(300_000) * 300_000);
        // Down for an hour: it resumes at wall time with its history in place.
        let later_ms = start_ms + 3_600_000;
        let resumed = clock.resumed(later_ms, 300_000).unwrap();
        assert_eq!((resumed.market_now_ms(later_ms), resumed.origin_market_ms), (later_ms, clock.origin_market_ms));
        // A market that ran accelerated is ahead of the wall and cannot run in real time.
        let fast = MarketClock::fresh(start_ms, 1_000);
        let ahead_ms = fast.resumed(start_ms + 10_000, 300_000).unwrap_err();
        assert_eq!(ahead_ms, fast.market_now_ms(start_ms + 10_000) - (start_ms + 10_000));
        assert!(ahead_ms > 2_000_000);
        // Accelerated, it resumes where it was.
        assert_eq!(fast.resumed(start_ms + 10_000, 1_000), Ok(fast));
    }

    #[test]
    fn the_market_clock_accelerates_and_continues() {
        let start_ms = 1_700_000_123_456;
        let clock = MarketClock::fresh(start_ms, 1_000);
        assert_eq!(clock.forming_index(start_ms), START_INDEX);
        assert_eq!(clock.forming_index(start_ms + 999), START_INDEX);
        assert_eq!(clock.forming_index(start_ms + 1_000), START_INDEX + 1);
        assert_eq!(clock.forming_index(start_ms + 10_500), START_INDEX + 10);
        // The newest closed candle ends at the 5-minute boundary before the start.
        let newest_closed_open = clock.open_time_ms(START_INDEX - 1);
        assert!(newest_closed_open + 300_000 <= start_ms && start_ms - newest_closed_open < 600_000);
        assert_eq!(clock.wall_at_ms(clock.market_now_ms(start_ms + 12_345)), start_ms + 12_345);
        // Changing speed keeps the market where it is.
        let later_ms = start_ms + 5_000;
        let slower = clock.with_candle_interval(later_ms, 2_000);
        assert_eq!(slower.forming_index(later_ms), clock.forming_index(later_ms));
        assert_eq!(slower.forming_index(later_ms + 2_000), clock.forming_index(later_ms) + 1);
    }

    #[test]
    fn closed_candles_are_valid_windows_for_every_supported_timeframe() {
        let start_ms = 1_700_000_000_000;
        for tf in [Timeframe::M5, Timeframe::M15, Timeframe::H1, Timeframe::H4] {
            let mut market = market(7, start_ms);
            for name in ["XRPUSDT", "BTCUSDT"] {
                let candles = market.closed_candles(&symbol(name), tf, 200, start_ms + 3_456).unwrap();
                assert_eq!(candles.len(), 200, "{name} {tf}");
                validate_candles(&candles, tf).unwrap_or_else(|p| panic!("{name} {tf}: {p}"));
                let newest = candles.last().unwrap();
                let market_now = market.clock().market_now_ms(start_ms + 3_456);
                assert!(newest.close_time_ms < market_now, "only closed candles");
                assert!(market_now - newest.close_time_ms <= tf.duration_ms(), "and the newest of them");
            }
        }
    }

    #[test]
    fn aggregation_matches_the_base_candles() {
        let start_ms = 1_700_000_000_000;
        let mut market = market(7, start_ms);
        let fifteen = market.closed_candles(&symbol("XRPUSDT"), Timeframe::M15, 3, start_ms).unwrap();
        let five = market.closed_candles(&symbol("XRPUSDT"), Timeframe::M5, 12, start_ms).unwrap();
        let newest = fifteen.last().unwrap();
        let parts: Vec<&Candle> = five
            .iter()
            .filter(|c| c.open_time_ms >= newest.open_time_ms && c.close_time_ms <= newest.close_time_ms)
            .collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(newest.open, parts[0].open);
        assert_eq!(newest.close, parts[2].close);
        assert_eq!(newest.high, parts.iter().map(|c| c.high).fold(f64::MIN, f64::max));
        assert_eq!(newest.low, parts.iter().map(|c| c.low).fold(f64::MAX, f64::min));
    }

    #[test]
    fn random_walks_are_deterministic_per_seed_and_differ_across_seeds() {
        let start_ms = 1_700_000_000_000;
        let take =
            |seed| market(seed, start_ms).closed_candles(&symbol("BTCUSDT"), Timeframe::M5, 50, start_ms).unwrap();
        assert_eq!(take(1), take(1));
        assert_ne!(take(1), take(2));
    }

    #[test]
    fn random_walk_volatility_is_realistic() {
        let start_ms = 1_700_000_000_000;
        let mut market = market(11, start_ms);
        let candles = market.closed_candles(&symbol("BTCUSDT"), Timeframe::M5, 1_000, start_ms).unwrap();
        let returns: Vec<f64> = candles.windows(2).map(|w| (w[1].close / w[0].close).ln()).collect();
        let mean = returns.iter().sum::<f64>() / returns.len() as f64;
        let deviation = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / returns.len() as f64).sqrt();
        assert!((0.002..0.004).contains(&deviation), "5m log-return deviation {deviation}");
        let prices_ok = candles.iter().all(|c| (30_000.0..120_000.0).contains(&c.close));
        assert!(prices_ok, "mean reversion keeps the walk near its start price");
    }

    #[test]
    fn unsupported_requests_are_errors() {
        let mut market = market(1, 1_700_000_000_000);
        assert_eq!(
            market.closed_candles(&symbol("XRPUSDT"), Timeframe::M1, 10, 0),
            Err(MarketError::UnsupportedInterval("1m"))
        );
        assert!(matches!(
            market.closed_candles(&symbol("DOGEUSDT"), Timeframe::M5, 10, 0),
            Err(MarketError::UnknownSymbol(_))
        ));
    }

    #[test]
    fn the_forming_candle_walks_inside_its_range_and_ends_at_its_close() {
        let up = Ohlcv { open: 10.0, high: 13.0, low: 9.0, close: 12.0, volume: 100.0 };
        let down = Ohlcv { open: 12.0, high: 13.0, low: 9.0, close: 10.0, volume: 100.0 };
        for candle in [up, down] {
            assert_eq!(path_price(&candle, 0.0), candle.open);
            assert_eq!(path_price(&candle, 1.0), candle.close);
            let mut seen_high = candle.open;
            for step in 0..=100 {
                let (high, low, price) = walked_range(&candle, f64::from(step) / 100.0);
                assert!(candle.low <= low && low <= price && price <= high && high <= candle.high, "{step}");
                assert!(high >= seen_high, "the walked high only grows");
                seen_high = high;
            }
            assert_eq!(walked_range(&candle, 1.0), (candle.high, candle.low, candle.close));
        }
        // Up candles dip first; down candles rise first.
        assert!(path_price(&up, 0.1) < up.open);
        assert!(path_price(&down, 0.1) > down.open);
        let flat = Ohlcv { open: 5.0, high: 5.0, low: 5.0, close: 5.0, volume: 0.0 };
        assert_eq!(walked_range(&flat, 0.5), (5.0, 5.0, 5.0));
    }

    #[test]
    fn klines_end_with_the_forming_candle_and_honour_start_and_end_times() {
        let start_ms = 1_700_000_123_456;
        let mut market = market(3, start_ms);
        let xrp = symbol("XRPUSDT");
        let now_ms = start_ms + 450; // 45 % through the forming candle at 1 s a candle
        let m5 = KlineInterval::of(Timeframe::M5);
        let latest = market.klines(&xrp, m5, KlineWindow { start_ms: None, end_ms: None, limit: 10 }, now_ms).unwrap();
        assert_eq!(latest.len(), 10);
        let forming = latest.last().unwrap();
        let market_now = market.clock().market_now_ms(now_ms);
        assert!(forming.open_time_ms <= market_now && market_now <= forming.close_time_ms, "the forming one last");
        let whole = market.base_candle(&xrp, market.clock().forming_index(now_ms)).unwrap();
        assert!(forming.volume < whole.volume && forming.high <= whole.high && forming.low >= whole.low);
        let closed = market.closed_candles(&xrp, Timeframe::M5, 9, now_ms).unwrap();
        assert_eq!(&latest[..9], &closed[..], "the rows before it are the closed candles");
        // startTime: rows opening at or after it, ascending, `limit` of them.
        let from = latest[2].open_time_ms;
        let rows = market.klines(&xrp, m5, KlineWindow { start_ms: Some(from - 1), end_ms: None, limit: 3 }, now_ms);
        assert_eq!(rows.unwrap(), latest[2..5].to_vec());
        let rows = market.klines(&xrp, m5, KlineWindow { start_ms: Some(from + 1), end_ms: None, limit: 3 }, now_ms);
        assert_eq!(rows.unwrap(), latest[3..6].to_vec(), "a start inside a candle begins with the next");
        // endTime alone: the rows up to the one open at it; both: the first rows between them.
        let until = latest[6].open_time_ms + 1;
        let rows = market.klines(&xrp, m5, KlineWindow { start_ms: None, end_ms: Some(until), limit: 2 }, now_ms);
        assert_eq!(rows.unwrap(), latest[5..7].to_vec());
        let rows =
            market.klines(&xrp, m5, KlineWindow { start_ms: Some(from), end_ms: Some(until), limit: 100 }, now_ms);
        assert_eq!(rows.unwrap(), latest[2..7].to_vec());
        // Nothing is served from the future or from before the market began.
        let future = KlineWindow { start_ms: Some(market_now + 3_600_000), end_ms: None, limit: 5 };
        assert!(market.klines(&xrp, m5, future, now_ms).unwrap().is_empty());
        let ancient = KlineWindow { start_ms: Some(0), end_ms: None, limit: 2 };
        let first = market.klines(&xrp, m5, ancient, now_ms).unwrap();
        assert_eq!(first[0].open_time_ms, market.clock().origin_market_ms);
    }

    #[test]
    fn every_binance_interval_is_served_or_refused_by_name() {
        let start_ms = 1_700_000_123_456;
        let mut market = market(3, start_ms);
        let xrp = symbol("XRPUSDT");
        let window = KlineWindow { start_ms: None, end_ms: None, limit: 3 };
        for name in ["1m", "3m"] {
            let interval = KlineInterval::parse(name).unwrap();
            let refused = market.klines(&xrp, interval, window, start_ms);
            assert_eq!(refused, Err(MarketError::UnsupportedInterval(name)), "the recording has 5m candles only");
            assert!(refused.unwrap_err().to_string().contains("recorded 5m candles"));
            let generated = market.klines(&symbol("BTCUSDT"), interval, window, start_ms).unwrap();
            assert_eq!(generated.len(), 3, "a generated market serves {name}");
        }
        assert_eq!(KlineInterval::parse("2m"), None);
        for name in ["5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"] {
            let interval = KlineInterval::parse(name).unwrap();
            let rows = market.klines(&xrp, interval, window, start_ms).unwrap();
            assert!(!rows.is_empty(), "{name}");
            for row in &rows {
                assert_eq!(interval.open_of(row.open_time_ms), row.open_time_ms, "{name} aligned");
                assert_eq!(interval.next_open(row.open_time_ms) - 1, row.close_time_ms, "{name}");
            }
        }
        // Weeks open on Monday 00:00 UTC (2023-11-13 was a Monday); months on the 1st.
        let week = KlineInterval::parse("1w").unwrap();
        assert_eq!(week.open_of(1_700_000_123_456), 1_699_833_600_000);
        let month = KlineInterval::parse("1M").unwrap();
        assert_eq!(month.open_of(1_700_000_123_456), 1_698_796_800_000); // 2023-11-01
        assert_eq!(month.next_open(1_698_796_800_000), 1_701_388_800_000); // 2023-12-01
        assert_eq!(month.next_open(1_701_388_800_000), 1_704_067_200_000); // 2024-01-01
    }

    #[test]
    fn a_generated_markets_minutes_add_up_to_its_five_minute_candles() {
        let start_ms = 1_700_000_123_456;
        let mut market = market(5, start_ms);
        let btc = symbol("BTCUSDT");
        let now_ms = start_ms + 20_500; // 20 candles on, half through the forming one
        let m1 = KlineInterval::parse("1m").unwrap();
        let five = market.closed_candles(&btc, Timeframe::M5, 4, now_ms).unwrap();
        for candle in &five {
            let window =
                KlineWindow { start_ms: Some(candle.open_time_ms), end_ms: Some(candle.close_time_ms), limit: 10 };
            let minutes = market.klines(&btc, m1, window, now_ms).unwrap();
            assert_eq!(minutes.len(), 5);
            assert_eq!((minutes[0].open, minutes[4].close), (candle.open, candle.close));
            assert_eq!(minutes.iter().map(|m| m.high).fold(f64::MIN, f64::max), candle.high);
            assert_eq!(minutes.iter().map(|m| m.low).fold(f64::MAX, f64::min), candle.low);
            let volume: f64 = minutes.iter().map(|m| m.volume).sum();
            assert!((volume - candle.volume).abs() < 1e-9 * candle.volume.max(1.0));
            for minute in &minutes {
                for price in [minute.open, minute.high, minute.low, minute.close] {
                    assert_eq!(round_to_tick(price, 0.1), price, "{price} is on BTC's 0.1 tick");
                }
            }
            for pair in minutes.windows(2) {
                assert_eq!(pair[0].close, pair[1].open, "each minute opens where the one before closed");
                assert_eq!(pair[0].close_time_ms + 1, pair[1].open_time_ms);
            }
        }
        // The newest 1m row is the forming minute, ending at the current price.
        let latest = market.klines(&btc, m1, KlineWindow { start_ms: None, end_ms: None, limit: 2 }, now_ms).unwrap();
        assert_eq!(latest[1].close, market.last_price(&btc, now_ms).unwrap());
    }

    #[test]
    fn ticks_round_cleanly() {
        assert_eq!(round_to_tick(1.18934, 0.0001), 1.1893);
        assert_eq!(round_to_tick(60_000.04, 0.1), 60_000.0);
    }
}
