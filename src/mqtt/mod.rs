//! MQTT for home automation : what the appliance publishes and accepts.
//!
//! - [`events`]: topics and JSON payloads of access, door and system events, counters and
//!   entity states, each event in an envelope with a unique id.
//! - [`discovery`]: Home Assistant MQTT discovery (lock, events, sensors, binary sensors, text
//!   entities and buttons).
//! - [`command`]: verification of signed remote commands (HMAC-SHA256, time window, nonces).
//! - [`otp`]: one-time codes (RFC 6238) for Home Assistant's lock card and enrol buttons.
//! - [`outbox`]: the durable, bounded on-disk queue events wait in until the broker
//!   acknowledges them.
//! - [`replay`]: the command verifier's nonces and marks on disk, so that a signed command
//!   cannot be replayed after a restart or a clock set back.
//! - [`bridge`]: the loop's events as MQTT messages.
//! - [`client`]: the MQTT client thread (rumqttc, blocking API): outbox-backed QoS 1
//!   publishing, availability, retained states, discovery, verified commands.
//!
//! Must not: block the frame loop: the loop only ever `try_send`s to the client thread.

pub mod bridge;
pub mod client;
pub mod command;
pub mod discovery;
pub mod events;
pub mod otp;
pub mod outbox;
pub mod replay;
