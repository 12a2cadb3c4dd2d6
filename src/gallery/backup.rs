//! Encrypted backups of the whole gallery: `portier gallery export FILE` / `import FILE`.
//!
//! Role: a backup holds every person (name, enrolment time) and their templates of every model,
//! as JSON sealed with XChaCha20-Poly1305 under a key derived from a passphrase with Argon2id
//! (RFC 9106). It does not depend on the device key, so it is what survives a lost key file or a
//! replaced SD card. Layout: magic `PRTRBAK` + format byte 1, Argon2 memory (KiB), passes and
//! lanes (u32 little-endian each), 16-byte salt, then the sealed blob (format byte, nonce,
//! ciphertext, tag; `key.rs`) whose associated data is everything before it: a changed
//! parameter, salt or byte anywhere fails authentication, and a truncated file too.
//!
//! Must not: write a backup's plaintext or the passphrase anywhere, or accept Argon2 parameters
//! from a file that would exhaust the device's memory.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::key::{fill_random, DeviceKey, SealError, KEY_LEN};
use super::{Gallery, GalleryError};

/// File magic: "PRTRBAK" and the backup format.
const MAGIC: &[u8; 8] = b"PRTRBAK\x01";

/// Argon2 salt length (RFC 9106 §3.1 recommends 16 bytes).
const SALT_LEN: usize = 16;

/// Header length: magic, three u32 parameters, salt.
const HEADER_LEN: usize = MAGIC.len() + 12 + SALT_LEN;

/// Shortest passphrase `export` accepts: the file may be copied anywhere and attacked offline,
/// and Argon2 only multiplies the cost of each guess.
const MIN_PASSPHRASE_CHARS: usize = 12;

/// Largest Argon2 memory cost `import` accepts, in KiB (256 MiB, four times what `export`
/// writes): the parameters are read from the file before anything authenticates them, so a
/// crafted header must not be able to make a 4 GiB device swap itself to death or stall the
/// door for minutes. Checked before any allocation.
const MAX_MEMORY_KIB: u32 = 1 << 18;

/// Largest pass and lane counts `import` accepts (bounds the work a crafted header can ask for:
/// at most 256 MiB x 8 passes, a few seconds on a Pi 5).
const MAX_PASSES: u32 = 8;
const MAX_LANES: u32 = 8;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// RFC 9106 §4, "second recommended option" (64 MiB, 3 passes, 4 lanes), for machines
    /// without much memory: about a second on a Pi 5, once per export or import.
    pub(crate) const RFC9106_LOW_MEMORY: KdfParams =
        KdfParams { memory_kib: 1 << 16, passes: 3, lanes: 4 };
}

/// One person as stored in a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BackupPerson {
    pub name: String,
    pub created_unix: i64,
    pub models: Vec<BackupModel>,
}

/// One person's templates of one model, L2-normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BackupModel {
    pub model_id: String,
    pub templates: Vec<Vec<f32>>,
}

/// The sealed JSON document.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    people: Vec<BackupPerson>,
}

/// What `import` does with a person whose name is already enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Import nothing and name the clashing people.
    Refuse,
    /// Remove the enrolled person (and all their templates) and import the backup's.
    Replace,
}

/// What `import` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// People imported (replaced ones included).
    pub people: usize,
    /// Of those, people that replaced an enrolled person of the same name.
    pub replaced: usize,
    /// Templates imported, all models together.
    pub templates: usize,
}

/// Reads a passphrase from the first line of `path` (trailing newline dropped) after checking
/// that only its owner can read it.
pub fn read_passphrase(path: &Path) -> Result<Zeroizing<String>, GalleryError> {
    crate::secret::check_private(path).map_err(|e| GalleryError::Backup {
        path: path.to_path_buf(),
        reason: format!("passphrase file refused: {e}"),
    })?;
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|source| GalleryError::BackupIo {
            path: path.to_path_buf(),
            context: "cannot read passphrase file",
            source,
        })?);
    let line = text.lines().next().unwrap_or_default();
    Ok(Zeroizing::new(line.to_owned()))
}

