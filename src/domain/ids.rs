//! Identifier newtypes. Each constructor checks the format once, so the rest of the code can rely
//! on it (a client order id always fits the exchange's charset and length, for example).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::excerpt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("user id {:?} must be 1 to 12 characters of a-z, 0-9, '_' or '-'", excerpt(.0))]
    User(String),
    #[error("symbol {:?} must be 2 to 20 characters of A-Z or 0-9", excerpt(.0))]
    Symbol(String),
    #[error(
        "client order id {:?} must be 1 to 36 characters of A-Z, a-z, 0-9, '.', ':', '/', '_' or '-'",
        excerpt(.0)
    )]
    ClientOrder(String),
}

/// A user (one exchange account, one trader actor). Short and plain so that it fits inside a
/// client order id: `bw-<user>-<sequence>` must stay within the exchange's 36 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

pub const USER_ID_LEN_MAX: usize = 12;

impl UserId {
    pub fn new(value: &str) -> Result<Self, IdError> {
        let valid = (1..=USER_ID_LEN_MAX).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid { Ok(Self(value.to_owned())) } else { Err(IdError::User(value.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An exchange symbol such as `XRPUSDT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(String);

impl Symbol {
    pub fn new(value: &str) -> Result<Self, IdError> {
        let valid =
            (2..=20).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if valid { Ok(Self(value.to_owned())) } else { Err(IdError::Symbol(value.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id bulwark gives an order before it is sent, derived deterministically from the user and
/// the intent's sequence number. The same intent always has the same id, so a lost response is
/// resolved by querying this id and a resubmission can never create a second order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientOrderId(String);

impl ClientOrderId {
    /// Every order bulwark places carries this prefix; start-up reconciliation cancels open
    /// orders with the prefix that the database does not know (orphans).
    pub const PREFIX: &'static str = "bw-";
    pub const LEN_MAX: usize = 36;

    pub fn for_intent(user: &UserId, intent_seq: u64) -> Self {
        let id = format!("{}{}-{}", Self::PREFIX, user.as_str(), intent_seq);
        debug_assert!(id.len() <= Self::LEN_MAX, "Invariant: user ids are short enough");
        Self(id)
    }

    /// Accepts any id in the exchange's format, including ids bulwark did not make.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let valid = (1..=Self::LEN_MAX).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'/' | b'_' | b'-'));
        if valid { Ok(Self(value.to_owned())) } else { Err(IdError::ClientOrder(value.to_owned())) }
    }

    pub fn is_bulwark(&self) -> bool {
        self.0.starts_with(Self::PREFIX)
    }

    /// The user a bulwark id was made for (`bw-<user>-<intent seq>`); `None` for any other id.
    pub fn bulwark_user(&self) -> Option<UserId> {
        let (user, intent_seq) = self.0.strip_prefix(Self::PREFIX)?.rsplit_once('-')?;
        let is_seq = !intent_seq.is_empty() && intent_seq.bytes().all(|b| b.is_ascii_digit());
        if is_seq { UserId::new(user).ok() } else { None }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($name:ident, $ctor:path) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                $ctor(&value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

string_newtype_impls!(UserId, UserId::new);
string_newtype_impls!(Symbol, Symbol::new);
string_newtype_impls!(ClientOrderId, ClientOrderId::parse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_short_and_plain() {
        assert!(UserId::new("u1").is_ok());
        assert!(UserId::new("alice_2-b").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("Alice").is_err());
        assert!(UserId::new("abcdefghijklm").is_err());
        assert!(UserId::new("a b").is_err());
        let refused = UserId::new(&"x".repeat(20_480)).unwrap_err().to_string();
        assert!(refused.len() < 200 && refused.contains("…\" (20480 bytes) must be"), "{refused}");
    }

    #[test]
    fn a_bulwark_client_order_id_names_its_user() {
        let user = UserId::new("alice_2-b").unwrap();
        assert_eq!(ClientOrderId::for_intent(&user, 17).bulwark_user(), Some(user));
        for other in ["web_123", "bw-u1", "bw-u1-x7", "bw--3", "x-bw-u1-3"] {
            assert_eq!(ClientOrderId::parse(other).unwrap().bulwark_user(), None, "{other}");
        }
    }

    #[test]
    fn symbols_are_upper_alphanumeric() {
        assert!(Symbol::new("XRPUSDT").is_ok());
        assert!(Symbol::new("1000PEPEUSDT").is_ok());
        assert!(Symbol::new("xrpusdt").is_err());
        assert!(Symbol::new("XRP/USDT").is_err());
    }

    #[test]
    fn client_order_id_fits_the_exchange_rules_for_the_longest_user_and_sequence() {
        let user = UserId::new("abcdefghijkl").unwrap();
        let id = ClientOrderId::for_intent(&user, u64::MAX);
        assert!(id.as_str().len() <= ClientOrderId::LEN_MAX, "{id}");
        assert!(ClientOrderId::parse(id.as_str()).is_ok());
        assert!(id.is_bulwark());
    }

    #[test]
    fn client_order_id_is_deterministic() {
        let user = UserId::new("u7").unwrap();
        assert_eq!(ClientOrderId::for_intent(&user, 42).as_str(), "bw-u7-42");
        assert_eq!(ClientOrderId::for_intent(&user, 42), ClientOrderId::for_intent(&user, 42));
    }

    #[test]
    fn foreign_client_order_ids_parse_but_are_not_ours() {
        let id = ClientOrderId::parse("x-xcKtGhcu04075babaeb34c55af79ba").unwrap();
        assert!(!id.is_bulwark());
        assert!(ClientOrderId::parse("has space").is_err());
        assert!(ClientOrderId::parse(&"a".repeat(37)).is_err());
    }
}
