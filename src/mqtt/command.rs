//! Authenticated remote commands received over MQTT on `<base>/command`.
//!
//! A remote UNLOCK opens a door, so every command (UNLOCK, LOCK and RELOAD_GALLERY alike: one
//! rule, no exceptions) must be signed with HMAC-SHA256 under a key shared with the sender,
//! carry a timestamp inside a window around the door's clock, and a nonce the door has not
//! accepted before. [`Verifier::verify`] either returns the [`Command`] or a [`Refusal`] with a
//! short reason code ([`Refusal::reason`]) that the caller turns into an event. It never panics,
//! allocates at most a bounded amount (payloads over 1024 bytes are refused before parsing; the
//! nonce cache holds at most `max_nonces` entries) and never logs or prints the key.
//!
//! # Wire format
//!
//! The payload is one UTF-8 JSON object of at most 1024 bytes, published **without** the
//! retain flag:
//!
//! ```json
//! {"device":"front-door","action":"unlock","ts":1764355200,"nonce":"3f9a1c0d5e7b2a48","sig":"449f37b42da23bc820bcf54514c60b2ab0a5488c5ee5431d0e8e108a7a7a3c7c"}
//! ```
//!
//! | field    | type    | rule |
//! | -------- | ------- | ---- |
//! | `device` | string  | must equal the door's configured device id (1..64 chars of `[0-9a-zA-Z_.-]`) |
//! | `action` | string  | `unlock`, `lock` or `reload_gallery` |
//! | `ts`     | integer | unix time in seconds when the command was made; accepted while `abs(now - ts) <= window` |
//! | `nonce`  | string  | 16..64 chars of `[0-9a-zA-Z_-]`, never reused (random, e.g. 16 random bytes in hex) |
//! | `sig`    | string  | 64 **lowercase** hex chars: HMAC-SHA256(key, message) |
//!
//! All five fields are required; any other field, a duplicated field, a non-integer `ts`
//! (`1.0`, `"1"`, `1e9`) or a top-level value that is not an object is refused as malformed.
//! The key is at least 16 bytes (32 random bytes recommended).
//!
//! The signed message is the UTF-8 bytes of five lines joined by `\n`, with no trailing newline:
//!
//! ```text
//! portier-command-v1
//! {device}
//! {action}
//! {ts}
//! {nonce}
//! ```
//!
//! `{ts}` is written in decimal exactly as the integer's value (no leading zeros, `-` for a
//! negative value). The device id is part of the message, so a command signed for one door
//! cannot be replayed against another door that shares the key. Example in Python, which
//! produces the payload above with the key `0123456789abcdef0123456789abcdef` (ASCII):
//!
//! ```python
//! import hashlib, hmac, json, secrets, time
//! def command(key: bytes, device: str, action: str) -> str:
//!     ts, nonce = int(time.time()), secrets.token_hex(16)
//!     msg = f"portier-command-v1\n{device}\n{action}\n{ts}\n{nonce}".encode()
//!     sig = hmac.new(key, msg, hashlib.sha256).hexdigest()
//!     return json.dumps({"device": device, "action": action, "ts": ts, "nonce": nonce, "sig": sig})
//! ```
//!
//! Publish it with QoS 1 and no retain flag, e.g.
//! `mosquitto_pub -t portier/front-door/command -q 1 -m "$payload"` (never `-r`).
//!
//! # Checks, in order
//!
//! 1. retained: a message with the MQTT retain flag is always refused (`retained`), so the
//!    broker can never replay a command at reconnect;
//! 2. size: over 1024 bytes is refused (`too_large`) before any parsing;
//! 3. JSON syntax, then fields and their types, nonce and sig format (`malformed`);
//! 4. `device` equals the configured id (`wrong_device`);
//! 5. `action` is known (`unknown_action`);
//! 6. signature, compared in constant time (`bad_signature`). An uppercase hex `sig` is
//!    refused as `malformed`: the format is lowercase only, one canonical spelling;
//! 7. the clock is not behind the persisted `clock_mark` (`clock_behind`);
//! 8. timestamp: `abs(now - ts) <= window` (`stale`; the edge itself is accepted);
//! 9. `ts` is above the floor: `max_ts - window` and the `floor` of the state (the start time,
//!    or higher after damage) (`below_mark`);
//! 10. nonce not seen before (`replayed`).
//!
//! # Nonce cache
//!
//! A nonce is remembered only after the signature and the timestamp checks have passed, so
//! unauthenticated garbage can never fill the cache. An entry is forgotten once its own `ts`
//! has left the window (`now - ts > window`): a replay carries the same signed `ts`, so the
//! timestamp check refuses it from then on. That is at most 2 x window after the command was
//! accepted (its `ts` was at most one window ahead of the clock then).
//!
//! The cache holds at most `max_nonces` entries. When it is full of entries that are all still
//! inside the window, a new command is **refused** (`malformed`, "nonce cache full") rather than
//! evicting one: an evicted nonce whose `ts` is still inside the window could be replayed.
//! Only a sender holding the key can fill the cache, at a rate of `max_nonces` commands per
//! window; size it above the legitimate command rate (e.g. 256 for a 30 s window).
//!
//! # Across restarts and clock steps
//!
//! The nonce cache alone forgets everything at a restart, and trusts the wall clock. So the
//! verifier also keeps two marks, and its whole memory is a [`ReplayState`] that the MQTT thread
//! persists after every accepted command (`super::replay`, written atomically before the command
//! reaches the loop) and hands back at start:
//!
//! - `max_ts`, the highest accepted `ts`: a command whose `ts` is not newer than
//!   `max_ts - window` is refused (`below_mark`), whatever the clock says. Every nonce that
//!   could still be replayed above that floor is in the persisted cache.
//! - `clock_mark`, the door's own clock at the last acceptance: while the clock reads earlier
//!   than that, it was set back (or a restart came up with a wrong clock), and **every** command
//!   is refused (`clock_behind`), because the window check cannot be trusted then.
//! - `floor`, an extra "refuse `ts` at or below this": the MQTT thread raises it to its start
//!   time at every start (a command signed before the start is refused, so a deleted or
//!   outdated state file cannot reopen the window), and higher when the persisted state was
//!   damaged and had to be put aside (see `super::replay`).
//!
//! These checks come after the signature check, so only a holder of the key learns of them.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Largest accepted payload in bytes; larger ones are refused before parsing.
pub const MAX_PAYLOAD: usize = 1024;
/// Shortest accepted key in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// First line of every signed message: names the format and its version.
pub const DOMAIN: &str = "portier-command-v1";
/// Shortest accepted nonce in characters.
pub const NONCE_MIN_LEN: usize = 16;
/// Longest accepted nonce in characters.
pub const NONCE_MAX_LEN: usize = 64;
/// Longest accepted device id in characters.
pub const DEVICE_MAX_LEN: usize = 64;

