//! The device key that encrypts templates at rest, and the sealing of one blob under it.
//!
//! Role: [`DeviceKey`] is 32 random bytes from the OS RNG kept in a file outside the database
//! (`gallery.key_file`), readable by the service user only. [`seal`] and [`unseal`] wrap
//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): a fresh random 24-byte nonce per blob (random
//! nonces of that size never collide in practice), and associated data the caller uses to bind a
//! blob to its row, so a blob copied onto another person or model fails authentication.
//!
//! XChaCha20-Poly1305 is composed here exactly as the draft defines it, from two audited parts:
//! RustCrypto's `hchacha` derives the blob's subkey from the key and the nonce's first 16 bytes,
//! and `ring`'s ChaCha20-Poly1305 (RFC 8439; OpenSSL's assembly for AVX2 and NEON, already linked
//! for TLS) seals under it with the nonce `0^4 || nonce[16..24]`. Opening a 100,000-person gallery
//! is 600,000 such opens, and RustCrypto's own AEAD ran at a third of ring's speed on x86 and
//! without a vector Poly1305 on the Pi. The tests check every blob against RustCrypto's
//! `XChaCha20Poly1305` both ways and against the draft's test vector.
//!
//! A key file is either the 32 key bytes themselves, or (made by `portier gallery new-key
//! --bind rpi-otp`) the magic `PRTRKEY\x01`, a binding byte (1: Raspberry Pi OTP) and 32 random
//! bytes from which the key is derived with the board's OTP private key (`otp.rs`): such a file
//! is useless away from its board.
//!
//! Must not: log, print or put key bytes into an error or a `Debug` output; implement any
//! cryptographic primitive itself.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroizing;

use super::GalleryError;
use crate::secret::{write_private, Place};

/// Key length of XChaCha20-Poly1305 (RFC 8439 key size), and so an unbound key file's size.
pub const KEY_LEN: usize = 32;

/// First bytes of a bound key file.
const BOUND_MAGIC: &[u8; 8] = b"PRTRKEY\x01";
/// Binding byte: the key is derived with the Raspberry Pi's OTP customer private key.
const BINDING_RPI_OTP: u8 = 1;
/// Size of a bound key file: magic, binding, 32 random bytes.
const BOUND_LEN: usize = BOUND_MAGIC.len() + 1 + KEY_LEN;

/// What a key file's bytes are bound to besides the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBinding {
    /// The file alone is the key.
    File,
    /// The key is derived from the file and the board's OTP private key (Raspberry Pi).
    RpiOtp,
}

/// XChaCha20 nonce length (draft-irtf-cfrg-xchacha).
pub(crate) const NONCE_LEN: usize = 24;

/// Poly1305 tag length (RFC 8439).
pub(crate) const TAG_LEN: usize = 16;

/// First byte of every sealed blob: the format (cipher, nonce size, AAD layout), so a later
/// format can be told apart from this one.
pub(crate) const BLOB_FORMAT: u8 = 1;

/// Bytes a sealed blob adds to its plaintext: format byte, nonce, tag.
pub(crate) const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The gallery's template key. `Debug` shows no key bytes; the bytes are wiped on drop.
pub struct DeviceKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

