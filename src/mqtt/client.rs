//! The MQTT client thread: publishes what the appliance does and receives signed commands, over
//! `rumqttc`'s blocking API on a thread of its own.
//!
//! The frame loop hands messages to [`MqttClient::send`], which stamps the time and `try_send`s
//! them into a bounded channel: it never blocks, and a full channel is counted
//! ([`MqttStats::channel_full`]), never waited on. The thread owns everything else:
//!
//! - **Events** (access, door, system) are wrapped in an [`Envelope`](super::events::Envelope)
//!   by one [`Sequencer`], pushed to the durable [`Outbox`] *before* they are published with
//!   QoS 1, and acknowledged in the outbox when the broker's PUBACK arrives. rumqttc chooses the
//!   packet ids, so the thread remembers the order of its publish requests and pairs each with
//!   the packet id that rumqttc reports in `Outgoing::Publish(pkid)` (requests are handled in
//!   order); the PUBACK's packet id then names the outbox entry. After every (re)connect, and so
//!   after a restart of portier too, everything still pending is sent again, oldest first, at
//!   most [`SEND_WINDOW`] at a time: at least once and in order, a duplicate recognisable by its
//!   envelope id.
//! - **Availability**: `online` (retained) right after every CONNACK, `offline` (retained) as
//!   the last will, and published before a clean [`MqttClient::shutdown`].
//! - **Retained states** (lock, door contact, door alarm, NPU, last person, similarity,
//!   backend, counters): published when they change, and all of them again after every reconnect. Lock,
//!   contact and alarm come from the door's real state ([`Message::DoorState`], which the shell
//!   sends at its first tick and on every change), so a state a crash left retained is
//!   corrected at the next start. The last person, similarity and backend sensors follow the
//!   access events; similarity and liveness scores only with `publish_scores = true`.
//! - **Home Assistant discovery**: published retained after every CONNACK, and again when
//!   `<prefix>/status` says `online` (a restarted Home Assistant). Anyone on the broker can
//!   publish that, so births are only counted: at most one round is pending, and rounds go out
//!   at most once per [`DISCOVERY_MIN_INTERVAL`]. Their log line, like those of lost and made
//!   connections, backs off while the traffic lasts (`LogBackoff`: the interval doubles up to
//!   [`LOG_BACKOFF_MAX`], each line with the count of those left out).
//! - **Supervision**: the worker runs under `catch_unwind`; a panic restarts it with back-off
//!   ([`RESTART_MIN`] to [`RESTART_MAX`]) and a new connection, the loop's messages waiting in
//!   memory meanwhile; [`MqttStats::health`] and [`MqttStats::restarts`] make it visible.
//! - **State files**: an outbox log with a damaged header is resynced on its records (the
//!   pending events carried over, only the header bytes kept aside), one with no valid record
//!   is set aside and a fresh one started (an outbox folder that cannot be used at all falls
//!   back to the temporary folder, for events only).
//!   The verifier's replay state (`super::replay`) is always in the configured `outbox_dir`:
//!   loaded and written back at start, and written before an accepted command reaches the
//!   loop. Damage raises a `state_damaged` event; a replay state that cannot be written a
//!   `state_unwritable` one, and every command is refused (`state_unwritable`) meanwhile.
//! - **Commands** on `<base>/command` and `<base>/lock/set` go through the command module's
//!   [`Verifier`]; accepted ones come out of [`MqttClient::next_command`] (the loop polls it;
//!   one that waited in the queue past the window is dropped there as `stale`), refusals are published as `command_refused` system events saying why (at most
//!   [`REFUSAL_EVENTS_PER_MINUTE`], the rest counted). A retained command is always refused,
//!   so the broker can never replay an unlock at reconnect.
//!
//! The session is clean (`clean_session = true`): the broker keeps nothing for us between
//! connections (so it cannot queue commands for a door that was away), and rumqttc drops its own
//! in-flight copies at each new session; the outbox is the one place that resends. A broker that
//! is down at start-up does not fail [`MqttClient::start`]: the thread retries with exponential
//! backoff ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]) while events wait in the outbox.
//!
//! TLS uses rustls with the *ring* provider chosen explicitly (rumqttc's
//! `use-rustls-no-provider` feature): rustls' default provider, aws-lc-rs, builds C and
//! assembly with CMake, which the aarch64 cross build does not have; ring needs only the C cross
//! compiler that is there already.
//!
//! Must not: block the caller (every call on [`MqttClient`] returns at once except
//! [`MqttClient::shutdown`], which waits at most its timeout), execute commands (it only hands
//! verified ones to the loop), log or publish the command key or the password, or publish an
//! empty payload on a discovery topic (that deletes the entity).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    Client, Connection, ConnectionError, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    SubscribeFilter, TlsConfiguration, Transport,
};
use serde::Deserialize;

use super::command::{Action, Command, Refusal, ReplayState, Verifier};
use super::discovery::{self, DeviceInfo, DiscoveryMessage};
use super::events::{
    self, AccessEvent, AccessKind, Counters, DoorEvent, LockState, Sequencer, SystemEvent, Topics,
};
use super::otp::{CodeRefusal, Otp};
use super::outbox::{self, Outbox, OutboxError};
use super::replay;

/// A refused command as the loop's event and the refusal sensor take it: the reason code and
/// the message.
type Refused = (String, String);

/// The two kinds of refusal a command can meet here: the signed command's and the one-time
/// code's.
trait RefusalReason: fmt::Display {
    fn reason(&self) -> &'static str;
}

impl RefusalReason for Refusal {
    fn reason(&self) -> &'static str {
        Refusal::reason(self)
    }
}

impl RefusalReason for CodeRefusal {
    fn reason(&self) -> &'static str {
        CodeRefusal::reason(self)
    }
}

/// `r` as a [`Refused`].
fn refused(r: &impl RefusalReason) -> Refused {
    (r.reason().to_owned(), r.to_string())
}

/// Messages the loop can queue before [`MqttClient::send`] refuses (and counts) more. The loop
/// makes a few events a second; this covers minutes of a thread stalled on a slow disk.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Verified commands waiting for the loop; more are refused (`busy`) rather than queued.
pub const COMMAND_CAPACITY: usize = 16;
/// Outbox events sent and not yet acknowledged at once. Below rumqttc's in-flight limit (100),
/// so rumqttc never holds a request back and its request channel never fills.
pub const SEND_WINDOW: usize = 64;
/// First wait after a failed connection attempt.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between connection attempts: a restarted broker is found within this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// `command_refused` events published per minute at most; the rest are counted only, so that a
/// flood on the command topic cannot wear out the SD card through the outbox.
pub const REFUSAL_EVENTS_PER_MINUTE: u32 = 30;

/// How long one wait for network events lasts while connected: the latency of a loop message.
const TICK: Duration = Duration::from_millis(20);
/// rumqttc's limit for TCP connect, TLS handshake and CONNACK, in seconds.
const CONNECT_TIMEOUT_S: u64 = 3;
/// Our wait for a connection attempt: a little longer than rumqttc's own limit, so that the
/// attempt is never cut off half-way (which would only restart it).
const CONNECT_WAIT: Duration = Duration::from_millis(CONNECT_TIMEOUT_S * 1000 + 500);
/// Longest wait for messages while waiting to reconnect (keeps shutdown prompt).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long a clean shutdown waits for the broker to acknowledge `offline` and pending events.
const FINISH_BUDGET: Duration = Duration::from_secs(2);
/// rumqttc's request channel: far above what the thread ever has outstanding (the send window,
/// the discovery and state messages, two subscriptions).
const REQUEST_CAPACITY: usize = 512;

/// Most events kept in memory while the outbox refuses writes (disk full or failing): about a
/// day of a busy door's events at a few hundred bytes each, a few hundred KiB of RAM.
pub const SPILL_MAX: usize = 2048;

/// Shortest time between two discovery rounds asked for by Home Assistant births: a flood of
/// `online` on `<prefix>/status` (anyone on the broker can publish there) costs one round per
/// this, and a birth after a quiet spell is answered at once.
pub const DISCOVERY_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// First interval between two log lines that outside traffic repeats (a discovery round per
/// Home Assistant birth flood, a connection that keeps dropping); it doubles while the traffic
/// goes on, up to [`LOG_BACKOFF_MAX`] (`LogBackoff`).
pub const LOG_BACKOFF_MIN: Duration = DISCOVERY_MIN_INTERVAL;
/// Longest interval between two such log lines, and the quiet spell after which the next line
/// comes at once again.
pub const LOG_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Without a broker connection this long, [`MqttStats::health`] says `Down`.
pub const DOWN_AFTER: Duration = Duration::from_secs(60);
/// First wait before restarting a failed client thread; doubles up to [`RESTART_MAX`].
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// Longest wait before restarting a failed client thread.
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A thread that ran this long before failing starts the back-off from [`RESTART_MIN`] again.
const RESTART_RESET: Duration = Duration::from_secs(300);

/// How often the outbox is tried again while it refuses writes.
const SPILL_RETRY: Duration = Duration::from_secs(1);
/// Largest incoming and outgoing packet: the outbox's largest entry plus the MQTT header. An
/// oversized incoming packet makes rumqttc drop the connection, so this is generous.
const MAX_PACKET: usize = outbox::MAX_PAYLOAD_LEN + outbox::MAX_TOPIC_LEN + 64;
/// Nonces the command verifier remembers: above the legitimate command rate for any window
/// (the command module's sizing advice: 256 for a 30 s window).
const MAX_NONCES: usize = 256;
/// Longest accepted key or one-time code secret file, in bytes (a key is 16 to a few dozen
/// bytes).
const MAX_KEY_FILE: u64 = 4096;
/// A valid one-time code typed into Home Assistant's code entity arms the enrol and remove
/// buttons for this long (one press).
const ARM_TTL: Duration = Duration::from_secs(60);
/// Unsigned LOCKs (Home Assistant's lock card) accepted at most once per this interval: anyone
/// on the broker can send one, and a flood must not fill the command queue.
const UNSIGNED_LOCK_INTERVAL: Duration = Duration::from_secs(2);
/// Shortest time between two publications of the outbox depth (it changes with every event).
const OUTBOX_STATE_INTERVAL: Duration = Duration::from_secs(5);