/// Length of the hex signature: 32 bytes of HMAC-SHA256.
const SIG_HEX_LEN: usize = 64;
/// Longest text taken from a payload into a refusal (after escaping control characters).
const DETAIL_MAX: usize = 120;

/// What a command asks the door to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open the door (the same as a recognised face).
    Unlock,
    /// Close the door now.
    Lock,
    /// Reload the gallery of enrolled faces from disk.
    ReloadGallery,
    /// Enrol the person at the door live, under [`Command::name`] (from Home Assistant's enrol
    /// button with a one-time code; not a signed command).
    Enrol,
    /// Remove the person last enrolled live (Home Assistant's button with a one-time code; not
    /// a signed command).
    RemoveLast,
}

impl Action {
    /// The name on the wire and in the signed message: `unlock`, `lock`, `reload_gallery`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Unlock => "unlock",
            Action::Lock => "lock",
            Action::ReloadGallery => "reload_gallery",
            Action::Enrol => "enrol",
            Action::RemoveLast => "remove_last",
        }
    }

    /// The action with this wire name (exact, case-sensitive), if any. Only the three signed
    /// actions have one: enrolment comes from Home Assistant's buttons with a one-time code.
    pub fn from_name(name: &str) -> Option<Action> {
        match name {
            "unlock" => Some(Action::Unlock),
            "lock" => Some(Action::Lock),
            "reload_gallery" => Some(Action::ReloadGallery),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub action: Action,
    /// The sender's unix time in seconds, inside the window.
    pub ts: i64,
    /// The nonce, now remembered by the verifier (`otp-<step>` for a one-time code).
    pub nonce: String,
    /// The person's name, for [`Action::Enrol`].
    pub name: Option<String>,
    /// Signed with the command key (an HMAC command); `false` for what Home Assistant's lock
    /// card and buttons send (a one-time code, or an unsigned LOCK).
    pub signed: bool,
}

/// Why a received command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The payload is larger than [`MAX_PAYLOAD`] bytes.
    TooLarge {
        /// Size of the refused payload in bytes.
        len: usize,
    },
    /// Not a JSON object with exactly the expected fields and formats (or the nonce cache is
    /// full); the text says what, with any payload text escaped and shortened.
    Malformed(String),
    /// The `action` is none of `unlock`, `lock`, `reload_gallery` (escaped and shortened).
    UnknownAction(String),
    /// The `device` is not this door's device id.
    WrongDevice,
    /// The signature does not match (wrong key, or a field changed after signing).
    BadSignature,
    /// The timestamp is outside the window.
    Stale {
        /// `now - ts` in seconds (saturating): positive when the command is from the past,
        /// negative when it is from the future.
        skew_s: i64,
    },
    /// The nonce was already accepted inside the window.
    Replayed,
    /// The message had the MQTT retain flag; commands are never accepted from retained
    /// messages.
    Retained,
    /// The door's clock reads earlier than when it last accepted a command: it was set back,
    /// so no timestamp can be judged and every command is refused until it catches up.
    ClockBehind {
        /// How far behind the persisted mark the clock is, in seconds.
        behind_s: i64,
    },
    /// The timestamp is not newer than the persisted floor (the highest accepted timestamp
    /// minus the window, the start time, or the floor set after a damaged state file).
    BelowMark {
        /// The command's timestamp.
        ts: i64,
        /// Timestamps at or below this are refused.
        floor: i64,
    },
    /// The accepted command could not be made durable in the replay state file, so it could
    /// be replayed after a restart: refused (set by the MQTT thread, not by [`Verifier`]).
    StateUnwritable,
}

impl Refusal {
    /// Short snake_case code for events: `too_large`, `malformed`, `unknown_action`,
    /// `wrong_device`, `bad_signature`, `stale`, `replayed`, `retained`, `clock_behind`,
    /// `below_mark`, `state_unwritable`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too_large",
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownAction(_) => "unknown_action",
            Refusal::WrongDevice => "wrong_device",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale { .. } => "stale",
            Refusal::Replayed => "replayed",
            Refusal::Retained => "retained",
            Refusal::ClockBehind { .. } => "clock_behind",
            Refusal::BelowMark { .. } => "below_mark",
            Refusal::StateUnwritable => "state_unwritable",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge { len } => {
                write!(f, "command too large: {len} bytes (at most {MAX_PAYLOAD})")
            }
            Refusal::Malformed(what) => write!(f, "malformed command: {what}"),
            Refusal::UnknownAction(action) => write!(f, "unknown action \"{action}\""),
            Refusal::WrongDevice => f.write_str("command is for another device"),
            Refusal::BadSignature => f.write_str("bad signature"),
            Refusal::Stale { skew_s } if *skew_s >= 0 => {
                write!(f, "stale command: timestamp {skew_s} s in the past, outside the window")
            }
            Refusal::Stale { skew_s } => write!(
                f,
                "stale command: timestamp {} s in the future, outside the window",
                skew_s.unsigned_abs()
            ),
            Refusal::Replayed => f.write_str("replayed command: nonce already used"),
            Refusal::Retained => f.write_str("retained command refused: publish without retain"),
            Refusal::ClockBehind { behind_s } => write!(
                f,
                "the door's clock is {behind_s} s behind the last accepted command: it was set \
                 back; every command is refused until it catches up (check NTP)"
            ),
            Refusal::BelowMark { ts, floor } => write!(
                f,
                "command timestamp {ts} is not newer than {floor}, the floor kept across restarts"
            ),
            Refusal::StateUnwritable => f.write_str(
                "the replay state file cannot be written: refused, it could be replayed after a \
                 restart",
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// One accepted nonce and the signed timestamp it came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The nonce.
    pub nonce: String,
    /// Its signed timestamp.
    pub ts: i64,
}

/// Everything the verifier must remember across a restart (see the module documentation):
/// what `super::replay` persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayState {
    /// The door's clock (unix s) when it last accepted a command.
    pub clock_mark: Option<i64>,
    /// The highest accepted command timestamp.
    pub max_ts: Option<i64>,
    /// Timestamps at or below this are refused (the start time, or higher after a damaged
    /// state file).
    pub floor: Option<i64>,
    /// Nonces accepted inside the window.
    pub nonces: Vec<Seen>,
    /// The one-time code verifier's memory (newest used step, wrong codes, lock-out): kept in
    /// the same file, written by the same rules. Absent in files written before it existed.
    #[serde(default)]
    pub otp: super::otp::OtpMemory,
}

