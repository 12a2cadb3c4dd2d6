//! MQTT command parsing and signature checks: a sequence of received payloads, each either raw
//! bytes or a command signed with the door's key from fuzzed fields, at a clock that moves
//! forward. Every verdict of a signed command is predicted by an independent model of the
//! checks (module doc of `portier::mqtt::command`), and for any payload:
//! - a verifier holding another key accepts nothing;
//! - an accepted payload is refused as `replayed` when it comes again;
//! - a timestamp at or below the highest accepted one minus the window is `below_mark`, also
//!   when its nonce is new (the floor that survives restarts);
//! - the nonce cache never holds more than its bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::mqtt::command::{Action, Refusal, Verifier, MAX_PAYLOAD};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER_KEY: &[u8] = b"fedcba9876543210fedcba9876543210";
const DEVICE: &str = "front-door";
const WINDOW: u32 = 30;
const MAX_NONCES: usize = 3;
/// The seeds' signed timestamps (2025-11-28T18:40:00Z).
const START: i64 = 1_764_355_200;

/// The verdict the module doc promises for a signed command, as a reason code.
#[allow(clippy::too_many_arguments)]
fn expected(
    device: &str,
    ts: i64,
    nonce: &str,
    retained: bool,
    len: usize,
    now: i64,
    cache: &mut Vec<(String, i64)>,
    marks: Marks,
) -> &'static str {
    let nonce_ok = (16..=64).contains(&nonce.len())
        && nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if retained {
        "retained"
    } else if len > MAX_PAYLOAD {
        "too_large"
    } else if !nonce_ok {
        "malformed"
    } else if device != DEVICE {
        "wrong_device"
    } else if marks.clock.is_some_and(|mark| now < mark) {
        "clock_behind"
    } else if now.saturating_sub(ts).unsigned_abs() > u64::from(WINDOW) {
        "stale"
    } else if marks.max_ts.is_some_and(|m| ts <= m.saturating_sub(i64::from(WINDOW))) {
        "below_mark"
    } else {
        cache.retain(|(_, seen)| now.saturating_sub(*seen) <= i64::from(WINDOW));
        if cache.iter().any(|(n, _)| n == nonce) {
            "replayed"
        } else if cache.len() >= MAX_NONCES {
            "malformed" // cache full
        } else {
            "accepted"
        }
    }
}

/// What the verifier keeps across restarts (module doc, "Across restarts and clock steps"):
/// the highest accepted `ts` and the clock at the last acceptance.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    max_ts: Option<i64>,
    clock: Option<i64>,
}

impl Marks {
    fn accepted(&mut self, ts: i64, now: i64) {
        self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
        self.clock = Some(self.clock.map_or(now, |m| m.max(now)));
    }
}

/// Reads the input front to back; past its end every byte is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A length byte, then that many characters: drawn from `alphabet` (high bit clear), or
    /// any bytes taken as UTF-8 (high bit set).
    fn text(&mut self, alphabet: &[u8]) -> String {
        let b = self.byte();
        let len = usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            (0..len)
                .map(|_| char::from(alphabet[usize::from(self.byte()) % alphabet.len()]))
                .collect()
        } else {
            String::from_utf8_lossy(self.bytes(len)).into_owned()
        }
    }
}

/// One step: `[advance] [flags]`, then for a raw payload (flags bit 0) `[len lo] [len hi]
/// payload`, else `[device] [action] [ts] nonce` signed with the door's key (see `run`).
fn run(data: &[u8]) {
    let mut input = Input(data);
    let (Ok(mut verifier), Ok(mut other)) = (
        Verifier::new(KEY.to_vec(), DEVICE, WINDOW, MAX_NONCES),
        Verifier::new(OTHER_KEY.to_vec(), DEVICE, WINDOW, MAX_NONCES),
    ) else {
        panic!("valid verifier settings refused");
    };
    let mut cache: Vec<(String, i64)> = Vec::new();
    let mut marks = Marks::default();
    let mut now = START;
    for _ in 0..16 {
        if input.0.is_empty() {
            break;
        }
        now += i64::from(input.byte() % 61);
        let flags = input.byte();
        let retained = flags >> 4 == 0xf;
        let (payload, prediction) = if flags & 1 == 1 {
            let len = usize::from(u16::from_le_bytes([input.byte(), input.byte()]));
            (input.bytes(len).to_vec(), None)
        } else {
            let device =
                if input.byte() & 1 == 0 { DEVICE.to_owned() } else { input.text(b"front-dor.X_") };
            let action = [Action::Unlock, Action::Lock, Action::ReloadGallery]
                [usize::from(input.byte() % 3)];
            let ts = match input.byte() {
                0xff => i64::from_le_bytes(std::array::from_fn(|_| input.byte())),
                b => now + i64::from(b % 81) - 40,
            };
            let nonce = input.text(b"0123456789abcdefXYZ_-+ ");
            let payload = Verifier::sign(KEY, &device, action, ts, &nonce);
            let want =
                expected(&device, ts, &nonce, retained, payload.len(), now, &mut cache, marks);
            (payload, Some((want, action, ts, nonce)))
        };
        let result = verifier.verify(&payload, retained, now);
        assert!(other.verify(&payload, retained, now).is_err(), "accepted under another key");
        match &result {
            Ok(command) => {
                // Raw payloads that are validly signed (the seeds are) update the model too.
                cache.retain(|(_, seen)| now.saturating_sub(*seen) <= i64::from(WINDOW));
                cache.push((command.nonce.clone(), command.ts));
                marks.accepted(command.ts, now);
                assert_eq!(verifier.verify(&payload, false, now), Err(Refusal::Replayed));
            }
            Err(refusal) => {
                assert!(!refusal.to_string().is_empty());
                if matches!(refusal, Refusal::Replayed)
                    || refusal.to_string().contains("cache full")
                {
                    cache.retain(|(_, seen)| now.saturating_sub(*seen) <= i64::from(WINDOW));
                }
            }
        }
        if let Some((want, action, ts, nonce)) = prediction {
            let got = result.as_ref().map_or_else(Refusal::reason, |_| "accepted");
            assert_eq!(got, want, "payload {:?}", String::from_utf8_lossy(&payload));
            if let Ok(command) = &result {
                assert_eq!(
                    (command.action, command.ts, command.nonce.as_str()),
                    (action, ts, &*nonce)
                );
            }
        }
        assert!(verifier.cached_nonces() <= MAX_NONCES);
        assert_eq!(verifier.cached_nonces(), cache.len(), "nonce cache differs from the model");
    }
}

fuzz_target!(|data: &[u8]| run(data));
