//! otafleet-core: the domain of OTA rollouts, free of I/O.
//!
//! Everything here is a plain function of its inputs: label selectors, the wave
//! planner, the rollout and action state machines, health-gate evaluation and
//! maintenance windows. Time is passed in as Unix milliseconds, never read from a
//! clock, so the same code runs in the server, in tests with a fake clock and in
//! the deterministic simulator.
#![forbid(unsafe_code)]

pub mod alert;
pub mod analysis;
pub mod backoff;
pub mod batch;
pub mod duration;
pub mod effects;
pub mod engine;
pub mod exposition;
pub mod lease;
pub mod model;
pub mod plan;
pub mod protocol;
pub mod selector;
pub mod strategy;
pub mod telemetry;
pub mod validate;
pub mod webhook;
pub mod window;

pub use model::{
    ActionKind, ActionState, DelegateKind, DeviceHealth, EventKind, Executor, ReleaseKind, RolloutKind, RolloutState,
    TransitionError,
};
pub use selector::Selector;
pub use strategy::{Gate, Preset, Step, Strategy, StrategySpec};

/// Unix time in milliseconds. The core never reads a clock; callers pass `now`.
pub type Millis = i64;
