//! The paper exchange's own durable state, in its own SQLite file (`paper_exchange.db` in the data
//! directory). It stands for the venue's books: bulwark's database and the venue's must be able to
//! disagree (that is what reconciliation is for), so they are never the same file.

use std::path::Path;
use std::str::FromStr;

use rusqlite::{Connection, params};
use rusqlite_migration::{M, Migrations};
use rust_decimal::Decimal;

use crate::domain::{Symbol, UserId};
use crate::exchange::paper::market::MarketClock;
use crate::exchange::paper::venue::{PaperOrder, PaperPosition, VenueChange, VenueSnapshot};
use crate::persistence::{StoreError, configure_connection};

const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE paper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE paper_accounts (user_id TEXT PRIMARY KEY, wallet_balance TEXT NOT NULL);
     CREATE TABLE paper_positions (
         user_id TEXT NOT NULL, symbol TEXT NOT NULL, quantity TEXT NOT NULL, entry_price TEXT NOT NULL,
         PRIMARY KEY (user_id, symbol));
     CREATE TABLE paper_orders (
         user_id TEXT NOT NULL, client_order_id TEXT NOT NULL, sequence INTEGER NOT NULL, body TEXT NOT NULL,
         PRIMARY KEY (user_id, client_order_id));
     CREATE TABLE paper_fills (
         user_id TEXT NOT NULL, trade_id TEXT NOT NULL, time_ms INTEGER NOT NULL, body TEXT NOT NULL,
         PRIMARY KEY (user_id, trade_id));",
    ),
    // A client order id is unique only among open orders: orders are keyed by arrival sequence.
    M::up(
        "CREATE TABLE paper_orders_by_sequence (
             sequence INTEGER PRIMARY KEY, user_id TEXT NOT NULL, client_order_id TEXT NOT NULL, body TEXT NOT NULL);
         INSERT INTO paper_orders_by_sequence (sequence, user_id, client_order_id, body)
             SELECT sequence, user_id, client_order_id, body FROM paper_orders;
         DROP TABLE paper_orders;
         ALTER TABLE paper_orders_by_sequence RENAME TO paper_orders;",
    ),
    // An account's leverage and margin type per symbol (the simulator's POST leverage / marginType).
    M::up(
        "CREATE TABLE paper_symbol_settings (
             user_id TEXT NOT NULL, symbol TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (user_id, symbol));",
    ),
];

/// Reads and writes the paper venue's state.
#[derive(Debug)]
pub struct PaperJournal {
    connection: Connection,
}

