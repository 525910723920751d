//! MQTT push and telemetry.
//!
//! **Push**: when the driver notifies devices of new actions, the server
//! publishes a wake-up on each device's command topic
//! (`otafleet/<device-id>/cmd`, [`otafleet_core::protocol::command_topic`]) so
//! an agent connected to the broker checks in at once instead of at its next
//! poll. Push is an optimisation only: the message carries no work (the agent
//! fetches its action over HTTP with its token), so a lost message costs one
//! poll interval, never correctness.
//!
//! **Telemetry**: the same connection subscribes to every device's telemetry
//! topic (`otafleet/<device-id>/telemetry`, a shared subscription so several
//! replicas split the messages). Each message carries the device token and a
//! batch, and is taken exactly as `POST /device/v1/telemetry` takes it
//! (`service::telemetry::ingest_mqtt`); the answer goes to
//! `otafleet/<device-id>/telemetry/ack`. Messages wait in a bounded queue
//! between the connection and the ingest; when it is full they are dropped
//! and counted (`otafleet_telemetry_mqtt_dropped_total`), never blocking the
//! connection that also carries the wake-ups.
//!
//! Enabled by `--mqtt-url mqtt://host:port` (or `mqtts://host:port`, TLS
//! verified against `--mqtt-ca-file` or the Mozilla roots).

use anyhow::Result;
use otafleet_core::protocol::{
    command_topic, device_of_telemetry_topic, parse_mqtt_url, MqttUrl, CHECKIN_COMMAND, TELEMETRY_SUBSCRIPTION,
};
use otafleet_rt::tls::Trust;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Telemetry messages waiting for the ingest at most.
pub const INBOX: usize = 10_000;

/// A telemetry message received: the device its topic names, and the payload.
#[derive(Debug)]
pub struct Incoming {
    pub device: Uuid,
    pub payload: axum::body::Bytes,
}

/// Where the broker is and, for `mqtts://`, what its certificate is checked
/// against.
#[derive(Debug, Clone)]
pub struct Broker {
    pub url: MqttUrl,
    pub trust: Trust,
}

impl Broker {
    /// `ca_file`: the PEM bundle of the broker's CA (`--mqtt-ca-file`), read
    /// here so a bad file stops the server at start.
    pub fn parse(url: &str, ca_file: Option<PathBuf>) -> Result<Broker> {
        let url = parse_mqtt_url(url).map_err(anyhow::Error::msg)?;
        if ca_file.is_some() && !url.tls {
            anyhow::bail!("a CA file is only used with mqtts:// (got {url})");
        }
        let trust = Trust::ca(ca_file);
        if url.tls {
            trust.client_config()?;
        }
        Ok(Broker { url, trust })
    }
}

/// A connection to the broker that publishes device wake-ups and receives
/// telemetry.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    /// The telemetry messages, until the ingest takes them ([`Publisher::take_inbox`]).
    inbox: Arc<Mutex<Option<mpsc::Receiver<Incoming>>>>,
    /// Messages dropped because the inbox was full.
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mqtt::Publisher")
    }
}

impl Publisher {
    /// Connects in the background (reconnecting with backoff after errors, `otafleet_rt::mqtt`).
    /// Must be called inside the tokio runtime.
    /// Subscribes to the telemetry topics on every (re)connection.
    pub fn start(broker: &Broker, client_id: &str) -> Result<Publisher> {
        let mut opts = otafleet_rt::mqtt::options(&broker.url, client_id, &broker.trust)?;
        // Room for a full batch of samples (the HTTP body limit is larger).
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, events) = AsyncClient::new(opts, 256);
        let (tx, rx) = mpsc::channel(INBOX);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (sub, counter) = (client.clone(), dropped.clone());
        tokio::spawn(otafleet_rt::mqtt::run(events, broker.url.to_string(), move |ev| match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                if let Err(e) = sub.try_subscribe(TELEMETRY_SUBSCRIPTION, QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "MQTT telemetry subscribe failed");
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                // Only the canonical topic names a device; others are not ours.
                let Some(device) = device_of_telemetry_topic(&p.topic) else { return };
                if tx.try_send(Incoming { device, payload: p.payload.clone() }).is_err() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            _ => {}
        }));
        Ok(Publisher { client, inbox: Arc::new(Mutex::new(Some(rx))), dropped })
    }

    /// The telemetry messages received, for the one task that ingests them.
    pub fn take_inbox(&self) -> Option<mpsc::Receiver<Incoming>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Publishes `payload` on `topic` (at most once: an answer to a device).
    pub fn answer(&self, topic: String, payload: Vec<u8>) {
        if let Err(e) = self.client.try_publish(topic, QoS::AtMostOnce, false, payload) {
            tracing::debug!(error = %e, "MQTT answer dropped");
        }
    }

    /// Tells these devices to check in now. Returns at once; publishing
    /// happens in the background and failures are logged, not returned
    /// (devices still poll).
    pub fn notify(&self, device_ids: &[Uuid]) {
        if device_ids.is_empty() {
            return;
        }
        let client = self.client.clone();
        let topics: Vec<String> = device_ids.iter().map(command_topic).collect();
        tokio::spawn(async move {
            for t in topics {
                if let Err(e) = client.publish(t, QoS::AtLeastOnce, false, CHECKIN_COMMAND.as_bytes()).await {
                    tracing::warn!(error = %e, "MQTT publish failed");
                    return;
                }
            }
        });
    }
}

