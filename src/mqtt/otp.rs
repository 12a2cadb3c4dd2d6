//! One-time codes for Home Assistant's lock card and buttons: RFC 6238 time-based codes (TOTP:
//! HMAC-SHA-1, 30 s steps, 6 digits), what every authenticator app shows.
//!
//! Home Assistant's templates cannot compute an HMAC, so its lock card cannot send a signed
//! command (`super::command`). What it can send is a code the user types: the MQTT lock's
//! `code_format` makes the card ask for one and its `command_template` puts it into the payload.
//! [`Otp::check`] decides whether such a code opens the door:
//!
//! - the code of the current 30 s step, or of the step before or after it (a phone clock a few
//!   seconds off), matches, compared in constant time;
//! - **each step opens once, and never one older than the newest accepted**: a code seen on the
//!   network, in Home Assistant's history or over a shoulder is worth nothing afterwards
//!   (`code_reused`). The newest accepted step is part of the verifier's persisted memory
//!   ([`OtpMemory`] inside `ReplayState`), written before the command reaches the loop, so a
//!   restart forgets nothing;
//! - **wrong codes are rate-limited**: after [`FAILURES_BEFORE_LOCKOUT`] wrong (or malformed)
//!   codes in a row every code is refused for [`LOCKOUT_MIN_S`], doubling at each further
//!   lock-out up to [`LOCKOUT_MAX_S`]; an accepted code resets both. Guessing one of the three
//!   codes valid at a time among a million then takes months. The lock-out is persisted too (a
//!   restart does not lift it) and shown as the tamper binary sensor.
//!
//! The secret is the authenticator's base32 text (RFC 4648, as in an `otpauth://` URI) in an
//! owner-only file, at least 128 bits (RFC 4226 section 4: "MUST be at least 128 bits"; 160
//! recommended). It is held in memory only in zeroed-on-drop storage and never logged.
//!
//! Must not: do I/O (the MQTT thread reads the file and persists the memory), or accept a code
//! without recording it first in the memory it returns.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use zeroize::Zeroizing;

/// Length of one step in seconds (RFC 6238's default, what authenticator apps use).
pub const STEP_S: i64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Steps either side of now whose codes are accepted (a phone clock off by up to a step).
pub const DRIFT_STEPS: i64 = 1;
/// Wrong codes in a row before every code is refused for a while.
pub const FAILURES_BEFORE_LOCKOUT: u32 = 5;
/// First lock-out, in seconds; each further one doubles it.
pub const LOCKOUT_MIN_S: i64 = 60;
/// Longest lock-out, in seconds.
pub const LOCKOUT_MAX_S: i64 = 3600;
/// Shortest secret, in bytes (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// The regular expression Home Assistant's lock card checks a code against before sending it:
/// six digits, or nothing (locking needs no code; unlocking without one is refused here).
pub const HA_CODE_FORMAT: &str = r"^(\d{6})?$";

/// What the code verifier remembers across restarts (persisted with the command verifier's
/// replay state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtpMemory {
    /// The newest step whose code was accepted: it and every older step are refused.
    pub last_step: Option<i64>,
    /// Wrong codes in a row since the last accepted code or lock-out.
    pub failures: u32,
    /// Lock-outs in a row since the last accepted code (sets the next one's length).
    pub lockouts: u32,
    /// Unix time until which every code is refused.
    pub locked_until: Option<i64>,
}

/// Why a code was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRefusal {
    /// No code came with an action that needs one.
    Missing,
    /// Not six digits.
    Malformed,
    /// Matches none of the steps around now.
    Wrong,
    /// The code of a step already used (or older than the newest used one).
    Reused,
    /// Too many wrong codes: every code is refused for this many more seconds.
    LockedOut {
        /// Seconds left.
        left_s: i64,
    },
    /// No secret is configured (`mqtt.totp_secret_file`), so no code can open anything.
    NotConfigured,
}

impl CodeRefusal {
    /// Short code for events and the refusal sensor: `code_missing`, `code_malformed`,
    /// `code_wrong`, `code_reused`, `code_locked_out`, `code_not_configured`.
    pub fn reason(&self) -> &'static str {
        match self {
            CodeRefusal::Missing => "code_missing",
            CodeRefusal::Malformed => "code_malformed",
            CodeRefusal::Wrong => "code_wrong",
            CodeRefusal::Reused => "code_reused",
            CodeRefusal::LockedOut { .. } => "code_locked_out",
            CodeRefusal::NotConfigured => "code_not_configured",
        }
    }
}