impl Gallery {
    /// Writes every person and template, all models, to `file` sealed under `passphrase`
    /// (replacing the file atomically, mode 0600). Returns the number of people written.
    pub fn export(&self, file: &Path, passphrase: &str) -> Result<usize, GalleryError> {
        self.export_with(file, passphrase, KdfParams::RFC9106_LOW_MEMORY)
    }

    /// [`Gallery::export`] with chosen Argon2 costs (tests use cheap ones).
    pub(crate) fn export_with(
        &self,
        file: &Path,
        passphrase: &str,
        params: KdfParams,
    ) -> Result<usize, GalleryError> {
        let bad = |reason: String| GalleryError::Backup { path: file.to_path_buf(), reason };
        if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(bad(format!(
                "passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters; a backup can be \
                 attacked offline"
            )));
        }
        let people = self.export_people()?;
        let count = people.len();
        let json = Zeroizing::new(
            serde_json::to_vec(&Payload { people })
                .map_err(|e| bad(format!("cannot serialise: {e}")))?,
        );
        let bytes = seal_backup(&json, passphrase, params).map_err(bad)?;
        // Atomically and 0600: a kill leaves the old backup or the new one, never half of one.
        crate::secret::write_private(file, &bytes, crate::secret::Place::Replace).map_err(
            |source| GalleryError::BackupIo {
                path: file.to_path_buf(),
                context: "cannot write",
                source,
            },
        )?;
        log::info!(
            "gallery {}: exported {count} person(s) to {}",
            self.path().display(),
            file.display()
        );
        Ok(count)
    }

    /// Reads a backup made by [`Gallery::export`] and enrols everyone in it in ONE transaction:
    /// a wrong passphrase, a damaged or truncated file, an invalid template or a name clash
    /// (with [`ImportMode::Refuse`]) imports nothing.
    pub fn import(
        &mut self,
        file: &Path,
        passphrase: &str,
        mode: ImportMode,
    ) -> Result<ImportSummary, GalleryError> {
        let bytes = std::fs::read(file).map_err(|source| GalleryError::BackupIo {
            path: file.to_path_buf(),
            context: "cannot read",
            source,
        })?;
        let bad = |reason: String| GalleryError::Backup { path: file.to_path_buf(), reason };
        let json = open_backup(&bytes, passphrase).map_err(bad)?;
        let payload: Payload = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("authentic but unreadable content: {e}")))?;
        let summary = self.import_people(&payload.people, mode)?;
        log::info!(
            "gallery {}: imported {} person(s) ({} replaced, {} template(s)) from {}",
            self.path().display(),
            summary.people,
            summary.replaced,
            summary.templates,
            file.display()
        );
        Ok(summary)
    }
}

/// Derives the backup key from the passphrase and salt.
fn derive(passphrase: &str, salt: &[u8], params: KdfParams) -> Result<DeviceKey, String> {
    let p = Params::new(params.memory_kib, params.passes, params.lanes, Some(KEY_LEN))
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| format!("cannot derive the key: {e}"))?;
    Ok(DeviceKey::from_bytes(key))
}

/// Header || sealed(json), the header being the sealed blob's associated data.
pub(crate) fn seal_backup(
    json: &[u8],
    passphrase: &str,
    params: KdfParams,
) -> Result<Vec<u8>, String> {
    let mut salt = [0u8; SALT_LEN];
    fill_random(&mut salt).map_err(|e| format!("cannot get random bytes from the os: {e}"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + json.len() + 64);
    out.extend_from_slice(MAGIC);
    for v in [params.memory_kib, params.passes, params.lanes] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    let key = derive(passphrase, &salt, params)?;
    let sealed = key.seal(&out, json).map_err(|e| e.to_string())?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A backup file's header, checked: its Argon2 costs within the limits `import` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupHeader {
    /// Argon2 memory in KiB.
    pub memory_kib: u32,
    /// Argon2 passes.
    pub passes: u32,
    /// Argon2 lanes.
    pub lanes: u32,
}

impl BackupHeader {
    /// Splits a backup file into its header (checked) and the sealed content, before any key
    /// derivation or allocation: wrong magic, a truncated header and Argon2 costs outside
    /// [1 lane, 8 lanes] x [1 pass, 8 passes] x [8 KiB per lane, 256 MiB] are refused here.
    pub fn parse(bytes: &[u8]) -> Result<(BackupHeader, &[u8]), String> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a portier gallery backup (wrong magic)".to_owned());
        }
        if bytes.len() < HEADER_LEN {
            return Err(format!("truncated: {} bytes, shorter than the header", bytes.len()));
        }
        let header = &bytes[..HEADER_LEN];
        let u32_at = |i: usize| {
            let o = MAGIC.len() + 4 * i;
            u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]])
        };
        let h = BackupHeader { memory_kib: u32_at(0), passes: u32_at(1), lanes: u32_at(2) };
        // Argon2's own minimum: 8 KiB of memory per lane.
        let bounded = (1..=MAX_LANES).contains(&h.lanes)
            && (1..=MAX_PASSES).contains(&h.passes)
            && (8 * h.lanes..=MAX_MEMORY_KIB).contains(&h.memory_kib);
        if !bounded {
            return Err(format!(
                "argon2 parameters {h:?} are outside the accepted range (1..={MAX_LANES} lanes, \
                 1..={MAX_PASSES} passes, 8 KiB per lane..={MAX_MEMORY_KIB} KiB): damaged or \
                 not made by portier"
            ));
        }
        Ok((h, &bytes[HEADER_LEN..]))
    }
}