/// Takes the telemetry messages until `stop`: each read, authenticated and
/// ingested as `POST /device/v1/telemetry` would be, and answered on the
/// device's ack topic with what the endpoint would have answered.
pub async fn ingest(
    state: crate::AppState,
    mut inbox: mpsc::Receiver<Incoming>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut dropped_seen = 0;
    loop {
        let msg = tokio::select! {
            m = inbox.recv() => match m { Some(m) => m, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let (outcome, answer) = take(&state, &msg).await;
        let count = |outcome: &str, n: u64| {
            state.metrics.telemetry_mqtt.get_or_create(&vec![("outcome".into(), outcome.into())]).inc_by(n);
        };
        count(outcome, 1);
        if let Some(p) = &state.mqtt {
            let dropped = p.dropped.load(std::sync::atomic::Ordering::Relaxed);
            if dropped > dropped_seen {
                count("dropped", dropped - dropped_seen);
                dropped_seen = dropped;
            }
            p.answer(otafleet_core::protocol::telemetry_ack_topic(&msg.device), answer);
        }
    }
}

/// One message: its outcome (for the metric) and the answer's JSON.
async fn take(state: &crate::AppState, msg: &Incoming) -> (&'static str, Vec<u8>) {
    use crate::http::error::{ApiError, ErrorBody};
    use otafleet_core::protocol::{MqttTelemetry, TelemetryAccepted};
    let refusal = |outcome, e: ApiError| {
        (outcome, serde_json::to_vec(&ErrorBody::new(e.code, e.message, e.field)).unwrap_or_default())
    };
    let m: MqttTelemetry = match crate::http::extract::json_object(&msg.payload) {
        Ok(m) => m,
        Err(e) => return refusal("refused", e),
    };
    match state.caches.device_id(&state.store, &m.token).await {
        Ok(Some(d)) if d == msg.device => {}
        Ok(Some(_)) => {
            return refusal("unauthorized", ApiError::unauthorized("the token is not the device's this topic names"))
        }
        Ok(None) => return refusal("unauthorized", ApiError::unauthorized("unknown device token")),
        Err(e) => return refusal("refused", e.into()),
    }
    match crate::service::telemetry::ingest(state, msg.device, &m.samples).await {
        Ok(accepted) => ("accepted", serde_json::to_vec(&TelemetryAccepted { accepted }).unwrap_or_default()),
        Err(e) => refusal("refused", crate::http::device_api::telemetry_error(state, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        let b = Broker::parse("mqtt://127.0.0.1:1883", None).unwrap();
        assert_eq!(b.url, MqttUrl { host: "127.0.0.1".into(), port: 1883, tls: false });
        assert!(Broker::parse("mqtts://broker", None).unwrap().url.tls);
        assert!(Broker::parse("ws://x", None).unwrap_err().to_string().contains("unsupported"));
        let e = Broker::parse("mqtt://x", Some("/ca.pem".into())).unwrap_err().to_string();
        assert!(e.contains("only used with mqtts://"), "{e}");
        let e = format!("{:#}", Broker::parse("mqtts://x", Some("/nonexistent/ca.pem".into())).unwrap_err());
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
