//! MQTT for home automation (issue 4, in progress): what the appliance publishes and accepts.
//!
//! - [`events`]: topics and JSON payloads of access, door and system events, counters and
//!   entity states, each event in an envelope with a unique id.
//! - [`discovery`]: Home Assistant MQTT discovery (lock, event, sensors, binary sensor).
//! - [`command`]: verification of signed remote commands (HMAC-SHA256, time window, nonces).
//! - [`outbox`]: the durable, bounded on-disk queue events wait in until the broker
//!   acknowledges them.
//!
//! Must not: block the frame loop. The MQTT client thread that will use these is not written
//! yet.

pub mod command;
pub mod discovery;
pub mod events;
pub mod outbox;
