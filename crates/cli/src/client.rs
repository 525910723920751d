//! A small client for the otafleet HTTP API, used by every client-side
//! command. Requests and answers are the types of `otafleet-api`; server
//! errors come back as its [`ErrorBody`] and are turned into one readable line.

use anyhow::{anyhow, Context, Result};
use otafleet_api::{ErrorBody, ErrorDetail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// For the event stream: no overall timeout (a stream lasts), but a read
    /// timeout well past the server's 15 s keep-alive, so a dead connection
    /// is noticed.
    streaming: reqwest::Client,
}

/// An error answer from the server, kept so callers can tell 404 from 409.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    /// The one-line description: method, path, status, the server's message.
    pub message: String,
    /// The server's error body, when it sent one.
    pub error: Option<ErrorDetail>,
}

/// A decoded answer, with the server's JSON as it was sent (what `--output json` prints).
pub struct Answer<T> {
    pub json: Value,
    pub body: T,
}

/// Turns a status and body into the typed answer or an [`ApiFailure`].
fn decode<T: DeserializeOwned>(method: &Method, path: &str, status: StatusCode, bytes: &[u8]) -> Result<Answer<T>> {
    if !status.is_success() {
        let error = serde_json::from_slice::<ErrorBody>(bytes).ok().map(|b| b.error);
        let msg =
            error.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
        let field =
            error.as_ref().and_then(|e| e.field.as_deref()).map(|f| format!(" (field: {f})")).unwrap_or_default();
        let hint = match status {
            StatusCode::UNAUTHORIZED => " — pass a token with --token or OTAFLEET_TOKEN",
            _ => "",
        };
        let message = format!("{method} {path}: {status}: {msg}{field}{hint}");
        return Err(ApiFailure { status, message, error }.into());
    }
    let json: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).with_context(|| format!("unexpected answer from {method} {path}"))?
    };
    let body = T::deserialize(&json).with_context(|| format!("unexpected answer from {method} {path}"))?;
    Ok(Answer { json, body })
}

impl Api {
    /// `ca_file`: the CAs to trust for an `https://` server (`--ca-file`).
    pub fn new(base: &str, token: Option<String>, ca_file: Option<&std::path::Path>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("--server must be an http:// or https:// URL, got '{base}'"));
        }
        let tls = otafleet_rt::tls::Trust::ca(ca_file.map(Into::into)).client_config().context("--ca-file")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let streaming = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(45))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { base, token, http, streaming })
    }

    /// Opens `GET path` as a Server-Sent Events stream, resuming after
    /// `last_event_id`. An error answer is decoded like any other.
    pub async fn open_stream<Q: Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response> {
        let mut req = self.streaming.get(format!("{}{}", self.base, path)).query(query);
        req = req.header("accept", "text/event-stream");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let res = req.send().await.with_context(|| format!("cannot reach the otafleet server at {}", self.base))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let bytes = res.bytes().await.context("reading the server's answer")?;
        match decode::<Value>(&Method::GET, path, status, &bytes) {
            Err(e) => Err(e),
            Ok(_) => Err(anyhow!("GET {path}: {status}")),
        }
    }

    /// One request: an optional query (any `Serialize`, e.g. an `otafleet-api`
    /// query struct or `&[(name, value)]`) and an optional JSON body.
    pub async fn exchange<T, Q, B>(
        &self,
        method: Method,
        path: &str,
        query: Option<&Q>,
        body: Option<&B>,
    ) -> Result<Answer<T>>
    where
        T: DeserializeOwned,
        Q: Serialize + ?Sized,
        B: Serialize + ?Sized,
    {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(q) = query {
            req = req.query(q);
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
        decode(&method, path, status, &bytes)
    }

    /// GET without a query.
    pub async fn fetch<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>> {
        self.exchange::<T, (), ()>(Method::GET, path, None, None).await
    }

    /// A request with a query and no body (GET of a list, the tracker's POSTs).
    pub async fn query<T: DeserializeOwned, Q: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &Q,
    ) -> Result<Answer<T>> {
        self.exchange::<T, Q, ()>(method, path, Some(query), None).await
    }

    /// A request with a JSON body (one of the `otafleet-api` request types).
    pub async fn send<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<Answer<T>> {
        self.exchange::<T, (), B>(method, path, None, Some(body)).await
    }

    /// A request with neither query nor body (rollout control verbs, DELETE).
    pub async fn empty<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<Answer<T>> {
        self.exchange::<T, (), ()>(method, path, None, None).await
    }

    /// Untyped form of [`Api::exchange`]: the answer only.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T> {
        let query = (!query.is_empty()).then_some(query);
        Ok(self.exchange(method, path, query, body).await?.body)
    }

    /// PUTs a file as the request body, streamed from disk.
    pub async fn put_file<T: DeserializeOwned>(&self, path: &str, file: &std::path::Path) -> Result<Answer<T>> {
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
        let bytes = res.bytes().await.context("reading the server's answer")?;
        decode(&Method::PUT, path, status, &bytes)
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
