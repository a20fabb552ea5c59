//! Binance request signing: `signature = hex(HMAC-SHA256(secret, totalParams))`, where
//! `totalParams` is the query string followed by the body (bulwark sends everything in the query
//! string, as Binance's own SDK does), and `signature` is appended as the last parameter.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The hex HMAC-SHA256 of `payload` under `secret`.
pub fn signature(secret: &Secret, payload: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("Invariant: HMAC accepts keys of any length");
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `given` (hex, any case) is the signature of `payload` under `secret`, compared in
/// constant time.
pub fn verify(secret: &Secret, payload: &str, given: &str) -> bool {
    let Ok(given) = hex::decode(given) else { return false };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("Invariant: HMAC accepts keys of any length");
    mac.update(payload.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Appends `signature=<hex>` to an encoded query string.
pub fn signed_query(secret: &Secret, query: &str) -> String {
    let signature = signature(secret, query);
    if query.is_empty() { format!("signature={signature}") } else { format!("{query}&signature={signature}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official USDⓈ-M futures vector (general-info page, "SIGNED Endpoint Examples for
    /// POST /fapi/v1/order - HMAC Keys", examples 1 and 2), with the payload exactly as in the
    /// documented `echo` line.
    #[test]
    fn the_official_futures_vector() {
        let secret = Secret::new("2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9".into());
        let payload = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943";
        assert_eq!(signature(&secret, payload), "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9");
    }

    /// The official spot vector (rest-api.md, "SIGNED Endpoint Examples for POST /api/v3/order").
    #[test]
    fn the_official_spot_vector() {
        let secret = Secret::new("NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j".into());
        let payload = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(signature(&secret, payload), "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71");
    }

    #[test]
    fn verification_accepts_any_case_and_rejects_tampering() {
        let secret = Secret::new("s3cret".into());
        let sig = signature(&secret, "a=1&b=2");
        assert!(verify(&secret, "a=1&b=2", &sig));
        assert!(verify(&secret, "a=1&b=2", &sig.to_uppercase()));
        assert!(!verify(&secret, "a=1&b=3", &sig));
        assert!(!verify(&Secret::new("other".into()), "a=1&b=2", &sig));
        assert!(!verify(&secret, "a=1&b=2", "not hex"));
    }

    #[test]
    fn the_signature_goes_last() {
        let secret = Secret::new("k".into());
        let query = signed_query(&secret, "symbol=XRPUSDT&timestamp=1");
        assert!(query.starts_with("symbol=XRPUSDT&timestamp=1&signature="));
        assert_eq!(query.len(), "symbol=XRPUSDT&timestamp=1&signature=".len() + 64);
    }
}
