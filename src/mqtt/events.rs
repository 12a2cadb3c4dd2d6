//! What the appliance publishes over MQTT: turns appliance events into topics and JSON payloads.
//! The topic tree and every payload are documented in the README (MQTT section); this module is
//! the one place that spells them, so a change here is a change to that table.
//!
//! All topics hang under one validated base ([`Topics`], e.g. `portier/frontdoor`). Events
//! (access, door, system) are JSON objects wrapped in an [`Envelope`] that carries a unique,
//! per-boot monotonically increasing id, so a subscriber can drop QoS-1 duplicates. States that
//! Home Assistant shows (lock, door contact, last person, similarity, backend, availability) are
//! plain retained strings built by the helpers here.
//!
//! Floats that are not finite (a NaN similarity from a degenerate embedding, say) serialise as
//! JSON `null`: serde_json writes `null` for NaN and ±infinity instead of failing, so building a
//! payload never fails and never panics.
//!
//! Must not: do I/O. No sockets, no clock, no files: the time, the boot id and the sequence
//! number come in as arguments, and the caller publishes the bytes.

use serde::Serialize;

/// Longest accepted topic base, in bytes. MQTT allows 65 535-byte topics; a base this long is
/// already a configuration mistake, and a short cap keeps every derived topic far from the limit.
pub const MAX_BASE_LEN: usize = 256;

/// Availability payload published (retained) once connected.
pub const AVAILABILITY_ONLINE: &str = "online";
/// Availability payload of the last will (retained), and published before a clean disconnect.
pub const AVAILABILITY_OFFLINE: &str = "offline";
/// A binary state that is on (camera problem, code lock-out, the alarms' binary sensors):
/// Home Assistant's binary sensor default.
pub const BINARY_ON: &str = "ON";
/// A binary state that is off.
pub const BINARY_OFF: &str = "OFF";
/// Door contact payload: the door is open.
pub const CONTACT_OPEN: &str = BINARY_ON;
/// Door contact payload: the door is closed.
pub const CONTACT_CLOSED: &str = BINARY_OFF;
/// Retained-state payload for "no value": Home Assistant's MQTT sensor shows it as unknown.
pub const STATE_NONE: &str = "None";
/// Home Assistant refuses sensor states longer than this many characters.
pub const MAX_STATE_CHARS: usize = 255;
/// Longest name accepted from Home Assistant's enrol name entity, in characters.
pub const MAX_ENROL_NAME: usize = 64;

/// Checks a topic base (or a discovery prefix): non-empty, at most [`MAX_BASE_LEN`] bytes, no
/// wildcard (`+`, `#`), no NUL or other control character, no leading or trailing `/`, no empty
/// level (`a//b`), and no leading `$` (reserved for broker topics such as `$SYS`).
///
/// The error names the base and the rule it breaks.
pub fn validate_base(base: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("MQTT topic base {base:?}: {why}"));
    if base.is_empty() {
        return fail("must not be empty");
    }
    if base.len() > MAX_BASE_LEN {
        return fail(&format!("longer than {MAX_BASE_LEN} bytes"));
    }
    if base.contains(['+', '#']) {
        return fail("must not contain the MQTT wildcards '+' or '#'");
    }
    if base.chars().any(char::is_control) {
        return fail("must not contain NUL or other control characters");
    }
    if base.starts_with('/') || base.ends_with('/') {
        return fail("must not start or end with '/'");
    }
    if base.contains("//") {
        return fail("must not contain an empty level ('//')");
    }
    if base.starts_with('$') {
        return fail("must not start with '$' (reserved for broker topics)");
    }
    Ok(())
}

/// The appliance's topic tree, all under one base such as `portier/frontdoor`.
///
/// Retained: availability, counters, lock state, door contact and the three sensors. Not
/// retained: the event topics (a replayed access event would be a lie) and the command topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The validated base, without leading or trailing `/`.
    pub base: String,
}

