//! The device protocol client: `POST /device/v1/checkin` and
//! `POST /device/v1/status`, authenticated with the device's token.

use anyhow::{anyhow, Context, Result};
use otafleet_core::protocol::{CheckinRequest, CheckinResponse, StatusAck, StatusReport};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Clone)]
pub struct DeviceClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl DeviceClient {
    pub fn new(base: &str, token: &str, http: reqwest::Client) -> Self {
        DeviceClient { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            return Err(anyhow!("POST {path}: {status}: {text}"));
        }
        res.json().await.with_context(|| format!("decoding the answer of POST {path}"))
    }

    pub async fn checkin(&self, req: &CheckinRequest) -> Result<CheckinResponse> {
        self.post("/device/v1/checkin", req).await
    }

    pub async fn report(&self, report: &StatusReport) -> Result<StatusAck> {
        self.post("/device/v1/status", report).await
    }
}
