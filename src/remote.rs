//! The command line talking to a running server over its HTTP API (`bulwark status`, `why`,
//! `report`): where the server is (`--url`, else the URL the server wrote to
//! `<data_dir>/bulwark.http`, else `[http] listen`), a bounded GET, and the token when the config
//! names one. A server that cannot be reached is not an error: the caller falls back to the
//! database and the logs. Before its first request it asks the server which database it serves
//! (`/health`'s `instance`, `crate::instance`): an answer from another bulwark (a port it holds, a
//! stale URL) is [`RemoteError::Foreign`], and the caller reads its own database instead, saying why.

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
    /// A server answers there, but not the one of this database: its answers are not trusted.
    #[error("the server at {url} is not this database's: {reason}")]
    Foreign { url: String, reason: String },
}

/// A server the command line may ask.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    token: Option<crate::secret::Secret>,
    /// The database the command was pointed at: only its server's answers are trusted.
    database: std::path::PathBuf,
    /// The instance recorded beside that database (`bulwark.instance`), if one is.
    recorded: Option<crate::instance::InstanceIdentity>,
    /// Whether the server at `url` proved to be that database's (asked once).
    verified: std::sync::Arc<std::sync::OnceLock<Result<(), String>>>,
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
        Some(Self {
            url,
            token,
            database: config.database_path(),
            recorded: crate::instance::read(&config.server.data_dir),
            verified: std::sync::Arc::default(),
        })
    }

    /// `GET <url><path>` as JSON, once the server proved to serve this database.
    pub fn get(&self, path: &str) -> Result<Value, RemoteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Unreachable { url: self.url.clone(), detail: e.to_string() })?;
        runtime.block_on(async {
            self.verify_identity().await?;
            self.get_async(path).await
        })
    }

    /// Asks the server which database it serves (once), and refuses it if that is not ours.
    async fn verify_identity(&self) -> Result<(), RemoteError> {
        if let Some(verdict) = self.verified.get() {
            return verdict.clone().map_err(|reason| RemoteError::Foreign { url: self.url.clone(), reason });
        }
        // `/health` answers 503 while the tree is unhealthy: its identity is in the body either way.
        let health = match self.get_async("/health").await {
            Ok(health) => health,
            Err(RemoteError::Refused { status: 503, .. }) => self.get_unchecked("/health").await?,
            Err(error) => return Err(error),
        };
        let answered: Option<crate::instance::InstanceIdentity> =
            serde_json::from_value(health["instance"].clone()).ok();
        let verdict = crate::instance::judge(answered.as_ref(), &self.database, self.recorded.as_ref());
        let _ = self.verified.set(verdict.clone());
        verdict.map_err(|reason| RemoteError::Foreign { url: self.url.clone(), reason })
    }

    /// `GET` whatever the status code (for `/health`'s 503, which still names the instance).
    async fn get_unchecked(&self, path: &str) -> Result<Value, RemoteError> {
        let unreachable = |detail: String| RemoteError::Unreachable { url: self.url.clone(), detail };
        let client =
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(|e| unreachable(e.to_string()))?;
        let mut request = client.get(format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| unreachable(e.without_url().to_string()))?;
        response.json().await.map_err(|e| unreachable(format!("not a JSON answer: {}", e.without_url())))
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