impl Topics {
    /// A topic tree under `base`, validated by [`validate_base`].
    pub fn new(base: &str) -> Result<Topics, String> {
        validate_base(base)?;
        Ok(Topics { base: base.to_owned() })
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.base)
    }

    /// `<base>/availability`: [`AVAILABILITY_ONLINE`] / [`AVAILABILITY_OFFLINE`], retained;
    /// offline is the last will.
    pub fn availability(&self) -> String {
        self.topic("availability")
    }

    /// `<base>/event/access`: enveloped [`AccessEvent`]s, not retained.
    pub fn access(&self) -> String {
        self.topic("event/access")
    }

    /// `<base>/event/door`: enveloped [`DoorEvent`]s, not retained.
    pub fn door(&self) -> String {
        self.topic("event/door")
    }

    /// `<base>/event/system`: enveloped [`SystemEvent`]s, not retained.
    pub fn system(&self) -> String {
        self.topic("event/system")
    }

    /// `<base>/counters`: enveloped [`Counters`], retained.
    pub fn counters(&self) -> String {
        self.topic("counters")
    }

    /// `<base>/lock/state`: a [`LockState::payload`], retained.
    pub fn lock_state(&self) -> String {
        self.topic("lock/state")
    }

    /// `<base>/door/contact`: [`CONTACT_OPEN`] / [`CONTACT_CLOSED`], retained.
    pub fn contact_state(&self) -> String {
        self.topic("door/contact")
    }

    /// `<base>/alarm/state`: [`alarm_payload`], retained.
    pub fn alarm_state(&self) -> String {
        self.topic("alarm/state")
    }

    /// `<base>/sensor/last_person`: [`last_person_payload`], retained.
    pub fn last_person(&self) -> String {
        self.topic("sensor/last_person")
    }

    /// `<base>/sensor/similarity`: [`similarity_payload`], retained.
    pub fn last_similarity(&self) -> String {
        self.topic("sensor/similarity")
    }

    /// `<base>/sensor/backend`: [`Backend::as_str`], retained.
    pub fn last_backend(&self) -> String {
        self.topic("sensor/backend")
    }

    /// `<base>/npu/state`: [`npu_payload`], retained.
    pub fn npu_state(&self) -> String {
        self.topic("npu/state")
    }

    /// `<base>/command`: subscribed; signed JSON commands.
    pub fn command(&self) -> String {
        self.topic("command")
    }

    /// `<base>/lock/set`: subscribed; the Home Assistant lock entity's command topic. Takes
    /// what the lock card sends through its `command_template`
    /// (`{"ha":"LOCK"|"UNLOCK","code":...}`; UNLOCK needs a valid one-time code), a plain
    /// `LOCK`, and signed JSON commands (same format as on [`Topics::command`]).
    pub fn lock_command(&self) -> String {
        self.topic("lock/set")
    }

    /// `<base>/sensor/last_event`: the kind of the last access event of any kind
    /// ([`AccessKind::as_str`]), retained.
    pub fn last_event(&self) -> String {
        self.topic("sensor/last_event")
    }

    /// `<base>/command/refusal`: the last refused command or code, `<reason>: <detail>`,
    /// retained.
    pub fn last_refusal(&self) -> String {
        self.topic("command/refusal")
    }

    /// `<base>/camera/problem`: `ON` while the camera delivers no frames, else `OFF`, retained.
    pub fn camera_problem(&self) -> String {
        self.topic("camera/problem")
    }

    /// `<base>/tamper/state`: `ON` while one-time codes are locked out after too many wrong
    /// ones, else `OFF`, retained.
    pub fn tamper(&self) -> String {
        self.topic("tamper/state")
    }

    /// `<base>/outbox/pending`: events waiting in the outbox for the broker, retained.
    pub fn outbox_pending(&self) -> String {
        self.topic("outbox/pending")
    }

    /// `<base>/enrol/name`: the name for the next enrolment from Home Assistant (the text
    /// entity's command and state topic, retained by Home Assistant), subscribed.
    pub fn enrol_name(&self) -> String {
        self.topic("enrol/name")
    }

    /// `<base>/enrol/code`: the one-time code for the next enrol or remove press (the code
    /// text entity's command topic, never retained), subscribed.
    pub fn enrol_code(&self) -> String {
        self.topic("enrol/code")
    }

    /// `<base>/enrol/code/state`: the code entity's state, always blank (retained): Home
    /// Assistant keeps no code.
    pub fn enrol_code_state(&self) -> String {
        self.topic("enrol/code/state")
    }

    /// `<base>/enrol/start`: the enrol button's command topic, subscribed.
    pub fn enrol_start(&self) -> String {
        self.topic("enrol/start")
    }

    /// `<base>/enrol/remove_last`: the remove-last button's command topic, subscribed.
    pub fn enrol_remove_last(&self) -> String {
        self.topic("enrol/remove_last")
    }
}

/// The outcome of one recognition attempt at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    /// A gallery match above the threshold: the door was released.
    Granted,
    /// A known person who is not allowed now (schedule, disabled): the door stayed locked.
    Denied,
    /// A face that matches nobody in the gallery.
    Unknown,
    /// A second person passed on one grant.
    Tailgating,
    /// The liveness check failed (photo, screen, mask).
    SpoofSuspected,
}

