//! The MQTT connection loop, written once for every MQTT client of otafleet.
//!
//! rumqttc makes progress only while its event loop is polled, and reconnects
//! on the next poll after an error. This drives it forever: every event goes
//! to the caller's handler (a `ConnAck` marks the connection up, so the
//! backoff starts again from its first delay), and after an error it waits
//! with the shared [`Retry`] policy — 1 s doubling to 30 s, with jitter so a
//! fleet that lost its broker together does not come back together.

use crate::tls::Trust;
use crate::Retry;
use otafleet_core::protocol::MqttUrl;
use rumqttc::{Event, EventLoop, MqttOptions, Packet, TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;

/// The connection options of every MQTT client: a 30 s keep-alive, and for
/// `mqtts://` TLS verified with `trust` (the broker's CA, or the Mozilla
/// roots). Fails if the CA file cannot be read.
pub fn options(url: &MqttUrl, client_id: &str, trust: &Trust) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(client_id, url.host.clone(), url.port);
    opts.set_keep_alive(Duration::from_secs(30));
    if url.tls {
        let config = trust.client_config()?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
    }
    Ok(opts)
}

/// The reconnect policy of every MQTT client.
pub const RECONNECT: Retry = Retry::new(Duration::from_secs(1), Duration::from_secs(30)).jitter(0.3);

/// Polls `events` until the task is dropped, calling `on_event` with each
/// event; `what` names the connection in logs.
pub async fn run(mut events: EventLoop, what: String, mut on_event: impl FnMut(&Event)) {
    let mut attempts = RECONNECT.start();
    let mut connected = false;
    loop {
        match events.poll().await {
            Ok(ev) => {
                if let Event::Incoming(Packet::ConnAck(_)) = &ev {
                    connected = true;
                    attempts.reset();
                    tracing::info!(broker = %what, "MQTT connected");
                }
                on_event(&ev);
            }
            Err(e) => {
                if connected {
                    tracing::warn!(broker = %what, error = %e, "MQTT connection lost; reconnecting");
                } else if attempts.failures() == 0 {
                    // The first failure says why (a refused certificate, say); the retries are quieter.
                    tracing::warn!(broker = %what, error = %e, "MQTT connect failed; retrying");
                } else {
                    tracing::debug!(broker = %what, error = %e, failures = attempts.failures(), "MQTT connect failed; retrying");
                }
                connected = false;
                attempts.wait().await;
            }
        }
    }
}