/// Checks received commands: signature, device, timestamp window and replay.
///
/// Holds the key (overwritten with zeros on drop), the device id, the window and the bounded
/// cache of accepted nonces. Its `Debug` output never shows the key.
pub struct Verifier {
    key: Vec<u8>,
    device: String,
    window_s: u32,
    max_nonces: usize,
    nonces: Vec<Seen>,
    clock_mark: Option<i64>,
    max_ts: Option<i64>,
    floor: Option<i64>,
}

/// The JSON object on the wire. Strings are owned, but the payload is at most 1024 bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    device: String,
    action: String,
    ts: i64,
    nonce: String,
    sig: String,
}

impl Verifier {
    /// A verifier for commands addressed to `device`.
    ///
    /// `key` must be at least [`MIN_KEY_LEN`] bytes; `device` 1..[`DEVICE_MAX_LEN`] chars of
    /// `[0-9a-zA-Z_.-]`; `window_s` (at least 1) is the largest accepted `abs(now - ts)`;
    /// `max_nonces` (at least 1) bounds the nonce cache (see the module doc for sizing). The
    /// error text never contains the key.
    ///
    /// # Errors
    ///
    /// A text explaining which argument is out of range.
    pub fn new(
        key: Vec<u8>,
        device: &str,
        window_s: u32,
        max_nonces: usize,
    ) -> Result<Verifier, String> {
        // Build first so that `Drop` wipes the key on every error path too.
        let verifier = Verifier {
            key,
            device: device.to_owned(),
            window_s,
            max_nonces,
            nonces: Vec::new(),
            clock_mark: None,
            max_ts: None,
            floor: None,
        };
        if verifier.key.len() < MIN_KEY_LEN {
            return Err(format!(
                "command key is {} bytes; at least {MIN_KEY_LEN} are needed (32 random bytes \
                 recommended)",
                verifier.key.len()
            ));
        }
        if !valid_device(device) {
            return Err(format!(
                "device id {:?} is not 1..{DEVICE_MAX_LEN} characters of [0-9a-zA-Z_.-]",
                detail(device)
            ));
        }
        if window_s == 0 {
            return Err("command window must be at least 1 second".to_owned());
        }
        if max_nonces == 0 {
            return Err("nonce cache must hold at least 1 nonce".to_owned());
        }
        Ok(verifier)
    }

    /// Checks one received command.
    ///
    /// `retained` is the MQTT retain flag of the received message: a retained command is always
    /// refused ([`Refusal::Retained`]) so that nothing is replayed by the broker at reconnect.
    /// `now_unix` is the door's unix time in seconds (injected so tests use a synthetic clock).
    /// On success the nonce is remembered, so the same payload is refused next time.
    ///
    /// # Errors
    ///
    /// The first failed check, in the order listed in the module doc.
    pub fn verify(
        &mut self,
        payload: &[u8],
        retained: bool,
        now_unix: i64,
    ) -> Result<Command, Refusal> {
        if retained {
            return Err(Refusal::Retained);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(Refusal::TooLarge { len: payload.len() });
        }
        let wire = parse(payload)?;
        let sig = check_fields(&wire)?;
        if wire.device != self.device {
            return Err(Refusal::WrongDevice);
        }
        let action = Action::from_name(&wire.action)
            .ok_or_else(|| Refusal::UnknownAction(detail(&wire.action)))?;
        let mut mac = keyed_mac(&self.key).ok_or(Refusal::BadSignature)?;
        mac.update(message(&wire.device, action, wire.ts, &wire.nonce).as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sig).map_err(|_| Refusal::BadSignature)?;
        if let Some(mark) = self.clock_mark.filter(|&mark| now_unix < mark) {
            return Err(Refusal::ClockBehind { behind_s: mark.saturating_sub(now_unix) });
        }
        let skew_s = now_unix.saturating_sub(wire.ts);
        if skew_s.unsigned_abs() > u64::from(self.window_s) {
            return Err(Refusal::Stale { skew_s });
        }
        if let Some(floor) = self.effective_floor().filter(|&floor| wire.ts <= floor) {
            return Err(Refusal::BelowMark { ts: wire.ts, floor });
        }
        self.remember(&wire.nonce, wire.ts, now_unix)?;
        self.max_ts = Some(self.max_ts.map_or(wire.ts, |m| m.max(wire.ts)));
        self.clock_mark = Some(self.clock_mark.map_or(now_unix, |m| m.max(now_unix)));
        Ok(Command { action, ts: wire.ts, nonce: wire.nonce, name: None, signed: true })
    }