impl AccessKind {
    /// Every kind, in declaration order (Home Assistant's `event_types`).
    pub const ALL: [AccessKind; 5] = [
        AccessKind::Granted,
        AccessKind::Denied,
        AccessKind::Unknown,
        AccessKind::Tailgating,
        AccessKind::SpoofSuspected,
    ];

    /// The name used in payloads (`"spoof_suspected"`), identical to the serde name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessKind::Granted => "granted",
            AccessKind::Denied => "denied",
            AccessKind::Unknown => "unknown",
            AccessKind::Tailgating => "tailgating",
            AccessKind::SpoofSuspected => "spoof_suspected",
        }
    }
}

/// Where the face embedding was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// ONNX Runtime on the Raspberry Pi's CPU.
    Cpu,
    /// The Hailo-8 NPU.
    Npu,
}

impl Backend {
    /// The name used in payloads and on the backend sensor (`"cpu"`, `"npu"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Npu => "npu",
        }
    }
}

/// One access decision, published on [`Topics::access`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessEvent {
    /// What was decided.
    pub kind: AccessKind,
    /// The face tracker's id for the person in front of the camera.
    pub track_id: u64,
    /// Display name of the best match, if any.
    pub person: Option<String>,
    /// Gallery id of the best match, if any.
    pub person_id: Option<i64>,
    /// Cosine similarity to the best match (`null` when none, or when not finite).
    pub similarity: Option<f32>,
    /// Cosine similarity to the second-best person (the margin tells how sure the match is).
    pub second_similarity: Option<f32>,
    /// Where the embedding was computed (`null` for an event without an embedding of its
    /// own: tailgating, a suspected spoof).
    pub backend: Option<Backend>,
    /// Distance between the eyes in the frame, in pixels (face size).
    pub eye_distance_px: f32,
    /// L2 norm of the raw embedding before normalisation (a quality hint).
    pub embedding_norm: f32,
    /// Liveness score, if a liveness check ran: the mean live probability of the votes that
    /// confirmed the identity (passed on enough of them for `granted`, too few for
    /// `spoof_suspected`).
    pub liveness: Option<f32>,
    /// The liveness check that scored it (e.g. `minifasnet_v2+v1se`); left out of the payload
    /// when no check ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_model: Option<String>,
}

/// What happened to the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorKind {
    /// The contact reports the door open.
    Opened,
    /// The contact reports the door closed.
    Closed,
    /// The door stayed open longer than allowed.
    HeldOpen,
    /// The door opened without a release.
    Forced,
    /// The strike was released.
    Unlocked,
    /// The strike was locked again.
    Locked,
}

/// One door event, published on [`Topics::door`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoorEvent {
    /// What happened.
    pub kind: DoorKind,
    /// Why, when known: `"face"`, `"exit_button"`, `"remote"`, ...
    pub reason: Option<String>,
}

