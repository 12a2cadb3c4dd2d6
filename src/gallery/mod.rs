//! Enrolled people and their face templates, kept in SQLite, and 1:N matching against them.
//!
//! Role: the gallery is the only persistent state of the door. [`Gallery`] owns the SQLite file
//! (people, one or more templates per person and per embedding model) and guarantees that an
//! enrolment is all-or-nothing even if power is cut mid-write. [`Matcher`] is an in-memory,
//! read-only snapshot of one model's templates as a contiguous `f32` matrix, built once and then
//! queried per detected face without allocating.
//!
//! Templates are encrypted at rest (XChaCha20-Poly1305 under a device key kept in its own file,
//! see `key.rs`); they are decrypted only when a [`Matcher`] is built (start-up, reload), never
//! per frame. `portier gallery export/import` moves them as passphrase-encrypted backups.
//!
//! Must not: decode images or run models. It only ever sees embeddings (plain `f32` vectors) and
//! model identifiers; producing them is the job of the detection and embedding modules.

mod backup;
pub mod kernels;
mod key;
mod matching;
pub mod otp;
mod store;

use std::path::PathBuf;

pub use backup::{open_backup, read_passphrase, BackupHeader, ImportMode, ImportSummary};
pub(crate) use backup::{BackupModel, BackupPerson};
pub use key::{DeviceKey, KeyBinding, KEY_LEN};
pub use matching::{
    Candidate, Decision, MatchPolicy, MatchResult, Matcher, Storage, UnknownReason,
};
pub use store::{EnrollMode, Gallery, PersonSummary};

/// Row id of a person in the gallery; stable for the life of the person (rename keeps it).
pub type PersonId = i64;