    /// Timestamps at or below this are refused: the highest accepted one minus the window, or
    /// the floor set after damage, whichever is higher.
    fn effective_floor(&self) -> Option<i64> {
        let from_max = self.max_ts.map(|m| m.saturating_sub(i64::from(self.window_s)));
        match (from_max, self.floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The largest accepted `abs(now - ts)`, in seconds.
    pub fn window_s(&self) -> u32 {
        self.window_s
    }

    /// What must survive a restart: persist it after every accepted command.
    pub fn state(&self) -> ReplayState {
        ReplayState {
            clock_mark: self.clock_mark,
            max_ts: self.max_ts,
            floor: self.floor,
            nonces: self.nonces.clone(),
            otp: super::otp::OtpMemory::default(),
        }
    }

    /// Takes back what [`Verifier::state`] gave before a restart. At most `max_nonces` nonces
    /// are kept (the newest by timestamp; a longer list can only come from a file written
    /// with a larger cache): the floor rises to the newest one left out, so none of those can
    /// be replayed.
    pub fn restore(&mut self, state: ReplayState) {
        let ReplayState { clock_mark, max_ts, mut floor, mut nonces, otp: _ } = state;
        nonces.sort_by_key(|seen| std::cmp::Reverse(seen.ts));
        if let Some(newest_dropped) = nonces.get(self.max_nonces).map(|seen| seen.ts) {
            floor = Some(floor.map_or(newest_dropped, |f| f.max(newest_dropped)));
        }
        nonces.truncate(self.max_nonces);
        self.nonces = nonces;
        self.clock_mark = clock_mark;
        self.max_ts = max_ts;
        self.floor = floor;
    }

    /// Builds a signed payload (for tests, the CLI and documentation examples).
    ///
    /// Does not validate its inputs: a key shorter than [`MIN_KEY_LEN`] or a malformed nonce
    /// gives a payload that every verifier refuses. Strings are JSON-escaped.
    pub fn sign(key: &[u8], device: &str, action: Action, ts: i64, nonce: &str) -> Vec<u8> {
        let sig = match keyed_mac(key) {
            Some(mut mac) => {
                mac.update(message(device, action, ts, nonce).as_bytes());
                to_hex(&mac.finalize().into_bytes())
            }
            None => String::new(), // Unreachable: HMAC takes keys of any length.
        };
        serde_json::json!({
            "device": device,
            "action": action.as_str(),
            "ts": ts,
            "nonce": nonce,
            "sig": sig,
        })
        .to_string()
        .into_bytes()
    }

    /// Number of nonces currently remembered (at most `max_nonces`).
    pub fn cached_nonces(&self) -> usize {
        self.nonces.len()
    }

    /// Forgets nonces whose `ts` left the window, refuses a seen one, remembers a new one.
    fn remember(&mut self, nonce: &str, ts: i64, now_unix: i64) -> Result<(), Refusal> {
        let window = i64::from(self.window_s);
        // Safe to forget: a replay carries the same signed ts, which the window check refuses.
        self.nonces.retain(|seen| now_unix.saturating_sub(seen.ts) <= window);
        if self.nonces.iter().any(|seen| seen.nonce == nonce) {
            return Err(Refusal::Replayed);
        }
        if self.nonces.len() >= self.max_nonces {
            // Every cached nonce is still replayable inside the window: evicting one would let
            // its command through again, so refuse the new command instead.
            return Err(Refusal::Malformed(format!(
                "nonce cache full ({} commands inside the window); try again later",
                self.max_nonces
            )));
        }
        self.nonces.push(Seen { nonce: nonce.to_owned(), ts });
        Ok(())
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("key", &"<redacted>")
            .field("device", &self.device)
            .field("window_s", &self.window_s)
            .field("max_nonces", &self.max_nonces)
            .field("cached_nonces", &self.nonces.len())
            .finish()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        wipe(&mut self.key);
    }
}

/// Overwrites `buf` with zeros in a way the optimiser keeps (best effort without `unsafe`).
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&mut *buf);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// HMAC-SHA256 keyed with `key`; `None` never happens (HMAC accepts any key length).
fn keyed_mac(key: &[u8]) -> Option<HmacSha256> {
    <HmacSha256 as Mac>::new_from_slice(key).ok()
}

/// The signed message: five lines joined by `\n`, no trailing newline.
fn message(device: &str, action: Action, ts: i64, nonce: &str) -> String {
    format!("{DOMAIN}\n{device}\n{}\n{ts}\n{nonce}", action.as_str())
}

/// JSON syntax and field types: exactly one object with exactly the five fields.
fn parse(payload: &[u8]) -> Result<Wire, Refusal> {
    // A derived struct also deserialises from a JSON array; the format is an object only.
    let first = payload.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(Refusal::Malformed("not a JSON object".to_owned()));
    }
    serde_json::from_slice::<Wire>(payload).map_err(|e| Refusal::Malformed(detail(&e.to_string())))
}

/// Formats of nonce and sig; returns the decoded signature.
fn check_fields(wire: &Wire) -> Result<[u8; 32], Refusal> {
    let nonce_ok = (NONCE_MIN_LEN..=NONCE_MAX_LEN).contains(&wire.nonce.len())
        && wire.nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !nonce_ok {
        return Err(Refusal::Malformed(format!(
            "nonce must be {NONCE_MIN_LEN}..{NONCE_MAX_LEN} characters of [0-9a-zA-Z_-]"
        )));
    }
    decode_sig(&wire.sig)
        .ok_or_else(|| Refusal::Malformed("sig must be 64 lowercase hex characters".to_owned()))
}

