//! The device key that encrypts templates at rest, and the sealing of one blob under it.
//!
//! Role: [`DeviceKey`] is 32 random bytes from the OS RNG kept in a file outside the database
//! (`gallery.key_file`), readable by the service user only. [`seal`] and [`unseal`] wrap
//! XChaCha20-Poly1305 (RustCrypto): a fresh random 24-byte nonce per blob (random nonces of that
//! size never collide in practice), and associated data the caller uses to bind a blob to its
//! row, so a blob copied onto another person or model fails authentication.
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

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, OsRng, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
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
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce).map_err(SealError::Random)?;
        let cipher = XChaCha20Poly1305::new(self.bytes.as_ref().into());
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .map_err(|_| SealError::Cipher)?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        blob.push(BLOB_FORMAT);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens a blob made by [`DeviceKey::seal`] with the same `aad`; the plaintext is wiped
    /// when dropped.
    pub(crate) fn unseal(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if blob.len() < SEAL_OVERHEAD {
            return Err(SealError::Short(blob.len()));
        }
        if blob[0] != BLOB_FORMAT {
            return Err(SealError::Format(blob[0]));
        }
        let (nonce, sealed) = blob[1..].split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.bytes.as_ref().into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Authentication)
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
    OsRng.try_fill_bytes(buf).map_err(|e| std::io::Error::other(e.to_string()))
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
