//! MQTT wake-ups: the agent subscribes to its command topic
//! (`otafleet/<device-id>/cmd`) and checks in as soon as anything arrives
//! there, so an update starts within a second of the server releasing it
//! instead of at the next poll. The message carries no work and is not
//! trusted: the agent still fetches and verifies everything over HTTP.

use anyhow::{anyhow, Result};
use otafleet_core::protocol::{command_topic, parse_mqtt_url, MqttUrl};
use otafleet_rt::tls::Trust;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

pub fn parse_broker(url: &str) -> Result<MqttUrl> {
    parse_mqtt_url(url).map_err(|e| anyhow!("mqtt_url: {e}"))
}

/// Subscribes in the background, reconnecting after errors; every message on
/// the device's topic (and every reconnect, in case one was missed) wakes the
/// agent. An `mqtts://` broker is verified against `trust`.
pub fn spawn(url: &str, trust: &Trust, device_id: Uuid, wake: Arc<Notify>) -> Result<tokio::task::JoinHandle<()>> {
    let url = parse_broker(url)?;
    let topic = command_topic(&device_id);
    let opts = otafleet_rt::mqtt::options(&url, &format!("otafleet-agent-{device_id}"), trust)?;
    let (client, events) = AsyncClient::new(opts, 16);
    Ok(tokio::spawn(otafleet_rt::mqtt::run(events, url.to_string(), move |ev| match ev {
        Event::Incoming(Packet::ConnAck(_)) => {
            if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                tracing::warn!(error = %e, "MQTT subscribe failed");
            }
            tracing::info!(%topic, "push connected");
            wake.notify_one();
        }
        Event::Incoming(Packet::Publish(p)) if p.topic == topic => {
            tracing::debug!("push received");
            wake.notify_one();
        }
        _ => {}
    })))
}