/// The `[mqtt]` configuration section. Units are in the key names.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Whether the appliance talks MQTT at all.
    pub enabled: bool,
    /// Broker host name or IP address.
    pub host: String,
    /// Broker port (1883 plain, 8883 TLS by convention).
    pub port: u16,
    /// MQTT client id; `portier-<device_id>` when unset.
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password in the config file (prefer `password_file`); needs `username`.
    pub password: Option<String>,
    /// File whose first line is the password; needs `username`.
    pub password_file: Option<PathBuf>,
    /// TLS to the broker; plain TCP when absent.
    pub tls: Option<MqttTlsConfig>,
    /// Topic base; `portier/<device_id>` when unset.
    pub base_topic: Option<String>,
    /// Home Assistant discovery prefix.
    pub discovery_prefix: String,
    /// MQTT keep-alive, in seconds: a dead connection is noticed after about 1.5 times this.
    pub keep_alive_s: u16,
    /// Directory of the durable outbox.
    pub outbox_dir: PathBuf,
    /// Most events the outbox holds; beyond it the oldest are dropped and counted.
    pub outbox_max_events: usize,
    /// Most bytes (topics plus payloads) the outbox holds.
    pub outbox_max_bytes: u64,
    /// File holding the shared command key (its bytes, without trailing whitespace; e.g. the
    /// 64 characters of `openssl rand -hex 32`). Without it every command is refused.
    pub command_key_file: Option<PathBuf>,
    /// Largest accepted `abs(now - ts)` of a command, in seconds.
    pub command_window_s: u32,
    /// Device id: discovery topics, unique ids, and the `device` of commands and envelopes.
    pub device_id: String,
    /// Allow a password without TLS, i.e. readable by anyone on the network path. Refused
    /// (`mqtt.tls`) unless set: only for a broker on the same host or a network you trust.
    pub allow_plaintext_password: bool,
    /// Put similarity and liveness scores into access events and publish the similarity
    /// sensor. Off by default: scores tell an eavesdropper how close a face came.
    pub publish_scores: bool,
    /// The device's name in Home Assistant ("Front door"); the device id when unset.
    pub name: Option<String>,
    /// The area Home Assistant suggests for the device ("Entrance").
    pub suggested_area: Option<String>,
    /// The hardware shown in Home Assistant; read from the board (device tree model, plus
    /// "+ Hailo-8" with an NPU configured) when unset.
    pub model: Option<String>,
    /// File holding the base32 secret of the one-time codes (RFC 6238, the user's
    /// authenticator app) that Home Assistant's lock card and enrol buttons send. Without it
    /// the lock card can lock but not unlock, and the enrol buttons do nothing.
    pub totp_secret_file: Option<PathBuf>,
}

/// The `[mqtt.tls]` section: the broker's CA and an optional client certificate (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Client certificate chain, for brokers that require one (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PKCS#8, PKCS#1 or SEC1), with `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            enabled: false,
            host: "localhost".to_owned(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            base_topic: None,
            discovery_prefix: discovery::DEFAULT_PREFIX.to_owned(),
            keep_alive_s: 30,
            outbox_dir: PathBuf::from("/var/lib/portier/outbox"),
            outbox_max_events: 10_000,
            outbox_max_bytes: 16 * 1024 * 1024,
            command_key_file: None,
            command_window_s: 30,
            device_id: "portier".to_owned(),
            allow_plaintext_password: false,
            publish_scores: false,
            name: None,
            suggested_area: None,
            model: None,
            totp_secret_file: None,
        }
    }
}

impl fmt::Debug for MqttConfig {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("enabled", &self.enabled)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("base_topic", &self.base_topic)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("keep_alive_s", &self.keep_alive_s)
            .field("outbox_dir", &self.outbox_dir)
            .field("outbox_max_events", &self.outbox_max_events)
            .field("outbox_max_bytes", &self.outbox_max_bytes)
            .field("command_key_file", &self.command_key_file)
            .field("command_window_s", &self.command_window_s)
            .field("device_id", &self.device_id)
            .field("allow_plaintext_password", &self.allow_plaintext_password)
            .field("publish_scores", &self.publish_scores)
            .field("name", &self.name)
            .field("suggested_area", &self.suggested_area)
            .field("model", &self.model)
            .field("totp_secret_file", &self.totp_secret_file)
            .finish()
    }
}

