//! otafleet-agent: the device side of otafleet.
//!
//! [`client`] is the device protocol client (enrollment, check-in, actions,
//! status reports and resumable downloads over HTTP with the device's own
//! token). The real agent ([`agent`], binary `otafleet-agent`) and the
//! simulated fleet in [`sim`] use the same client, so the protocol lives in
//! one place. The agent's pieces: [`config`] (TOML), [`state`] (identity,
//! state and offline queue, written atomically), [`verify`] (signatures and
//! release checks), [`install`] (handlers and health check), [`push`] (MQTT
//! wake-ups), [`telemetry`] (scraped and own measurements, forwarded).
#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod config;
pub mod install;
pub mod push;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod verify;
