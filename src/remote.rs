//! The command line talking to a running server over its HTTP API (`bulwark status`, `why`,
//! `report`): where the server is (`--url`, else the URL the server wrote to
//! `<data_dir>/bulwark.http`, else `[http] listen`), a bounded GET, and the token when the config
//! names one. A server that cannot be reached is not an error: the caller falls back to the
//! database and the logs.

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// Longest wait for a running server's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an answer did not come.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No server listens there (the caller reads the database instead).
    #[error("no server answers at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The server answered with an error: that is the answer.
    #[error("{url} answered {status}: {message}")]
    Refused { url: String, status: u16, message: String },
}

/// A server the command line may ask.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    token: Option<crate::secret::Secret>,
}

impl Remote {
    /// The server to ask: `url` if given, else the one recorded for this config. `None` when the
    /// config has the HTTP API off and no URL was given.
    pub fn for_config(config: &Config, url: Option<&str>) -> Option<Self> {
        let url = match url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let recorded = std::fs::read_to_string(config.server.data_dir.join("bulwark.http"))
                    .ok()
                    .map(|text| text.trim().to_owned())
                    .filter(|text| !text.is_empty());
                match (recorded, &config.http) {
                    (Some(url), _) => url,
                    (None, Some(http)) if http.listen.port() != 0 => format!("http://{}", http.listen),
                    _ => return None,
                }
            }
        };
        // Only reads are asked for: the token goes along only when reads need it.
        let token = config
            .http
            .as_ref()
            .filter(|http| http.protect_reads)
            .and_then(|http| http.token_env.as_deref())
            .and_then(|name| crate::secret::from_env(name).ok());
        Some(Self { url, token })
    }

    /// `GET <url><path>` as JSON.
    pub fn get(&self, path: &str) -> Result<Value, RemoteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Unreachable { url: self.url.clone(), detail: e.to_string() })?;
        runtime.block_on(self.get_async(path))
    }

    async fn get_async(&self, path: &str) -> Result<Value, RemoteError> {
        let url = format!("{}{path}", self.url);
        let unreachable = |detail: String| RemoteError::Unreachable { url: self.url.clone(), detail };
        let client =
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(|e| unreachable(e.to_string()))?;
        let mut request = client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body: Value =
            response.json().await.map_err(|e| unreachable(format!("not a JSON answer: {}", e.without_url())))?;
        if !(200..300).contains(&status) {
            let message = body["error"].as_str().map_or_else(|| body.to_string(), str::to_owned);
            return Err(RemoteError::Refused { url: self.url.clone(), status, message });
        }
        Ok(body)
    }
}