impl PaperJournal {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Self::with_connection(connection)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut connection: Connection) -> Result<Self, StoreError> {
        configure_connection(&connection)?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut connection)
            .map_err(|error| StoreError::Migration(error.to_string()))?;
        Ok(Self { connection })
    }

    pub fn load(&self) -> Result<VenueSnapshot, StoreError> {
        let mut snapshot = VenueSnapshot::default();
        let meta = |key: &str| -> Result<Option<String>, StoreError> {
            let mut statement = self.connection.prepare_cached("SELECT value FROM paper_meta WHERE key = ?1")?;
            let mut rows = statement.query(params![key])?;
            Ok(match rows.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            })
        };
        if let Some(clock) = meta("clock")? {
            snapshot.clock = Some(serde_json::from_str::<MarketClock>(&clock).map_err(|e| corrupt("paper_meta", e))?);
        }
        snapshot.next_sequence = meta("next_sequence")?.and_then(|v| v.parse().ok()).unwrap_or(1);
        snapshot.next_trade_id = meta("next_trade_id")?.and_then(|v| v.parse().ok()).unwrap_or(1);

        let mut statement = self.connection.prepare("SELECT user_id, wallet_balance FROM paper_accounts")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
        for row in rows {
            let (user, wallet) = row?;
            snapshot.wallets.insert(parse_user(&user, "paper_accounts")?, parse_decimal(&wallet, "paper_accounts")?);
        }

        let mut statement =
            self.connection.prepare("SELECT user_id, symbol, quantity, entry_price FROM paper_positions")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, String>(3)?))
        })?;
        for row in rows {
            let (user, symbol, quantity, entry_price) = row?;
            let symbol = Symbol::new(&symbol).map_err(|e| corrupt("paper_positions", e))?;
            let position = PaperPosition {
                quantity: parse_decimal(&quantity, "paper_positions")?,
                entry_price: parse_decimal(&entry_price, "paper_positions")?,
            };
            snapshot.positions.push((parse_user(&user, "paper_positions")?, symbol, position));
        }

        let mut statement = self.connection.prepare("SELECT user_id, body FROM paper_orders ORDER BY sequence")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
        for row in rows {
            let (user, body) = row?;
            let order: PaperOrder = serde_json::from_str(&body).map_err(|e| corrupt("paper_orders", e))?;
            snapshot.orders.push((parse_user(&user, "paper_orders")?, order));
        }

        let mut statement = self
            .connection
            .prepare("SELECT user_id, body FROM paper_fills ORDER BY time_ms, CAST(trade_id AS INTEGER)")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
        for row in rows {
            let (user, body) = row?;
            snapshot.fills.push((
                parse_user(&user, "paper_fills")?,
                serde_json::from_str(&body).map_err(|e| corrupt("paper_fills", e))?,
            ));
        }

        let mut statement = self.connection.prepare("SELECT user_id, symbol, body FROM paper_symbol_settings")?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)))?;
        for row in rows {
            let (user, symbol, body) = row?;
            snapshot.symbol_settings.push((
                parse_user(&user, "paper_symbol_settings")?,
                Symbol::new(&symbol).map_err(|e| corrupt("paper_symbol_settings", e))?,
                serde_json::from_str(&body).map_err(|e| corrupt("paper_symbol_settings", e))?,
            ));
        }
        Ok(snapshot)
    }

    /// Applies one operation's changes atomically.
    pub fn apply(&mut self, changes: &[VenueChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        for change in changes {
            match change {
                VenueChange::Account { user, wallet_balance } => {
                    transaction.execute(
                        "INSERT INTO paper_accounts (user_id, wallet_balance) VALUES (?1, ?2)
                         ON CONFLICT (user_id) DO UPDATE SET wallet_balance = excluded.wallet_balance",
                        params![user.as_str(), wallet_balance.to_string()],
                    )?;
                }
                VenueChange::Position { user, symbol, position } => {
                    transaction.execute(
                        "INSERT INTO paper_positions (user_id, symbol, quantity, entry_price) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (user_id, symbol) DO UPDATE SET quantity = excluded.quantity, entry_price = excluded.entry_price",
                        params![user.as_str(), symbol.as_str(), position.quantity.to_string(), position.entry_price.to_string()],
                    )?;
                }
                VenueChange::Order { user, order } => {
                    let body = serde_json::to_string(order).map_err(|e| corrupt("paper_orders", e))?;
                    transaction.execute(
                        "INSERT INTO paper_orders (user_id, client_order_id, sequence, body) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (sequence) DO UPDATE SET body = excluded.body",
                        params![user.as_str(), order.order.client_order_id.as_str(), order.sequence as i64, body],
                    )?;
                }
                VenueChange::OrderPruned { user, sequence } => {
                    transaction.execute(
                        "DELETE FROM paper_orders WHERE user_id = ?1 AND sequence = ?2",
                        params![user.as_str(), *sequence as i64],
                    )?;
                }
                VenueChange::Fill { user, fill } => {
                    let body = serde_json::to_string(fill).map_err(|e| corrupt("paper_fills", e))?;
                    transaction.execute(
                        "INSERT OR IGNORE INTO paper_fills (user_id, trade_id, time_ms, body) VALUES (?1, ?2, ?3, ?4)",
                        params![user.as_str(), fill.trade_id, fill.time_ms, body],
                    )?;
                }
                VenueChange::FillPruned { user, trade_id } => {
                    transaction.execute(
                        "DELETE FROM paper_fills WHERE user_id = ?1 AND trade_id = ?2",
                        params![user.as_str(), trade_id],
                    )?;
                }
                VenueChange::SymbolSettings { user, symbol, settings } => {
                    transaction.execute(
                        "INSERT INTO paper_symbol_settings (user_id, symbol, body) VALUES (?1, ?2, ?3)
                         ON CONFLICT (user_id, symbol) DO UPDATE SET body = excluded.body",
                        params![
                            user.as_str(),
                            symbol.as_str(),
                            serde_json::to_string(settings).map_err(|e| corrupt("paper_symbol_settings", e))?
                        ],
                    )?;
                }
                VenueChange::Counters { next_sequence, next_trade_id } => {
                    set_meta(&transaction, "next_sequence", &next_sequence.to_string())?;
                    set_meta(&transaction, "next_trade_id", &next_trade_id.to_string())?;
                }
                VenueChange::Clock(clock) => {
                    set_meta(
                        &transaction,
                        "clock",
                        &serde_json::to_string(clock).map_err(|e| corrupt("paper_meta", e))?,
                    )?;
                }
            }
        }
        transaction.commit()?;
        Ok(())
    }
}

fn set_meta(transaction: &rusqlite::Transaction<'_>, key: &str, value: &str) -> Result<(), StoreError> {
    transaction.execute(
        "INSERT INTO paper_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn corrupt(table: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table: table.to_owned(), detail: error.to_string() }
}

fn parse_user(value: &str, table: &str) -> Result<UserId, StoreError> {
    UserId::new(value).map_err(|e| corrupt(table, e))
}

fn parse_decimal(value: &str, table: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(value).map_err(|e| corrupt(table, format!("{value:?}: {e}")))
}
