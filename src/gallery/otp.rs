//! The Raspberry Pi's OTP customer private key, read through the VideoCore firmware mailbox
//! (`/dev/vcio`), to bind the gallery key to the board it was made on.
//!
//! Role: a key file alone is 32 bytes on the same SD card as the gallery, so whoever takes the
//! card reads both. A key file made with `portier gallery new-key --bind rpi-otp` holds 32
//! random bytes that are useless on their own: the template key is
//! HMAC-SHA256(OTP private key, "portier gallery key v1" || file bytes), and the OTP private key
//! (256 bits, programmed once into the SoC with Raspberry Pi's `rpi-otp-private-key -w`) never
//! leaves the board. The card in another Pi, or in a reader, opens nothing.
//!
//! The mailbox message is the one `rpi-otp-private-key` sends with `vcmailbox`
//! (`vcmailbox 0x00030081 40 40 0 8 0 0 0 0 0 0 0 0`): property tag GET_CUSTOMER_PRIVATE_KEY
//! (0x00030081) with a 40-byte value buffer holding the first row (0) and the row count (8),
//! answered with the 8 key words after them. An all-zero key means "not programmed".
//!
//! Must not: log or put key bytes into an error; write OTP (programming is irreversible and a
//! technician's decision, made with Raspberry Pi's own tool).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Firmware property tag: read the customer private key from OTP (Raspberry Pi firmware
/// mailbox property interface; `rpi-otp-private-key`).
pub const TAG_GET_PRIVATE_KEY: u32 = 0x0003_0081;
/// Request code of a property message (the firmware answers 0x8000_0000 for success).
const REQUEST: u32 = 0;
const RESPONSE_OK: u32 = 0x8000_0000;
/// Key length in 32-bit OTP rows.
const KEY_ROWS: u32 = 8;
/// Value buffer: first row, row count, then the rows.
const VALUE_BYTES: u32 = 8 + 4 * KEY_ROWS;
/// Words in the whole message: size, code, tag, value size, request/response size, value, end.
pub const MESSAGE_WORDS: usize = 5 + (VALUE_BYTES as usize) / 4 + 1;

/// `IOCTL_MBOX_PROPERTY = _IOWR(100, 0, char *)` from the firmware's `vcio` driver
/// (`drivers/char/broadcom/vcio.c`), in the asm-generic encoding: read|write (3) << 30, the
/// argument's size (a pointer) << 16, type 100 << 8, number 0.
pub const IOCTL_MBOX_PROPERTY: u64 =
    (3 << 30) | ((std::mem::size_of::<*mut u8>() as u64) << 16) | (100 << 8);

/// Domain separation of the derived template key.
const DERIVE_LABEL: &[u8] = b"portier gallery key v1\0";

/// Where the key comes from: the mailbox on a Pi, a fixed value in tests.
pub trait OtpSource {
    /// The 32-byte customer private key; an error says why it cannot be had (no mailbox, not
    /// programmed, firmware refusal).
    fn private_key(&self) -> Result<Zeroizing<[u8; 32]>, String>;
}

/// The property message that asks for the private key.
pub fn request_message() -> [u32; MESSAGE_WORDS] {
    let mut m = [0u32; MESSAGE_WORDS];
    m[0] = (MESSAGE_WORDS * 4) as u32;
    m[1] = REQUEST;
    m[2] = TAG_GET_PRIVATE_KEY;
    m[3] = VALUE_BYTES;
    m[4] = VALUE_BYTES;
    m[5] = 0; // first row
    m[6] = KEY_ROWS;
    // m[7..15]: the answer; m[15]: end tag 0.
    m
}

/// The key in a firmware answer to [`request_message`]; all zeros is "not programmed".
pub fn parse_response(m: &[u32; MESSAGE_WORDS]) -> Result<Zeroizing<[u8; 32]>, String> {
    if m[1] != RESPONSE_OK {
        return Err(format!("the firmware refused the request (code {:#x})", m[1]));
    }
    if m[2] != TAG_GET_PRIVATE_KEY || m[4] & 0x8000_0000 == 0 {
        return Err("the firmware did not answer the private-key tag (firmware too old?)".into());
    }
    let answered = m[4] & 0x7FFF_FFFF;
    if answered < VALUE_BYTES || m[6] != KEY_ROWS {
        return Err(format!(
            "the firmware answered {answered} bytes for {} rows, expected {VALUE_BYTES} for \
             {KEY_ROWS}",
            m[6]
        ));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, word) in m[7..7 + KEY_ROWS as usize].iter().enumerate() {
        // OTP rows are 32-bit words; `rpi-otp-private-key` prints them as big-endian hex.
        key[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    if key.iter().all(|&b| b == 0) {
        return Err("the OTP private key is not programmed (all zeros): program it with \
                    Raspberry Pi's `rpi-otp-private-key -w` (irreversible), or use a key file \
                    without binding"
            .into());
    }
    Ok(key)
}

/// The firmware mailbox of a Raspberry Pi.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// The mailbox device (`/dev/vcio`).
    pub device: std::path::PathBuf,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self { device: "/dev/vcio".into() }
    }
}

