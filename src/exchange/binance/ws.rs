//! What every Binance WebSocket connection of the client shares: the connect pace (one IP for
//! every stream: `stream_connects_per_second` over first connections, reconnects and rotations),
//! the handshake bound and the ping interval.

use std::time::Duration;

use crate::exchange::ExchangeError;
use crate::exchange::binance::Inner;

/// How often the client pings a connection (each pong is proof it is alive), at most.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Longest wait for the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Waits for this connection's slot in the client's connect pace.
async fn wait_for_connect_slot(inner: &Inner) {
    let spacing_ms = (1_000 / i64::from(inner.settings.stream_connects_per_second.max(1))).max(1);
    let wait_ms = {
        let now_ms = inner.local.now_ms();
        let mut next_slot_ms = inner.stream_connect_slot_ms.lock();
        let slot_ms = (*next_slot_ms).max(now_ms);
        *next_slot_ms = slot_ms + spacing_ms;
        slot_ms - now_ms
    };
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
}

/// A WebSocket on `url`, in its turn of the connect pace; `what` names the stream in errors.
pub(super) async fn connect(inner: &Inner, url: &str, what: &str) -> Result<Socket, ExchangeError> {
    wait_for_connect_slot(inner).await;
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(error)) => Err(ExchangeError::Retryable { detail: format!("{what}: {error}") }),
        Err(_) => Err(ExchangeError::Retryable {
            detail: format!("{what}: no handshake within {} s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// The ping interval for a silence bound: often enough that a live connection answers at least
/// twice within it.
pub(super) fn ping_interval(silence_max: Duration) -> Duration {
    PING_INTERVAL.min(silence_max / 3).max(Duration::from_millis(10))
}