/// Appliance health and housekeeping, published on [`Topics::system`]. Serialises with the
/// variant name in `kind` (`{"kind":"camera_lost","reason":"..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SystemEvent {
    /// The camera stopped delivering frames.
    CameraLost {
        /// What the camera layer reported.
        reason: String,
    },
    /// The camera delivers frames again.
    CameraBack,
    /// The NPU failed; embeddings are computed on the CPU.
    NpuFallback {
        /// What the NPU layer reported.
        reason: String,
    },
    /// The NPU is back in use.
    NpuBack,
    /// People were enrolled or removed.
    GalleryChanged {
        /// Enrolled people after the change.
        people: usize,
    },
    /// A command was refused (not signed JSON, bad signature, stale, replayed, ...).
    CommandRefused {
        /// The command module's snake_case refusal code: `"malformed"`, `"bad_signature"`,
        /// `"stale"`, `"replayed"`, `"retained"`, ...
        reason: String,
        /// Human-readable detail.
        detail: String,
    },
    /// A state file was damaged: it was renamed aside (kept for inspection) and a fresh one
    /// started. An alarm: events or replay protection may have been lost with it.
    StateDamaged {
        /// Which file: `"outbox"` or `"command_replay"`.
        file: String,
        /// Where the damaged file is kept (empty if it could not be renamed).
        kept_as: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A state file cannot be written (read-only or failing card, a path that is not a
    /// folder). An alarm: for `"command_replay"` every remote command is refused
    /// (`state_unwritable`) until it can be written.
    StateUnwritable {
        /// Which file: `"command_replay"`.
        file: String,
        /// The file, the error, and what follows from it.
        detail: String,
    },
    /// The MQTT thread failed and was restarted (events waited meanwhile).
    MqttRestarted {
        /// Restarts since the appliance started.
        restarts: u64,
        /// What went wrong.
        reason: String,
    },
    /// The appliance started.
    Started {
        /// The portier version.
        version: String,
    },
    /// A live enrolment asked for from Home Assistant began: the person should look at the
    /// camera, alone.
    EnrolStarted {
        /// The name being enrolled.
        person: String,
        /// Seconds of capture.
        seconds: u32,
    },
    /// A person was enrolled from the running service.
    Enrolled {
        /// The name.
        person: String,
        /// Templates stored (for the CPU model).
        templates: usize,
        /// Enrolled people after the change.
        people: usize,
    },
    /// A live enrolment from the running service was refused; nothing was stored.
    EnrolFailed {
        /// The name that was to be enrolled.
        person: String,
        /// Why.
        reason: String,
    },
    /// The person last enrolled from the running service was removed again.
    Removed {
        /// The name.
        person: String,
        /// Enrolled people after the change.
        people: usize,
    },
    /// The remove-last button found nobody to remove (nobody was enrolled since the start).
    RemoveFailed {
        /// Why.
        reason: String,
    },
}

impl SystemEvent {
    /// Every `kind` a system event can have (Home Assistant's `event_types` of the system
    /// event entity, which refuses any other).
    pub const KINDS: [&'static str; 15] = [
        "camera_lost",
        "camera_back",
        "npu_fallback",
        "npu_back",
        "gallery_changed",
        "command_refused",
        "state_damaged",
        "state_unwritable",
        "mqtt_restarted",
        "started",
        "enrol_started",
        "enrolled",
        "enrol_failed",
        "removed",
        "remove_failed",
    ];
}

/// Running totals since start, published (retained) on [`Topics::counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Camera frames processed.
    pub frames: u64,
    /// Faces detected.
    pub faces: u64,
    /// Access granted.
    pub granted: u64,
    /// Access denied.
    pub denied: u64,
    /// Unknown faces.
    pub unknown: u64,
    /// Errors of any kind.
    pub errors: u64,
    /// Events dropped because the outgoing queue was full.
    pub dropped_events: u64,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// The lock state published (retained) on [`Topics::lock_state`]; Home Assistant's lock entity
/// is configured with exactly these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// The strike is locked.
    Locked,
    /// The strike is released.
    Unlocked,
    /// The lock reports a fault.
    Jammed,
    /// Locking in progress.
    Locking,
    /// Unlocking in progress.
    Unlocking,
}

impl LockState {
    /// Every state.
    pub const ALL: [LockState; 5] = [
        LockState::Locked,
        LockState::Unlocked,
        LockState::Jammed,
        LockState::Locking,
        LockState::Unlocking,
    ];

    /// The payload: `LOCKED`, `UNLOCKED`, `JAMMED`, `LOCKING` or `UNLOCKING`.
    pub const fn payload(self) -> &'static str {
        match self {
            LockState::Locked => "LOCKED",
            LockState::Unlocked => "UNLOCKED",
            LockState::Jammed => "JAMMED",
            LockState::Locking => "LOCKING",
            LockState::Unlocking => "UNLOCKING",
        }
    }
}

/// The door contact payload: [`CONTACT_OPEN`] (`ON`) or [`CONTACT_CLOSED`] (`OFF`).
pub const fn contact_payload(open: bool) -> &'static str {
    if open {
        CONTACT_OPEN
    } else {
        CONTACT_CLOSED
    }
}

/// A binary state's payload: [`BINARY_ON`] or [`BINARY_OFF`].
pub const fn on_off_payload(on: bool) -> &'static str {
    if on {
        BINARY_ON
    } else {
        BINARY_OFF
    }
}

/// The door alarm payloads: none, the door held open too long, the door forced open.
pub const ALARM_PAYLOADS: [&str; 3] = ["none", "held_open", "forced"];

/// The alarm state payload: `none`, `held_open` or `forced` ([`ALARM_PAYLOADS`]).
pub const fn alarm_payload(alarm: Option<crate::door::Alarm>) -> &'static str {
    match alarm {
        None => ALARM_PAYLOADS[0],
        Some(crate::door::Alarm::HeldOpen) => ALARM_PAYLOADS[1],
        Some(crate::door::Alarm::Forced) => ALARM_PAYLOADS[2],
    }
}

/// The NPU state payloads ([`npu_payload`]).
pub const NPU_PAYLOADS: [&str; 5] =
    ["npu", "cpu_fallback", "not_installed", "templates_missing", "off"];

