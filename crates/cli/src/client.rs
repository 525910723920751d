//! A small client for the otafleet HTTP API, used by every client-side
//! command. Server errors come back as `{"error": {"message", "field"}}` and
//! are turned into one readable line.

use anyhow::{anyhow, Context, Result};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An error answer from the server, kept so callers can tell 404 from 409.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("--server must be an http:// URL, got '{base}'"));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { base, token, http })
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.with_context(|| {
            format!(
                "cannot reach the otafleet server at {} (is `otafleet serve` running? set --server/OTAFLEET_URL)",
                self.base
            )
        })?;
        let status = res.status();
        let bytes = res.bytes().await.context("reading the server's answer")?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let field = v["error"]["field"].as_str().map(|f| format!(" (field: {f})")).unwrap_or_default();
            let hint = match status {
                StatusCode::UNAUTHORIZED => " — pass a token with --token or OTAFLEET_TOKEN",
                _ => "",
            };
            return Err(ApiFailure { status, message: format!("{method} {path}: {status}: {msg}{field}{hint}") }.into());
        }
        if bytes.is_empty() {
            return serde_json::from_value(Value::Null).context("empty answer");
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {method} {path}"))
    }

    /// PUTs a file as the request body, streamed from disk.
    pub async fn put_file(&self, path: &str, file: &std::path::Path) -> Result<Value> {
        let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().await.map(|m| m.len()).ok();
        let mut req = self
            .http
            .put(format!("{}{}", self.base, path))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(std::time::Duration::from_secs(24 * 3600))
            .body(reqwest::Body::from(f));
        if let Some(n) = len {
            req = req.header(reqwest::header::CONTENT_LENGTH, n);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.with_context(|| format!("uploading {} to {}", file.display(), self.base))?;
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().unwrap_or("upload failed").to_string();
            return Err(ApiFailure { status, message: format!("PUT {path}: {status}: {msg}") }.into());
        }
        Ok(v)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T> {
        self.call(Method::POST, path, query, body).await
    }
}