impl DeviceKey {
    /// A fresh key from the OS RNG (in-memory galleries, and the content of a new key file).
    pub(crate) fn random(path: &Path) -> Result<DeviceKey, GalleryError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut bytes[..]).map_err(|source| GalleryError::KeyFile {
            path: path.to_path_buf(),
            context: "cannot get random bytes from the os",
            source,
        })?;
        Ok(DeviceKey { bytes })
    }

    /// A key from raw bytes (a backup's passphrase-derived key).
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> DeviceKey {
        DeviceKey { bytes }
    }

    /// Reads the key file after checking that only its owner, the user portier runs as, can
    /// access it. A 32-byte file is the key; a bound file's key is derived with the board's
    /// OTP private key (read from the firmware mailbox). Any other content is refused.
    pub fn load(path: &Path) -> Result<DeviceKey, GalleryError> {
        Self::load_with(path, &super::otp::Mailbox::default())
    }

    /// [`DeviceKey::load`] with the OTP key from `otp` (tests).
    pub fn load_with(
        path: &Path,
        otp: &dyn super::otp::OtpSource,
    ) -> Result<DeviceKey, GalleryError> {
        crate::secret::check_private(path)
            .map_err(|source| GalleryError::KeyFileRefused { path: path.to_path_buf(), source })?;
        let io = |context| {
            move |source| GalleryError::KeyFile { path: path.to_path_buf(), context, source }
        };
        let file = File::open(path).map_err(io("cannot open"))?;
        // At most one byte more than the longest format, so an oversized file is noticed.
        let mut content = Zeroizing::new(Vec::with_capacity(BOUND_LEN + 1));
        file.take(BOUND_LEN as u64 + 1).read_to_end(&mut content).map_err(io("cannot read"))?;
        let bad = |reason: String| GalleryError::BadKeyFile { path: path.to_path_buf(), reason };
        if content.len() == KEY_LEN {
            let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
            bytes.copy_from_slice(&content);
            return Ok(DeviceKey { bytes });
        }
        if content.len() == BOUND_LEN && content.starts_with(BOUND_MAGIC) {
            let binding = content[BOUND_MAGIC.len()];
            if binding != BINDING_RPI_OTP {
                return Err(bad(format!(
                    "bound to binding {binding}, which this portier does not know"
                )));
            }
            let otp_key = otp.private_key().map_err(|e| {
                bad(format!("bound to this board's OTP private key, which cannot be read: {e}"))
            })?;
            let mut file_bytes = Zeroizing::new([0u8; KEY_LEN]);
            file_bytes.copy_from_slice(&content[BOUND_MAGIC.len() + 1..]);
            return Ok(DeviceKey { bytes: super::otp::derive(&otp_key, &file_bytes) });
        }
        let size = if content.len() > BOUND_LEN {
            format!("more than {BOUND_LEN}")
        } else {
            content.len().to_string()
        };
        Err(bad(format!(
            "{size} bytes, expected exactly {KEY_LEN} or a bound key of {BOUND_LEN} (truncated, \
             or not a portier key)"
        )))
    }

    /// Creates a new key file bound as `binding` (see [`DeviceKey::create`]); for
    /// [`KeyBinding::RpiOtp`] the OTP key is read first, so a board without one gets an error
    /// and no file.
    pub fn create_bound(
        path: &Path,
        binding: KeyBinding,
        otp: &dyn super::otp::OtpSource,
    ) -> Result<DeviceKey, GalleryError> {
        if binding == KeyBinding::File {
            return Self::create(path);
        }
        let otp_key = otp.private_key().map_err(|e| GalleryError::BadKeyFile {
            path: path.to_path_buf(),
            reason: format!("cannot bind a new key to this board's OTP private key: {e}"),
        })?;
        let random = DeviceKey::random(path)?;
        let mut content = Zeroizing::new(Vec::with_capacity(BOUND_LEN));
        content.extend_from_slice(BOUND_MAGIC);
        content.push(BINDING_RPI_OTP);
        content.extend_from_slice(&random.bytes[..]);
        write_private(path, &content, Place::KeepExisting).map_err(|source| {
            GalleryError::KeyFile { path: path.to_path_buf(), context: "cannot create", source }
        })?;
        log::info!(
            "gallery key {}: created a device key bound to this board's OTP private key (the \
             file alone opens nothing)",
            path.display()
        );
        Ok(DeviceKey { bytes: super::otp::derive(&otp_key, &random.bytes) })
    }

    /// Creates a new key file at `path` (mode 0600) and returns its key; if another process
    /// created it first, loads theirs instead.
    ///
    /// Atomic: the key is written and fsynced under a temporary name, then hard-linked to
    /// `path` (which fails if `path` exists, so an existing key is never replaced) and the
    /// folder fsynced. A kill at any point leaves either no key file or a complete one, never a
    /// half key that would later decrypt nothing.
    pub fn create(path: &Path) -> Result<DeviceKey, GalleryError> {
        let key = DeviceKey::random(path)?;
        match write_private(path, &key.bytes[..], Place::KeepExisting) {
            Ok(()) => {}
            // Someone else won the race: theirs is the key.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return DeviceKey::load(path),
            Err(source) => {
                return Err(GalleryError::KeyFile {
                    path: path.to_path_buf(),
                    context: "cannot create",
                    source,
                })
            }
        }
        log::info!(
            "gallery key {}: created a new device key (mode 0600); back the gallery up with \
             `portier gallery export`: without this file its templates cannot be read",
            path.display()
        );
        Ok(key)
    }

    /// Seals `plaintext` bound to `aad`: format byte || nonce || ciphertext and tag.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        // Wiped if sealing fails with the plaintext copied in.
        let mut blob = Zeroizing::new(Vec::with_capacity(SEAL_OVERHEAD + plaintext.len()));
        blob.push(BLOB_FORMAT);
        blob.resize(1 + NONCE_LEN, 0);
        fill_random(&mut blob[1..]).map_err(SealError::Random)?;
        blob.extend_from_slice(plaintext);
        let (head, body) = blob.split_at_mut(1 + NONCE_LEN);
        let (key, nonce) = self.blob_key(&head[1..])?;
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), body)
            .map_err(|_| SealError::Cipher)?;
        blob.extend_from_slice(tag.as_ref());
        Ok(std::mem::take(&mut *blob))
    }

    /// Opens a blob made by [`DeviceKey::seal`] with the same `aad`; the plaintext is wiped
    /// when dropped.
    pub(crate) fn unseal(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut copy = Zeroizing::new(blob.to_vec());
        let len = self.open_in_place(aad, &mut copy)?.len();
        let mut plain = Zeroizing::new(std::mem::take(&mut *copy));
        plain.drain(..1 + NONCE_LEN);
        plain.truncate(len);
        Ok(plain)
    }

    /// Opens a blob made by [`DeviceKey::seal`] where it lies, returning the plaintext (inside
    /// `blob`: the caller wipes or overwrites it). Loading a gallery opens every template this
    /// way into its batch's own buffer: no allocation per template.
    pub(crate) fn open_in_place<'b>(
        &self,
        aad: &[u8],
        blob: &'b mut [u8],
    ) -> Result<&'b mut [u8], SealError> {
        if blob.len() < SEAL_OVERHEAD {
            return Err(SealError::Short(blob.len()));
        }
        if blob[0] != BLOB_FORMAT {
            return Err(SealError::Format(blob[0]));
        }
        let (head, sealed) = blob.split_at_mut(1 + NONCE_LEN);
        let (key, nonce) = self.blob_key(&head[1..])?;
        key.open_in_place(nonce, Aad::from(aad), sealed).map_err(|_| SealError::Authentication)
    }

    /// XChaCha20-Poly1305's per-blob ChaCha20-Poly1305 key and nonce (draft-irtf-cfrg-xchacha
    /// section 2.3): subkey `HChaCha20(key, nonce[..16])`, nonce `0^4 || nonce[16..]`.
    fn blob_key(&self, nonce: &[u8]) -> Result<(LessSafeKey, Nonce), SealError> {
        let (prefix, rest) = nonce.split_at(16);
        let mut subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(
            (&*self.bytes).into(),
            prefix.into(),
        );
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey);
        // ring keeps its own copy (not wiped on drop: it lives as long as one blob's opening).
        zeroize::Zeroize::zeroize(subkey.as_mut_slice());
        let key = key.map_err(|_| SealError::Cipher)?;
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(rest);
        Ok((LessSafeKey::new(key), Nonce::assume_unique_for_key(iv)))
    }
}