/// The NPU state payload: `npu` (close faces on the NPU), `cpu_fallback` (the NPU failed:
/// every face on the CPU while it is retried), `not_installed` (its model file is not on the
/// device: CPU only), `templates_missing` (people enrolled without its templates: CPU until
/// they are enrolled again) or `off` (no NPU configured).
pub const fn npu_payload(state: crate::app::NpuUse) -> &'static str {
    use crate::app::NpuUse;
    match state {
        NpuUse::Active => NPU_PAYLOADS[0],
        NpuUse::Fallback => NPU_PAYLOADS[1],
        NpuUse::NotInstalled => NPU_PAYLOADS[2],
        NpuUse::TemplatesMissing => NPU_PAYLOADS[3],
        NpuUse::Off => NPU_PAYLOADS[4],
    }
}

/// The similarity sensor payload: three decimals (`0.612`), or [`STATE_NONE`] when there is no
/// similarity or it is not finite, which Home Assistant shows as unknown (a numeric sensor would
/// reject `NaN`).
pub fn similarity_payload(similarity: Option<f32>) -> String {
    match similarity {
        Some(s) if s.is_finite() => format!("{s:.3}"),
        _ => STATE_NONE.to_owned(),
    }
}

/// The last-person sensor payload: the name, cut to [`MAX_STATE_CHARS`] characters (Home
/// Assistant drops longer states), or [`STATE_NONE`] (shown as unknown) when there is none or
/// it is blank. A person literally named `None` also shows as unknown.
pub fn last_person_payload(person: Option<&str>) -> String {
    match person.map(str::trim) {
        Some(name) if !name.is_empty() => name.chars().take(MAX_STATE_CHARS).collect(),
        _ => STATE_NONE.to_owned(),
    }
}

/// Every published event is wrapped in an envelope with a unique, monotonically increasing id
/// (so subscribers can detect QoS-1 duplicates) and the time. The event's own fields are
/// flattened into the same JSON object after the envelope's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<T> {
    /// `"<boot_id>-<seq>"`: unique across boots, increasing within one.
    pub id: String,
    /// Sequence number within this boot, starting at 1.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T17:13:38.123Z`.
    pub time: String,
    /// The device id (as in Home Assistant discovery).
    pub device: String,
    /// The event.
    #[serde(flatten)]
    pub event: T,
}

impl<T> Envelope<T> {
    /// Wraps `event` as number `seq` of boot `boot_id`, stamped with `unix_ms`.
    pub fn new(boot_id: &str, seq: u64, unix_ms: i64, device: &str, event: T) -> Envelope<T> {
        Envelope {
            id: format!("{boot_id}-{seq}"),
            seq,
            time: rfc3339_utc_ms(unix_ms),
            device: device.to_owned(),
            event,
        }
    }
}

/// Hands out envelopes with consecutive sequence numbers (1, 2, 3, ...) for one boot. The boot
/// id must differ between boots (the kernel's `/proc/sys/kernel/random/boot_id`, read by the
/// caller), so ids stay unique when the sequence restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequencer {
    boot_id: String,
    device: String,
    next: u64,
}

impl Sequencer {
    /// A sequencer whose first envelope gets `seq` 1.
    pub fn new(boot_id: &str, device: &str) -> Sequencer {
        Sequencer { boot_id: boot_id.to_owned(), device: device.to_owned(), next: 1 }
    }

    /// The sequence number the next envelope will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Wraps `event` in the next envelope, stamped with `unix_ms`.
    pub fn wrap<T>(&mut self, unix_ms: i64, event: T) -> Envelope<T> {
        let seq = self.next;
        self.next = self.next.saturating_add(1);
        Envelope::new(&self.boot_id, seq, unix_ms, &self.device, event)
    }
}

