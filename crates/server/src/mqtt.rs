//! MQTT push: when the driver notifies devices of new actions, the server
//! publishes a wake-up on each device's command topic
//! (`otafleet/<device-id>/cmd`, [`otafleet_core::protocol::command_topic`]) so
//! an agent connected to the broker checks in at once instead of at its next
//! poll. Push is an optimisation only: the message carries no work (the agent
//! fetches its action over HTTP with its token), so a lost message costs one
//! poll interval, never correctness. Enabled by `--mqtt-url mqtt://host:port`.

use anyhow::Result;
use otafleet_core::protocol::{command_topic, parse_mqtt_url, CHECKIN_COMMAND};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::time::Duration;
use uuid::Uuid;

/// Where the broker is: parsed from `mqtt://host[:port]` (plain TCP; TLS is
/// not built in, run the broker on the local network or behind a tunnel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
}

impl Broker {
    pub fn parse(url: &str) -> Result<Broker> {
        let (host, port) = parse_mqtt_url(url).map_err(anyhow::Error::msg)?;
        Ok(Broker { host, port })
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
    pub fn start(broker: &Broker, client_id: &str) -> Publisher {
        let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, events) = AsyncClient::new(opts, 256);
        let where_ = format!("{}:{}", broker.host, broker.port);
        tokio::spawn(otafleet_rt::mqtt::run(events, where_, |_| {}));
        Publisher { client }
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
        assert_eq!(Broker::parse("mqtt://127.0.0.1:1883").unwrap(), Broker { host: "127.0.0.1".into(), port: 1883 });
        assert!(Broker::parse("mqtts://x").unwrap_err().to_string().contains("unsupported"));
    }
}