impl std::fmt::Display for CodeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeRefusal::Missing => f.write_str("no code given: this needs a one-time code"),
            CodeRefusal::Malformed => write!(f, "the code is not {DIGITS} digits"),
            CodeRefusal::Wrong => f.write_str("wrong code"),
            CodeRefusal::Reused => {
                f.write_str("code already used: each code opens once (wait for the next one)")
            }
            CodeRefusal::LockedOut { left_s } => {
                write!(f, "too many wrong codes: every code is refused for {left_s} s more")
            }
            CodeRefusal::NotConfigured => {
                f.write_str("no one-time code secret is configured (mqtt.totp_secret_file)")
            }
        }
    }
}

/// The code verifier: the secret and its [`OtpMemory`]. `Debug` never shows the secret.
pub struct Otp {
    secret: Zeroizing<Vec<u8>>,
    memory: OtpMemory,
}

impl std::fmt::Debug for Otp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otp").field("memory", &self.memory).finish_non_exhaustive()
    }
}

impl Otp {
    /// A verifier for the base32 secret `text` (spaces, `=` padding and case are ignored, as
    /// authenticator apps do). The error says what is wrong, never the secret.
    pub fn from_base32(text: &str) -> Result<Otp, String> {
        let secret = decode_base32(text)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&secret.len()) {
            return Err(format!(
                "the secret is {} bytes; {MIN_SECRET_BYTES}..={MAX_SECRET_BYTES} are needed (20 \
                 random bytes, e.g. `head -c 20 /dev/urandom | base32`)",
                secret.len()
            ));
        }
        Ok(Otp { secret, memory: OtpMemory::default() })
    }

    /// What to persist.
    pub fn memory(&self) -> &OtpMemory {
        &self.memory
    }

    /// Takes up a persisted memory (at start).
    pub fn restore(&mut self, memory: OtpMemory) {
        self.memory = memory;
    }

    /// Whether codes are refused at `now_unix` because of too many wrong ones.
    pub fn locked_out(&self, now_unix: i64) -> bool {
        self.memory.locked_until.is_some_and(|t| now_unix < t)
    }

    /// Checks `code` at `now_unix`; on success returns the step it belongs to, already
    /// recorded as used. Wrong and malformed codes count towards a lock-out.
    ///
    /// # Errors
    ///
    /// Why the code opens nothing.
    pub fn check(&mut self, code: &str, now_unix: i64) -> Result<i64, CodeRefusal> {
        if let Some(until) = self.memory.locked_until {
            if now_unix < until {
                return Err(CodeRefusal::LockedOut { left_s: until - now_unix });
            }
        }
        let code = code.trim();
        if code.is_empty() {
            return Err(CodeRefusal::Missing);
        }
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            self.failed(now_unix);
            return Err(CodeRefusal::Malformed);
        }
        let now_step = now_unix.div_euclid(STEP_S);
        // Every candidate is computed and compared (no early exit on a match).
        let mut matched = None;
        for step in now_step - DRIFT_STEPS..=now_step + DRIFT_STEPS {
            let expected = format!("{:0width$}", code_at(&self.secret, step), width = DIGITS);
            if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
                matched = Some(step);
            }
        }
        let Some(step) = matched else {
            self.failed(now_unix);
            return Err(CodeRefusal::Wrong);
        };
        if self.memory.last_step.is_some_and(|last| step <= last) {
            return Err(CodeRefusal::Reused);
        }
        self.memory = OtpMemory { last_step: Some(step), ..OtpMemory::default() };
        Ok(step)
    }

    fn failed(&mut self, now_unix: i64) {
        let m = &mut self.memory;
        m.failures += 1;
        if m.failures >= FAILURES_BEFORE_LOCKOUT {
            m.failures = 0;
            let shift = m.lockouts.min(16);
            m.lockouts = m.lockouts.saturating_add(1);
            let length = (LOCKOUT_MIN_S << shift).min(LOCKOUT_MAX_S);
            m.locked_until = Some(now_unix.saturating_add(length));
            log::warn!(
                "mqtt: {FAILURES_BEFORE_LOCKOUT} wrong one-time codes in a row: every code is \
                 refused for {length} s"
            );
        }
    }
}