const MS_PER_DAY: i64 = 86_400_000;
/// 0000-01-01T00:00:00.000Z, the earliest instant RFC 3339 can write.
const MIN_RFC3339_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z, the latest instant RFC 3339 can write.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-28T17:13:38.123Z`). Negative values are before 1970 (`-1` is
/// `1969-12-31T23:59:59.999Z`). Instants outside years 0000-9999, which RFC 3339 cannot write,
/// are clamped to `0000-01-01T00:00:00.000Z` and `9999-12-31T23:59:59.999Z`.
pub fn rfc3339_utc_ms(unix_ms: i64) -> String {
    let ms = unix_ms.clamp(MIN_RFC3339_MS, MAX_RFC3339_MS);
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let of_day = ms.rem_euclid(MS_PER_DAY);
    let (hour, minute) = (of_day / 3_600_000, of_day / 60_000 % 60);
    let (second, milli) = (of_day / 1000 % 60, of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01: Howard Hinnant's
/// `civil_from_days`, with eras of 400 years starting on March 1st.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The JSON bytes of an envelope. Never fails and never panics: the event types of this module
/// always serialise (non-finite floats become `null`); should a foreign `T` not serialise as a
/// JSON object (which `flatten` requires), the payload is `{}`.
pub fn to_payload<T: Serialize>(env: &Envelope<T>) -> Vec<u8> {
    serde_json::to_vec(env).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("portier/frontdoor").unwrap()
    }

    const T0: i64 = 1_795_886_018_123; // 2026-11-28T17:13:38.123Z

    fn payload<T: Serialize>(event: T) -> String {
        let env = Envelope::new("b00t", 7, T0, "frontdoor", event);
        String::from_utf8(to_payload(&env)).unwrap()
    }

    const HEAD: &str =
        r#"{"id":"b00t-7","seq":7,"time":"2026-11-28T17:13:38.123Z","device":"frontdoor","#;

    fn granted() -> AccessEvent {
        AccessEvent {
            kind: AccessKind::Granted,
            track_id: 42,
            person: Some("Ada".into()),
            person_id: Some(3),
            similarity: Some(0.61),
            second_similarity: Some(0.25),
            backend: Some(Backend::Npu),
            eye_distance_px: 58.5,
            embedding_norm: 21.25,
            liveness: Some(0.75),
            liveness_model: None,
        }
    }

    #[test]
    fn topic_base_validation() {
        for good in ["portier", "portier/frontdoor", "a/b/c", "home-1/door_2", "tür/eingang"] {
            assert!(Topics::new(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_BASE_LEN + 1);
        for bad in [
            "",
            "/portier",
            "portier/",
            "/",
            "portier/+",
            "portier/#",
            "porti+er",
            "a#b",
            "a\0b",
            "a\nb",
            "a//b",
            "$SYS/portier",
            long.as_str(),
        ] {
            let err = Topics::new(bad).unwrap_err();
            assert!(err.contains("MQTT topic base"), "{bad:?}: {err}");
        }
        assert!(Topics::new(&"a".repeat(MAX_BASE_LEN)).is_ok());
    }

    #[test]
    fn topic_paths() {
        let t = topics();
        let all = [
            (t.availability(), "portier/frontdoor/availability"),
            (t.access(), "portier/frontdoor/event/access"),
            (t.door(), "portier/frontdoor/event/door"),
            (t.system(), "portier/frontdoor/event/system"),
            (t.counters(), "portier/frontdoor/counters"),
            (t.lock_state(), "portier/frontdoor/lock/state"),
            (t.contact_state(), "portier/frontdoor/door/contact"),
            (t.last_person(), "portier/frontdoor/sensor/last_person"),
            (t.last_similarity(), "portier/frontdoor/sensor/similarity"),
            (t.last_backend(), "portier/frontdoor/sensor/backend"),
            (t.command(), "portier/frontdoor/command"),
            (t.lock_command(), "portier/frontdoor/lock/set"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (got, want) in &all {
            assert_eq!(got, want);
            assert!(seen.insert(got.clone()), "duplicate topic {got}");
        }
    }

    #[test]
    fn payload_access_granted() {
        assert_eq!(
            payload(granted()),
            format!(
                "{HEAD}{}",
                concat!(
                    r#""kind":"granted","track_id":42,"person":"Ada","person_id":3,"#,
                    r#""similarity":0.61,"second_similarity":0.25,"backend":"npu","#,
                    r#""eye_distance_px":58.5,"embedding_norm":21.25,"liveness":0.75}"#,
                )
            )
        );
    }

    #[test]
    fn payload_access_unknown_has_nulls() {
        let ev = AccessEvent {
            kind: AccessKind::Unknown,
            person: None,
            person_id: None,
            second_similarity: None,
            backend: None,
            liveness: None,
            ..granted()
        };
        assert_eq!(
            payload(ev),
            format!(
                "{HEAD}{}",
                concat!(
                    r#""kind":"unknown","track_id":42,"person":null,"person_id":null,"#,
                    r#""similarity":0.61,"second_similarity":null,"backend":null,"#,
                    r#""eye_distance_px":58.5,"embedding_norm":21.25,"liveness":null}"#,
                )
            )
        );
    }

    #[test]
    fn payload_access_kinds() {
        for kind in AccessKind::ALL {
            let json = payload(AccessEvent { kind, ..granted() });
            assert!(json.contains(&format!(r#""kind":"{}""#, kind.as_str())), "{json}");
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(serde_json::to_value(Backend::Npu).unwrap(), Backend::Npu.as_str());
        assert_eq!(serde_json::to_value(Backend::Cpu).unwrap(), Backend::Cpu.as_str());
    }

    #[test]
    fn nan_and_infinity_serialise_as_null() {
        let ev = AccessEvent {
            similarity: Some(f32::NAN),
            second_similarity: Some(f32::INFINITY),
            eye_distance_px: f32::NEG_INFINITY,
            embedding_norm: f32::NAN,
            ..granted()
        };
        let json = payload(ev);
        assert!(json.contains(r#""similarity":null"#), "{json}");
        assert!(json.contains(r#""second_similarity":null"#), "{json}");
        assert!(json.contains(r#""eye_distance_px":null"#), "{json}");
        assert!(json.contains(r#""embedding_norm":null"#), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["similarity"].is_null());
    }

    #[test]
    fn payload_door_events() {
        let cases = [
            (DoorKind::Opened, None, r#""kind":"opened","reason":null}"#),
            (DoorKind::Closed, None, r#""kind":"closed","reason":null}"#),
            (DoorKind::HeldOpen, None, r#""kind":"held_open","reason":null}"#),
            (DoorKind::Forced, None, r#""kind":"forced","reason":null}"#),
            (DoorKind::Unlocked, Some("face"), r#""kind":"unlocked","reason":"face"}"#),
            (DoorKind::Locked, Some("remote"), r#""kind":"locked","reason":"remote"}"#),
        ];
        for (kind, reason, tail) in cases {
            let ev = DoorEvent { kind, reason: reason.map(str::to_owned) };
            assert_eq!(payload(ev), format!("{HEAD}{tail}"));
        }
    }

    #[test]
    fn payload_system_events() {
        let s = |x: &str| x.to_owned();
        let cases = [
            (
                SystemEvent::CameraLost { reason: s("timeout") },
                r#""kind":"camera_lost","reason":"timeout"}"#,
            ),
            (SystemEvent::CameraBack, r#""kind":"camera_back"}"#),
            (
                SystemEvent::NpuFallback { reason: s("hailo: -1") },
                r#""kind":"npu_fallback","reason":"hailo: -1"}"#,
            ),
            (SystemEvent::NpuBack, r#""kind":"npu_back"}"#),
            (
                SystemEvent::GalleryChanged { people: 12 },
                r#""kind":"gallery_changed","people":12}"#,
            ),
            (
                SystemEvent::CommandRefused {
                    reason: s("malformed"),
                    detail: s("no \"sig\" field"),
                },
                r#""kind":"command_refused","reason":"malformed","detail":"no \"sig\" field"}"#,
            ),
            (
                SystemEvent::StateUnwritable { file: s("command_replay"), detail: s("EROFS") },
                r#""kind":"state_unwritable","file":"command_replay","detail":"EROFS"}"#,
            ),
            (
                SystemEvent::Started { version: s("0.1.0") },
                r#""kind":"started","version":"0.1.0"}"#,
            ),
        ];
        for (ev, tail) in cases {
            assert_eq!(payload(ev), format!("{HEAD}{tail}"));
        }
    }

    #[test]
    fn every_system_event_kind_is_announced() {
        let s = String::new;
        // One of each variant (a new variant fails to compile here until it is listed).
        let all = |e: &SystemEvent| match e {
            SystemEvent::CameraLost { .. }
            | SystemEvent::CameraBack
            | SystemEvent::NpuFallback { .. }
            | SystemEvent::NpuBack
            | SystemEvent::GalleryChanged { .. }
            | SystemEvent::CommandRefused { .. }
            | SystemEvent::StateDamaged { .. }
            | SystemEvent::StateUnwritable { .. }
            | SystemEvent::MqttRestarted { .. }
            | SystemEvent::Started { .. }
            | SystemEvent::EnrolStarted { .. }
            | SystemEvent::Enrolled { .. }
            | SystemEvent::EnrolFailed { .. }
            | SystemEvent::Removed { .. }
            | SystemEvent::RemoveFailed { .. } => (),
        };
        let events = [
            SystemEvent::CameraLost { reason: s() },
            SystemEvent::CameraBack,
            SystemEvent::NpuFallback { reason: s() },
            SystemEvent::NpuBack,
            SystemEvent::GalleryChanged { people: 1 },
            SystemEvent::CommandRefused { reason: s(), detail: s() },
            SystemEvent::StateDamaged { file: s(), kept_as: s(), detail: s() },
            SystemEvent::StateUnwritable { file: s(), detail: s() },
            SystemEvent::MqttRestarted { restarts: 1, reason: s() },
            SystemEvent::Started { version: s() },
            SystemEvent::EnrolStarted { person: s(), seconds: 5 },
            SystemEvent::Enrolled { person: s(), templates: 5, people: 1 },
            SystemEvent::EnrolFailed { person: s(), reason: s() },
            SystemEvent::Removed { person: s(), people: 0 },
            SystemEvent::RemoveFailed { reason: s() },
        ];
        let kinds: Vec<String> = events
            .iter()
            .inspect(|e| all(e))
            .map(|e| serde_json::to_value(e).unwrap()["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, SystemEvent::KINDS);
    }

    #[test]
    fn payload_counters() {
        let c = Counters {
            frames: 1000,
            faces: 40,
            granted: 5,
            denied: 1,
            unknown: 2,
            errors: 0,
            dropped_events: 3,
            uptime_s: 3600,
        };
        assert_eq!(
            payload(c),
            format!(
                "{HEAD}{}",
                concat!(
                    r#""frames":1000,"faces":40,"granted":5,"denied":1,"unknown":2,"#,
                    r#""errors":0,"dropped_events":3,"uptime_s":3600}"#,
                )
            )
        );
    }

    #[test]
    fn payload_of_a_non_object_falls_back_to_empty_object() {
        let env = Envelope::new("b", 1, 0, "d", 5_u32);
        assert_eq!(to_payload(&env), b"{}");
    }

    #[test]
    fn rfc3339_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1, "1970-01-01T00:00:00.001Z"),
            (1_709_208_000_000, "2024-02-29T12:00:00.000Z"),
            (T0, "2026-11-28T17:13:38.123Z"),
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-86_400_000, "1969-12-31T00:00:00.000Z"),
            (-2_203_891_200_000, "1900-03-01T00:00:00.000Z"),
            (-2_203_891_200_001, "1900-02-28T23:59:59.999Z"),
            (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
            (MIN_RFC3339_MS, "0000-01-01T00:00:00.000Z"),
            (MAX_RFC3339_MS, "9999-12-31T23:59:59.999Z"),
            (i64::MIN, "0000-01-01T00:00:00.000Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(rfc3339_utc_ms(ms), want, "{ms}");
        }
    }

    #[test]
    fn rfc3339_day_boundaries_are_consecutive() {
        // Walk 1968-2101 day by day: every date is one after the previous, months and leap
        // years included.
        let mut prev = rfc3339_utc_ms(-2 * 365 * MS_PER_DAY);
        for day in (-2 * 365 + 1)..(132 * 365) {
            let cur = rfc3339_utc_ms(day * MS_PER_DAY);
            assert!(cur > prev, "{prev} then {cur}");
            assert!(cur.ends_with("T00:00:00.000Z"));
            let day_of_month: u32 = cur[8..10].parse().unwrap();
            let prev_day: u32 = prev[8..10].parse().unwrap();
            assert!(day_of_month == prev_day + 1 || day_of_month == 1, "{prev} then {cur}");
            prev = cur;
        }
        assert_eq!(rfc3339_utc_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn sequencer_ids_are_unique_and_increasing() {
        let mut s = Sequencer::new("b00t", "frontdoor");
        assert_eq!(s.next_seq(), 1);
        let a = s.wrap(T0, SystemEvent::CameraBack);
        let b = s.wrap(T0, SystemEvent::NpuBack);
        assert_eq!((a.seq, a.id.as_str()), (1, "b00t-1"));
        assert_eq!((b.seq, b.id.as_str()), (2, "b00t-2"));
        assert_eq!(a.device, "frontdoor");
        assert_eq!(a.time, "2026-11-28T17:13:38.123Z");
        assert_eq!(s.next_seq(), 3);
    }

    #[test]
    fn state_payloads() {
        assert_eq!(similarity_payload(Some(0.61234)), "0.612");
        assert_eq!(similarity_payload(Some(-0.05)), "-0.050");
        assert_eq!(similarity_payload(None), "None");
        assert_eq!(similarity_payload(Some(f32::NAN)), "None");
        assert_eq!(similarity_payload(Some(f32::INFINITY)), "None");
        assert_eq!(last_person_payload(Some("Ada")), "Ada");
        assert_eq!(last_person_payload(Some("  ")), "None");
        assert_eq!(last_person_payload(None), "None");
        let long = "é".repeat(300);
        assert_eq!(last_person_payload(Some(&long)).chars().count(), MAX_STATE_CHARS);
        assert_eq!(contact_payload(true), "ON");
        assert_eq!(contact_payload(false), "OFF");
        assert_eq!((on_off_payload(true), on_off_payload(false)), ("ON", "OFF"));
        let locks: Vec<_> = LockState::ALL.iter().map(|s| s.payload()).collect();
        assert_eq!(locks, ["LOCKED", "UNLOCKED", "JAMMED", "LOCKING", "UNLOCKING"]);
    }
}