/// Everything that can go wrong with the gallery file or with matching against it.
///
/// Every message names the gallery file, so a log line alone is enough to find the culprit on a
/// device that may have several gallery copies (backups, USB sticks).
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    /// The file exists but is not an SQLite database at all (wrong magic, truncated header).
    #[error("gallery {path}: file is not a database (corrupt or not a portier gallery)")]
    NotADatabase {
        /// Gallery file.
        path: PathBuf,
    },
    /// The file is an SQLite database, but one written by something other than portier.
    #[error("gallery {path}: not a portier gallery ({detail}); refusing to touch it")]
    NotAGallery {
        /// Gallery file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// SQLite reports damage (failed quick/integrity check, corrupt page, broken foreign keys).
    #[error("gallery {path}: database is corrupt: {detail}")]
    Corrupt {
        /// Gallery file.
        path: PathBuf,
        /// SQLite's own description of the damage.
        detail: String,
    },
    /// The schema was written by a newer portier; opening it could misinterpret or lose data.
    #[error(
        "gallery {path}: schema version {found} is newer than the supported version {supported} \
         (written by a newer portier; upgrade instead of downgrading)"
    )]
    UnsupportedVersion {
        /// Gallery file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// Highest schema version this build understands.
        supported: i64,
    },
    /// Enrolling a new person or renaming onto a name that is already enrolled.
    #[error("gallery {path}: a person named {name:?} is already enrolled")]
    NameTaken {
        /// Gallery file.
        path: PathBuf,
        /// The (trimmed) name that is taken.
        name: String,
    },
    /// Renaming or removing a person that does not exist.
    #[error("gallery {path}: no person named {name:?} is enrolled")]
    UnknownPerson {
        /// Gallery file.
        path: PathBuf,
        /// The (trimmed) name that was looked up.
        name: String,
    },
    /// A person name that is empty, too long or contains control characters.
    #[error("gallery {path}: invalid person name {name:?}: {reason}")]
    InvalidName {
        /// Gallery file.
        path: PathBuf,
        /// The name as given (untrimmed).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A model identifier that is empty or contains control characters.
    #[error("gallery {path}: invalid model id {model_id:?}: {reason}")]
    InvalidModelId {
        /// Gallery file.
        path: PathBuf,
        /// The model id as given.
        model_id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `enroll` was called without any template.
    #[error("gallery {path}: no templates given to enrol {name:?}")]
    NoTemplates {
        /// Gallery file.
        path: PathBuf,
        /// Person being enrolled.
        name: String,
    },
    /// One of the templates given to `enroll` is unusable (wrong length, NaN, all zeros).
    #[error(
        "gallery {path}: template {index} for {name:?} (model {model_id:?}) rejected: {reason}"
    )]
    InvalidTemplate {
        /// Gallery file.
        path: PathBuf,
        /// Person being enrolled.
        name: String,
        /// Model the templates belong to.
        model_id: String,
        /// Position of the offending template in the slice given to `enroll`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored template cannot be loaded (bad blob length, inconsistent dimension, NaN).
    #[error(
        "gallery {path}: stored template {template_id} of {person:?} (model {model_id:?}) is \
         corrupt: {detail}"
    )]
    CorruptTemplate {
        /// Gallery file.
        path: PathBuf,
        /// Name of the person owning the template.
        person: String,
        /// Model of the template.
        model_id: String,
        /// Row id of the template.
        template_id: i64,
        /// What is wrong with it.
        detail: String,
    },
    /// A query embedding whose length differs from the matcher's template dimension.
    #[error(
        "gallery {path}: embedding has {found} values but templates of model {model_id:?} have \
         {expected}"
    )]
    DimensionMismatch {
        /// Gallery file the matcher was loaded from.
        path: PathBuf,
        /// Model of the matcher.
        model_id: String,
        /// Template dimension of the matcher.
        expected: usize,
        /// Length of the embedding given.
        found: usize,
    },
    /// A query embedding that contains NaN/infinity or is all zeros, so no cosine exists.
    #[error("gallery {path}: unusable embedding for model {model_id:?}: {reason}")]
    InvalidEmbedding {
        /// Gallery file the matcher was loaded from.
        path: PathBuf,
        /// Model of the matcher.
        model_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The linked SQLite lacks a feature the gallery relies on for correctness.
    #[error("gallery {path}: unsupported sqlite: {detail}")]
    Unsupported {
        /// Gallery file.
        path: PathBuf,
        /// Which feature is missing.
        detail: String,
    },
    /// The device key file cannot be read or created.
    #[error("gallery key file {path}: {context}: {source}")]
    KeyFile {
        /// Key file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The device key file is readable by others or owned by another user.
    #[error("gallery key file {path}: refused: {source}")]
    KeyFileRefused {
        /// Key file.
        path: PathBuf,
        /// What is wrong with its permissions.
        #[source]
        source: crate::secret::SecretFileError,
    },
    /// The device key file has the wrong size.
    #[error("gallery key file {path}: {reason}")]
    BadKeyFile {
        /// Key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The gallery holds encrypted templates but its key file is gone.
    #[error(
        "gallery {path}: holds encrypted templates but its key file {key_file} is missing; \
         restore the key file, or start a new gallery and `portier gallery import` a backup"
    )]
    KeyMissing {
        /// Gallery file.
        path: PathBuf,
        /// Key file that was expected.
        key_file: PathBuf,
    },
    /// The first template fails authentication: the key file is not this gallery's key.
    #[error(
        "gallery {path}: templates cannot be decrypted with key file {key_file} (authentication \
         failed on the first template, of {person:?}): wrong key file, or a tampered gallery"
    )]
    WrongKey {
        /// Gallery file.
        path: PathBuf,
        /// Key file used.
        key_file: PathBuf,
        /// Owner of the first template.
        person: String,
    },
    /// An export backup cannot be written, read, decrypted or applied.
    #[error("gallery backup {path}: {reason}")]
    Backup {
        /// Backup file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An export backup file cannot be read or written.
    #[error("gallery backup {path}: {context}: {source}")]
    BackupIo {
        /// Backup file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Importing a backup would overwrite people already enrolled.
    #[error(
        "gallery {path}: backup holds people already enrolled ({names}); nothing was imported \
         (use --replace to replace them)"
    )]
    ImportClash {
        /// Gallery file.
        path: PathBuf,
        /// The clashing names, comma-separated.
        names: String,
    },
    /// The gallery file could not be read or created.
    #[error("gallery {path}: {context}: {source}")]
    Io {
        /// Gallery file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Any other SQLite failure (disk full, locked beyond the busy timeout, I/O error).
    #[error("gallery {path}: {context}: {source}")]
    Sqlite {
        /// Gallery file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
}
