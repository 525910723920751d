//! otafleet-agent: the device side of otafleet.
//!
//! [`client`] is the device protocol client (check-in and status reports over
//! HTTP with the device's own token). The simulated fleet in [`sim`] and the
//! real agent use the same client, so the protocol lives in one place.
#![forbid(unsafe_code)]

pub mod client;
pub mod sim;