impl OtpSource for Mailbox {
    fn private_key(&self) -> Result<Zeroizing<[u8; 32]>, String> {
        use std::os::fd::AsRawFd;
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(&self.device).map_err(|e| {
                format!("{}: {e} (not a Raspberry Pi, or no access)", self.device.display())
            })?;
        let mut message = request_message();
        // `as _`: the request type is c_ulong on glibc and c_int on musl (same bits).
        #[allow(clippy::cast_lossless, clippy::cast_possible_truncation)]
        // SAFETY: `file` is open; IOCTL_MBOX_PROPERTY reads the message's size from its first
        // word and writes the answer into the same buffer, which is MESSAGE_WORDS words long,
        // as that first word says, and outlives the call.
        let rc = unsafe {
            libc::ioctl(file.as_raw_fd(), IOCTL_MBOX_PROPERTY as _, message.as_mut_ptr())
        };
        let result = if rc < 0 {
            Err(format!(
                "{}: mailbox request failed: {}",
                self.device.display(),
                std::io::Error::last_os_error()
            ))
        } else {
            parse_response(&message)
        };
        zeroize::Zeroize::zeroize(&mut message[..]);
        result
    }
}

/// The template key of a bound key file: HMAC-SHA256 keyed with the OTP key over the label and
/// the file's random bytes.
pub fn derive(otp: &[u8; 32], file_bytes: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(otp) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => return Zeroizing::new([0u8; 32]),
    };
    mac.update(DERIVE_LABEL);
    mac.update(file_bytes);
    let out = mac.finalize().into_bytes();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out);
    key
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_matches_rpi_otp_private_key() {
        // `vcmailbox 0x00030081 40 40 0 8 0 0 0 0 0 0 0 0` builds: size, 0, then these words,
        // then the end tag.
        let m = request_message();
        assert_eq!(m[0], 64);
        assert_eq!(&m[1..7], &[0, 0x0003_0081, 40, 40, 0, 8]);
        assert!(m[7..].iter().all(|&w| w == 0));
        assert_eq!(MESSAGE_WORDS, 16);
        // _IOWR(100, 0, char *) on a 64-bit kernel.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(IOCTL_MBOX_PROPERTY, 0xC008_6400);
    }

    #[test]
    fn answers_are_read_and_refusals_named() {
        let mut m = request_message();
        m[1] = RESPONSE_OK;
        m[4] = 0x8000_0000 | 40;
        for i in 0..8 {
            m[7 + i] = 0x0102_0304 * (i as u32 + 1);
        }
        let key = parse_response(&m).unwrap();
        assert_eq!(&key[..4], &[1, 2, 3, 4]);
        // Not programmed.
        let mut zero = m;
        zero[7..15].fill(0);
        assert!(parse_response(&zero).unwrap_err().contains("not programmed"));
        // Refused, or the tag not understood.
        let mut refused = m;
        refused[1] = 0x8000_0001;
        assert!(parse_response(&refused).unwrap_err().contains("refused"));
        let mut old = m;
        old[4] = 40;
        assert!(parse_response(&old).unwrap_err().contains("firmware"));
        let mut short = m;
        short[4] = 0x8000_0000 | 8;
        assert!(parse_response(&short).unwrap_err().contains("answered 8 bytes"));
    }

    #[test]
    fn derivation_depends_on_both_halves() {
        let a = derive(&[1; 32], &[2; 32]);
        assert_ne!(*a, *derive(&[1; 32], &[3; 32]));
        assert_ne!(*a, *derive(&[4; 32], &[2; 32]));
        assert_eq!(*a, *derive(&[1; 32], &[2; 32]));
    }

    #[test]
    fn no_mailbox_is_a_clear_error() {
        let m = Mailbox { device: "/nonexistent/vcio".into() };
        assert!(m.private_key().unwrap_err().contains("/nonexistent/vcio"));
    }
}