impl MqttConfig {
    /// The client id in use: the configured one or `portier-<device_id>`.
    pub fn effective_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("portier-{}", self.device_id))
    }

    /// The topic base in use: the configured one or `portier/<device_id>`.
    pub fn effective_base_topic(&self) -> String {
        self.base_topic.clone().unwrap_or_else(|| format!("portier/{}", self.device_id))
    }

    /// Makes every relative path absolute against `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.outbox_dir);
        for p in [&mut self.password_file, &mut self.command_key_file, &mut self.totp_secret_file]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.ca_file);
            for p in [&mut tls.client_cert_file, &mut tls.client_key_file].into_iter().flatten() {
                resolve(p);
            }
        }
    }

    /// Checks every value; the error is the first bad key (`mqtt.port`) and why. Files are not
    /// read here ([`MqttClient::start`] reads them).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !discovery::valid_device_id(&self.device_id) {
            return Err((
                "mqtt.device_id",
                format!(
                    "must be 1 to {} characters from A-Z, a-z, 0-9, '_' and '-', got {:?}",
                    discovery::MAX_DEVICE_ID_LEN,
                    self.device_id
                ),
            ));
        }
        if self.host.is_empty() || self.host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err((
                "mqtt.host",
                format!("must be a host name or address, got {:?}", self.host),
            ));
        }
        if self.port == 0 {
            return Err(("mqtt.port", "must be in 1..=65535, got 0".to_owned()));
        }
        let client_id = self.effective_client_id();
        // MQTT 3.1.1 (3.1.3.1) only guarantees 23 characters; brokers such as mosquitto take
        // more, and a printable id of a sane length keeps logs readable.
        if client_id.is_empty() || client_id.len() > 128 || client_id.contains(char::is_control) {
            return Err((
                "mqtt.client_id",
                format!("must be 1 to 128 printable characters, got {client_id:?}"),
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(("mqtt.password", "set either password or password_file, not both".into()));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err(("mqtt.username", "a password needs a username".to_owned()));
        }
        if self.username.as_deref().is_some_and(|u| u.is_empty() || u.contains(char::is_control)) {
            return Err(("mqtt.username", "must be non-empty and printable".to_owned()));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if has_password && self.tls.is_none() && !self.allow_plaintext_password {
            return Err((
                "mqtt.tls",
                "a password without TLS crosses the network in clear: add [mqtt.tls] with \
                 ca_file (and port 8883), or set mqtt.allow_plaintext_password = true for a \
                 broker on a network you trust"
                    .to_owned(),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                return Err((
                    "mqtt.tls.client_key_file",
                    "client_cert_file and client_key_file go together".to_owned(),
                ));
            }
        }
        events::validate_base(&self.effective_base_topic()).map_err(|e| ("mqtt.base_topic", e))?;
        discovery::check_prefix(&self.discovery_prefix)
            .map_err(|e| ("mqtt.discovery_prefix", e.to_string()))?;
        if !(5..=3600).contains(&self.keep_alive_s) {
            return Err((
                "mqtt.keep_alive_s",
                format!("must be in 5..=3600, got {}", self.keep_alive_s),
            ));
        }
        if !(1..=1_000_000).contains(&self.outbox_max_events) {
            return Err((
                "mqtt.outbox_max_events",
                format!("must be in 1..=1000000, got {}", self.outbox_max_events),
            ));
        }
        // Below 64 KiB a single large event could not be held; above 1 GiB is a typo on an SD
        // card appliance.
        if !(64 * 1024..=1 << 30).contains(&self.outbox_max_bytes) {
            return Err((
                "mqtt.outbox_max_bytes",
                format!("must be in 65536..=1073741824, got {}", self.outbox_max_bytes),
            ));
        }
        for (key, value) in [
            ("mqtt.name", &self.name),
            ("mqtt.suggested_area", &self.suggested_area),
            ("mqtt.model", &self.model),
        ] {
            if let Some(v) = value {
                if v.trim().is_empty() || v.chars().count() > 64 || v.contains(char::is_control) {
                    return Err((key, format!("must be 1 to 64 printable characters, got {v:?}")));
                }
            }
        }
        if !(1..=3600).contains(&self.command_window_s) {
            return Err((
                "mqtt.command_window_s",
                format!("must be in 1..=3600, got {}", self.command_window_s),
            ));
        }
        Ok(())
    }
}

/// What can go wrong starting or stopping the MQTT client (never an exit: the door runs
/// without MQTT and says why).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A configuration value is invalid.
    #[error("config key `{key}`: {reason}")]
    Config {
        /// The key, e.g. `mqtt.port`.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// A file named by the configuration cannot be read.
    #[error("mqtt {what} {path}: {source}")]
    ReadFile {
        /// What the file is for ("password file", "command key file", "TLS CA file", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is unusable (a short key, a PEM file without a
    /// certificate, a key rustls refuses).
    #[error("mqtt {what} {path}: {reason}")]
    BadFile {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// The outbox cannot be opened.
    #[error("mqtt: {0}")]
    Outbox(#[from] OutboxError),
    /// The thread could not be started.
    #[error("mqtt: starting the client thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The thread did not finish within the shutdown timeout; it was left to finish alone.
    #[error("mqtt: client thread still running {0:?} after shutdown was asked")]
    ShutdownTimeout(Duration),
    /// The thread panicked.
    #[error("mqtt: client thread panicked")]
    Panicked,
}

/// What the loop hands to the MQTT thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// An access decision: an event, and the last person, similarity and backend sensors.
    Access(AccessEvent),
    /// A door event.
    Door(DoorEvent),
    /// A system event.
    System(SystemEvent),
    /// The running totals (retained). `dropped_events` is replaced by the thread's own count:
    /// messages refused by a full channel plus events dropped by the outbox's bound.
    Counters(Counters),
    /// The lock state (retained, published when it changes).
    Lock(LockState),
    /// The door contact: `true` when open (retained, published when it changes).
    Contact(bool),
    /// The door as the loop sees it now: lock (the relay's commanded level), contact and alarm
    /// states, each retained, published when it changes and again at every (re)connect. The
    /// shell sends it at the first tick and on every change, so a retained state left by a
    /// crash is corrected as soon as the broker is reached.
    DoorState(crate::door::DoorState),
    /// What the NPU is doing (retained on `<base>/npu/state`, published when it changes and
    /// again at every (re)connect); the shell sends it at the first tick and on every change.
    Npu(crate::app::NpuUse),
}

/// A message and when the loop sent it.
struct Stamped {
    unix_ms: i64,
    message: Message,
}

/// How the MQTT side is doing, for the shell, the display and the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttHealth {
    /// Not connected yet, or lost for less than [`DOWN_AFTER`]: retrying.
    #[default]
    Connecting,
    /// Connected to the broker.
    Up,
    /// No broker connection for [`DOWN_AFTER`] or longer: a persistent failure (events wait
    /// in the outbox).
    Down,
    /// The client thread failed and waits to be restarted (events wait in memory).
    Restarting,
}

impl MqttHealth {
    /// `up`, `connecting`, `down`, `restarting`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MqttHealth::Up => "up",
            MqttHealth::Connecting => "connecting",
            MqttHealth::Down => "down",
            MqttHealth::Restarting => "restarting",
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> MqttHealth {
        match v {
            1 => MqttHealth::Up,
            2 => MqttHealth::Down,
            3 => MqttHealth::Restarting,
            _ => MqttHealth::Connecting,
        }
    }
}

/// Counters of the MQTT client, read with [`MqttClient::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Whether a broker connection is up now.
    pub connected: bool,
    /// The state of the connection and of the thread.
    pub health: MqttHealth,
    /// Restarts of the client thread after it failed (panicked).
    pub restarts: u64,
    /// `online` messages from Home Assistant on `<prefix>/status` (each asks for discovery).
    pub ha_births: u64,
    /// Discovery rounds queued: one per connection, and at most one per
    /// [`DISCOVERY_MIN_INTERVAL`] for births however many arrive.
    pub discovery_rounds: u64,
    /// Verified commands refused because the loop's command queue was full.
    pub commands_busy: u64,
    /// Verified commands dropped instead of carried out because they waited in the queue
    /// until their timestamp left the window (each also in `commands_refused`, with a `stale`
    /// refusal event).
    pub commands_stale: u64,
    /// Successful connections (CONNACKs) since start.
    pub connects: u64,
    /// Messages [`MqttClient::send`] refused because the channel was full.
    pub channel_full: u64,
    /// Events the broker acknowledged (PUBACK), duplicates after a reconnect included.
    pub acked: u64,
    /// Events waiting in the outbox (pending acknowledgement).
    pub outbox_pending: u64,
    /// Events the outbox dropped over its whole life (bound reached, damaged records).
    pub outbox_dropped: u64,
    /// Failed outbox writes (disk full or failing): the event waits in memory meanwhile.
    pub outbox_errors: u64,
    /// Events the outbox refused, waiting in memory (at most [`SPILL_MAX`]) until the outbox
    /// takes them again or a connection publishes them.
    pub spill_pending: u64,
    /// Events dropped from that memory queue because it was full (the oldest go first).
    pub spill_dropped: u64,
    /// Commands verified and handed to the loop (less those it dropped as stale).
    pub commands_accepted: u64,
    /// Commands refused (every refusal, published or not).
    pub commands_refused: u64,
    /// Refusals not published because of [`REFUSAL_EVENTS_PER_MINUTE`].
    pub refusals_unpublished: u64,
}

/// State shared by the handle and the thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Test hook: the thread panics at its next turn ([`MqttClient::inject_panic`]).
    inject_panic: AtomicBool,
    connected: AtomicBool,
    health: AtomicU8,
    restarts: AtomicU64,
    ha_births: AtomicU64,
    discovery_rounds: AtomicU64,
    commands_busy: AtomicU64,
    commands_stale: AtomicU64,
    connects: AtomicU64,
    channel_full: AtomicU64,
    acked: AtomicU64,
    outbox_pending: AtomicU64,
    outbox_dropped: AtomicU64,
    outbox_errors: AtomicU64,
    spill_pending: AtomicU64,
    spill_dropped: AtomicU64,
    commands_accepted: AtomicU64,
    commands_refused: AtomicU64,
    refusals_unpublished: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The running MQTT client: a handle to its thread. Dropping it asks the thread to shut down
/// cleanly (as [`MqttClient::shutdown`] does) without waiting for it.
pub struct MqttClient {
    tx: Option<SyncSender<Stamped>>,
    commands: Receiver<Command>,
    /// The verifier's clock and window, to judge a command again when the loop takes it.
    clock: fn() -> i64,
    window_s: u32,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
}

impl fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttClient").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl MqttClient {
    /// Validates `config`, reads its files (password, command key, TLS), opens the outbox and
    /// starts the thread. Does not wait for the broker: a broker that is down is retried in the
    /// background.
    ///
    /// `device` describes the appliance in Home Assistant; its id must be `config.device_id`.
    /// `run_id` prefixes every envelope id (`<run_id>-<seq>`) and must differ on every start of
    /// the process (see [`run_id`]), so that ids stay unique when the sequence restarts at 1.
    pub fn start(
        config: &MqttConfig,
        device: DeviceInfo,
        run_id: &str,
    ) -> Result<MqttClient, MqttError> {
        MqttClient::start_with_clock(config, device, run_id, unix_s)
    }

    /// [`MqttClient::start`] with the clock the command verifier reads (unix seconds): tests
    /// set it back to show that a clock behind the persisted mark refuses every command.
    pub fn start_with_clock(
        config: &MqttConfig,
        device: DeviceInfo,
        run_id: &str,
        clock: fn() -> i64,
    ) -> Result<MqttClient, MqttError> {
        config.validate().map_err(|(key, reason)| MqttError::Config { key, reason })?;
        if device.device_id != config.device_id {
            return Err(MqttError::Config {
                key: "mqtt.device_id",
                reason: format!(
                    "the device description says {:?}, the configuration {:?}",
                    device.device_id, config.device_id
                ),
            });
        }
        device
            .validate()
            .map_err(|e| MqttError::Config { key: "mqtt.device_id", reason: e.to_string() })?;
        let topics = Topics::new(&config.effective_base_topic())
            .map_err(|reason| MqttError::Config { key: "mqtt.base_topic", reason })?;

        let options = mqtt_options(config, &topics)?;
        let mut verifier = match &config.command_key_file {
            Some(path) => {
                let key = read_key("command key file", path)?;
                let verifier =
                    Verifier::new(key, &config.device_id, config.command_window_s, MAX_NONCES)
                        .map_err(|reason| MqttError::BadFile {
                            what: "command key file",
                            path: path.clone(),
                            reason,
                        })?;
                Some(verifier)
            }
            None => {
                log::warn!("mqtt: no command_key_file: every remote command will be refused");
                None
            }
        };
        let mut otp = match &config.totp_secret_file {
            Some(path) => {
                let what = "one-time code secret file";
                let bytes = read_key(what, path)?;
                let text = String::from_utf8(bytes).map_err(|_| MqttError::BadFile {
                    what,
                    path: path.clone(),
                    reason: "not base32 text".to_owned(),
                })?;
                Some(Otp::from_base32(&text).map_err(|reason| MqttError::BadFile {
                    what,
                    path: path.clone(),
                    reason,
                })?)
            }
            None => None,
        };
        // Alarms raised before the thread runs, published first.
        let mut startup_events = Vec::new();
        let outbox = open_outbox(config, &mut startup_events)?;
        let mut replay_state = ReplayState::default();
        if verifier.is_some() || otp.is_some() {
            replay_state = restore_replay(
                verifier.as_mut(),
                otp.as_mut(),
                &config.outbox_dir,
                config.command_window_s,
                clock(),
                &mut startup_events,
            );
        }
        startup_events.push(SystemEvent::Started { version: device.sw_version.clone() });

        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let (cmd_tx, commands) = mpsc::sync_channel(COMMAND_CAPACITY);
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let (client, connection) = new_connection(&options);

        let mut discovery =
            discovery::discovery_messages(&config.discovery_prefix, &topics, &device);
        if !config.publish_scores {
            // The similarity sensor would only ever say "unknown".
            discovery.retain(|m| !m.topic.ends_with("/similarity/config"));
        }
        let mut worker = Worker {
            status_topic: discovery::status_topic(&config.discovery_prefix),
            sequencer: Sequencer::new(run_id, &config.device_id),
            topics,
            discovery,
            options,
            client,
            connection,
            outbox,
            replay_dir: config.outbox_dir.clone(),
            publish_scores: config.publish_scores,
            clock,
            verifier,
            otp,
            replay_state,
            enrol_name: None,
            armed: None,
            last_unsigned_lock: None,
            outbox_published: None,
            tamper_on: None,
            rx,
            held: VecDeque::new(),
            cmd_tx,
            shared: Arc::clone(&shared),
            connected: false,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            failures: 0,
            down_since: Instant::now(),
            next_send: 0,
            unrouted: VecDeque::new(),
            inflight: HashMap::new(),
            outbox_outstanding: 0,
            states: BTreeMap::new(),
            to_publish: VecDeque::new(),
            spill: VecDeque::new(),
            spill_retry_at: Instant::now(),
            subscribed: false,
            refusal_window: (Instant::now(), 0),
            births: 0,
            rediscover_log: LogBackoff::default(),
            lost_log: LogBackoff::default(),
            connected_log: LogBackoff::default(),
            discovery_due: false,
            last_discovery: None,
        };
        for event in startup_events {
            worker.push_system(unix_ms(), event);
        }
        // True from the first second: what nothing else has said yet.
        worker.set_state(worker.topics.camera_problem(), events::BINARY_OFF.into());
        worker.set_state(worker.topics.last_refusal(), b"none".to_vec());
        worker.set_state(worker.topics.enrol_code_state(), Vec::new());
        worker.refresh_health();
        worker.update_outbox_stats();
        let thread = std::thread::Builder::new()
            .name("mqtt".to_owned())
            .spawn(move || {
                supervise(worker);
                // The receiver may be gone (handle dropped): nobody to tell then.
                let _ = done_tx.send(());
            })
            .map_err(MqttError::Spawn)?;
        Ok(MqttClient {
            tx: Some(tx),
            commands,
            clock,
            window_s: config.command_window_s,
            shared,
            thread: Some(thread),
            done,
        })
    }

    /// Test hook: makes the client thread panic at its next turn, to show that it is
    /// restarted (with back-off) and that no event is lost meanwhile.
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        self.shared.inject_panic.store(true, Ordering::SeqCst);
    }

    /// Queues `message` for the thread without blocking. Returns `false` (and counts it in
    /// [`MqttStats::channel_full`]) when the channel is full or the thread is gone.
    pub fn send(&self, message: Message) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(Stamped { unix_ms: unix_ms(), message }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                bump(&self.shared.channel_full);
                false
            }
        }
    }

    /// The next verified command to carry out, oldest first, or `None` when none waits: the
    /// loop polls this and carries it out (an unlock pulses the door like a recognised face).
    ///
    /// Commands are judged again here, on the verifier's clock: one that waited in the queue
    /// (a loop stalled in a model run or on a slow disk) until `now - ts` left the window is
    /// dropped, not carried out late: a `command_refused` event with reason `stale` says so,
    /// and [`MqttStats::commands_stale`] counts it. Never blocks.
    pub fn next_command(&self) -> Option<Command> {
        loop {
            let command = self.commands.try_recv().ok()?;
            let waited = (self.clock)().saturating_sub(command.ts);
            if waited <= i64::from(self.window_s) {
                return Some(command);
            }
            let refusal = Refusal::Stale { skew_s: waited };
            let detail = format!(
                "{}: {refusal}; it waited for the door's loop and was not carried out",
                command.action
            );
            log::warn!("mqtt: dropped a remote command ({}): {detail}", refusal.reason());
            self.shared.commands_accepted.fetch_sub(1, Ordering::Relaxed);
            bump(&self.shared.commands_refused);
            bump(&self.shared.commands_stale);
            let reason = refusal.reason().to_owned();
            self.send(Message::System(SystemEvent::CommandRefused { reason, detail }));
        }
    }

    /// The queue of verified commands as the MQTT thread fills it, without the check of
    /// [`MqttClient::next_command`] (which the loop uses): for tests that wait for a command.
    pub fn commands(&self) -> &Receiver<Command> {
        &self.commands
    }

    /// The client's counters now.
    pub fn stats(&self) -> MqttStats {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MqttStats {
            connected: s.connected.load(Ordering::Relaxed),
            health: MqttHealth::from_u8(s.health.load(Ordering::Relaxed)),
            restarts: get(&s.restarts),
            ha_births: get(&s.ha_births),
            discovery_rounds: get(&s.discovery_rounds),
            commands_busy: get(&s.commands_busy),
            commands_stale: get(&s.commands_stale),
            connects: get(&s.connects),
            channel_full: get(&s.channel_full),
            acked: get(&s.acked),
            outbox_pending: get(&s.outbox_pending),
            outbox_dropped: get(&s.outbox_dropped),
            outbox_errors: get(&s.outbox_errors),
            spill_pending: get(&s.spill_pending),
            spill_dropped: get(&s.spill_dropped),
            commands_accepted: get(&s.commands_accepted),
            commands_refused: get(&s.commands_refused),
            refusals_unpublished: get(&s.refusals_unpublished),
        }
    }

    /// Stops the thread cleanly: queued messages go to the outbox, `offline` is published
    /// (retained) and the connection closed with DISCONNECT (so the broker discards the last
    /// will). Events the broker has not acknowledged stay in the outbox for the next start.
    ///
    /// Waits at most `timeout`; the thread itself needs up to about 6 s in the worst case (a
    /// connection attempt under way, then 2 s for the broker's acknowledgements). On timeout the
    /// thread is left to finish alone and [`MqttError::ShutdownTimeout`] is returned.
    pub fn shutdown(mut self, timeout: Duration) -> Result<(), MqttError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Dropping the sender also wakes a thread waiting for messages.
        self.tx = None;
        match self.done.recv_timeout(timeout) {
            // Disconnected: the thread ended without saying so, i.e. it panicked.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => return Err(MqttError::ShutdownTimeout(timeout)),
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(MqttError::Panicked),
            _ => Ok(()),
        }
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// A run id for [`MqttClient::start`]: the first 8 hex digits of the kernel's boot id and the
/// start time in milliseconds (hex), e.g. `3f9a1c0d18c2a3b4f00`. Unique per start of the
/// process, also when the clock is reset at boot (the boot id differs then).
pub fn run_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot: String = boot.chars().filter(char::is_ascii_hexdigit).take(8).collect();
    format!("{boot}{:x}", unix_ms())
}