/// Why a blob could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// The OS RNG failed (no entropy source).
    #[error("cannot get random bytes from the os: {0}")]
    Random(std::io::Error),
    /// The cipher refused (message longer than the cipher's limit).
    #[error("encryption failed")]
    Cipher,
    /// Too short to hold a format byte, a nonce and a tag.
    #[error("sealed blob has {0} bytes, shorter than its {SEAL_OVERHEAD}-byte envelope")]
    Short(usize),
    /// Unknown format byte.
    #[error("unknown sealed blob format {0}")]
    Format(u8),
    /// Wrong key, or the blob or its binding (person, model, dimension) was changed.
    #[error("authentication failed (wrong key, or the data was changed or moved)")]
    Authentication,
}

/// Fills `buf` from the OS RNG (getrandom(2) on Linux) without panicking on failure.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), std::io::Error> {
    getrandom::getrandom(buf).map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board whose OTP private key is `key` (or not programmed).
    struct Board(Option<[u8; 32]>);

    impl super::super::otp::OtpSource for Board {
        fn private_key(&self) -> Result<Zeroizing<[u8; 32]>, String> {
            self.0.map(Zeroizing::new).ok_or_else(|| "not programmed".to_owned())
        }
    }

    #[test]
    fn a_bound_key_opens_only_on_its_board() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.key");
        let board = Board(Some([7; 32]));
        let made = DeviceKey::create_bound(&path, KeyBinding::RpiOtp, &board).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), BOUND_LEN as u64);
        let blob = made.seal(b"aad", b"template").unwrap();
        // The same board opens it.
        let again = DeviceKey::load_with(&path, &board).unwrap();
        assert_eq!(&again.unseal(b"aad", &blob).unwrap()[..], b"template");
        // The card in another board: a key, but the wrong one.
        let other = DeviceKey::load_with(&path, &Board(Some([8; 32]))).unwrap();
        assert!(matches!(other.unseal(b"aad", &blob), Err(SealError::Authentication)));
        // The file's own bytes are not the key.
        let raw = &std::fs::read(&path).unwrap()[BOUND_LEN - KEY_LEN..];
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(raw);
        assert!(DeviceKey::from_bytes(bytes).unseal(b"aad", &blob).is_err());
        // A board without a programmed key: a clear error, and no file is made.
        let err = DeviceKey::load_with(&path, &Board(None)).unwrap_err();
        assert!(err.to_string().contains("OTP private key"), "{err}");
        let second = dir.path().join("second.key");
        assert!(DeviceKey::create_bound(&second, KeyBinding::RpiOtp, &Board(None)).is_err());
        assert!(!second.exists());
    }

    #[test]
    fn seal_round_trips_and_binds_to_aad_and_key() {
        let key = DeviceKey::random(Path::new("k")).unwrap();
        let other = DeviceKey::random(Path::new("k")).unwrap();
        let blob = key.seal(b"person 1", b"template bytes").unwrap();
        assert_eq!(blob.len(), 14 + SEAL_OVERHEAD);
        assert_eq!(&key.unseal(b"person 1", &blob).unwrap()[..], b"template bytes");
        assert!(matches!(key.unseal(b"person 2", &blob), Err(SealError::Authentication)));
        assert!(matches!(other.unseal(b"person 1", &blob), Err(SealError::Authentication)));
        // Same plaintext twice: different nonces, different blobs.
        assert_ne!(key.seal(b"person 1", b"template bytes").unwrap(), blob);
        let mut flipped = blob.clone();
        flipped[30] ^= 1;
        assert!(matches!(key.unseal(b"person 1", &flipped), Err(SealError::Authentication)));
        assert!(matches!(key.unseal(b"person 1", &blob[..10]), Err(SealError::Short(10))));
        assert_eq!(format!("{key:?}"), "DeviceKey(<redacted>)");
    }

    /// draft-irtf-cfrg-xchacha-03 appendix A.3.1: key, nonce, AAD, plaintext, ciphertext, tag.
    #[test]
    fn the_drafts_xchacha20_poly1305_vector_opens_in_place() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
        let aad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                      tip for the future, sunscreen would be it.";
        let hex = "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4a\
                   a6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b9\
                   82c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e\
                   c0875924c1c7987947deafd8780acf49";
        let sealed: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut blob = vec![BLOB_FORMAT];
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        let key = DeviceKey::from_bytes(Zeroizing::new(key));
        assert_eq!(&key.unseal(&aad, &blob).unwrap()[..], &plain[..]);
        let mut in_place = blob.clone();
        assert_eq!(&key.open_in_place(&aad, &mut in_place).unwrap()[..], &plain[..]);
        // The plaintext is where the ciphertext was, after the format byte and the nonce.
        assert_eq!(&in_place[1 + NONCE_LEN..1 + NONCE_LEN + plain.len()], &plain[..]);
        blob[1] ^= 1; // the nonce's first half feeds HChaCha20
        assert!(matches!(key.unseal(&aad, &blob), Err(SealError::Authentication)));
        blob[1] ^= 1;
        blob[1 + 20] ^= 1; // its second half, ChaCha20's nonce
        assert!(matches!(key.unseal(&aad, &blob), Err(SealError::Authentication)));
        blob[1 + 20] ^= 1;
        blob[0] = 2;
        assert!(matches!(key.open_in_place(&aad, &mut blob), Err(SealError::Format(2))));
    }

    /// The composition (HChaCha20 + ring's ChaCha20-Poly1305) against RustCrypto's own
    /// XChaCha20-Poly1305, both ways, over message and AAD lengths around ChaCha20's 64-byte
    /// blocks and the templates' sizes.
    #[test]
    fn blobs_agree_with_rustcrypto_xchacha20_poly1305_both_ways() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut bytes[..]).unwrap();
        let reference = XChaCha20Poly1305::new((&*bytes).into());
        let key = DeviceKey::from_bytes(bytes);
        for len in [0, 1, 15, 16, 63, 64, 65, 127, 128, 129, 512, 2048, 2052] {
            for aad_len in [0, 1, 17, 64, 90] {
                let mut data = vec![0u8; len + aad_len];
                fill_random(&mut data).unwrap();
                let (plain, aad) = data.split_at(len);
                // Ours sealed, RustCrypto opens.
                let blob = key.seal(aad, plain).unwrap();
                assert_eq!(blob.len(), len + SEAL_OVERHEAD);
                let (nonce, body) = blob[1..].split_at(NONCE_LEN);
                let opened = reference
                    .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
                    .unwrap();
                assert_eq!(opened, plain, "len {len}, aad {aad_len}");
                // RustCrypto sealed, ours opens (copying and in place).
                let mut theirs = vec![BLOB_FORMAT];
                theirs.extend_from_slice(nonce);
                let body = reference
                    .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
                    .unwrap();
                theirs.extend_from_slice(&body);
                assert_eq!(theirs, blob, "same key and nonce: the same blob");
                assert_eq!(&key.unseal(aad, &theirs).unwrap()[..], plain);
                assert_eq!(key.open_in_place(aad, &mut theirs).unwrap(), plain);
            }
        }
    }

    /// Env var naming the folder; set only when the kill test re-executes this binary.
    const KILL_DIR_ENV: &str = "PORTIER_KEY_KILL_CHILD_DIR";

    /// Child half of `kill_during_key_creation_leaves_no_key_or_a_whole_one`; does nothing in a
    /// normal test run. Creates key files until killed (bounded, so it cannot fill the disk).
    #[test]
    fn key_kill_child_creates_keys() {
        let Some(dir) = std::env::var_os(KILL_DIR_ENV) else { return };
        for i in 0..100_000 {
            DeviceKey::create(&Path::new(&dir).join(format!("k{i}.key"))).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn kill_during_key_creation_leaves_no_key_or_a_whole_one() {
        let exe = std::env::current_exe().unwrap();
        let mut keys = 0;
        for run in 0..8u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut child = std::process::Command::new(&exe)
                .args(["key_kill_child_creates_keys", "--nocapture", "--test-threads=1"])
                .env(KILL_DIR_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(60 + run * 37));
            child.kill().unwrap();
            child.wait().unwrap();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // the temporary name of the key being written when killed
                }
                assert_eq!(std::fs::metadata(&path).unwrap().len(), 32, "{name}: half a key");
                DeviceKey::load(&path).unwrap();
                keys += 1;
            }
        }
        assert!(keys > 0, "the child never created a key");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_0600_reloaded_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.key");
        let key = DeviceKey::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let again = DeviceKey::load(&path).unwrap();
        assert_eq!(again.bytes[..], key.bytes[..]);
        // Creating over an existing key keeps the existing one.
        let raced = DeviceKey::create(&path).unwrap();
        assert_eq!(raced.bytes[..], key.bytes[..]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = DeviceKey::load(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("chmod 600 {}", path.display())), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

        for bytes in [&[7u8; 31][..], &[7u8; 33][..], &[][..]] {
            std::fs::write(&path, bytes).unwrap();
            let err = DeviceKey::load(&path).unwrap_err().to_string();
            assert!(err.contains("expected exactly 32"), "{err}");
            assert!(!err.contains("07"), "{err}");
        }
    }
}