fn valid_device(device: &str) -> bool {
    (1..=DEVICE_MAX_LEN).contains(&device.len())
        && device.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Strict lowercase hex of exactly 64 characters into 32 bytes.
fn decode_sig(text: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() != SIG_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (hi, lo) = (nibble(pair[0])?, nibble(pair[1])?);
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Payload text fit for an event: control characters escaped, at most [`DETAIL_MAX`] chars.
fn detail(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= DETAIL_MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const DEVICE: &str = "front-door";
    const NOW: i64 = 1_764_355_200;
    const WINDOW: u32 = 30;
    const NONCE: &str = "3f9a1c0d5e7b2a48";

    fn verifier() -> Verifier {
        Verifier::new(KEY.to_vec(), DEVICE, WINDOW, 64).unwrap()
    }

    fn signed(action: Action, ts: i64, nonce: &str) -> Vec<u8> {
        Verifier::sign(KEY, DEVICE, action, ts, nonce)
    }

    fn malformed(result: Result<Command, Refusal>) -> String {
        match result {
            Err(Refusal::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// Payload from raw field texts (each value already JSON), in the given order.
    fn raw(fields: &[(&str, &str)]) -> Vec<u8> {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn known_vector_matches_documentation() {
        let payload = signed(Action::Unlock, NOW, NONCE);
        let text = String::from_utf8(payload.clone()).unwrap();
        let doc = r#"{"device":"front-door","action":"unlock","ts":1764355200,"nonce":"3f9a1c0d5e7b2a48","sig":"449f37b42da23bc820bcf54514c60b2ab0a5488c5ee5431d0e8e108a7a7a3c7c"}"#;
        let ours: serde_json::Value = serde_json::from_str(&text).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert_eq!(ours, theirs);
        // The documented payload verifies as written (field order does not matter).
        let cmd = verifier().verify(doc.as_bytes(), false, NOW).unwrap();
        assert_eq!(cmd.action, Action::Unlock);
    }

    #[test]
    fn valid_unlock_accepted() {
        let mut v = verifier();
        let cmd = v.verify(&signed(Action::Unlock, NOW, NONCE), false, NOW).unwrap();
        assert_eq!(
            cmd,
            Command {
                action: Action::Unlock,
                ts: NOW,
                nonce: NONCE.to_owned(),
                name: None,
                signed: true
            }
        );
        assert_eq!(v.cached_nonces(), 1);
    }

    #[test]
    fn valid_lock_and_reload_accepted() {
        let mut v = verifier();
        let lock = v.verify(&signed(Action::Lock, NOW, "nonce-lock-000001"), false, NOW).unwrap();
        assert_eq!(lock.action, Action::Lock);
        let reload = signed(Action::ReloadGallery, NOW - 5, "nonce_reload_0001");
        assert_eq!(v.verify(&reload, false, NOW).unwrap().action, Action::ReloadGallery);
    }

    #[test]
    fn whitespace_and_field_order_do_not_matter() {
        let mut v = verifier();
        let sig = String::from_utf8(signed(Action::Unlock, NOW, NONCE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&sig).unwrap();
        let payload = format!(
            " {{ \"sig\" : {} ,\n\"nonce\":\"{NONCE}\", \"ts\": {NOW}, \"action\":\"unlock\",\t\
             \"device\":\"{DEVICE}\" }}\r\n",
            value["sig"]
        );
        assert!(v.verify(payload.as_bytes(), false, NOW).is_ok());
    }

    #[test]
    fn refuses_retained_even_if_valid() {
        let mut v = verifier();
        let payload = signed(Action::Unlock, NOW, NONCE);
        assert_eq!(v.verify(&payload, true, NOW), Err(Refusal::Retained));
        assert_eq!(v.cached_nonces(), 0);
        // Not consumed: the same command without the retain flag still goes through.
        assert!(v.verify(&payload, false, NOW).is_ok());
    }

    #[test]
    fn refuses_oversized() {
        let mut v = verifier();
        let mut payload = signed(Action::Unlock, NOW, NONCE);
        payload.resize(2048, b' ');
        assert_eq!(v.verify(&payload, false, NOW), Err(Refusal::TooLarge { len: 2048 }));
    }

    #[test]
    fn size_limit_is_inclusive() {
        let mut v = verifier();
        let mut payload = signed(Action::Unlock, NOW, NONCE);
        payload.resize(MAX_PAYLOAD + 1, b' ');
        assert_eq!(v.verify(&payload, false, NOW), Err(Refusal::TooLarge { len: 1025 }));
        payload.truncate(MAX_PAYLOAD);
        assert!(v.verify(&payload, false, NOW).is_ok());
    }

    #[test]
    fn refuses_malformed_json() {
        let mut v = verifier();
        for payload in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"device\":",
            b"not json",
            b"null",
            b"42",
            b"\"unlock\"",
            b"\xef\xbb\xbf{}",
            b"{}{}",
            b"{\"device\":\"front-door\"} trailing",
            b"{\"device\":\"\xff\xfe\"}",
        ] {
            malformed(v.verify(payload, false, NOW));
        }
    }

    #[test]
    fn refuses_array_form() {
        let mut v = verifier();
        let value: serde_json::Value =
            serde_json::from_slice(&signed(Action::Unlock, NOW, NONCE)).unwrap();
        let array = serde_json::json!([DEVICE, "unlock", NOW, NONCE, value["sig"]]);
        let what = malformed(v.verify(array.to_string().as_bytes(), false, NOW));
        assert_eq!(what, "not a JSON object");
    }

    #[test]
    fn refuses_missing_field() {
        let mut v = verifier();
        let full = signed(Action::Unlock, NOW, NONCE);
        let value: serde_json::Value = serde_json::from_slice(&full).unwrap();
        for field in ["device", "action", "ts", "nonce", "sig"] {
            let mut partial = value.clone();
            partial.as_object_mut().unwrap().remove(field);
            let what = malformed(v.verify(partial.to_string().as_bytes(), false, NOW));
            assert!(what.contains(field), "{what}");
        }
    }

    #[test]
    fn refuses_wrong_types() {
        let mut v = verifier();
        let sig = "\"449f37b42da23bc820bcf54514c60b2ab0a5488c5ee5431d0e8e108a7a7a3c7c\"";
        let ok = [
            ("device", "\"front-door\""),
            ("action", "\"unlock\""),
            ("ts", "1764355200"),
            ("nonce", "\"3f9a1c0d5e7b2a48\""),
            ("sig", sig),
        ];
        assert!(v.verify(&raw(&ok), false, NOW).is_ok());
        let wrong: &[(&str, &str)] = &[
            ("device", "1"),
            ("device", "null"),
            ("action", "[\"unlock\"]"),
            ("action", "true"),
            ("ts", "\"1764355200\""),
            ("ts", "1764355200.0"),
            ("ts", "1.7643552e9"),
            ("ts", "99999999999999999999"),
            ("ts", "null"),
            ("nonce", "3"),
            ("nonce", "{}"),
            ("sig", "64"),
        ];
        for &(field, bad) in wrong {
            let fields: Vec<(&str, &str)> =
                ok.iter().map(|&(k, val)| if k == field { (k, bad) } else { (k, val) }).collect();
            malformed(v.verify(&raw(&fields), false, NOW));
        }
    }

    #[test]
    fn refuses_unknown_and_duplicate_fields() {
        let mut v = verifier();
        let mut value: serde_json::Value =
            serde_json::from_slice(&signed(Action::Unlock, NOW, NONCE)).unwrap();
        value.as_object_mut().unwrap().insert("extra".to_owned(), serde_json::json!(1));
        let what = malformed(v.verify(value.to_string().as_bytes(), false, NOW));
        assert!(what.contains("extra"), "{what}");

        let text = String::from_utf8(signed(Action::Unlock, NOW, NONCE)).unwrap();
        let dup = text.replacen('{', "{\"action\":\"lock\",", 1);
        let what = malformed(v.verify(dup.as_bytes(), false, NOW));
        assert!(what.contains("duplicate"), "{what}");
        assert_eq!(v.cached_nonces(), 0);
    }

    #[test]
    fn refuses_bad_nonce_format() {
        let mut v = verifier();
        let long = "n".repeat(NONCE_MAX_LEN + 1);
        for nonce in ["short-nonce-15c", "", "3f9a1c0d 5e7b2a48", "3f9a1c0d5e7b2a4é", &long] {
            let what = malformed(v.verify(&signed(Action::Unlock, NOW, nonce), false, NOW));
            assert!(what.starts_with("nonce"), "{what}");
        }
        let max = "N".repeat(NONCE_MAX_LEN);
        assert!(v.verify(&signed(Action::Unlock, NOW, &max), false, NOW).is_ok());
        let min = "_-".repeat(NONCE_MIN_LEN / 2);
        assert!(v.verify(&signed(Action::Unlock, NOW, &min), false, NOW).is_ok());
    }

    #[test]
    fn refuses_unknown_action() {
        let mut v = verifier();
        for action in ["open", "UNLOCK", "Unlock", "", "unlock "] {
            let payload = raw(&[
                ("device", "\"front-door\""),
                ("action", &format!("\"{action}\"")),
                ("ts", "1764355200"),
                ("nonce", "\"3f9a1c0d5e7b2a48\""),
                ("sig", &format!("\"{}\"", "0".repeat(64))),
            ]);
            assert_eq!(
                v.verify(&payload, false, NOW),
                Err(Refusal::UnknownAction(action.to_owned()))
            );
        }
        // Control characters are escaped and long names shortened.
        let payload = raw(&[
            ("device", "\"front-door\""),
            ("action", &format!("\"\\n{}\"", "x".repeat(500))),
            ("ts", "1764355200"),
            ("nonce", "\"3f9a1c0d5e7b2a48\""),
            ("sig", &format!("\"{}\"", "0".repeat(64))),
        ]);
        match v.verify(&payload, false, NOW) {
            Err(Refusal::UnknownAction(a)) => {
                assert!(a.starts_with("\\n") && a.chars().count() <= DETAIL_MAX + 2, "{a}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_wrong_device() {
        let mut v = verifier();
        let payload = Verifier::sign(KEY, "back-door", Action::Unlock, NOW, NONCE);
        assert_eq!(v.verify(&payload, false, NOW), Err(Refusal::WrongDevice));
        // Relabelling a command signed for another door breaks its signature.
        let relabelled =
            String::from_utf8(payload).unwrap().replace("\"back-door\"", "\"front-door\"");
        assert_eq!(v.verify(relabelled.as_bytes(), false, NOW), Err(Refusal::BadSignature));
    }

    #[test]
    fn refuses_wrong_key() {
        let mut v = verifier();
        let payload = Verifier::sign(b"another key, 16+ bytes", DEVICE, Action::Unlock, NOW, NONCE);
        assert_eq!(v.verify(&payload, false, NOW), Err(Refusal::BadSignature));
        assert_eq!(v.cached_nonces(), 0);
    }

    #[test]
    fn refuses_changed_field_after_signing() {
        let mut v = verifier();
        let text = String::from_utf8(signed(Action::Lock, NOW, NONCE)).unwrap();
        let tampered = [
            text.replace("\"lock\"", "\"unlock\""),
            text.replace(&NOW.to_string(), &(NOW + 1).to_string()),
            text.replace(NONCE, "3f9a1c0d5e7b2a49"),
        ];
        for payload in tampered {
            assert_eq!(v.verify(payload.as_bytes(), false, NOW), Err(Refusal::BadSignature));
        }
    }

    #[test]
    fn refuses_flipped_sig_char() {
        let mut v = verifier();
        let text = String::from_utf8(signed(Action::Unlock, NOW, NONCE)).unwrap();
        let sig_at = text.find("\"sig\":\"").unwrap() + 7;
        for i in 0..SIG_HEX_LEN {
            let mut bytes = text.clone().into_bytes();
            let c = bytes[sig_at + i];
            bytes[sig_at + i] = if c == b'0' { b'1' } else { b'0' };
            assert_eq!(v.verify(&bytes, false, NOW), Err(Refusal::BadSignature), "char {i}");
        }
        assert!(v.verify(text.as_bytes(), false, NOW).is_ok());
    }

    #[test]
    fn refuses_uppercase_or_short_hex_sig() {
        let mut v = verifier();
        let text = String::from_utf8(signed(Action::Unlock, NOW, NONCE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sig = value["sig"].as_str().unwrap();
        let upper = text.replace(sig, &sig.to_ascii_uppercase());
        let what = malformed(v.verify(upper.as_bytes(), false, NOW));
        assert!(what.contains("lowercase hex"), "{what}");
        for bad in [&sig[..63], &format!("{sig}0"), &sig.replacen(|_| true, "g", 1)[..]] {
            let payload = text.replace(sig, bad);
            malformed(v.verify(payload.as_bytes(), false, NOW));
        }
        assert_eq!(v.cached_nonces(), 0);
    }

    #[test]
    fn refuses_stale_past_and_future() {
        let mut v = verifier();
        let w = i64::from(WINDOW);
        let past = signed(Action::Unlock, NOW - w - 1, NONCE);
        assert_eq!(v.verify(&past, false, NOW), Err(Refusal::Stale { skew_s: w + 1 }));
        let future = signed(Action::Unlock, NOW + w + 1, NONCE);
        assert_eq!(v.verify(&future, false, NOW), Err(Refusal::Stale { skew_s: -(w + 1) }));
        let ancient = signed(Action::Unlock, 0, NONCE);
        assert_eq!(v.verify(&ancient, false, NOW), Err(Refusal::Stale { skew_s: NOW }));
        assert_eq!(v.cached_nonces(), 0);
    }

    #[test]
    fn window_edge_accepted() {
        let mut v = verifier();
        let w = i64::from(WINDOW);
        assert!(v
            .verify(&signed(Action::Unlock, NOW - w, "edge-past-0000001"), false, NOW)
            .is_ok());
        assert!(v.verify(&signed(Action::Lock, NOW + w, "edge-future-00001"), false, NOW).is_ok());
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        for ts in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            for now in [i64::MIN, -1, 0, NOW, i64::MAX] {
                let mut v = verifier();
                let result = v.verify(&signed(Action::Unlock, ts, NONCE), false, now);
                let expected = now.saturating_sub(ts).unsigned_abs() <= u64::from(WINDOW);
                assert_eq!(result.is_ok(), expected, "ts {ts} now {now}: {result:?}");
            }
        }
    }

    #[test]
    fn replay_refused() {
        let mut v = verifier();
        let payload = signed(Action::Unlock, NOW, NONCE);
        assert!(v.verify(&payload, false, NOW).is_ok());
        assert_eq!(v.verify(&payload, false, NOW), Err(Refusal::Replayed));
        assert_eq!(v.verify(&payload, false, NOW + 10), Err(Refusal::Replayed));
        // The same nonce in a different, correctly signed command is refused too.
        let other = signed(Action::Lock, NOW + 1, NONCE);
        assert_eq!(v.verify(&other, false, NOW + 1), Err(Refusal::Replayed));
    }

    #[test]
    fn replay_after_expiry_refused_as_stale() {
        let mut v = verifier();
        let w = i64::from(WINDOW);
        // Signed one window in the future: remembered for 2 x window after acceptance.
        let payload = signed(Action::Unlock, NOW + w, NONCE);
        assert!(v.verify(&payload, false, NOW).is_ok());
        assert_eq!(v.verify(&payload, false, NOW + 2 * w), Err(Refusal::Replayed));
        assert_eq!(v.cached_nonces(), 1);
        // Once the entry can be dropped, the replay is refused by the window.
        assert_eq!(
            v.verify(&payload, false, NOW + 2 * w + 1),
            Err(Refusal::Stale { skew_s: w + 1 })
        );
        // A fresh command purges the expired entry.
        assert!(v
            .verify(
                &signed(Action::Lock, NOW + 2 * w + 1, "fresh-nonce-00001"),
                false,
                NOW + 2 * w + 1
            )
            .is_ok());
        assert_eq!(v.cached_nonces(), 1);
        assert_eq!(v.verify(&payload, false, NOW + 1000), Err(Refusal::Stale { skew_s: 1000 - w }));
    }

    #[test]
    fn nonce_cache_is_bounded_and_never_evicts_valid_nonces() {
        let mut v = Verifier::new(KEY.to_vec(), DEVICE, WINDOW, 3).unwrap();
        let nonce = |i: usize| format!("bounded-nonce-{i:04}");
        for i in 0..3 {
            assert!(v.verify(&signed(Action::Lock, NOW, &nonce(i)), false, NOW).is_ok());
        }
        assert_eq!(v.cached_nonces(), 3);
        // Full of nonces still inside the window: refuse rather than evict.
        let what = malformed(v.verify(&signed(Action::Unlock, NOW, &nonce(3)), false, NOW));
        assert!(what.contains("nonce cache full"), "{what}");
        assert_eq!(v.cached_nonces(), 3);
        // A replay of the first one is still caught.
        let first = signed(Action::Lock, NOW, &nonce(0));
        assert_eq!(v.verify(&first, false, NOW + 1), Err(Refusal::Replayed));
        // Once they leave the window, room is made again.
        let later = NOW + i64::from(WINDOW) + 1;
        assert!(v.verify(&signed(Action::Unlock, later, &nonce(3)), false, later).is_ok());
        assert_eq!(v.cached_nonces(), 1);
        for i in 0..1000 {
            let _ = v.verify(&signed(Action::Lock, later, &nonce(10 + i)), false, later);
            assert!(v.cached_nonces() <= 3);
        }
    }

    #[test]
    fn garbage_never_enters_the_cache() {
        let mut v = Verifier::new(KEY.to_vec(), DEVICE, WINDOW, 2).unwrap();
        for i in 0..100 {
            let nonce = format!("garbage-nonce-{i:04}");
            let forged = Verifier::sign(b"not the key at all", DEVICE, Action::Unlock, NOW, &nonce);
            assert_eq!(v.verify(&forged, false, NOW), Err(Refusal::BadSignature));
            let stale = signed(Action::Unlock, NOW - 1000, &nonce);
            assert!(matches!(v.verify(&stale, false, NOW), Err(Refusal::Stale { .. })));
        }
        assert_eq!(v.cached_nonces(), 0);
        assert!(v.verify(&signed(Action::Unlock, NOW, NONCE), false, NOW).is_ok());
    }

    #[test]
    fn new_validates_arguments() {
        let short = Verifier::new(vec![7; MIN_KEY_LEN - 1], DEVICE, WINDOW, 8).unwrap_err();
        assert!(short.contains("15 bytes") && short.contains("16"), "{short}");
        assert!(Verifier::new(vec![7; MIN_KEY_LEN], DEVICE, WINDOW, 8).is_ok());
        assert!(Verifier::new(KEY.to_vec(), DEVICE, 0, 8).unwrap_err().contains("window"));
        assert!(Verifier::new(KEY.to_vec(), DEVICE, WINDOW, 0).unwrap_err().contains("nonce"));
        for device in ["", "front door", "door\nx", "tür", &"d".repeat(DEVICE_MAX_LEN + 1)] {
            let err = Verifier::new(KEY.to_vec(), device, WINDOW, 8).unwrap_err();
            assert!(err.contains("device id"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(Verifier::new(KEY.to_vec(), "porch.cam_2-B", WINDOW, 8).is_ok());
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
        let v = Verifier::new(key.clone(), DEVICE, WINDOW, 8).unwrap();
        let debug = format!("{v:?} {v:#?}");
        let hex = to_hex(&key);
        assert!(!debug.to_ascii_lowercase().contains(&hex[..8]), "{debug}");
        assert!(!debug.contains(&format!("{:?}", &key[..4])), "{debug}");
        assert!(debug.contains("redacted") && debug.contains(DEVICE), "{debug}");
        let err = Verifier::new(b"secretsecret".to_vec(), DEVICE, WINDOW, 8).unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn wipe_zeroes_the_buffer() {
        let mut key = KEY.to_vec();
        wipe(&mut key);
        assert!(key.iter().all(|&b| b == 0));
        assert_eq!(key.len(), KEY.len());
    }

    #[test]
    fn reasons_and_display() {
        let cases = [
            (Refusal::TooLarge { len: 2048 }, "too_large"),
            (Refusal::Malformed("x".to_owned()), "malformed"),
            (Refusal::UnknownAction("open".to_owned()), "unknown_action"),
            (Refusal::WrongDevice, "wrong_device"),
            (Refusal::BadSignature, "bad_signature"),
            (Refusal::Stale { skew_s: 31 }, "stale"),
            (Refusal::Stale { skew_s: -31 }, "stale"),
            (Refusal::Replayed, "replayed"),
            (Refusal::Retained, "retained"),
            (Refusal::ClockBehind { behind_s: 5 }, "clock_behind"),
            (Refusal::BelowMark { ts: 1, floor: 2 }, "below_mark"),
            (Refusal::StateUnwritable, "state_unwritable"),
        ];
        for (refusal, reason) in cases {
            assert_eq!(refusal.reason(), reason);
            let text = refusal.to_string();
            assert!(!text.is_empty());
            assert_eq!(text.chars().next(), text.chars().next().map(|c| c.to_ascii_lowercase()));
        }
        assert!(Refusal::Stale { skew_s: -31 }.to_string().contains("31 s in the future"));
        for action in [Action::Unlock, Action::Lock, Action::ReloadGallery] {
            assert_eq!(Action::from_name(action.as_str()), Some(action));
            assert_eq!(action.to_string(), action.as_str());
        }
    }

    #[test]
    fn fuzz_random_bytes_never_verify() {
        let mut v = verifier();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        const JSONISH: &[u8] = b"{}[]\":,0123456789abcdef-_ .\\ntrufalsdevicectionsgvoke";
        for i in 0..10_000 {
            let len = rng.below(1200);
            let json_like = i % 2 == 0;
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    if json_like {
                        JSONISH[rng.below(JSONISH.len())]
                    } else {
                        (rng.next() & 0xff) as u8
                    }
                })
                .collect();
            let now = match i % 5 {
                0 => i64::MIN,
                1 => i64::MAX,
                _ => NOW,
            };
            assert!(v.verify(&payload, rng.next() & 1 == 0, now).is_err());
        }
        assert_eq!(v.cached_nonces(), 0);
    }

    #[test]
    fn fuzz_mutations_never_verify() {
        let mut v = verifier();
        let original = signed(Action::Unlock, NOW, NONCE);
        // Consume the original first: a mutation that keeps every field (e.g. added
        // whitespace) is then a replay, and any other change breaks the signature.
        assert!(v.verify(&original, false, NOW).is_ok());
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut outcomes = std::collections::BTreeMap::new();
        for _ in 0..10_000 {
            let mut payload = original.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(payload.len() + 1);
                match rng.below(6) {
                    0 if at < payload.len() => payload[at] ^= 1 << rng.below(8),
                    1 if at < payload.len() => payload[at] = (rng.next() & 0xff) as u8,
                    2 if at < payload.len() => payload[at] = b"{}\":,0aA\\ -"[rng.below(11)],
                    3 if at < payload.len() => {
                        payload.remove(at);
                    }
                    4 => payload.insert(at, (rng.next() & 0xff) as u8),
                    _ => payload.truncate(at),
                }
            }
            let result = v.verify(&payload, false, NOW);
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(&payload));
            if let Err(refusal) = result {
                *outcomes.entry(refusal.reason()).or_insert(0u32) += 1;
            }
        }
        assert_eq!(v.cached_nonces(), 1);
        assert!(outcomes.get("malformed").copied().unwrap_or(0) > 1000, "{outcomes:?}");
        assert!(outcomes.get("bad_signature").copied().unwrap_or(0) > 10, "{outcomes:?}");
    }

    #[test]
    fn replay_after_a_restart_is_refused_with_the_restored_state() {
        let mut v = verifier();
        let payload = signed(Action::Unlock, NOW, NONCE);
        assert!(v.verify(&payload, false, NOW).is_ok());
        let state = v.state();
        let mut restarted = verifier();
        restarted.restore(state.clone());
        assert_eq!(restarted.verify(&payload, false, NOW + 1), Err(Refusal::Replayed));
        // Without the state, the same payload would pass: the persistence is what refuses it.
        assert!(verifier().verify(&payload, false, NOW + 1).is_ok());
        // A fresh command still passes after the restart.
        assert!(restarted
            .verify(&signed(Action::Lock, NOW + 2, "fresh-nonce-00002"), false, NOW + 2)
            .is_ok());
    }

    #[test]
    fn a_clock_set_back_refuses_every_command_until_it_catches_up() {
        let mut v = verifier();
        assert!(v.verify(&signed(Action::Unlock, NOW, NONCE), false, NOW).is_ok());
        let mut restarted = verifier();
        restarted.restore(v.state());
        let back = NOW - 3600;
        // A command signed for the wrong clock, fresh by that clock: refused.
        let fresh = signed(Action::Unlock, back, "set-back-nonce-01");
        assert_eq!(
            restarted.verify(&fresh, false, back),
            Err(Refusal::ClockBehind { behind_s: 3600 })
        );
        // The old command: refused whatever the clock says.
        let old = signed(Action::Unlock, back, "recorded-nonce-01");
        assert_eq!(
            restarted.verify(&old, false, back),
            Err(Refusal::ClockBehind { behind_s: 3600 })
        );
        // Once the clock is back at the mark, commands are judged again.
        assert!(restarted
            .verify(&signed(Action::Lock, NOW + 5, "caught-up-nonce-1"), false, NOW + 5)
            .is_ok());
    }

    #[test]
    fn timestamps_at_or_below_the_mark_are_refused() {
        let mut v = verifier();
        let w = i64::from(WINDOW);
        // Accepted from a sender whose clock runs a window ahead.
        assert!(v.verify(&signed(Action::Lock, NOW + w, "ahead-nonce-00001"), false, NOW).is_ok());
        let at_floor = signed(Action::Lock, NOW, "floor-nonce-00001");
        assert_eq!(
            v.verify(&at_floor, false, NOW),
            Err(Refusal::BelowMark { ts: NOW, floor: NOW })
        );
        assert!(v.verify(&signed(Action::Lock, NOW + 1, "above-nonce-00001"), false, NOW).is_ok());
        // A floor set after damage.
        let mut damaged = verifier();
        damaged.restore(ReplayState { floor: Some(NOW + w), ..ReplayState::default() });
        assert!(matches!(
            damaged.verify(&signed(Action::Lock, NOW + w, NONCE), false, NOW + w),
            Err(Refusal::BelowMark { .. })
        ));
        assert!(damaged
            .verify(&signed(Action::Lock, NOW + w + 1, NONCE), false, NOW + w + 1)
            .is_ok());
    }

    #[test]
    fn restore_keeps_at_most_max_nonces_and_raises_the_floor_over_the_rest() {
        let mut v = Verifier::new(KEY.to_vec(), DEVICE, WINDOW, 2).unwrap();
        let nonces =
            (0..4).map(|i| Seen { nonce: format!("restored-nonce-{i:02}"), ts: NOW + i }).collect();
        v.restore(ReplayState { nonces, ..ReplayState::default() });
        assert_eq!(v.cached_nonces(), 2);
        let dropped = signed(Action::Lock, NOW + 1, "restored-nonce-01");
        assert!(matches!(v.verify(&dropped, false, NOW + 1), Err(Refusal::BelowMark { .. })));
    }
}