fn unix_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn unix_s() -> i64 {
    unix_ms().div_euclid(1000)
}

/// The outbox in `config.outbox_dir`. A log with a damaged header is resynced (its pending
/// events carried over, the header bytes kept aside), one that is not an outbox at all is set
/// aside and a fresh one started; a directory that cannot be used at all (read-only or failing card) falls back to one in the
/// temporary folder until the next start. Either raises an alarm event: the door keeps
/// working, and whoever reads the events learns why some may be missing. The fallback is for
/// events only: the command replay state stays in `config.outbox_dir` ([`restore_replay`]).
fn open_outbox(config: &MqttConfig, alarms: &mut Vec<SystemEvent>) -> Result<Outbox, MqttError> {
    let (max_events, max_bytes) = (config.outbox_max_events, config.outbox_max_bytes);
    let error = match Outbox::open_or_set_aside(&config.outbox_dir, max_events, max_bytes) {
        Ok((outbox, aside)) => {
            if let Some((kept, detail)) = aside {
                alarms.push(SystemEvent::StateDamaged {
                    file: "outbox".to_owned(),
                    kept_as: kept.display().to_string(),
                    detail,
                });
            }
            return Ok(outbox);
        }
        Err(e @ OutboxError::InvalidBounds { .. }) => return Err(MqttError::Outbox(e)),
        Err(e) => e,
    };
    let fallback = std::env::temp_dir().join(format!("portier-outbox-{}", std::process::id()));
    log::error!(
        "mqtt: {error}; events wait in {} until the next start (check the card)",
        fallback.display()
    );
    let outbox = Outbox::open(&fallback, max_events, max_bytes)?;
    alarms.push(SystemEvent::StateDamaged {
        file: "outbox".to_owned(),
        kept_as: String::new(),
        detail: format!("{error}; using {} until the next start", fallback.display()),
    });
    Ok(outbox)
}

/// Gives `verifier` its memory from `dir`, the configured `outbox_dir` and never a fallback
/// (a fresh state elsewhere would let old signed commands through again), and writes it back
/// at once. A damaged or unreadable file is set aside with a `state_damaged` alarm and its
/// floor kept (`super::replay`); a state that cannot be written raises a `state_unwritable`
/// alarm: every command is then refused (`state_unwritable`) until it can be, since an
/// accepted command that is not on disk could be replayed after a restart.
///
/// Whatever was found, the floor is raised to the start time `now`: a command signed before
/// the start is refused (`below_mark`). So a deleted state file, or an old copy put back,
/// cannot reopen the window for commands recorded before the start; nothing signed before a
/// start could have been meant for this run (the session is clean: the broker queues nothing).
///
/// The same file holds the one-time code verifier's memory (`otp`), restored the same way; a
/// damaged file refuses every code of a step that began before the floor. Returns the state as
/// written back (what the worker keeps beside the verifiers).
fn restore_replay(
    mut verifier: Option<&mut Verifier>,
    otp: Option<&mut Otp>,
    dir: &Path,
    window_s: u32,
    now: i64,
    alarms: &mut Vec<SystemEvent>,
) -> ReplayState {
    let mut state = match replay::load(dir, window_s, now) {
        // No file (the first start, or deleted): a one-time code used before this start could
        // have been recorded in the lost file, so every step a code accepted before now could
        // belong to (the drift window reaches one step ahead) is refused: at the very first
        // start, codes work 30 to 60 s after it.
        replay::Loaded::Fresh => ReplayState {
            otp: super::otp::OtpMemory {
                last_step: Some(now.div_euclid(super::otp::STEP_S) + super::otp::DRIFT_STEPS),
                ..Default::default()
            },
            ..ReplayState::default()
        },
        replay::Loaded::State(state) => {
            if state.clock_mark.is_some_and(|mark| now < mark) {
                log::warn!(
                    "mqtt: the clock is behind the last accepted command; every command is \
                     refused (clock_behind) until it catches up"
                );
            }
            state
        }
        replay::Loaded::Damaged { kept, detail, state } => {
            let kept_as = kept.map(|k| k.display().to_string()).unwrap_or_default();
            log::error!(
                "mqtt: the command replay state is damaged ({detail}); kept as {kept_as:?}; \
                 commands signed before {} are refused",
                state.floor.unwrap_or_default().saturating_add(1)
            );
            alarms.push(SystemEvent::StateDamaged {
                file: "command_replay".to_owned(),
                kept_as,
                detail,
            });
            state
        }
    };
    let window = i64::from(window_s);
    if let Some(ahead) = state.floor.map(|floor| floor.saturating_sub(now)).filter(|&d| d > window)
    {
        // Written by a start whose clock was ahead (a wrong RTC before the time was synced):
        // every command signed before it is refused (below_mark), and nothing else says so.
        log::warn!(
            "mqtt: the command replay floor is {ahead} s ahead of the clock; remote commands \
             signed before it are refused (below_mark). If the clock was wrong at an earlier \
             start, stop portier and run `portier mqtt reset-replay`"
        );
    }
    state.floor = Some(state.floor.map_or(now, |floor| floor.max(now)));
    // A lock-out set while the clock ran ahead must not outlast its longest length from now.
    if let Some(until) = &mut state.otp.locked_until {
        *until = (*until).min(now.saturating_add(super::otp::LOCKOUT_MAX_S));
    }
    if let Some(otp) = otp {
        otp.restore(state.otp.clone());
    }
    if let Some(verifier) = verifier.as_mut() {
        verifier.restore(state.clone());
        state = ReplayState { otp: state.otp, ..verifier.state() };
    }
    if let Err(e) = replay::save(dir, &state) {
        let detail = format!(
            "{}: {e}; every remote command is refused (state_unwritable) until it can be written",
            dir.join(replay::STATE_NAME).display()
        );
        log::error!("mqtt: cannot write the command replay state {detail}");
        alarms.push(SystemEvent::StateUnwritable { file: "command_replay".to_owned(), detail });
    }
    state
}

/// One log line that outside traffic can repeat for as long as it lasts (Home Assistant births,
/// a connection that keeps dropping): the first at once, then one per interval, the interval
/// doubling from [`LOG_BACKOFF_MIN`] to [`LOG_BACKOFF_MAX`] while the traffic goes on; after
/// [`LOG_BACKOFF_MAX`] without any, the next line comes at once again. So a flood that lasts
/// for days costs a few lines an hour, each with the count of those left out.
#[derive(Debug, Default)]
struct LogBackoff {
    interval: Duration,
    /// When a line was last logged, and when the traffic was last seen.
    logged: Option<Instant>,
    seen: Option<Instant>,
    /// Lines left out since the last one logged.
    unlogged: u64,
}

impl LogBackoff {
    /// Whether to log the line now: `Some(lines left out since the last one)` when yes.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        let quiet = self.seen.is_none_or(|t| now.saturating_duration_since(t) >= LOG_BACKOFF_MAX);
        self.seen = Some(now);
        if quiet {
            self.interval = LOG_BACKOFF_MIN;
        } else if self.logged.is_some_and(|t| now.saturating_duration_since(t) < self.interval) {
            self.unlogged += 1;
            return None;
        } else {
            self.interval = (self.interval * 2).min(LOG_BACKOFF_MAX);
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// `"; 12 more rounds not logged"` for a log line, or nothing when none was left out.
fn not_logged(count: u64, what: &str) -> String {
    match count {
        0 => String::new(),
        1 => format!("; 1 more {what} not logged"),
        n => format!("; {n} more {what}s not logged"),
    }
}

/// A rumqttc client and its connection for `options`, with our connect timeout.
fn new_connection(options: &MqttOptions) -> (Client, Connection) {
    let (client, mut connection) = Client::new(options.clone(), REQUEST_CAPACITY);
    let mut network = connection.eventloop.network_options();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    connection.eventloop.set_network_options(network);
    (client, connection)
}

/// Runs the worker, and restarts it with back-off whenever it panics: MQTT trouble must never
/// take the door's events or commands down for good. Messages from the loop wait in memory
/// (at most [`SPILL_MAX`]) during the back-off; the outbox, the retained states and the replay
/// state are the worker's and survive the restart; the connection is made anew.
fn supervise(mut worker: Worker) {
    let mut backoff = RESTART_MIN;
    loop {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
        let Err(panic) = outcome else { return };
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        if started.elapsed() >= RESTART_RESET {
            backoff = RESTART_MIN;
        }
        let restarts = worker.shared.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        worker.set_health(MqttHealth::Restarting);
        worker.shared.connected.store(false, Ordering::Relaxed);
        log::error!(
            "mqtt: the client thread failed ({reason}); restart {restarts} in {backoff:?}; \
             events wait meanwhile"
        );
        worker.wait_before_restart(backoff);
        backoff = (backoff * 2).min(RESTART_MAX);
        worker.reset_connection();
        worker.push_system(unix_ms(), SystemEvent::MqttRestarted { restarts, reason });
    }
}

/// Broker address, identity, will, keep-alive, credentials and TLS.
fn mqtt_options(config: &MqttConfig, topics: &Topics) -> Result<MqttOptions, MqttError> {
    let mut options = connection_options(config, config.effective_client_id())?;
    options
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_last_will(LastWill::new(
            topics.availability(),
            events::AVAILABILITY_OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
    Ok(options)
}

/// What every connection to the configured broker needs, under `client_id`: address,
/// keep-alive, credentials and TLS (the appliance's own adds its session settings and will;
/// `portier selftest` connects with these alone).
pub(crate) fn connection_options(
    config: &MqttConfig,
    client_id: String,
) -> Result<MqttOptions, MqttError> {
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options.set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_s)));
    if let Some(user) = &config.username {
        let password = match (&config.password, &config.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => read_password(path)?,
            (None, None) => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
            rustls_config(tls)?,
        ))));
    }
    Ok(options)
}

/// Refuses a secret file (password, command key, TLS client key) that group or others can
/// access or that belongs to another user; a missing file stays a read error (exit 66).
fn check_secret(what: &'static str, path: &Path) -> Result<(), MqttError> {
    crate::secret::check_private(path).map_err(|e| match e {
        crate::secret::SecretFileError::Io(source) => {
            MqttError::ReadFile { what, path: path.into(), source }
        }
        other => MqttError::BadFile { what, path: path.into(), reason: other.to_string() },
    })
}

