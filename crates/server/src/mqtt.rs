//! MQTT push: when the driver notifies devices of new actions, the server
//! publishes a wake-up on each device's command topic
//! (`otafleet/<device-id>/cmd`, [`otafleet_core::protocol::command_topic`]) so
//! an agent connected to the broker checks in at once instead of at its next
//! poll. Push is an optimisation only: the message carries no work (the agent
//! fetches its action over HTTP with its token), so a lost message costs one
//! poll interval, never correctness. Enabled by `--mqtt-url mqtt://host:port`
//! (or `mqtts://host:port`, TLS verified against `--mqtt-ca-file` or the
//! Mozilla roots).

use anyhow::Result;
use otafleet_core::protocol::{command_topic, parse_mqtt_url, MqttUrl, CHECKIN_COMMAND};
use otafleet_rt::tls::Trust;
use rumqttc::{AsyncClient, QoS};
use std::path::PathBuf;
use uuid::Uuid;

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

/// A connection to the broker that publishes device wake-ups.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mqtt::Publisher")
    }
}

impl Publisher {
    /// Connects in the background (reconnecting with backoff after errors, `otafleet_rt::mqtt`).
    /// Must be called inside the tokio runtime.
    pub fn start(broker: &Broker, client_id: &str) -> Result<Publisher> {
        let opts = otafleet_rt::mqtt::options(&broker.url, client_id, &broker.trust)?;
        let (client, events) = AsyncClient::new(opts, 256);
        tokio::spawn(otafleet_rt::mqtt::run(events, broker.url.to_string(), |_| {}));
        Ok(Publisher { client })
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