/// Checks the header, derives the key and opens the content.
pub fn open_backup(bytes: &[u8], passphrase: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let (h, sealed) = BackupHeader::parse(bytes)?;
    let header = &bytes[..HEADER_LEN];
    let params = KdfParams { memory_kib: h.memory_kib, passes: h.passes, lanes: h.lanes };
    let key = derive(passphrase, &header[HEADER_LEN - SALT_LEN..], params)?;
    key.unseal(header, sealed).map_err(|e| match e {
        SealError::Authentication => {
            "wrong passphrase, or the file was changed or truncated (authentication failed)"
                .to_owned()
        }
        other => format!("damaged or truncated: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap Argon2 costs so the tests do not spend seconds per derivation.
    const CHEAP: KdfParams = KdfParams { memory_kib: 64, passes: 1, lanes: 1 };
    const PASS: &str = "correct horse battery staple";

    #[test]
    fn sealed_backup_opens_only_with_its_passphrase_and_intact_bytes() {
        let json = br#"{"people":[]}"#;
        let bytes = seal_backup(json, PASS, CHEAP).unwrap();
        assert_eq!(&open_backup(&bytes, PASS).unwrap()[..], json);
        let err = open_backup(&bytes, "correct horse battery stapler").unwrap_err();
        assert!(err.contains("wrong passphrase"), "{err}");
        // Every truncation and every single-bit flip is caught.
        for len in 0..bytes.len() {
            assert!(open_backup(&bytes[..len], PASS).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x10;
            assert!(open_backup(&tampered, PASS).is_err(), "flipped byte {i}");
        }
        // A header asking for absurd memory is refused before any derivation.
        let mut greedy = bytes.clone();
        greedy[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(open_backup(&greedy, PASS).unwrap_err().contains("outside the accepted range"));
    }

    #[test]
    fn header_costs_are_bounded_before_any_derivation() {
        let bytes = seal_backup(br#"{"people":[]}"#, PASS, CHEAP).unwrap();
        let with = |at: usize, v: u32| {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        let (h, _) = BackupHeader::parse(&bytes).unwrap();
        assert_eq!((h.memory_kib, h.passes, h.lanes), (64, 1, 1));
        // What `export` writes is accepted.
        let m = KdfParams::RFC9106_LOW_MEMORY;
        let ok = with(8, m.memory_kib);
        let ok = {
            let mut b = ok;
            b[12..16].copy_from_slice(&m.passes.to_le_bytes());
            b[16..20].copy_from_slice(&m.lanes.to_le_bytes());
            b
        };
        assert!(BackupHeader::parse(&ok).is_ok());
        // 1 GiB, 16 passes, 0 passes, 0 lanes, too little memory per lane: refused.
        for (at, v) in
            [(8, 1 << 20), (8, (1 << 18) + 1), (12, 16), (12, 9), (12, 0), (16, 0), (16, 9), (8, 7)]
        {
            let err = BackupHeader::parse(&with(at, v)).unwrap_err();
            assert!(err.contains("outside the accepted range"), "{at} {v}: {err}");
        }
    }
}