fn read_password(path: &Path) -> Result<String, MqttError> {
    check_secret("password file", path)?;
    let text = std::fs::read_to_string(path).map_err(|source| MqttError::ReadFile {
        what: "password file",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// An owner-only secret file (the command key, the one-time code secret), without trailing
/// whitespace.
fn read_key(what: &'static str, path: &Path) -> Result<Vec<u8>, MqttError> {
    let read_err = |source| MqttError::ReadFile { what, path: path.into(), source };
    check_secret(what, path)?;
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_KEY_FILE {
        return Err(MqttError::BadFile {
            what,
            path: path.into(),
            reason: format!("{len} bytes; a key file holds at most {MAX_KEY_FILE}"),
        });
    }
    let mut key = std::fs::read(path).map_err(read_err)?;
    // Editors and `echo` add a newline; whitespace is never part of a key.
    while key.last().is_some_and(u8::is_ascii_whitespace) {
        key.pop();
    }
    Ok(key)
}

/// rustls with the ring provider, the given CA as the only trust anchor, and the client
/// certificate if configured.
fn rustls_config(tls: &MqttTlsConfig) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn bad(what: &'static str, path: &Path, reason: impl fmt::Display) -> MqttError {
        MqttError::BadFile { what, path: path.to_path_buf(), reason: reason.to_string() }
    }
    fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MqttError> {
        std::fs::read(path).map_err(|source| MqttError::ReadFile {
            what,
            path: path.into(),
            source,
        })
    }
    fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
        let pem = read(what, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(what, path, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad(what, path, "holds no PEM certificate"));
        }
        Ok(certs)
    }

    let mut roots = rustls::RootCertStore::empty();
    for cert in certs("TLS CA file", &tls.ca_file)? {
        roots.add(cert).map_err(|e| bad("TLS CA file", &tls.ca_file, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS CA file", &tls.ca_file, e))?
        .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = certs("TLS client certificate file", cert_path)?;
            check_secret("TLS client key file", key_path)?;
            let key_pem = read("TLS client key file", key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| bad("TLS client key file", key_path, format!("no PEM key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("TLS client key file", key_path, e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The thread's state. Per-connection fields are reset at every CONNACK.
struct Worker {
    /// `<prefix>/status`, where Home Assistant announces itself.
    status_topic: String,
    topics: Topics,
    sequencer: Sequencer,
    discovery: Vec<DiscoveryMessage>,
    /// What a new connection is made from (after a restart of the worker).
    options: MqttOptions,
    client: Client,
    connection: Connection,
    outbox: Outbox,
    /// Where the replay state is kept: the configured `outbox_dir`, also while the outbox
    /// itself had to fall back to the temporary folder.
    replay_dir: PathBuf,
    publish_scores: bool,
    /// Unix seconds, for the command verifier.
    clock: fn() -> i64,
    verifier: Option<Verifier>,
    /// Home Assistant's one-time codes, when a secret is configured.
    otp: Option<Otp>,
    /// What is persisted beside the verifiers' memories (the command part while no command
    /// key is configured, so that it is kept, not wiped).
    replay_state: ReplayState,
    /// The name Home Assistant's enrol name entity holds.
    enrol_name: Option<String>,
    /// A valid one-time code was typed into Home Assistant's code entity at this time (and
    /// used up then): the next enrol or remove press within [`ARM_TTL`] goes through.
    armed: Option<(i64, Instant)>,
    /// When the last unsigned LOCK was accepted ([`UNSIGNED_LOCK_INTERVAL`]).
    last_unsigned_lock: Option<Instant>,
    /// The outbox depth last published, and when.
    outbox_published: Option<(u64, Instant)>,
    /// The tamper state last published.
    tamper_on: Option<bool>,
    rx: Receiver<Stamped>,
    /// Messages received while the worker waited to be restarted, handled first.
    held: VecDeque<Stamped>,
    cmd_tx: SyncSender<Command>,
    shared: Arc<Shared>,
    connected: bool,
    /// When the next connection attempt may start.
    retry_at: Instant,
    backoff: Duration,
    /// Failed attempts since the last connection, to log the first one only.
    failures: u64,
    /// Since when there is no connection (meaningful while `connected` is false).
    down_since: Instant,
    /// Lowest outbox seq not yet sent on this connection.
    next_send: u64,
    /// Our publish requests in order, not yet given a packet id by rumqttc: the outbox seq, or
    /// `None` for a publication outside the outbox.
    unrouted: VecDeque<Option<u64>>,
    /// Packet id of each publication awaiting its PUBACK.
    inflight: HashMap<u16, Option<u64>>,
    /// Outbox entries in `unrouted` and `inflight`.
    outbox_outstanding: usize,
    /// Last payload of every retained state topic, republished at each connection.
    states: BTreeMap<String, Vec<u8>>,
    /// Retained publications (availability, discovery, states) waiting for room in rumqttc's
    /// request channel.
    to_publish: VecDeque<(String, Vec<u8>)>,
    /// Events the outbox refused (disk full or failing), oldest first: retried into the outbox
    /// every turn, published without durability while connected, at most [`SPILL_MAX`].
    spill: VecDeque<(String, Vec<u8>)>,
    /// When the outbox may be tried again for the spilled events.
    spill_retry_at: Instant,
    subscribed: bool,
    /// Start of the current minute of refusal events and how many were published in it.
    refusal_window: (Instant, u32),
    /// Home Assistant births since the last logged discovery round.
    births: u64,
    /// The log lines of discovery rounds, of lost connections and of connections.
    rediscover_log: LogBackoff,
    lost_log: LogBackoff,
    connected_log: LogBackoff,
    /// A birth asked for a discovery round that has not gone out yet (coalesced: one at most).
    discovery_due: bool,
    /// When the last discovery round was queued.
    last_discovery: Option<Instant>,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if self.shared.inject_panic.swap(false, Ordering::SeqCst) {
                panic!("injected panic (MqttClient::inject_panic)");
            }
            self.drain_messages();
            self.drain_spill();
            self.refresh_health();
            if self.shared.stop.load(Ordering::SeqCst) {
                self.finish();
                return;
            }
            if self.connected {
                self.maybe_rediscover();
                self.flush_requests();
                self.pump_outbox();
                match self.connection.recv_timeout(TICK) {
                    Ok(Ok(event)) => self.on_event(event),
                    Ok(Err(e)) => self.on_connection_error(&e),
                    Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    // Only when every `Client` is gone, and the worker holds one.
                    Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                }
            } else if Instant::now() >= self.retry_at {
                match self.connection.recv_timeout(CONNECT_WAIT) {
                    Ok(Ok(event)) => self.on_event(event),
                    Ok(Err(e)) => self.on_connection_error(&e),
                    Err(rumqttc::RecvTimeoutError::Timeout) => {
                        self.schedule_retry("connection attempt timed out")
                    }
                    Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                let wait = self.retry_at.saturating_duration_since(Instant::now()).min(IDLE_WAIT);
                match self.rx.recv_timeout(wait) {
                    Ok(stamped) => self.handle(stamped),
                    // The handle is gone: the loop of the next turn sees the stop flag.
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            }
        }
    }

    /// Handles every message queued by the loop.
    fn drain_messages(&mut self) {
        while let Some(stamped) = self.held.pop_front() {
            self.handle(stamped);
        }
        loop {
            match self.rx.try_recv() {
                Ok(stamped) => self.handle(stamped),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, stamped: Stamped) {
        let Stamped { unix_ms, message } = stamped;
        match message {
            Message::Access(mut event) => {
                if !self.publish_scores {
                    // How close a face came to a template, and how live it looked, help an
                    // attacker tune a photo or a mask: only published when asked for.
                    event.similarity = None;
                    event.second_similarity = None;
                    event.liveness = None;
                }
                self.set_state(self.topics.last_event(), event.kind.as_str().into());
                // "Last person granted" and its similarity change only on a grant: an unknown
                // face or a tailgater a moment later must not blank them.
                if event.kind == AccessKind::Granted {
                    self.set_state(
                        self.topics.last_person(),
                        events::last_person_payload(event.person.as_deref()).into_bytes(),
                    );
                    if self.publish_scores {
                        self.set_state(
                            self.topics.last_similarity(),
                            events::similarity_payload(event.similarity).into_bytes(),
                        );
                    }
                }
                if let Some(backend) = event.backend {
                    self.set_state(self.topics.last_backend(), backend.as_str().into());
                }
                let payload = events::to_payload(&self.sequencer.wrap(unix_ms, event));
                self.push_event(self.topics.access(), &payload);
            }
            Message::Door(event) => {
                let payload = events::to_payload(&self.sequencer.wrap(unix_ms, event));
                self.push_event(self.topics.door(), &payload);
            }
            Message::System(event) => {
                match &event {
                    SystemEvent::CameraLost { .. } => {
                        self.set_state(self.topics.camera_problem(), events::BINARY_ON.into());
                    }
                    SystemEvent::CameraBack => {
                        self.set_state(self.topics.camera_problem(), events::BINARY_OFF.into());
                    }
                    _ => {}
                }
                self.push_system(unix_ms, event);
            }
            Message::Counters(mut counters) => {
                counters.dropped_events = self
                    .shared
                    .channel_full
                    .load(Ordering::Relaxed)
                    .saturating_add(self.shared.spill_dropped.load(Ordering::Relaxed))
                    .saturating_add(self.outbox.stats().dropped_total);
                let payload = events::to_payload(&self.sequencer.wrap(unix_ms, counters));
                self.set_state(self.topics.counters(), payload);
            }
            Message::Lock(state) => {
                self.set_state(self.topics.lock_state(), state.payload().as_bytes().to_vec());
            }
            Message::Contact(open) => {
                self.set_state(
                    self.topics.contact_state(),
                    events::contact_payload(open).as_bytes().to_vec(),
                );
            }
            Message::DoorState(door) => {
                let lock = if door.locked { LockState::Locked } else { LockState::Unlocked };
                self.set_state(self.topics.lock_state(), lock.payload().as_bytes().to_vec());
                self.set_state(
                    self.topics.contact_state(),
                    events::contact_payload(door.open).as_bytes().to_vec(),
                );
                self.set_state(
                    self.topics.alarm_state(),
                    events::alarm_payload(door.alarm).as_bytes().to_vec(),
                );
            }
            Message::Npu(state) => {
                self.set_state(
                    self.topics.npu_state(),
                    events::npu_payload(state).as_bytes().to_vec(),
                );
            }
        }
    }

    fn set_health(&self, health: MqttHealth) {
        self.shared.health.store(health.to_u8(), Ordering::Relaxed);
    }

    /// Keeps a message from the loop in memory while the worker waits to be restarted (the
    /// oldest go first beyond [`SPILL_MAX`], counted).
    fn hold(&mut self, stamped: Stamped) {
        if self.held.len() >= SPILL_MAX {
            self.held.pop_front();
            bump(&self.shared.spill_dropped);
        }
        self.held.push_back(stamped);
    }

    /// Waits `wait` (less if asked to stop), taking the loop's messages off the channel so
    /// that it never fills: they wait in memory and are handled once the worker runs again.
    fn wait_before_restart(&mut self, wait: Duration) {
        let end = Instant::now() + wait;
        while !self.shared.stop.load(Ordering::SeqCst) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.rx.recv_timeout(left.min(IDLE_WAIT)) {
                Ok(stamped) => self.hold(stamped),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// A new broker connection after a failure; what the failed one had in flight is sent
    /// again from the outbox.
    fn reset_connection(&mut self) {
        let (client, connection) = new_connection(&self.options);
        self.client = client;
        self.connection = connection;
        self.connected = false;
        self.shared.connected.store(false, Ordering::Relaxed);
        self.set_health(MqttHealth::Connecting);
        self.down_since = Instant::now();
        self.retry_at = Instant::now();
        self.backoff = BACKOFF_MIN;
        self.next_send = 0;
        self.unrouted.clear();
        self.inflight.clear();
        self.outbox_outstanding = 0;
        self.to_publish.clear();
        self.subscribed = false;
    }

    /// Queues the discovery round births asked for, at most one per
    /// [`DISCOVERY_MIN_INTERVAL`]: a burst of births gets one round at once and one after it
    /// (so Home Assistant, whichever birth was its own, hears the entities after its start).
    fn maybe_rediscover(&mut self) {
        if !self.discovery_due {
            return;
        }
        if self.last_discovery.is_some_and(|t| t.elapsed() < DISCOVERY_MIN_INTERVAL) {
            return;
        }
        if let Some(unlogged) = self.rediscover_log.allow(Instant::now()) {
            log::info!(
                "mqtt: Home Assistant came online ({} birth message(s) since the last such \
                 line{}); announcing the entities again",
                self.births,
                not_logged(unlogged, "round")
            );
            self.births = 0;
        }
        self.discovery_due = false;
        self.queue_discovery();
    }

    fn push_system(&mut self, unix_ms: i64, event: SystemEvent) {
        let payload = events::to_payload(&self.sequencer.wrap(unix_ms, event));
        self.push_event(self.topics.system(), &payload);
    }

    /// Makes an event durable, then lets [`Worker::pump_outbox`] send it. When the outbox
    /// cannot take it (disk full or failing) the event waits in memory, behind any earlier
    /// such events, so a full disk loses nothing while the process lives.
    fn push_event(&mut self, topic: String, payload: &[u8]) {
        self.drain_spill();
        if self.spill.is_empty() {
            match self.outbox.push(&topic, payload) {
                Ok(_) => {
                    self.update_outbox_stats();
                    return;
                }
                Err(e) => {
                    if self.shared.outbox_errors.fetch_add(1, Ordering::Relaxed).is_multiple_of(100)
                    {
                        log::error!("{e}; keeping events in memory until the outbox works again");
                    }
                    self.spill_retry_at = Instant::now() + SPILL_RETRY;
                }
            }
        }
        if self.spill.len() >= SPILL_MAX {
            self.spill.pop_front();
            bump(&self.shared.spill_dropped);
        }
        self.spill.push_back((topic, payload.to_vec()));
        self.drain_spill();
    }

    /// Moves events waiting in memory into the outbox, oldest first, as far as it takes them;
    /// while it still refuses and a connection is up, publishes them without durability (a
    /// failing disk must not silence the door).
    fn drain_spill(&mut self) {
        if self.spill.is_empty() {
            return;
        }
        if Instant::now() >= self.spill_retry_at {
            while let Some((topic, payload)) = self.spill.front() {
                if self.outbox.push(topic, payload).is_err() {
                    self.spill_retry_at = Instant::now() + SPILL_RETRY;
                    break;
                }
                self.spill.pop_front();
            }
        }
        while self.connected {
            let Some((topic, payload)) = self.spill.pop_front() else { break };
            if !self.request(&topic, &payload, false, None) {
                self.spill.push_front((topic, payload));
                break;
            }
        }
        if self.spill.is_empty() {
            log::info!("mqtt: the outbox takes events again");
        }
        self.shared.spill_pending.store(self.spill.len() as u64, Ordering::Relaxed);
        self.update_outbox_stats();
    }

    /// Records a retained state; publishes it now if it changed and a connection is up.
    fn set_state(&mut self, topic: String, payload: Vec<u8>) {
        if self.states.get(&topic) == Some(&payload) {
            return;
        }
        self.states.insert(topic.clone(), payload.clone());
        if self.connected {
            self.to_publish.push_back((topic, payload));
        }
    }

    fn update_outbox_stats(&self) {
        let stats = self.outbox.stats();
        self.shared.outbox_pending.store(stats.pending as u64, Ordering::Relaxed);
        self.shared.outbox_dropped.store(stats.dropped_total, Ordering::Relaxed);
    }

    /// Hands one QoS 1 publication to rumqttc without blocking; `false` if its channel is full.
    fn request(&mut self, topic: &str, payload: &[u8], retain: bool, seq: Option<u64>) -> bool {
        match self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => {
                self.unrouted.push_back(seq);
                if seq.is_some() {
                    self.outbox_outstanding += 1;
                }
                true
            }
            Err(e) => {
                log::debug!("mqtt: publish to {topic} deferred: {e}");
                false
            }
        }
    }

    /// Subscriptions and retained publications, as far as rumqttc's channel takes them.
    fn flush_requests(&mut self) {
        if !self.subscribed {
            let filters = [
                self.topics.command(),
                self.topics.lock_command(),
                self.topics.enrol_name(),
                self.topics.enrol_code(),
                self.topics.enrol_start(),
                self.topics.enrol_remove_last(),
                self.status_topic.clone(),
            ]
            .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce));
            match self.client.try_subscribe_many(filters) {
                Ok(()) => self.subscribed = true,
                Err(e) => log::debug!("mqtt: subscription deferred: {e}"),
            }
        }
        while let Some((topic, payload)) = self.to_publish.pop_front() {
            if !self.request(&topic, &payload, true, None) {
                self.to_publish.push_front((topic, payload));
                break;
            }
        }
    }

    /// Sends the next pending outbox entries, oldest first, keeping at most [`SEND_WINDOW`]
    /// unacknowledged.
    fn pump_outbox(&mut self) {
        let budget = SEND_WINDOW.saturating_sub(self.outbox_outstanding);
        if budget == 0 || self.next_send >= self.outbox.stats().next_seq || self.outbox.is_empty() {
            return;
        }
        // Pending entries below `next_send` are exactly those in flight on this connection, so
        // this many from the oldest always includes `budget` unsent ones if there are any.
        let entries = self.outbox.peek(self.outbox_outstanding + budget);
        let from = self.next_send;
        for entry in entries.into_iter().filter(|e| e.seq >= from).take(budget) {
            if !self.request(&entry.topic, &entry.payload, false, Some(entry.seq)) {
                return;
            }
            self.next_send = entry.seq + 1;
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => self.on_connack(),
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(seq) = self.inflight.remove(&ack.pkid) {
                    self.acked(seq);
                }
            }
            Event::Incoming(Incoming::Publish(publish)) => {
                let topic = publish.topic.as_str();
                if topic == self.topics.command() {
                    self.on_command(&publish.payload, publish.retain);
                } else if topic == self.topics.lock_command() {
                    self.on_lock_command(&publish.payload, publish.retain);
                } else if topic == self.topics.enrol_name() {
                    self.on_enrol_name(&publish.payload);
                } else if topic == self.topics.enrol_code() {
                    self.on_enrol_code(&publish.payload, publish.retain);
                } else if topic == self.topics.enrol_start() {
                    self.on_button(Action::Enrol, publish.retain);
                } else if topic == self.topics.enrol_remove_last() {
                    self.on_button(Action::RemoveLast, publish.retain);
                } else if publish.topic == self.status_topic
                    && discovery::is_ha_birth(&publish.payload)
                    // A retained birth comes with the subscription, right after the discovery
                    // of this connection went out.
                    && !publish.retain
                {
                    // Anyone on the broker can publish here: only counted and coalesced, the
                    // round itself goes out from `maybe_rediscover`, rate-limited.
                    bump(&self.shared.ha_births);
                    self.births += 1;
                    self.discovery_due = true;
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // rumqttc handles our requests in order, so this is the oldest unrouted one.
                if let Some(seq) = self.unrouted.pop_front() {
                    if pkid == 0 {
                        // Only QoS 0 gets packet id 0, and every request here is QoS 1.
                        self.acked(seq);
                    } else {
                        self.inflight.insert(pkid, seq);
                    }
                }
            }
            _ => {}
        }
    }

    fn acked(&mut self, seq: Option<u64>) {
        let Some(seq) = seq else { return };
        self.outbox_outstanding = self.outbox_outstanding.saturating_sub(1);
        bump(&self.shared.acked);
        if let Err(e) = self.outbox.ack(seq) {
            log::error!("{e}");
        }
        self.update_outbox_stats();
    }

    fn on_connack(&mut self) {
        self.connected = true;
        self.shared.connected.store(true, Ordering::Relaxed);
        self.set_health(MqttHealth::Up);
        bump(&self.shared.connects);
        if let Some(unlogged) = self.connected_log.allow(Instant::now()) {
            log::info!(
                "mqtt: connected; {} events pending in the outbox{}",
                self.outbox.stats().pending,
                not_logged(unlogged, "connection")
            );
        }
        self.backoff = BACKOFF_MIN;
        self.failures = 0;
        // A new session: rumqttc dropped its in-flight copies, the outbox sends them again.
        self.next_send = 0;
        self.unrouted.clear();
        self.inflight.clear();
        self.outbox_outstanding = 0;
        self.subscribed = false;
        self.to_publish.clear();
        self.to_publish.push_back((self.topics.availability(), events::AVAILABILITY_ONLINE.into()));
        self.queue_discovery();
        let states: Vec<_> = self.states.iter().map(|(t, p)| (t.clone(), p.clone())).collect();
        self.to_publish.extend(states);
    }

    fn queue_discovery(&mut self) {
        // A round still waiting for room in rumqttc's channel is replaced, not repeated.
        let discovery = &self.discovery;
        self.to_publish.retain(|(topic, _)| !discovery.iter().any(|m| &m.topic == topic));
        let messages = self.discovery.iter().filter(|m| !m.payload.is_empty());
        self.to_publish.extend(messages.map(|m| (m.topic.clone(), m.payload.clone())));
        self.last_discovery = Some(Instant::now());
        bump(&self.shared.discovery_rounds);
    }

    fn on_connection_error(&mut self, error: &ConnectionError) {
        if self.connected {
            if let Some(unlogged) = self.lost_log.allow(Instant::now()) {
                let unlogged = not_logged(unlogged, "loss");
                log::warn!("mqtt: connection lost: {error}; reconnecting{unlogged}");
            }
        } else if self.failures == 0 {
            log::warn!("mqtt: cannot connect: {error}; retrying in the background");
        } else {
            log::debug!("mqtt: cannot connect: {error}");
        }
        self.schedule_retry("connection error");
    }

    fn schedule_retry(&mut self, why: &str) {
        if self.connected {
            self.connected = false;
            self.shared.connected.store(false, Ordering::Relaxed);
            self.to_publish.clear();
            self.down_since = Instant::now();
        }
        let down_for = self.down_since.elapsed();
        let health = if down_for >= DOWN_AFTER { MqttHealth::Down } else { MqttHealth::Connecting };
        if health == MqttHealth::Down
            && MqttHealth::from_u8(self.shared.health.load(Ordering::Relaxed)) != health
        {
            log::error!(
                "mqtt: no broker connection for {}s; events wait in the outbox",
                down_for.as_secs()
            );
        }
        self.set_health(health);
        self.failures += 1;
        log::debug!("mqtt: {why}; next attempt in {:?}", self.backoff);
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// A signed JSON command (`<base>/command`, and signed payloads on the lock's topic).
    fn on_command(&mut self, payload: &[u8], retained: bool) {
        let now = (self.clock)();
        let result = match &mut self.verifier {
            Some(verifier) => verifier.verify(payload, retained, now).map_err(|r| refused(&r)),
            None => Err(("disabled".to_owned(), "no command key is configured".to_owned())),
        };
        // Durable before the loop sees it: a command accepted but not on disk could be
        // replayed after a restart.
        let result = result.and_then(|command| self.save_state().map(|()| command));
        self.deliver(result);
    }

    /// What Home Assistant's lock card sends on the lock's topic: `{"ha":"LOCK"|"UNLOCK",
    /// "code":...}` (its `command_template`), or a plain `LOCK`/`UNLOCK` from a setup without
    /// the template. LOCK needs no code (locking is always safe); UNLOCK needs a one-time code.
    /// Anything else is taken as a signed command.
    fn on_lock_command(&mut self, payload: &[u8], retained: bool) {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct HaLock {
            ha: String,
            code: Option<String>,
        }
        let text = std::str::from_utf8(payload).unwrap_or("").trim();
        let (action, code) = match text {
            "LOCK" => ("LOCK".to_owned(), None),
            "UNLOCK" => ("UNLOCK".to_owned(), None),
            _ => match serde_json::from_str::<HaLock>(text) {
                Ok(ha) if payload.len() <= super::command::MAX_PAYLOAD => (ha.ha, ha.code),
                _ => return self.on_command(payload, retained),
            },
        };
        if retained {
            return self.deliver(Err(refused(&Refusal::Retained)));
        }
        let now = (self.clock)();
        let result = match action.as_str() {
            "LOCK"
                if self
                    .last_unsigned_lock
                    .is_some_and(|t| t.elapsed() < UNSIGNED_LOCK_INTERVAL) =>
            {
                Err((
                    "rate_limited".to_owned(),
                    format!(
                        "LOCK: at most one unsigned lock per {} s",
                        UNSIGNED_LOCK_INTERVAL.as_secs()
                    ),
                ))
            }
            "LOCK" => {
                self.last_unsigned_lock = Some(Instant::now());
                // Unsigned: it may end a release made by a remote unlock, never a face's or
                // the exit button's (see `crate::app::RemoteCommand::EndRemoteRelease`).
                Ok(self.local_command(Action::Lock, "ha-lock".to_owned(), None, now))
            }
            "UNLOCK" => self
                .check_code(code.as_deref(), now)
                .map(|step| self.local_command(Action::Unlock, format!("otp-{step}"), None, now)),
            other => Err((
                "unknown_action".to_owned(),
                format!(
                    "lock card action {:?}: LOCK or UNLOCK",
                    other.chars().take(20).collect::<String>()
                ),
            )),
        };
        self.deliver(result);
    }

    /// Home Assistant's enrol name entity (retained by Home Assistant, so known at start).
    fn on_enrol_name(&mut self, payload: &[u8]) {
        let name = String::from_utf8_lossy(payload);
        let name = name.trim();
        self.enrol_name = (!name.is_empty()
            && name.chars().count() <= events::MAX_ENROL_NAME
            && !name.contains(char::is_control))
        .then(|| name.to_owned());
        if self.enrol_name.is_none() && !name.is_empty() {
            log::warn!(
                "mqtt: enrol name refused: 1 to {} printable characters needed",
                events::MAX_ENROL_NAME
            );
        }
    }

    /// A code typed into Home Assistant's code entity: checked (and used up) at once, so it
    /// can never open the lock later; a valid one arms one enrol or remove press for
    /// [`ARM_TTL`]. The entity's state is blanked, so Home Assistant keeps no code.
    fn on_enrol_code(&mut self, payload: &[u8], retained: bool) {
        if retained {
            return self.deliver(Err(refused(&Refusal::Retained)));
        }
        let code = String::from_utf8_lossy(payload);
        let code: String = code.trim().chars().take(16).collect();
        if code.is_empty() {
            return; // the blank state echoed back
        }
        self.set_state(self.topics.enrol_code_state(), Vec::new());
        // Blank again even if it was blank already: Home Assistant showed what was typed.
        self.to_publish.push_back((self.topics.enrol_code_state(), Vec::new()));
        let now = (self.clock)();
        match self.check_code(Some(&code), now) {
            Ok(step) => {
                log::info!(
                    "mqtt: one-time code accepted: the next enrol or remove press goes through"
                );
                self.armed = Some((step, Instant::now()));
            }
            Err(refusal) => self.deliver(Err(refusal)),
        }
    }

    /// An enrol or remove-last button press: goes through when a valid code armed it within
    /// [`ARM_TTL`] (one press per code); an enrolment needs the name entity set.
    fn on_button(&mut self, action: Action, retained: bool) {
        if retained {
            return self.deliver(Err(refused(&Refusal::Retained)));
        }
        let now = (self.clock)();
        let name = self.enrol_name.clone();
        if action == Action::Enrol && name.is_none() {
            return self.deliver(Err((
                "enrol_no_name".to_owned(),
                "enrol: set the name to enrol first (the enrol name entity)".to_owned(),
            )));
        }
        let result = match self.armed.take().filter(|(_, at)| at.elapsed() < ARM_TTL) {
            Some((step, _)) => Ok(self.local_command(action, format!("otp-{step}"), name, now)),
            None => Err((
                CodeRefusal::Missing.reason().to_owned(),
                format!(
                    "{action}: type a fresh one-time code into the code entity first (a code \
                     arms one press for {} s)",
                    ARM_TTL.as_secs()
                ),
            )),
        };
        self.deliver(result);
    }

    fn local_command(
        &self,
        action: Action,
        nonce: String,
        name: Option<String>,
        now: i64,
    ) -> Command {
        Command { action, ts: now, nonce, name, signed: false }
    }

    /// Checks a one-time code and persists the verifier's memory (used step, wrong codes,
    /// lock-out) before anything is carried out.
    fn check_code(&mut self, code: Option<&str>, now: i64) -> Result<i64, Refused> {
        let Some(otp) = &mut self.otp else {
            return Err(refused(&CodeRefusal::NotConfigured));
        };
        let before = otp.memory().clone();
        let checked = otp.check(code.unwrap_or(""), now);
        // Written only when the memory changed (a step used, a wrong code counted): a missing
        // code or one refused during a lock-out costs no write to the card.
        let saved = if *otp.memory() == before { Ok(()) } else { self.save_state() };
        self.refresh_health();
        let step = checked.map_err(|r| refused(&r))?;
        saved.map(|()| step)
    }

    /// Writes the verifiers' memory (see `super::replay`); the error is the refusal to give.
    fn save_state(&mut self) -> Result<(), Refused> {
        let mut state = match &self.verifier {
            Some(v) => v.state(),
            None => self.replay_state.clone(),
        };
        state.otp = match &self.otp {
            Some(o) => o.memory().clone(),
            None => self.replay_state.otp.clone(),
        };
        match replay::save(&self.replay_dir, &state) {
            Ok(()) => {
                self.replay_state = state;
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "mqtt: cannot write the command replay state in {}: {e}",
                    self.replay_dir.display()
                );
                Err(refused(&Refusal::StateUnwritable))
            }
        }
    }

    /// Hands an accepted command to the loop, or makes a refusal visible: a `command_refused`
    /// event and the last-refusal sensor (both rate-limited).
    fn deliver(&mut self, result: Result<Command, Refused>) {
        let refusal = match result {
            Ok(command) => {
                let action = command.action;
                // Counted before the loop can see the command, so the stats never lag behind.
                bump(&self.shared.commands_accepted);
                match self.cmd_tx.try_send(command) {
                    Ok(()) => {
                        log::info!("mqtt: accepted remote command {action}");
                        return;
                    }
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        self.shared.commands_accepted.fetch_sub(1, Ordering::Relaxed);
                        bump(&self.shared.commands_busy);
                        ("busy".to_owned(), format!("{action}: the command queue is full"))
                    }
                }
            }
            Err(refusal) => refusal,
        };
        bump(&self.shared.commands_refused);
        let (reason, detail) = refusal;
        let now = Instant::now();
        if now.duration_since(self.refusal_window.0) >= Duration::from_secs(60) {
            self.refusal_window = (now, 0);
        }
        if self.refusal_window.1 >= REFUSAL_EVENTS_PER_MINUTE {
            bump(&self.shared.refusals_unpublished);
            return;
        }
        self.refusal_window.1 += 1;
        log::warn!("mqtt: refused a remote command ({reason}): {detail}");
        let state: String =
            format!("{reason}: {detail}").chars().take(events::MAX_STATE_CHARS).collect();
        self.set_state(self.topics.last_refusal(), state.into_bytes());
        self.push_system(unix_ms(), SystemEvent::CommandRefused { reason, detail });
    }

    /// The tamper state (codes locked out) and the outbox depth (at most one publication per
    /// [`OUTBOX_STATE_INTERVAL`], at once when it empties), published when they change.
    fn refresh_health(&mut self) {
        let tamper = self.otp.as_ref().is_some_and(|o| o.locked_out((self.clock)()));
        if self.tamper_on != Some(tamper) {
            self.tamper_on = Some(tamper);
            self.set_state(self.topics.tamper(), events::on_off_payload(tamper).into());
        }
        let pending = self.outbox.stats().pending as u64 + self.spill.len() as u64;
        let due = match self.outbox_published {
            None => true,
            Some((last, _)) if last == pending => false,
            Some((_, at)) => pending == 0 || at.elapsed() >= OUTBOX_STATE_INTERVAL,
        };
        if due {
            self.outbox_published = Some((pending, Instant::now()));
            self.set_state(self.topics.outbox_pending(), pending.to_string().into_bytes());
        }
    }

    /// Clean shutdown: `offline`, the last acknowledgements, DISCONNECT.
    fn finish(&mut self) {
        self.drain_messages();
        // A last try for events the outbox refused (published below when connected).
        self.spill_retry_at = Instant::now();
        self.drain_spill();
        if !self.spill.is_empty() && !self.connected {
            log::error!(
                "mqtt: {} events the outbox refused (disk full?) are lost at shutdown",
                self.spill.len()
            );
        }
        if !self.connected {
            return;
        }
        let deadline = Instant::now() + FINISH_BUDGET;
        self.flush_requests();
        self.pump_outbox();
        let offline_sent = self.request(
            &self.topics.availability(),
            events::AVAILABILITY_OFFLINE.as_bytes(),
            true,
            None,
        );
        // Wait until everything requested (`offline` last) is acknowledged, or the budget ends.
        while offline_sent && Instant::now() < deadline {
            if self.unrouted.is_empty() && self.inflight.is_empty() {
                break;
            }
            match self.connection.recv_timeout(TICK) {
                Ok(Ok(event)) => self.on_event(event),
                Ok(Err(_)) | Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                Err(rumqttc::RecvTimeoutError::Timeout) => {}
            }
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        while Instant::now() < deadline + Duration::from_millis(500) {
            match self.connection.recv_timeout(TICK) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect)))
                | Ok(Err(_))
                | Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                Ok(Ok(event)) => self.on_event(event),
                Err(rumqttc::RecvTimeoutError::Timeout) => {}
            }
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        log::info!("mqtt: disconnected; {} events left in the outbox", self.outbox.stats().pending);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::command::Action;
    use super::*;

    #[test]
    fn defaults_are_valid_and_derive_ids_from_the_device() {
        let config = MqttConfig { device_id: "front-door".to_owned(), ..MqttConfig::default() };
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.effective_client_id(), "portier-front-door");
        assert_eq!(config.effective_base_topic(), "portier/front-door");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let tls = MqttTlsConfig {
            ca_file: "ca.pem".into(),
            client_cert_file: Some("c.pem".into()),
            client_key_file: None,
        };
        let cases: Vec<(&str, MqttConfig)> = vec![
            ("mqtt.device_id", MqttConfig { device_id: "front door".into(), ..Default::default() }),
            ("mqtt.host", MqttConfig { host: String::new(), ..Default::default() }),
            ("mqtt.port", MqttConfig { port: 0, ..Default::default() }),
            ("mqtt.client_id", MqttConfig { client_id: Some(String::new()), ..Default::default() }),
            ("mqtt.username", MqttConfig { password: Some("x".into()), ..Default::default() }),
            (
                "mqtt.password",
                MqttConfig {
                    username: Some("u".into()),
                    password: Some("x".into()),
                    password_file: Some("p".into()),
                    ..Default::default()
                },
            ),
            ("mqtt.tls.client_key_file", MqttConfig { tls: Some(tls), ..Default::default() }),
            (
                "mqtt.tls",
                MqttConfig {
                    username: Some("u".into()),
                    password_file: Some("p".into()),
                    ..Default::default()
                },
            ),
            (
                "mqtt.base_topic",
                MqttConfig { base_topic: Some("a/#".into()), ..Default::default() },
            ),
            (
                "mqtt.discovery_prefix",
                MqttConfig { discovery_prefix: "/ha".into(), ..Default::default() },
            ),
            ("mqtt.keep_alive_s", MqttConfig { keep_alive_s: 1, ..Default::default() }),
            ("mqtt.outbox_max_events", MqttConfig { outbox_max_events: 0, ..Default::default() }),
            ("mqtt.outbox_max_bytes", MqttConfig { outbox_max_bytes: 10, ..Default::default() }),
            ("mqtt.command_window_s", MqttConfig { command_window_s: 0, ..Default::default() }),
        ];
        for (key, config) in cases {
            let (got, reason) = config.validate().unwrap_err();
            assert_eq!(got, key, "{reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn a_password_without_tls_needs_an_explicit_allowance() {
        let login = MqttConfig {
            username: Some("u".into()),
            password: Some("x".into()),
            ..MqttConfig::default()
        };
        assert_eq!(login.validate().unwrap_err().0, "mqtt.tls");
        let allowed = MqttConfig { allow_plaintext_password: true, ..login.clone() };
        assert_eq!(allowed.validate(), Ok(()));
        let tls = MqttTlsConfig {
            ca_file: "ca.pem".into(),
            client_cert_file: None,
            client_key_file: None,
        };
        assert_eq!(MqttConfig { tls: Some(tls), port: 8883, ..login }.validate(), Ok(()));
        // A login without a password, or no login at all, sends nothing secret.
        assert_eq!(
            MqttConfig { username: Some("u".into()), ..MqttConfig::default() }.validate(),
            Ok(())
        );
    }

    #[test]
    fn deserialises_with_units_in_key_names_and_refuses_unknown_keys() {
        let config: MqttConfig = serde_json::from_value(serde_json::json!({
            "enabled": true,
            "host": "broker.lan",
            "port": 8883,
            "keep_alive_s": 20,
            "tls": { "ca_file": "ca.pem" },
            "device_id": "frontdoor",
        }))
        .unwrap();
        assert!(config.enabled && config.port == 8883 && config.keep_alive_s == 20);
        assert_eq!(config.tls.as_ref().unwrap().client_cert_file, None);
        assert!(
            serde_json::from_value::<MqttConfig>(serde_json::json!({ "keep_alive": 5 })).is_err()
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder_and_debug_hides_the_password() {
        let mut config = MqttConfig {
            outbox_dir: "state/outbox".into(),
            command_key_file: Some("/etc/portier/key".into()),
            password: Some("hunter2".into()),
            tls: Some(MqttTlsConfig {
                ca_file: "ca.pem".into(),
                client_cert_file: None,
                client_key_file: None,
            }),
            ..MqttConfig::default()
        };
        config.resolve_paths(Path::new("/etc/portier"));
        assert_eq!(config.outbox_dir, Path::new("/etc/portier/state/outbox"));
        assert_eq!(config.command_key_file.as_deref(), Some(Path::new("/etc/portier/key")));
        assert_eq!(config.tls.as_ref().unwrap().ca_file, Path::new("/etc/portier/ca.pem"));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn start_fails_on_bad_config_and_unreadable_files_but_not_on_a_missing_broker() {
        let dir = std::env::temp_dir().join(format!("portier-mqtt-unit-{}", std::process::id()));
        let device = DeviceInfo::new("frontdoor", "Front door", "0", "m", None).unwrap();
        let base = MqttConfig {
            device_id: "frontdoor".into(),
            // Port 1 on loopback: nothing listens there, connecting fails at once.
            host: "127.0.0.1".into(),
            port: 1,
            outbox_dir: dir.join("outbox"),
            ..MqttConfig::default()
        };
        let bad = MqttConfig { port: 0, ..base.clone() };
        assert!(matches!(
            MqttClient::start(&bad, device.clone(), "r"),
            Err(MqttError::Config { key: "mqtt.port", .. })
        ));
        let other = DeviceInfo::new("backdoor", "Back door", "0", "m", None).unwrap();
        assert!(matches!(
            MqttClient::start(&base, other, "r"),
            Err(MqttError::Config { key: "mqtt.device_id", .. })
        ));
        let no_key = MqttConfig { command_key_file: Some(dir.join("missing")), ..base.clone() };
        assert!(matches!(
            MqttClient::start(&no_key, device.clone(), "r"),
            Err(MqttError::ReadFile { what: "command key file", .. })
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("short.key"), "too short\n").unwrap();
        let short = MqttConfig { command_key_file: Some(dir.join("short.key")), ..base.clone() };
        // Readable by others: refused before it is read, with the fix in the message.
        let err = MqttClient::start(&short, device.clone(), "r").unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("too short"), "the key's content must not appear: {err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.join("short.key"), private).unwrap();
        }
        assert!(matches!(
            MqttClient::start(&short, device.clone(), "r"),
            Err(MqttError::BadFile { what: "command key file", reason, .. }) if !reason.contains("chmod")
        ));
        std::fs::write(dir.join("ca.pem"), "not a certificate").unwrap();
        let tls = MqttConfig {
            tls: Some(MqttTlsConfig {
                ca_file: dir.join("ca.pem"),
                client_cert_file: None,
                client_key_file: None,
            }),
            ..base.clone()
        };
        assert!(matches!(
            MqttClient::start(&tls, device.clone(), "r"),
            Err(MqttError::BadFile { what: "TLS CA file", .. })
        ));

        let client = MqttClient::start(&base, device, "r").unwrap();
        assert!(client.send(Message::Lock(LockState::Locked)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!client.stats().connected);
        client.shutdown(Duration::from_secs(10)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_replay_floor_rises_to_the_start_and_is_written_back() {
        use super::super::command::Seen;
        const NOW: i64 = 1_764_355_200;
        let verifier = || Verifier::new(vec![7; 32], "frontdoor", 30, MAX_NONCES).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let saved = || replay::decode(&std::fs::read(dir.path().join(replay::STATE_NAME)).unwrap());
        // No file (first start, or deleted): nothing signed before the start passes.
        let (mut v, mut alarms) = (verifier(), Vec::new());
        restore_replay(Some(&mut v), None, dir.path(), 30, NOW, &mut alarms);
        assert!(alarms.is_empty(), "{alarms:?}");
        assert_eq!(v.state().floor, Some(NOW));
        let written = saved().unwrap();
        assert_eq!(ReplayState { otp: Default::default(), ..written.clone() }, v.state());
        // One-time codes of every step a code accepted before the start could belong to are
        // refused too.
        assert_eq!(written.otp.last_step, Some(NOW / 30 + 1), "written back at once");
        let old = Verifier::sign(&[7; 32], "frontdoor", Action::Unlock, NOW, "a-recorded-nonce-1");
        assert_eq!(v.verify(&old, false, NOW + 1), Err(Refusal::BelowMark { ts: NOW, floor: NOW }));
        let new =
            Verifier::sign(&[7; 32], "frontdoor", Action::Unlock, NOW + 1, "a-fresh-nonce-001");
        assert!(v.verify(&new, false, NOW + 1).is_ok());
        // A saved state: its nonces and marks are kept, a lower floor is raised, a higher kept.
        for (floor, expect) in [(Some(NOW - 100), NOW + 50), (Some(NOW + 90), NOW + 90)] {
            let state = ReplayState {
                clock_mark: Some(NOW),
                max_ts: Some(NOW),
                floor,
                nonces: vec![Seen { nonce: "a-recorded-nonce-1".into(), ts: NOW }],
                otp: Default::default(),
            };
            replay::save(dir.path(), &state).unwrap();
            let mut v = verifier();
            restore_replay(Some(&mut v), None, dir.path(), 30, NOW + 50, &mut Vec::new());
            assert_eq!(v.state(), ReplayState { floor: Some(expect), ..state });
            assert_eq!(saved().unwrap(), v.state());
        }
    }

    #[test]
    fn a_repeated_log_line_backs_off_to_one_per_ten_minutes_and_counts_the_rest() {
        let start = Instant::now();
        // Lines logged (at seconds since start) and how many each says were left out.
        let run = |log: &mut LogBackoff, every: Duration, over: Duration, from: Duration| {
            let mut lines = Vec::new();
            let mut at = from;
            while at < from + over {
                if let Some(unlogged) = log.allow(start + at) {
                    lines.push((at.as_secs(), unlogged));
                }
                at += every;
            }
            lines
        };
        // A discovery round every 10 s for two hours (a birth flood): 720 rounds.
        let mut log = LogBackoff::default();
        let hours = Duration::from_secs(7200);
        let lines = run(&mut log, DISCOVERY_MIN_INTERVAL, hours, Duration::ZERO);
        let firsts: Vec<u64> = lines.iter().take(7).map(|l| l.0).collect();
        assert_eq!(firsts, [0, 10, 30, 70, 150, 310, 630], "the interval doubles");
        assert!(lines.windows(2).skip(6).all(|w| w[1].0 - w[0].0 == 600), "{lines:?}");
        assert!(lines.len() <= 7 + 11, "{} lines for 720 rounds", lines.len());
        let counted: u64 = lines.iter().map(|l| l.1 + 1).sum();
        assert_eq!(counted + log.unlogged, 720, "every round logged or counted");
        // Quiet for ten minutes: the next line comes at once, and the back-off starts over.
        let after = hours + LOG_BACKOFF_MAX;
        let lines = run(&mut log, DISCOVERY_MIN_INTERVAL, Duration::from_secs(40), after);
        assert_eq!(lines[0].0, after.as_secs());
        assert_eq!(lines.len(), 3, "{lines:?}");
        // A connection dropping twice a second for an hour: a handful of lines.
        let mut log = LogBackoff::default();
        let lines = run(&mut log, Duration::from_millis(500), hours / 2, Duration::ZERO);
        assert!(lines.len() <= 12, "{lines:?}");
        assert_eq!(not_logged(0, "loss"), "");
        assert_eq!(not_logged(3, "round"), "; 3 more rounds not logged");
    }

    #[test]
    fn run_ids_differ_between_starts() {
        let a = run_id();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, run_id());
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    }
}