/// The code of `step` (RFC 4226 HOTP with the step as counter, dynamic truncation, 6 digits).
pub fn code_at(secret: &[u8], step: i64) -> u32 {
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes a key of any length; unreachable.
        Err(_) => return u32::MAX,
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]]) & 0x7fff_ffff;
    bin % 10u32.pow(DIGITS as u32)
}

/// Decodes RFC 4648 base32 (A-Z, 2-7), ignoring case, spaces, dashes and `=` padding.
pub fn decode_base32(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 5 / 8));
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in text.chars() {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            ' ' | '-' | '=' | '\n' | '\r' | '\t' => continue,
            _ => return Err("the secret is not base32 (letters A-Z and digits 2-7)".to_owned()),
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 seed, "12345678901234567890", in base32.
    const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    #[test]
    fn rfc6238_test_vectors() {
        let secret = decode_base32(RFC_SECRET).unwrap();
        assert_eq!(&secret[..], b"12345678901234567890");
        // Appendix B (SHA-1), 8 digits there; the 6-digit code is the low six of them.
        for (t, eight) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code_at(&secret, t / STEP_S), eight % 1_000_000, "t = {t}");
        }
    }

    fn otp() -> Otp {
        Otp::from_base32(RFC_SECRET).unwrap()
    }

    fn code(step: i64) -> String {
        format!("{:06}", code_at(b"12345678901234567890", step))
    }

    #[test]
    fn a_code_opens_once_and_never_an_older_one() {
        let mut o = otp();
        let now = 1_800_000_000;
        let step = now / STEP_S;
        assert_eq!(o.check(&code(step), now), Ok(step));
        assert_eq!(o.check(&code(step), now + 1), Err(CodeRefusal::Reused));
        // The step before is still in the drift window but older than the newest used.
        assert_eq!(o.check(&code(step - 1), now + 2), Err(CodeRefusal::Reused));
        // The next step's code, from a phone slightly ahead, opens once.
        assert_eq!(o.check(&code(step + 1), now + 3), Ok(step + 1));
        // A code two steps away is wrong, not reused.
        assert_eq!(o.check(&code(step + 3), now + 4), Err(CodeRefusal::Wrong));
        assert_eq!(o.memory().last_step, Some(step + 1));
    }

    #[test]
    fn wrong_codes_lock_out_with_doubling_and_a_good_code_resets() {
        let mut o = otp();
        let mut now = 1_800_000_000;
        for _ in 0..FAILURES_BEFORE_LOCKOUT {
            assert_eq!(o.check("000000", now), Err(CodeRefusal::Wrong));
        }
        assert!(o.locked_out(now));
        // A right code is refused while locked out.
        let right = code(now / STEP_S);
        assert_eq!(o.check(&right, now + 10), Err(CodeRefusal::LockedOut { left_s: 50 }));
        now += LOCKOUT_MIN_S;
        assert!(!o.locked_out(now));
        for _ in 0..FAILURES_BEFORE_LOCKOUT {
            let _ = o.check("12345", now);
        }
        assert_eq!(o.memory().locked_until, Some(now + 2 * LOCKOUT_MIN_S));
        now += 2 * LOCKOUT_MIN_S;
        assert!(o.check(&code(now / STEP_S), now).is_ok());
        assert_eq!(o.memory().lockouts, 0);
        assert_eq!(o.memory().failures, 0);
    }

    #[test]
    fn missing_codes_do_not_count_and_memory_survives_a_restart() {
        let mut o = otp();
        let now = 1_800_000_000;
        for _ in 0..10 {
            assert_eq!(o.check("  ", now), Err(CodeRefusal::Missing));
        }
        assert!(!o.locked_out(now));
        let step = o.check(&code(now / STEP_S), now).unwrap();
        let saved = serde_json::to_string(o.memory()).unwrap();
        let mut again = otp();
        again.restore(serde_json::from_str(&saved).unwrap());
        assert_eq!(again.check(&code(step), now + 5), Err(CodeRefusal::Reused));
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        assert!(Otp::from_base32("GEZDGNBV").unwrap_err().contains("bytes"));
        assert!(Otp::from_base32("not base32!").unwrap_err().contains("base32"));
        let o = Otp::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert!(!format!("{o:?}").contains("12345"));
    }
}
