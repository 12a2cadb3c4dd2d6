//! The SQLite-backed store of enrolled people and their templates.
//!
//! Durability rules that shape this file: every mutation is a single transaction (a power cut
//! leaves the whole person or nothing), a file that does not look like ours is never written to,
//! and removed people are scrubbed from the file (secure delete + WAL truncation), because a door
//! controller that "forgets" someone must not keep their biometric template on disk.
//!
//! Templates are sealed with the device key (`key.rs`) bound to (person id, person name, model
//! id, dim): the file alone reveals no template, a blob moved to another row fails
//! authentication, and so does a row whose person was renamed behind portier's back (two names
//! swapped in the file would otherwise swap two people's access). Person ids are never reused
//! (`AUTOINCREMENT`): a template sealed for a removed person can never be reattached to a new
//! one that got the same id. Schema version 3 is this form; a version 2 file (sealed, bound to
//! the id only, ids reusable) and a version 1 file (plaintext `f32` blobs) are migrated in one
//! transaction at open and then vacuumed, so no plaintext or old blob stays in free pages or the
//! WAL.
//!
//! Loading a large gallery is decryption: a matcher is read on the caller's thread and its
//! templates opened on up to four worker threads (`SealedBatch`), rows put into the matcher in
//! store order; new files use 64 KB pages (a 2 KB sealed template would take a whole 4 KB
//! page): a third smaller, and `quick_check` at open takes half the time (`portier bench match
//! --open-in`).
//!
//! What encryption at rest protects, and what it does not: the templates are unreadable to
//! whoever copies the gallery file alone (a backup, a stolen database, a log bundle). The key
//! file sits on the same SD card (owner-only, 0600): whoever reads the whole card as root, or
//! takes the card out, reads the key too. Binding the key to the device (on a Pi 5, its OTP
//! customer key) is the step that closes that; see the README's "Gallery encryption".

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use zeroize::Zeroizing;

use super::backup::{BackupModel, BackupPerson, ImportMode, ImportSummary};
use super::key::{DeviceKey, SealError, SEAL_OVERHEAD};
use super::matching::{Matcher, Rows, Storage};
use super::{GalleryError, PersonId};

/// Schema version stored in `PRAGMA user_version`; bump with a migration when the schema changes.
/// 1: plaintext templates; 2: templates sealed with the device key (same tables); 3: person ids
/// never reused (`AUTOINCREMENT`), templates also bound to the person's name.
const SCHEMA_VERSION: i64 = 3;

/// Associated-data prefix of a sealed template; names the binding's layout.
const TEMPLATE_AAD_PREFIX: &[u8] = b"portier template v3\0";

/// The version 2 binding (person id, model id, dim), read only to migrate a version 2 file.
const TEMPLATE_AAD_PREFIX_V2: &[u8] = b"portier template v2\0";

/// `PRAGMA application_id` marking a file as a portier gallery ("PRTR" in ASCII), so that an
/// unrelated SQLite database handed to us by mistake is recognised and left alone.
const APPLICATION_ID: i64 = 0x5052_5452;

/// First 16 bytes of every SQLite 3 database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// How long a writer waits for another connection (e.g. the enrolment CLI while the door daemon
/// runs) before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_millis(2000);

/// Page size of new gallery files (SQLite's largest).
const PAGE_SIZE: i64 = 65536;

/// Longest accepted person name, in characters (not bytes), so non-Latin names get the same room.
const MAX_NAME_CHARS: usize = 64;

/// Tables of schema version 3. `template.embedding` is `dim` little-endian `f32`s,
/// L2-normalised, sealed with the device key (format byte, 24-byte nonce, ciphertext, 16-byte
/// tag; see `key.rs`). `AUTOINCREMENT`: a person id is never handed out twice, not even the
/// highest one after its person was removed. The extra index on `person_id` keeps
/// `ON DELETE CASCADE` and `list` from scanning all templates.
const SCHEMA: &str = "
CREATE TABLE person (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_unix INTEGER NOT NULL
);
CREATE TABLE template (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES person(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE INDEX template_model_person ON template(model_id, person_id);
CREATE INDEX template_person ON template(person_id);
";

/// One enrolled person as shown by `portier gallery list`.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonSummary {
    /// Row id; stable across renames.
    pub id: PersonId,
    /// Display name (trimmed, unique).
    pub name: String,
    /// Enrolment time of the person record, seconds since the Unix epoch.
    pub created_unix: i64,
    /// `(model id, template count)` for every model the person has templates for, sorted by
    /// model id.
    pub templates: Vec<(String, usize)>,
}

/// What `enroll` does when the name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollMode {
    /// Create a new person; fail with [`GalleryError::NameTaken`] if the name exists, so a typo
    /// cannot silently merge two people.
    New,
    /// Add templates to the existing person of that name (creating them if missing), e.g. to
    /// add photos with glasses or for a second model.
    Append,
}

/// The gallery file: enrolled people and their templates.
#[derive(Debug)]
pub struct Gallery {
    /// Open connection, configured by `configure` (WAL, FULL sync, foreign keys, secure delete).
    conn: Connection,
    /// File path (":memory:" for in-memory galleries), kept for error messages.
    path: PathBuf,
    /// Seals and opens templates (`Debug` shows no key bytes).
    key: DeviceKey,
    /// Where the key came from (":memory:" for an in-memory gallery's random key).
    key_file: PathBuf,
}

/// Where the integrity check of an opened gallery runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Before the gallery is returned.
    Here,
    /// On the caller's second connection, concurrently ([`Gallery::load_matchers`]).
    Elsewhere,
}

/// Where [`Gallery::setup`] gets the device key.
enum KeySource<'a> {
    /// A key file, created on first use.
    File(&'a Path),
    /// A random key that lives as long as the (in-memory) gallery.
    Ephemeral,
}

impl Gallery {
    /// Opens the gallery at `path`, creating the file and schema if the file is missing or empty,
    /// with the device key in `key_file`.
    ///
    /// A file that is not an SQLite database, an SQLite database of another application, a
    /// damaged database (`PRAGMA quick_check` not "ok") or one with a newer schema version is
    /// refused without being written to. The key file is created (0600) if it is missing and
    /// the gallery holds no sealed template yet; a key file that others can read, that belongs to
    /// another user or has the wrong size is refused. A version 1 gallery is sealed and scrubbed.
    pub fn open(path: &Path, key_file: &Path) -> Result<Gallery, GalleryError> {
        Ok(Gallery::open_checking(path, key_file, Check::Here)?.0)
    }

    /// Opens the gallery at `path` and loads the matchers of `models` in `storage`
    /// ([`Gallery::matchers`]): what the appliance does at start-up and after every change.
    ///
    /// A gallery that opening writes nothing to (current schema, WAL mode, key file present:
    /// what the appliance meets) is checked (`PRAGMA quick_check`, which reads the whole file:
    /// a third of the time of opening a large gallery) on a second connection while its
    /// templates load on the first, and the check's verdict comes before anything the load
    /// met: a damaged file is refused as [`Gallery::open`] refuses it, and nothing was written
    /// to it. Any other gallery (to create, to migrate, to switch to WAL, without its key file)
    /// is opened exactly as by [`Gallery::open`], checked before anything is written.
    pub fn load_matchers(
        path: &Path,
        key_file: &Path,
        models: &[&str],
        storage: Storage,
    ) -> Result<Vec<Matcher>, GalleryError> {
        let (gallery, check) = Gallery::open_checking(path, key_file, Check::Elsewhere)?;
        if check == Check::Here {
            return gallery.matchers(models, storage);
        }
        let (checked, loaded) = std::thread::scope(|scope| {
            let check = scope.spawn(|| {
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = Connection::open_with_flags(path, flags)
                    .map_err(sql_err(path, "cannot open database"))?;
                conn.busy_timeout(BUSY_TIMEOUT)
                    .map_err(sql_err(path, "cannot set busy timeout"))?;
                quick_check(&conn, path)
            });
            let loaded = gallery.matchers(models, storage);
            let checked = check.join().unwrap_or_else(|_| {
                Err(GalleryError::Unsupported {
                    path: path.to_path_buf(),
                    detail: "the integrity check's thread stopped".to_owned(),
                })
            });
            (checked, loaded)
        });
        // Damage before anything the load met.
        checked.and(loaded)
    }

    /// [`Gallery::open`], with the integrity check here or, when `check` asks for it and
    /// opening writes nothing (see `setup`), left to the caller: where it is to run is returned.
    fn open_checking(
        path: &Path,
        key_file: &Path,
        check: Check,
    ) -> Result<(Gallery, Check), GalleryError> {
        // Look at the header ourselves first: SQLite would happily treat some non-database files
        // as empty and we must never risk writing into someone else's file.
        check_header(path)?;
        // No SQLITE_OPEN_URI: a configured path is a path, never a "file:" URI with options.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(sql_err(path, "cannot open database"))?;
        Gallery::setup(conn, path.to_path_buf(), KeySource::File(key_file), check)
    }

    /// Opens a fresh, empty gallery that lives in memory only (for tests and evaluation runs).
    pub fn open_in_memory() -> Result<Gallery, GalleryError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory()
            .map_err(sql_err(&path, "cannot open in-memory database"))?;
        Ok(Gallery::setup(conn, path, KeySource::Ephemeral, Check::Here)?.0)
    }

    /// Path of the gallery file (":memory:" for an in-memory gallery).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Validates, configures and if necessary initialises a freshly opened connection.
    fn setup(
        conn: Connection,
        path: PathBuf,
        keys: KeySource<'_>,
        check: Check,
    ) -> Result<(Gallery, Check), GalleryError> {
        let p = path.as_path();
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err(p, "cannot set busy timeout"))?;

        // Read-only probes first: nothing below writes until the file is known to be ours.
        let (app_id, version, objects) = probe(&conn, p)?;
        if !is_ours_or_blank(app_id, version, objects) {
            return Err(GalleryError::NotAGallery {
                path,
                detail: format!(
                    "application id {app_id:#x}, schema version {version}, {objects} schema objects"
                ),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(GalleryError::UnsupportedVersion {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // Only a gallery that opening writes nothing to may leave its check to the caller: one
        // of the current schema (not created, not migrated), already in WAL mode (no header
        // rewrite), whose key file exists (none is created).
        let check = match (check, &keys) {
            (Check::Elsewhere, KeySource::File(key_file))
                if version == SCHEMA_VERSION
                    && objects > 0
                    && journal_mode(&conn, p)?.eq_ignore_ascii_case("wal")
                    && std::fs::symlink_metadata(key_file).is_ok() =>
            {
                Check::Elsewhere
            }
            _ => {
                quick_check(&conn, p)?;
                Check::Here
            }
        };
        if version == 0 && objects == 0 {
            // A new file: large pages, before anything is written. A 512-d sealed template
            // (2 KB) takes a whole 4 KB page; 64 KB pages hold 31, so a large gallery's file
            // is a third smaller and read in a sixteenth as many pages.
            conn.pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(sql_err(p, "cannot set the page size"))?;
        }
        configure(&conn, p)?;

        let (key, key_file) = match keys {
            KeySource::File(key_file) => (obtain_key(&conn, p, version, key_file)?, key_file),
            KeySource::Ephemeral => (DeviceKey::random(p)?, p),
        };
        let key_file = key_file.to_path_buf();
        let mut gallery = Gallery { conn, path, key, key_file };
        if version == 0 {
            gallery.create_schema()?;
        }
        gallery.check_tables()?;
        if version == 1 || version == 2 {
            gallery.migrate_to_v3()?;
        }
        Ok((gallery, check))
    }

    /// Migration 1 or 2 → 3, in ONE transaction (a kill leaves the file as it was): the person
    /// table is rebuilt with `AUTOINCREMENT` (same ids, names and times), and every template is
    /// sealed with the version 3 binding (a version 1 plaintext blob is sealed, a version 2 blob
    /// opened with its old binding first). Then the file is vacuumed and the WAL truncated, so
    /// neither plaintext nor old blobs survive in free pages or old WAL frames.
    ///
    /// Foreign keys are off for the rebuild (SQLite's documented way to change a table's
    /// definition: dropping the old `person` with them on would cascade to the templates) and
    /// `foreign_key_check` must be clean before the commit.
    fn migrate_to_v3(&mut self) -> Result<(), GalleryError> {
        let path = self.path.clone();
        let path = path.as_path();
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(sql_err(path, "cannot turn foreign keys off for the migration"))?;
        let migrated = self.migrate_to_v3_tx();
        let on = self
            .conn
            .execute_batch("PRAGMA foreign_keys = ON")
            .map_err(sql_err(path, "cannot turn foreign keys back on"));
        let (from, count) = migrated?;
        on?;
        let Some(count) = count else { return Ok(()) };
        // VACUUM rebuilds the file from live rows only (no free page keeps an old copy); the
        // truncating checkpoint then drops the WAL frames of both steps.
        self.conn.execute_batch("VACUUM").map_err(sql_err(path, "cannot vacuum after sealing"))?;
        self.checkpoint_truncate("migrating the gallery")?;
        log::info!(
            "gallery {}: sealed {count} template(s) with key file {} (schema {from} -> \
             {SCHEMA_VERSION}: person ids never reused, templates bound to the name)",
            path.display(),
            self.key_file.display()
        );
        Ok(())
    }

    /// The transaction of [`Gallery::migrate_to_v3`]: (version found, templates sealed), with
    /// `None` when another process migrated the file first.
    fn migrate_to_v3_tx(&mut self) -> Result<(i64, Option<usize>), GalleryError> {
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "cannot start migration transaction"))?;
        // Another process may have migrated the file between our probe and the lock.
        let (_, version, _) = probe(&tx, path)?;
        if !(1..SCHEMA_VERSION).contains(&version) {
            return Ok((version, None));
        }
        let rows: Vec<PlainRow> = {
            let mut stmt = tx
                .prepare(
                    "SELECT t.id, t.person_id, p.name, t.model_id, t.dim, t.embedding \
                     FROM template t JOIN person p ON p.id = t.person_id ORDER BY t.id",
                )
                .map_err(sql_err(path, "cannot prepare migration"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PlainRow {
                        template_id: r.get(0)?,
                        person: r.get(1)?,
                        name: r.get(2)?,
                        model_id: r.get(3)?,
                        dim: r.get(4)?,
                        plain: Zeroizing::new(r.get::<_, Vec<u8>>(5)?),
                    })
                })
                .map_err(sql_err(path, "cannot read templates to migrate"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql_err(path, "cannot read templates to migrate"))?
        };
        tx.execute_batch(
            "CREATE TABLE person_v3 (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE,
                 created_unix INTEGER NOT NULL
             );
             INSERT INTO person_v3 (id, name, created_unix)
                 SELECT id, name, created_unix FROM person ORDER BY id;
             DROP TABLE person;
             ALTER TABLE person_v3 RENAME TO person;",
        )
        .map_err(sql_err(path, "cannot rebuild the person table"))?;
        {
            let mut update = tx
                .prepare("UPDATE template SET embedding = ?1 WHERE id = ?2")
                .map_err(sql_err(path, "cannot prepare migration"))?;
            for PlainRow { template_id, person, name, model_id, dim, plain } in &rows {
                let corrupt = |detail: String| GalleryError::CorruptTemplate {
                    path: path.to_path_buf(),
                    person: name.clone(),
                    model_id: model_id.clone(),
                    template_id: *template_id,
                    detail,
                };
                let stored = plain.len();
                let dim = usize::try_from(*dim).ok().filter(|&d| d > 0).ok_or_else(|| {
                    corrupt(format!("dimension {dim} is not positive ({stored} bytes)"))
                })?;
                let opened;
                let plain: &[u8] = if version == 1 {
                    if stored != dim * 4 {
                        return Err(corrupt(format!(
                            "plaintext blob of {stored} bytes for dim {dim}"
                        )));
                    }
                    plain
                } else {
                    let aad = template_aad_v2(*person, model_id, dim);
                    opened = match self.key.unseal(&aad, plain) {
                        Ok(p) => p,
                        Err(SealError::Authentication) if *template_id == rows[0].template_id => {
                            return Err(GalleryError::WrongKey {
                                path: path.to_path_buf(),
                                key_file: self.key_file.clone(),
                                person: name.clone(),
                            })
                        }
                        Err(e) => return Err(corrupt(e.to_string())),
                    };
                    &opened
                };
                let blob = self
                    .key
                    .seal(&template_aad(*person, name, model_id, dim), plain)
                    .map_err(|e| corrupt(format!("cannot seal: {e}")))?;
                update
                    .execute(params![blob, template_id])
                    .map_err(sql_err(path, "cannot seal template"))?;
            }
        }
        let orphans: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
            .map_err(sql_err(path, "cannot run foreign key check"))?;
        if orphans != 0 {
            return Err(GalleryError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{orphans} template(s) belong to no person; not migrated"),
            });
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql_err(path, "cannot set schema version"))?;
        tx.commit().map_err(sql_err(path, "cannot commit migration"))?;
        Ok((version, Some(rows.len())))
    }

    /// Checkpoints the WAL into the main file and truncates it, so old page images (removed or
    /// migrated templates) do not linger in the `-wal` file.
    fn checkpoint_truncate(&self, after: &str) -> Result<(), GalleryError> {
        let path = self.path.as_path();
        // Columns: busy flag, WAL frames, checkpointed frames. Busy means a reader (another
        // process) pinned old frames; the data is still changed, only the scrub is deferred to
        // the next checkpoint, so this is a warning rather than an error.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(sql_err(path, "cannot checkpoint the wal"))?;
        if busy != 0 {
            log::warn!(
                "gallery {}: another connection blocked the checkpoint after {after}; old pages \
                 stay in the -wal file until the next checkpoint",
                path.display()
            );
        }
        Ok(())
    }

    /// Creates the schema in one transaction, re-checking under the write lock in case another
    /// process initialised the same new file concurrently.
    fn create_schema(&mut self) -> Result<(), GalleryError> {
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "cannot start schema transaction"))?;
        let (app_id, version, objects) = probe(&tx, path)?;
        if version == 0 {
            if objects != 0 || app_id != 0 {
                return Err(GalleryError::NotAGallery {
                    path: path.to_path_buf(),
                    detail: format!("{objects} schema objects but no portier schema version"),
                });
            }
            tx.execute_batch(SCHEMA).map_err(sql_err(path, "cannot create schema"))?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(sql_err(path, "cannot set application id"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql_err(path, "cannot set schema version"))?;
            log::info!(
                "gallery {}: created empty gallery (schema {SCHEMA_VERSION})",
                path.display()
            );
        }
        tx.commit().map_err(sql_err(path, "cannot commit schema"))
    }

    /// Makes sure both tables exist, so a half-foreign file fails at open, not at first use.
    fn check_tables(&self) -> Result<(), GalleryError> {
        let found: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('person', 'template')",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err(&self.path, "cannot read schema"))?;
        if found == 2 {
            Ok(())
        } else {
            Err(GalleryError::Corrupt {
                path: self.path.clone(),
                detail: "tables `person` and `template` are missing".to_owned(),
            })
        }
    }

    /// Enrols one person with templates from one model, in ONE transaction: a kill in the middle
    /// leaves the whole person or nothing.
    ///
    /// [`EnrollMode::New`] fails with [`GalleryError::NameTaken`] if the name exists;
    /// [`EnrollMode::Append`] adds templates to an existing person (creating it if missing).
    /// Every template must have the same length `dim` as the model's templates already stored
    /// (or, for a model new to this gallery, as the first template), be finite and non-zero;
    /// templates are L2-normalised before storage. An empty `templates` is an error.
    pub fn enroll(
        &mut self,
        name: &str,
        model_id: &str,
        templates: &[Vec<f32>],
        mode: EnrollMode,
    ) -> Result<PersonId, GalleryError> {
        self.enroll_models(name, &[(model_id, templates)], mode)
    }

    /// [`Gallery::enroll`] for several models at once (one template set per embedding space:
    /// the CPU recognizer and the NPU's), all in ONE transaction.
    pub fn enroll_models(
        &mut self,
        name: &str,
        sets: &[(&str, &[Vec<f32>])],
        mode: EnrollMode,
    ) -> Result<PersonId, GalleryError> {
        let path = self.path.as_path();
        let name = validate_name(path, name)?;
        if sets.is_empty() || sets.iter().any(|(_, t)| t.is_empty()) {
            return Err(GalleryError::NoTemplates { path: path.to_path_buf(), name });
        }
        for (model_id, _) in sets {
            validate_model_id(path, model_id)?;
        }

        // IMMEDIATE takes the write lock up front, so the read-then-write below cannot fail
        // half-way with SQLITE_BUSY when another process writes concurrently.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "cannot start enrolment transaction"))?;

        // Validate everything before the first INSERT: a rejected enrolment writes nothing, and
        // the dimensions and scale factors are reused below.
        let checked = check_sets(&tx, path, &name, sets)?;
        let existing = find_person(&tx, path, &name)?;
        let person = match (existing, mode) {
            (Some(_), EnrollMode::New) => {
                return Err(GalleryError::NameTaken { path: path.to_path_buf(), name });
            }
            (Some(id), EnrollMode::Append) => id,
            (None, _) => insert_person(&tx, path, &name, now_unix())?,
        };
        insert_templates(&tx, path, &self.key, (person, &name), &checked)?;
        tx.commit().map_err(sql_err(path, "cannot commit enrolment"))?;
        for Checked { model_id, templates, .. } in &checked {
            log::info!(
                "gallery {}: enrolled {name:?} (id {person}) with {} template(s) of model \
                 {model_id:?}",
                path.display(),
                templates.len()
            );
        }
        Ok(person)
    }

    /// All enrolled people with their per-model template counts, ordered by name.
    pub fn list(&self) -> Result<Vec<PersonSummary>, GalleryError> {
        let path = self.path.as_path();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.id, p.name, p.created_unix, t.model_id, count(t.id) \
                 FROM person p LEFT JOIN template t ON t.person_id = p.id \
                 GROUP BY p.id, t.model_id \
                 ORDER BY p.name, p.id, t.model_id",
            )
            .map_err(sql_err(path, "cannot prepare person list"))?;
        let mut rows = stmt.query([]).map_err(sql_err(path, "cannot list people"))?;
        let mut people: Vec<PersonSummary> = Vec::new();
        while let Some(row) = rows.next().map_err(sql_err(path, "cannot list people"))? {
            let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            };
            let (id, name, created_unix, model, count) =
                read(row).map_err(sql_err(path, "cannot read person row"))?;
            if people.last().map(|p| p.id) != Some(id) {
                people.push(PersonSummary { id, name, created_unix, templates: Vec::new() });
            }
            // A person without templates yields one row with a NULL model (LEFT JOIN).
            if let (Some(model), Some(person)) = (model, people.last_mut()) {
                person.templates.push((model, usize::try_from(count).unwrap_or(0)));
            }
        }
        Ok(people)
    }

    /// Renames a person, keeping their id and templates (resealed under the new name in the
    /// same transaction: the name is part of each template's binding).
    ///
    /// Errors: [`GalleryError::UnknownPerson`] if `old` is not enrolled,
    /// [`GalleryError::NameTaken`] if `new` belongs to someone else,
    /// [`GalleryError::InvalidName`] if `new` breaks the name rules.
    pub fn rename(&mut self, old: &str, new: &str) -> Result<(), GalleryError> {
        let path = self.path.as_path();
        let new = validate_name(path, new)?;
        let old = old.trim();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "cannot start rename transaction"))?;
        let Some(id) = find_person(&tx, path, old)? else {
            return Err(GalleryError::UnknownPerson {
                path: path.to_path_buf(),
                name: old.to_owned(),
            });
        };
        if old == new {
            return Ok(());
        }
        if find_person(&tx, path, &new)?.is_some() {
            return Err(GalleryError::NameTaken { path: path.to_path_buf(), name: new });
        }
        tx.execute("UPDATE person SET name = ?1 WHERE id = ?2", params![new, id])
            .map_err(sql_err(path, "cannot rename person"))?;
        let rows: Vec<(i64, String, i64, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT id, model_id, dim, embedding FROM template WHERE person_id = ?1")
                .map_err(sql_err(path, "cannot read templates to reseal"))?;
            let rows = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(sql_err(path, "cannot read templates to reseal"))?;
            rows.collect::<Result<_, _>>().map_err(sql_err(path, "cannot read templates"))?
        };
        for (template_id, model_id, dim, blob) in rows {
            let corrupt = |detail: String| GalleryError::CorruptTemplate {
                path: path.to_path_buf(),
                person: old.to_owned(),
                model_id: model_id.clone(),
                template_id,
                detail,
            };
            let dim = usize::try_from(dim).map_err(|_| corrupt(format!("dimension {dim}")))?;
            let plain = self
                .key
                .unseal(&template_aad(id, old, &model_id, dim), &blob)
                .map_err(|e| corrupt(e.to_string()))?;
            let sealed = self
                .key
                .seal(&template_aad(id, &new, &model_id, dim), &plain)
                .map_err(|e| corrupt(format!("cannot seal: {e}")))?;
            tx.execute(
                "UPDATE template SET embedding = ?1 WHERE id = ?2",
                params![sealed, template_id],
            )
            .map_err(sql_err(path, "cannot reseal template"))?;
        }
        tx.commit().map_err(sql_err(path, "cannot commit rename"))?;
        log::info!("gallery {}: renamed {old:?} (id {id}) to {new:?}", path.display());
        Ok(())
    }

    /// Removes a person and all their templates, and scrubs them from the file.
    ///
    /// `secure_delete` (set at open) zeroes the freed cells and pages; the WAL is then
    /// checkpointed and truncated so the old page images do not linger in the `-wal` file.
    pub fn remove(&mut self, name: &str) -> Result<(), GalleryError> {
        let path = self.path.as_path();
        let name = name.trim();
        // A single statement is its own transaction; templates go with it via ON DELETE CASCADE.
        let removed = self
            .conn
            .execute("DELETE FROM person WHERE name = ?1", [name])
            .map_err(sql_err(path, "cannot remove person"))?;
        if removed == 0 {
            return Err(GalleryError::UnknownPerson {
                path: path.to_path_buf(),
                name: name.to_owned(),
            });
        }
        log::info!("gallery {}: removed {name:?} and their templates", path.display());
        self.checkpoint_truncate(&format!("removing {name:?}"))
    }

    /// Runs the full `PRAGMA integrity_check` and `PRAGMA foreign_key_check`.
    pub fn integrity_check(&self) -> Result<(), GalleryError> {
        let path = self.path.as_path();
        let problems = pragma_rows(&self.conn, path, "PRAGMA integrity_check")?;
        if problems != ["ok"] {
            return Err(GalleryError::Corrupt {
                path: path.to_path_buf(),
                detail: problems.join("; "),
            });
        }
        let orphans: i64 = self
            .conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
            .map_err(sql_err(path, "cannot run foreign key check"))?;
        if orphans != 0 {
            return Err(GalleryError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{orphans} template(s) belong to no person"),
            });
        }
        Ok(())
    }

    /// Every person with their templates of every model, decrypted (for a backup).
    pub(super) fn export_people(&self) -> Result<Vec<BackupPerson>, GalleryError> {
        let mut people: Vec<BackupPerson> = Vec::new();
        for summary in self.list()? {
            let ids: Vec<&str> = summary.templates.iter().map(|(id, _)| id.as_str()).collect();
            let matchers = self.load(&ids, Some(summary.id), Storage::Float32)?;
            let models = matchers
                .iter()
                .map(|m| BackupModel {
                    model_id: m.model_id().to_owned(),
                    templates: (0..m.len()).map(|i| m.row(i).to_vec()).collect(),
                })
                .collect();
            people.push(BackupPerson {
                name: summary.name,
                created_unix: summary.created_unix,
                models,
            });
        }
        Ok(people)
    }

    /// Enrols everyone in `people` in ONE transaction (see [`Gallery::import`]; also how
    /// `bench match` writes a large gallery).
    pub(crate) fn import_people(
        &mut self,
        people: &[BackupPerson],
        mode: ImportMode,
    ) -> Result<ImportSummary, GalleryError> {
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "cannot start import transaction"))?;
        let mut names = Vec::with_capacity(people.len());
        // A set beside the list: a site's backup holds up to 100,000 people.
        let mut seen = std::collections::HashSet::with_capacity(people.len());
        let mut clashes = Vec::new();
        for person in people {
            let name = validate_name(path, &person.name)?;
            if !seen.insert(name.clone()) {
                return Err(GalleryError::NameTaken { path: path.to_path_buf(), name });
            }
            if person.models.is_empty() || person.models.iter().any(|m| m.templates.is_empty()) {
                return Err(GalleryError::NoTemplates { path: path.to_path_buf(), name });
            }
            for m in &person.models {
                validate_model_id(path, &m.model_id)?;
            }
            if let Some(id) = find_person(&tx, path, &name)? {
                clashes.push((name.clone(), id));
            }
            names.push(name);
        }
        if mode == ImportMode::Refuse && !clashes.is_empty() {
            let names = clashes.iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>();
            return Err(GalleryError::ImportClash {
                path: path.to_path_buf(),
                names: names.join(", "),
            });
        }
        for (_, id) in &clashes {
            tx.execute("DELETE FROM person WHERE id = ?1", [id])
                .map_err(sql_err(path, "cannot remove a person being replaced"))?;
        }
        let mut templates = 0;
        for (person, name) in people.iter().zip(&names) {
            let sets: Vec<(&str, &[Vec<f32>])> = person
                .models
                .iter()
                .map(|m| (m.model_id.as_str(), m.templates.as_slice()))
                .collect();
            let checked = check_sets(&tx, path, name, &sets)?;
            let id = insert_person(&tx, path, name, person.created_unix)?;
            insert_templates(&tx, path, &self.key, (id, name), &checked)?;
            templates += checked.iter().map(|c| c.templates.len()).sum::<usize>();
        }
        tx.commit().map_err(sql_err(path, "cannot commit import"))?;
        if !clashes.is_empty() {
            // Replaced people's old templates are deleted: scrub them like `remove` does.
            self.checkpoint_truncate("replacing people on import")?;
        }
        Ok(ImportSummary { people: people.len(), replaced: clashes.len(), templates })
    }

    /// Loads every template of `model_id` into an in-memory matcher (contiguous `f32` matrix).
    ///
    /// An unknown model gives an empty matcher (every query is then "unknown, empty gallery").
    /// A stored template with a wrong blob length, inconsistent dimension or non-finite values
    /// fails with [`GalleryError::CorruptTemplate`] naming the person.
    pub fn matcher(&self, model_id: &str) -> Result<Matcher, GalleryError> {
        self.matcher_stored(model_id, Storage::Float32)
    }

    /// [`Gallery::matcher`] with its rows in `storage` from the first row on (int8: each
    /// template quantised as it is decrypted, so a large gallery's float32 rows never all
    /// exist at once).
    pub fn matcher_stored(
        &self,
        model_id: &str,
        storage: Storage,
    ) -> Result<Matcher, GalleryError> {
        let mut matchers = self.matchers(&[model_id], storage)?;
        Ok(matchers
            .pop()
            .unwrap_or_else(|| Matcher::empty(self.path.clone(), model_id.to_owned(), storage)))
    }

    /// [`Gallery::matcher_stored`] for each of `models`, in ONE pass over the store (what the
    /// appliance loads: its CPU and NPU models' templates lie side by side in the file, and a
    /// pass per model would read every page once per model). One matcher per model, in order.
    pub fn matchers(
        &self,
        models: &[&str],
        storage: Storage,
    ) -> Result<Vec<Matcher>, GalleryError> {
        self.load(models, None, storage)
    }

    /// The loader behind [`Gallery::matchers`], optionally of one person only.
    ///
    /// SQLite stays on this thread, reading batches of sealed rows; workers open them (the
    /// decryption is the cost of loading a large gallery), normalise them and encode them in
    /// the matchers' storage while the next batch is read; this thread appends the encoded
    /// rows to each model's matcher in store order. Within a model an error is reported at its
    /// first bad row, as if opened one by one; the first model to meet a bad row ends the load.
    /// One person's rows (an export goes person by person) are opened right here: threads
    /// would cost more.
    fn load(
        &self,
        models: &[&str],
        only: Option<PersonId>,
        storage: Storage,
    ) -> Result<Vec<Matcher>, GalleryError> {
        // A model asked for twice (an NPU model given the CPU model's id) gets the same rows
        // in both places, as two loads gave it.
        let mut unique: Vec<&str> = Vec::with_capacity(models.len());
        for &m in models {
            if !unique.contains(&m) {
                unique.push(m);
            }
        }
        let loaded = self.load_unique(&unique, only, storage)?;
        Ok(models
            .iter()
            .filter_map(|m| unique.iter().position(|u| u == m).map(|i| loaded[i].clone()))
            .collect())
    }

    /// [`Gallery::load`] of distinct models.
    fn load_unique(
        &self,
        models: &[&str],
        only: Option<PersonId>,
        storage: Storage,
    ) -> Result<Vec<Matcher>, GalleryError> {
        let path = self.path.as_path();
        let sql = match only {
            Some(_) => {
                "SELECT t.id, t.person_id, p.name, t.model_id, t.dim, t.embedding \
                 FROM template t JOIN person p ON p.id = t.person_id \
                 WHERE t.person_id = ?1 ORDER BY t.id"
            }
            None => {
                "SELECT t.id, t.person_id, p.name, t.model_id, t.dim, t.embedding \
                 FROM template t JOIN person p ON p.id = t.person_id \
                 ORDER BY t.person_id, t.id"
            }
        };
        let mut stmt =
            self.conn.prepare(sql).map_err(sql_err(path, "cannot prepare template query"))?;
        let mut rows = match only {
            Some(person) => stmt.query([person]),
            None => stmt.query([]),
        }
        .map_err(sql_err(path, "cannot load templates"))?;
        let mut loads: Vec<ModelLoad<'_>> = models
            .iter()
            .map(|&model_id| ModelLoad {
                model_id,
                dim: None,
                batch: SealedBatch::default(),
                matcher: Matcher::empty(path.to_path_buf(), model_id.to_owned(), storage),
                sent: 0,
                pushed: 0,
                waiting: std::collections::BTreeMap::new(),
                spare: Vec::new(),
            })
            .collect();
        let workers = match only {
            Some(_) => 0,
            None => std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, 4),
        };
        // Jobs are (model, batch number, batch).
        type Job = (usize, usize, SealedBatch);
        let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<Job>(workers.max(1));
        let work_rx = std::sync::Mutex::new(work_rx);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Job>();
        std::thread::scope(|scope| -> Result<(), GalleryError> {
            // Owned here, so that every way out of this closure (an error included) drops it
            // and the workers' `recv` ends before the scope waits for them.
            let work_tx = work_tx;
            for _ in 0..workers {
                let (work_rx, done_tx, key) = (&work_rx, done_tx.clone(), &self.key);
                scope.spawn(move || loop {
                    // Nothing panics while holding the lock; were it poisoned, stop.
                    let job = work_rx.lock().ok().and_then(|rx| rx.recv().ok());
                    let Some((model, index, mut batch)) = job else { break };
                    // A panic fails the batch's rows instead of losing the batch (which the
                    // reading thread would wait for).
                    batch.open_guarded(key, models[model], storage);
                    if done_tx.send((model, index, batch)).is_err() {
                        break;
                    }
                });
            }
            drop(done_tx);
            // Batches out with workers or waiting for their turn (at most `2 * workers`: 2 MB
            // sealed and 0.5 MB encoded each for 1,024 512-d int8 rows), and emptied ones to
            // fill again.
            let mut out = 0usize;
            // An opened batch is back: append it and any of its model's batches now due.
            let take_done = |(model, index, done): Job,
                             loads: &mut [ModelLoad<'_>],
                             out: &mut usize|
             -> Result<(), GalleryError> {
                let load = &mut loads[model];
                load.waiting.insert(index, done);
                while let Some(mut done) = load.waiting.remove(&load.pushed) {
                    let pushed = done.push_into(&mut load.matcher, path, &self.key_file);
                    done.clear();
                    load.spare.push(done);
                    load.pushed += 1;
                    *out -= 1;
                    pushed?;
                }
                Ok(())
            };
            // A row that cannot be read ends the reading, but is reported only after the rows
            // before it are opened: a bad row among those comes first, as one by one.
            let mut read_error = None;
            loop {
                let mut end = false;
                let mut full = None;
                match rows.next() {
                    Ok(Some(row)) => match read_sealed_row(row, path, &mut loads) {
                        Ok(Some(model)) => {
                            full =
                                Some(model).filter(|&m| loads[m].batch.len() >= SealedBatch::ROWS)
                        }
                        Ok(None) => {}
                        Err(e) => (read_error, end) = (Some(e), true),
                    },
                    Ok(None) => end = true,
                    Err(e) => {
                        (read_error, end) = (Some(sql_err(path, "cannot load templates")(e)), true)
                    }
                }
                let due: Vec<usize> = match (end, full) {
                    (true, _) => (0..loads.len()).filter(|&m| loads[m].batch.len() > 0).collect(),
                    (false, Some(m)) => vec![m],
                    (false, None) => Vec::new(),
                };
                for model in due {
                    let load = &mut loads[model];
                    let next = load.spare.pop().unwrap_or_default();
                    let mut batch = std::mem::replace(&mut load.batch, next);
                    batch.dim = load.dim.unwrap_or(0);
                    if workers == 0 {
                        batch.open_guarded(&self.key, load.model_id, storage);
                        let pushed = batch.push_into(&mut load.matcher, path, &self.key_file);
                        batch.clear();
                        load.spare.push(batch);
                        pushed?;
                        continue;
                    }
                    // At most `2 * workers` batches out: wait for one to come back (one of
                    // those out is with a worker, as each model's next one due is never among
                    // those waiting).
                    while out >= 2 * workers {
                        let done = done_rx.recv().map_err(|_| worker_lost(path))?;
                        take_done(done, &mut loads, &mut out)?;
                    }
                    let job = (model, loads[model].sent, batch);
                    work_tx.send(job).map_err(|_| worker_lost(path))?;
                    loads[model].sent += 1;
                    out += 1;
                    while let Ok(done) = done_rx.try_recv() {
                        take_done(done, &mut loads, &mut out)?;
                    }
                }
                if end {
                    break;
                }
            }
            drop(work_tx);
            while out > 0 {
                let done = done_rx.recv().map_err(|_| worker_lost(path))?;
                take_done(done, &mut loads, &mut out)?;
            }
            read_error.map_or(Ok(()), Err)
        })?;
        Ok(loads
            .into_iter()
            .map(|load| {
                log::debug!(
                    "gallery {}: loaded {} template(s) of {} person(s) for model {:?}",
                    path.display(),
                    load.matcher.len(),
                    load.matcher.people(),
                    load.model_id
                );
                load.matcher
            })
            .collect())
    }
}

/// One model's part of a [`Gallery::load`]: the batch being filled, its matcher, and the
/// batches opened but not yet appended (they come back from the workers in any order).
struct ModelLoad<'m> {
    model_id: &'m str,
    /// Set by the model's first row; every other row must have it.
    dim: Option<usize>,
    batch: SealedBatch,
    matcher: Matcher,
    /// Batches handed to the workers, and appended to the matcher.
    sent: usize,
    pushed: usize,
    waiting: std::collections::BTreeMap<usize, SealedBatch>,
    /// Emptied batches to fill again: a batch stays with its model, so its buffers, sized by
    /// the first fill, never grow (and never free a buffer of opened templates unwiped).
    spare: Vec<SealedBatch>,
}

/// A version 1 template row, read for sealing (the plaintext is wiped on drop).
struct PlainRow {
    template_id: i64,
    person: PersonId,
    name: String,
    model_id: String,
    dim: i64,
    plain: Zeroizing<Vec<u8>>,
}

/// One model's templates for one person, validated: their common dimension and each one's
/// normalisation factor.
struct Checked<'a> {
    model_id: &'a str,
    templates: &'a [Vec<f32>],
    dim: usize,
    scales: Vec<f64>,
}

/// Validates template sets against the dimensions already stored (inside the caller's
/// transaction, so the answer holds until it commits).
fn check_sets<'a>(
    tx: &Connection,
    path: &Path,
    name: &str,
    sets: &[(&'a str, &'a [Vec<f32>])],
) -> Result<Vec<Checked<'a>>, GalleryError> {
    let mut checked = Vec::with_capacity(sets.len());
    for &(model_id, templates) in sets {
        let stored_dim: Option<i64> = tx
            .query_row("SELECT dim FROM template WHERE model_id = ?1 LIMIT 1", [model_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql_err(path, "cannot read model dimension"))?;
        let dim = match stored_dim {
            Some(d) => usize::try_from(d).map_err(|_| GalleryError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("templates of model {model_id:?} have dimension {d}"),
            })?,
            None => templates.first().map_or(0, Vec::len),
        };
        let mut scales = Vec::with_capacity(templates.len());
        for (index, template) in templates.iter().enumerate() {
            let scale = normalisation_scale(template, dim).map_err(|reason| {
                GalleryError::InvalidTemplate {
                    path: path.to_path_buf(),
                    name: name.to_owned(),
                    model_id: model_id.to_owned(),
                    index,
                    reason,
                }
            })?;
            scales.push(scale);
        }
        checked.push(Checked { model_id, templates, dim, scales });
    }
    Ok(checked)
}

/// Inserts a person row and returns its id.
fn insert_person(
    tx: &Connection,
    path: &Path,
    name: &str,
    created_unix: i64,
) -> Result<PersonId, GalleryError> {
    tx.execute(
        "INSERT INTO person (name, created_unix) VALUES (?1, ?2)",
        params![name, created_unix],
    )
    .map_err(sql_err(path, "cannot insert person"))?;
    Ok(tx.last_insert_rowid())
}

/// Normalises, seals and inserts validated templates for `person` (whose name is `name`).
fn insert_templates(
    tx: &Connection,
    path: &Path,
    key: &DeviceKey,
    (person, name): (PersonId, &str),
    checked: &[Checked<'_>],
) -> Result<(), GalleryError> {
    let mut insert = tx
        .prepare(
            "INSERT INTO template (person_id, model_id, dim, embedding, created_unix) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql_err(path, "cannot prepare template insert"))?;
    let now = now_unix();
    for Checked { model_id, templates, dim, scales } in checked {
        let dim_sql = i64::try_from(*dim).unwrap_or(i64::MAX);
        let aad = template_aad(person, name, model_id, *dim);
        let mut plain = Zeroizing::new(Vec::with_capacity(dim * 4));
        for (template, &scale) in templates.iter().zip(scales) {
            plain.clear();
            for &x in template {
                // Normalise in f64 so tiny-but-valid vectors do not underflow.
                let v = (f64::from(x) * scale) as f32;
                plain.extend_from_slice(&v.to_le_bytes());
            }
            let blob = key.seal(&aad, &plain).map_err(|e| GalleryError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("cannot seal a template: {e}"),
            })?;
            insert
                .execute(params![person, model_id, dim_sql, blob, now])
                .map_err(sql_err(path, "cannot insert template"))?;
        }
    }
    Ok(())
}

/// Why one sealed template could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenFailure {
    #[error(transparent)]
    Seal(SealError),
    #[error("{0}")]
    Values(String),
    #[error("opening it panicked (a bug in portier)")]
    Panicked,
}

/// Sealed template rows of one model read from the store, opened together on a worker thread:
/// decryption is the cost of loading a large gallery (one XChaCha20-Poly1305 open per template).
#[derive(Default)]
struct SealedBatch {
    /// Template length of every row.
    dim: usize,
    /// `(template id, person, name index)` per row.
    rows: Vec<(i64, PersonId, usize)>,
    /// Names of the people in the batch (a person's rows are consecutive).
    names: Vec<String>,
    /// The blobs, all of one length, back to back; opened in place, then wiped.
    blobs: Vec<u8>,
    /// Each row's outcome after [`SealedBatch::open`].
    results: Vec<Result<(), OpenFailure>>,
    /// The opened rows, normalised and in the matcher's storage (`None` until opened).
    encoded: Option<Rows>,
    /// One opened row as float32, for normalising.
    row: Vec<f32>,
    /// The row being opened's associated data.
    aad: Vec<u8>,
}

impl SealedBatch {
    /// Rows per batch: enough to amortise the hand-over, few enough to keep the batches in
    /// flight small (1,024 512-d rows: 2 MB sealed).
    const ROWS: usize = 1024;

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn push(&mut self, template_id: i64, person: PersonId, name: &str, blob: &[u8]) {
        if self.names.last().map(String::as_str) != Some(name) {
            self.names.push(name.to_owned());
        }
        self.rows.push((template_id, person, self.names.len() - 1));
        self.blobs.extend_from_slice(blob);
    }

    /// Empties the batch for its model's next rows (which overwrite the opened ones).
    fn clear(&mut self) {
        self.rows.clear();
        self.names.clear();
        self.blobs.clear();
        self.results.clear();
    }

    /// Wipes every byte of an opened template the batch holds (the matcher keeps its copy),
    /// when the batch is dropped.
    fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.blobs.zeroize();
        self.row.zeroize();
        if let Some(encoded) = &mut self.encoded {
            encoded.wipe();
        }
    }

    /// Opens every row in place, normalises it and encodes it in `storage`, each row's
    /// outcome in `results` (a failed row leaves a zero row, so that rows stay aligned).
    fn open(&mut self, key: &DeviceKey, model_id: &str, storage: Storage) {
        let (n, dim) = (self.rows.len(), self.dim);
        let encoded = match &mut self.encoded {
            Some(rows) if rows.storage() == storage => rows,
            slot => slot.insert(Rows::new(storage)),
        };
        encoded.clear();
        self.results.clear();
        if n == 0 || dim == 0 {
            return;
        }
        // Sized before the first opened row is in: growing would free a buffer of them.
        encoded.reserve(n, dim);
        let blob_len = self.blobs.len() / n;
        self.row.resize(dim, 0.0);
        for (i, blob) in self.blobs.chunks_exact_mut(blob_len).enumerate() {
            let (_, person, name) = self.rows[i];
            template_aad_into(&mut self.aad, person, &self.names[name], model_id, dim);
            let row = &mut self.row;
            let result =
                key.open_in_place(&self.aad, blob).map_err(OpenFailure::Seal).and_then(|plain| {
                    for (o, b) in row.iter_mut().zip(plain.chunks_exact(4)) {
                        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                    // Re-normalise on load: cheap, and keeps "similarity = cosine" exact even
                    // if a row was written by an older tool with slightly different rounding.
                    let scale = normalisation_scale(row, dim).map_err(OpenFailure::Values)?;
                    for x in row.iter_mut() {
                        *x = (f64::from(*x) * scale) as f32;
                    }
                    Ok(())
                });
            if result.is_err() {
                row.fill(0.0);
            }
            encoded.push(row);
            self.results.push(result);
        }
    }

    /// [`SealedBatch::open`], a panic failing every row of the batch.
    fn open_guarded(&mut self, key: &DeviceKey, model_id: &str, storage: Storage) {
        let open = std::panic::AssertUnwindSafe(|| self.open(key, model_id, storage));
        if std::panic::catch_unwind(open).is_err() {
            self.results.clear();
            self.results.resize_with(self.rows.len(), || Err(OpenFailure::Panicked));
        }
    }

    /// Puts the opened rows into `matcher` in order; the first failed row is the error (a
    /// failed authentication before any row is in: most likely the wrong key file).
    fn push_into(
        &self,
        matcher: &mut Matcher,
        path: &Path,
        key_file: &Path,
    ) -> Result<(), GalleryError> {
        let model_id = matcher.model_id().to_owned();
        let first = self.rows.first().copied().unwrap_or_default();
        let encoded = match &self.encoded {
            Some(rows) if self.results.len() == self.rows.len() => rows,
            // Cannot happen with the dimensions `read_sealed_row` lets through; never pushes
            // fewer rows than were read without saying so.
            _ => {
                return Err(GalleryError::CorruptTemplate {
                    path: path.to_path_buf(),
                    person: self.names.get(first.2).cloned().unwrap_or_default(),
                    model_id,
                    template_id: first.0,
                    detail: "its batch of rows was not opened whole".to_owned(),
                })
            }
        };
        for (index, (&(template_id, person, name), result)) in
            self.rows.iter().zip(&self.results).enumerate()
        {
            let name = &self.names[name];
            match result {
                Ok(()) => matcher.push_encoded(person, name, encoded, index, self.dim),
                Err(OpenFailure::Seal(SealError::Authentication)) if matcher.is_empty() => {
                    return Err(GalleryError::WrongKey {
                        path: path.to_path_buf(),
                        key_file: key_file.to_path_buf(),
                        person: name.clone(),
                    })
                }
                Err(e) => {
                    return Err(GalleryError::CorruptTemplate {
                        path: path.to_path_buf(),
                        person: name.clone(),
                        model_id,
                        template_id,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

impl Drop for SealedBatch {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// The largest template dimension a stored row may claim (embeddings are 128 to 512 values): a
/// row claiming more is corrupt, before any buffer is sized by it.
const MAX_TEMPLATE_DIM: usize = 8192;

/// The gallery load's workers are gone (cannot happen while they catch their panics).
fn worker_lost(path: &Path) -> GalleryError {
    GalleryError::Unsupported {
        path: path.to_path_buf(),
        detail: "a template-opening thread stopped".to_owned(),
    }
}

/// One template row of the load query, checked and put into its model's batch: the model's
/// index in `loads`, or `None` for a model not being loaded. The first row of a model sets its
/// dimension and every other row must have it.
fn read_sealed_row<'r>(
    row: &'r rusqlite::Row<'_>,
    path: &Path,
    loads: &mut [ModelLoad<'_>],
) -> Result<Option<usize>, GalleryError> {
    let read = |row: &'r rusqlite::Row<'_>| -> rusqlite::Result<_> {
        Ok((row.get_ref(3)?.as_bytes()?, row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
    };
    let (model, template_id, person) =
        read(row).map_err(sql_err(path, "cannot read template row"))?;
    let Some(model) = loads.iter().position(|l| l.model_id.as_bytes() == model) else {
        return Ok(None);
    };
    let load = &mut loads[model];
    let read = |row: &'r rusqlite::Row<'_>| -> rusqlite::Result<_> {
        Ok((row.get_ref(2)?.as_str()?, row.get::<_, i64>(4)?))
    };
    let (name, row_dim) = read(row).map_err(sql_err(path, "cannot read template row"))?;
    let corrupt = |detail: String| GalleryError::CorruptTemplate {
        path: path.to_path_buf(),
        person: name.to_owned(),
        model_id: load.model_id.to_owned(),
        template_id,
        detail,
    };
    let row_dim = usize::try_from(row_dim)
        .ok()
        .filter(|&d| d > 0 && d <= MAX_TEMPLATE_DIM)
        .ok_or_else(|| corrupt(format!("dimension {row_dim} is not in 1..={MAX_TEMPLATE_DIM}")))?;
    let dim = *load.dim.get_or_insert(row_dim);
    if row_dim != dim {
        return Err(corrupt(format!(
            "dimension {row_dim} differs from {dim} of the model's other templates"
        )));
    }
    let blob = match row.get_ref(5).map_err(sql_err(path, "cannot read template row"))? {
        rusqlite::types::ValueRef::Blob(b) => b,
        other => {
            return Err(corrupt(format!(
                "embedding is stored as {:?}, not a blob",
                other.data_type()
            )))
        }
    };
    if blob.len() != dim * 4 + SEAL_OVERHEAD {
        return Err(corrupt(format!(
            "embedding blob has {} bytes, expected {} ({dim} sealed f32)",
            blob.len(),
            dim * 4 + SEAL_OVERHEAD
        )));
    }
    load.batch.push(template_id, person, name, blob);
    Ok(Some(model))
}

/// Associated data of a sealed template: it binds the blob to its person (id and name), model
/// and dimension, so a blob copied onto another row (another person, another model) fails
/// authentication, and so does a row whose person's name was changed in the file.
fn template_aad(person: PersonId, name: &str, model_id: &str, dim: usize) -> Vec<u8> {
    let mut aad = Vec::with_capacity(TEMPLATE_AAD_PREFIX.len() + 32 + name.len() + model_id.len());
    template_aad_into(&mut aad, person, name, model_id, dim);
    aad
}

/// [`template_aad`] into a reused buffer (a gallery load builds one per template).
fn template_aad_into(aad: &mut Vec<u8>, person: PersonId, name: &str, model_id: &str, dim: usize) {
    aad.clear();
    aad.extend_from_slice(TEMPLATE_AAD_PREFIX);
    aad.extend_from_slice(&person.to_le_bytes());
    // Length-prefixed, so (name "ab", model "c") and (name "a", model "bc") never encode alike.
    aad.extend_from_slice(&(name.len() as u64).to_le_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(&(model_id.len() as u64).to_le_bytes());
    aad.extend_from_slice(model_id.as_bytes());
    aad.extend_from_slice(&(dim as u64).to_le_bytes());
}

/// The version 2 binding (person id, model, dimension), to open a version 2 file's blobs once.
fn template_aad_v2(person: PersonId, model_id: &str, dim: usize) -> Vec<u8> {
    let mut aad = Vec::with_capacity(TEMPLATE_AAD_PREFIX_V2.len() + 24 + model_id.len());
    aad.extend_from_slice(TEMPLATE_AAD_PREFIX_V2);
    aad.extend_from_slice(&person.to_le_bytes());
    aad.extend_from_slice(&(model_id.len() as u64).to_le_bytes());
    aad.extend_from_slice(model_id.as_bytes());
    aad.extend_from_slice(&(dim as u64).to_le_bytes());
    aad
}

/// The device key for a gallery file: loaded if the key file exists; created if it is missing
/// and the gallery holds no sealed template (a new gallery, or a version 1 one about to be
/// sealed); otherwise [`GalleryError::KeyMissing`], because a new key would decrypt nothing.
fn obtain_key(
    conn: &Connection,
    path: &Path,
    version: i64,
    key_file: &Path,
) -> Result<DeviceKey, GalleryError> {
    match std::fs::symlink_metadata(key_file) {
        Ok(_) => DeviceKey::load(key_file),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let sealed: i64 = if version >= 2 {
                conn.query_row("SELECT count(*) FROM template", [], |r| r.get(0))
                    .map_err(sql_err(path, "cannot count templates"))?
            } else {
                0
            };
            if sealed > 0 {
                return Err(GalleryError::KeyMissing {
                    path: path.to_path_buf(),
                    key_file: key_file.to_path_buf(),
                });
            }
            DeviceKey::create(key_file)
        }
        Err(source) => Err(GalleryError::KeyFile {
            path: key_file.to_path_buf(),
            context: "cannot read file status",
            source,
        }),
    }
}

/// Refuses an existing, non-empty file that does not start with the SQLite magic, before SQLite
/// gets a chance to touch it. A missing or empty file is fine: it becomes a new gallery.
fn check_header(path: &Path) -> Result<(), GalleryError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(GalleryError::Io {
                path: path.to_path_buf(),
                context: "cannot open file",
                source,
            })
        }
    };
    let mut header = Vec::with_capacity(SQLITE_MAGIC.len());
    file.take(SQLITE_MAGIC.len() as u64).read_to_end(&mut header).map_err(|source| {
        GalleryError::Io { path: path.to_path_buf(), context: "cannot read file header", source }
    })?;
    if header.is_empty() || header == SQLITE_MAGIC {
        Ok(())
    } else {
        Err(GalleryError::NotADatabase { path: path.to_path_buf() })
    }
}

/// Reads `(application_id, user_version, number of schema objects)` without writing.
fn probe(conn: &Connection, path: &Path) -> Result<(i64, i64, i64), GalleryError> {
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot read application id"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot read schema version"))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot read schema"))?;
    Ok((app_id, version, objects))
}

/// True for a portier gallery, or for a blank database (no id, no version, no objects) that we
/// may initialise.
fn is_ours_or_blank(app_id: i64, version: i64, objects: i64) -> bool {
    app_id == APPLICATION_ID || (app_id == 0 && version == 0 && objects == 0)
}

/// The journal mode the file is in, read without changing it.
fn journal_mode(conn: &Connection, path: &Path) -> Result<String, GalleryError> {
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot read the journal mode"))
}

/// `PRAGMA quick_check`: catches damaged pages at open, before the door trusts the data.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), GalleryError> {
    let result = pragma_rows(conn, path, "PRAGMA quick_check")?;
    if result == ["ok"] {
        Ok(())
    } else {
        Err(GalleryError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("quick_check failed: {}", result.join("; ")),
        })
    }
}

/// Applies the per-connection settings: WAL (readers never block the writer), synchronous=FULL
/// (a committed enrolment survives a power cut), foreign keys (for ON DELETE CASCADE) and
/// secure_delete (removed templates are zeroed, not just unlinked).
fn configure(conn: &Connection, path: &Path) -> Result<(), GalleryError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot enable WAL journal"))?;
    // In-memory databases report "memory"; any other answer means WAL is unavailable (e.g. a
    // filesystem without shared memory). Transactions stay atomic with a rollback journal.
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        log::warn!("gallery {}: WAL unavailable, journal mode is {mode:?}", path.display());
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql_err(path, "cannot set synchronous=FULL"))?;
    // Checkpoint after 64 pages instead of SQLite's 1,000: with 64 KB pages the WAL would
    // otherwise grow to 64 MB on the card between checkpoints (4 MB now).
    conn.pragma_update(None, "wal_autocheckpoint", 64)
        .map_err(sql_err(path, "cannot set wal_autocheckpoint"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql_err(path, "cannot enable foreign keys"))?;
    let secure: i64 = conn
        .query_row("PRAGMA secure_delete = ON", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot enable secure_delete"))?;
    let foreign_keys: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .map_err(sql_err(path, "cannot read foreign_keys"))?;
    // Both silently stay off if SQLite was built without them; removal would then leave
    // templates (or their bytes) behind, so refuse rather than pretend.
    if secure != 1 || foreign_keys != 1 {
        return Err(GalleryError::Unsupported {
            path: path.to_path_buf(),
            detail: format!(
                "sqlite build ignores secure_delete ({secure}) or foreign_keys ({foreign_keys})"
            ),
        });
    }
    Ok(())
}

/// Collects the single text column of a check pragma (at most 20 rows, enough to diagnose).
fn pragma_rows(conn: &Connection, path: &Path, sql: &str) -> Result<Vec<String>, GalleryError> {
    let mut stmt = conn.prepare(sql).map_err(sql_err(path, "cannot run integrity check"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql_err(path, "cannot run integrity check"))?;
    rows.take(20)
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err(path, "cannot run integrity check"))
}

/// Looks a person up by exact (already trimmed) name.
fn find_person(
    conn: &Connection,
    path: &Path,
    name: &str,
) -> Result<Option<PersonId>, GalleryError> {
    conn.query_row("SELECT id FROM person WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(sql_err(path, "cannot look up person"))
}

/// Name rules: trimmed, 1..=64 characters, no control characters (they would garble logs and
/// the display). Returns the trimmed name.
fn validate_name(path: &Path, name: &str) -> Result<String, GalleryError> {
    let trimmed = name.trim();
    let reason = if trimmed.is_empty() {
        Some("name is empty")
    } else if trimmed.chars().count() > MAX_NAME_CHARS {
        Some("name is longer than 64 characters")
    } else if trimmed.chars().any(char::is_control) {
        Some("name contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(GalleryError::InvalidName {
            path: path.to_path_buf(),
            name: name.to_owned(),
            reason,
        }),
        None => Ok(trimmed.to_owned()),
    }
}

/// Model ids are stored verbatim and compared exactly, so reject the ones that can only be bugs.
fn validate_model_id(path: &Path, model_id: &str) -> Result<(), GalleryError> {
    let reason = if model_id.trim().is_empty() {
        Some("model id is empty")
    } else if model_id.chars().any(char::is_control) {
        Some("model id contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(GalleryError::InvalidModelId {
            path: path.to_path_buf(),
            model_id: model_id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a template (length `dim`, finite, non-zero) and returns `1 / ||t||` in f64.
fn normalisation_scale(template: &[f32], dim: usize) -> Result<f64, String> {
    if template.len() != dim {
        return Err(format!("has {} values, expected {dim}", template.len()));
    }
    if dim == 0 {
        return Err("is empty".to_owned());
    }
    // In double precision over four lanes (so it vectorises); a NaN or infinite value makes
    // the sum non-finite, and only then is the row searched for it.
    let mut lanes = [0.0f64; 4];
    let chunks = template.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    for c in chunks {
        for k in 0..4 {
            lanes[k] += f64::from(c[k]) * f64::from(c[k]);
        }
    }
    let sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail;
    if !sum.is_finite() {
        if let Some(i) = template.iter().position(|x| !x.is_finite()) {
            return Err(format!("value {i} is not finite ({})", template[i]));
        }
    }
    let norm = sum.sqrt();
    if norm > 0.0 && norm.is_finite() {
        Ok(1.0 / norm)
    } else {
        Err("is all zeros".to_owned())
    }
}

/// Seconds since the Unix epoch; 0 if the clock is before 1970 (an unset RTC on first boot),
/// which only affects the informational `created_unix`.
fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Maps an SQLite error to a [`GalleryError`], turning "not a database" and "corrupt" codes into
/// their dedicated variants so callers and users see the real problem.
///
/// Borrows `path` so the success path (the closure is built for every call) does not allocate.
fn sql_err<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl FnOnce(rusqlite::Error) -> GalleryError + 'a {
    move |source| {
        let path = path.to_path_buf();
        if let rusqlite::Error::SqliteFailure(failure, message) = &source {
            match failure.code {
                ErrorCode::NotADatabase => return GalleryError::NotADatabase { path },
                ErrorCode::DatabaseCorrupt => {
                    let detail = message.clone().unwrap_or_else(|| failure.to_string());
                    return GalleryError::Corrupt { path, detail: format!("{context}: {detail}") };
                }
                _ => {}
            }
        }
        GalleryError::Sqlite { path, context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// Opens a gallery file with its key file beside it (as the config's default does).
    fn open_at(path: &Path) -> Result<Gallery, GalleryError> {
        Gallery::open(path, &path.with_extension("key"))
    }

    /// Deterministic pseudo-random templates (xorshift), never all-zero.
    fn templates(seed: u64, count: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..count)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                    })
                    .collect()
            })
            .collect()
    }

    fn names(g: &Gallery) -> Vec<String> {
        g.list().unwrap().into_iter().map(|p| p.name).collect()
    }

    fn template_count(g: &Gallery) -> i64 {
        g.conn.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn enroll_list_rename_remove_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let mut g = open_at(&path).unwrap();
        assert_eq!(g.path(), path);
        assert!(g.list().unwrap().is_empty());

        let bob = g.enroll("Bob", "arcface", &templates(1, 3, 8), EnrollMode::New).unwrap();
        let alice = g.enroll("  Alice ", "arcface", &templates(2, 2, 8), EnrollMode::New).unwrap();
        assert_ne!(alice, bob);
        let list = g.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "Alice", "names are trimmed and listed by name");
        assert_eq!(list[0].id, alice);
        assert_eq!(list[0].templates, vec![("arcface".to_owned(), 2)]);
        assert_eq!(list[1].name, "Bob");
        assert_eq!(list[1].templates, vec![("arcface".to_owned(), 3)]);
        assert!(list[0].created_unix > 1_600_000_000);

        g.rename("Bob", "Robert").unwrap();
        g.rename("Robert", " Robert ").unwrap(); // same name after trimming: a no-op
        assert_eq!(names(&g), ["Alice", "Robert"]);
        assert_eq!(g.list().unwrap()[1].id, bob, "rename keeps the id");

        g.remove(" Alice").unwrap();
        assert_eq!(names(&g), ["Robert"]);
        assert_eq!(template_count(&g), 3, "alice's templates cascade away");
        drop(g);

        // Everything persisted.
        let g = open_at(&path).unwrap();
        let list = g.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id, list[0].name.as_str()), (bob, "Robert"));
        assert_eq!(list[0].templates, vec![("arcface".to_owned(), 3)]);
        g.integrity_check().unwrap();
    }

    #[test]
    fn open_sets_connection_pragmas_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let g = open_at(&dir.path().join("g.db")).unwrap();
        let get = |sql: &str| -> String {
            g.conn
                .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(get("PRAGMA journal_mode"), "wal");
        assert_eq!(get("PRAGMA synchronous"), "2"); // FULL
        assert_eq!(get("PRAGMA foreign_keys"), "1");
        assert_eq!(get("PRAGMA secure_delete"), "1");
        assert_eq!(get("PRAGMA busy_timeout"), "2000");
        assert_eq!(get("PRAGMA user_version"), "3");
        assert_eq!(get("PRAGMA application_id"), APPLICATION_ID.to_string());
    }

    #[test]
    fn new_mode_refuses_taken_name() {
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "m", &templates(1, 2, 4), EnrollMode::New).unwrap();
        let err = g.enroll(" Alice ", "m", &templates(2, 1, 4), EnrollMode::New).unwrap_err();
        assert!(matches!(&err, GalleryError::NameTaken { name, .. } if name == "Alice"), "{err}");
        assert_eq!(
            err.to_string(),
            "gallery :memory:: a person named \"Alice\" is already enrolled"
        );
        assert_eq!(template_count(&g), 2, "the refused enrolment wrote nothing");
    }

    #[test]
    fn append_adds_templates_and_creates_missing_person() {
        let mut g = Gallery::open_in_memory().unwrap();
        let alice = g.enroll("Alice", "m1", &templates(1, 2, 4), EnrollMode::New).unwrap();
        let again = g.enroll("Alice", "m1", &templates(2, 3, 4), EnrollMode::Append).unwrap();
        assert_eq!(again, alice);
        let with_other_model =
            g.enroll("Alice", "m2", &templates(3, 1, 16), EnrollMode::Append).unwrap();
        assert_eq!(with_other_model, alice);
        let carol = g.enroll("Carol", "m1", &templates(4, 1, 4), EnrollMode::Append).unwrap();
        assert_ne!(carol, alice);
        let list = g.list().unwrap();
        assert_eq!(list[0].templates, vec![("m1".to_owned(), 5), ("m2".to_owned(), 1)]);
        assert_eq!(list[1].name, "Carol");
        assert_eq!(list[1].templates, vec![("m1".to_owned(), 1)]);
    }

    #[test]
    fn rename_and_remove_errors() {
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "m", &templates(1, 1, 4), EnrollMode::New).unwrap();
        g.enroll("Bob", "m", &templates(2, 1, 4), EnrollMode::New).unwrap();

        let err = g.rename("Zoe", "Zed").unwrap_err();
        assert!(matches!(&err, GalleryError::UnknownPerson { name, .. } if name == "Zoe"), "{err}");
        let err = g.rename("Alice", "Bob").unwrap_err();
        assert!(matches!(&err, GalleryError::NameTaken { name, .. } if name == "Bob"), "{err}");
        let err = g.rename("Alice", " \t").unwrap_err();
        assert!(matches!(err, GalleryError::InvalidName { .. }), "{err}");
        let err = g.remove("Zoe").unwrap_err();
        assert!(matches!(&err, GalleryError::UnknownPerson { name, .. } if name == "Zoe"), "{err}");
        assert_eq!(err.to_string(), "gallery :memory:: no person named \"Zoe\" is enrolled");
        assert_eq!(names(&g), ["Alice", "Bob"]);
    }

    #[test]
    fn invalid_names_are_rejected() {
        let mut g = Gallery::open_in_memory().unwrap();
        let t = templates(1, 1, 4);
        let too_long = "a".repeat(65);
        for bad in ["", "   ", "Al\nice", "Bob\u{7}", "Eve\u{7f}", "x\u{85}y", too_long.as_str()] {
            let err = g.enroll(bad, "m", &t, EnrollMode::New).unwrap_err();
            assert!(matches!(&err, GalleryError::InvalidName { name, .. } if name == bad), "{err}");
            assert!(err.to_string().starts_with("gallery :memory:: invalid person name"), "{err}");
        }
        // The limit counts characters, not bytes; inner spaces are fine.
        let long_unicode = "é".repeat(64);
        g.enroll(&long_unicode, "m", &t, EnrollMode::New).unwrap();
        g.enroll(&"a".repeat(64), "m", &t, EnrollMode::New).unwrap();
        g.enroll("Jean Luc", "m", &t, EnrollMode::New).unwrap();
        assert_eq!(g.list().unwrap().len(), 3);
        let err = g.enroll("Zed", " ", &t, EnrollMode::New).unwrap_err();
        assert!(matches!(err, GalleryError::InvalidModelId { .. }), "{err}");
    }

    #[test]
    fn templates_are_validated_and_a_rejected_enrolment_writes_nothing() {
        let mut g = Gallery::open_in_memory().unwrap();
        let err = g.enroll("Alice", "m", &[], EnrollMode::New).unwrap_err();
        assert!(matches!(err, GalleryError::NoTemplates { .. }), "{err}");

        let mut bad = templates(1, 3, 4);
        bad[2][1] = f32::NAN;
        let err = g.enroll("Alice", "m", &bad, EnrollMode::New).unwrap_err();
        assert!(matches!(err, GalleryError::InvalidTemplate { index: 2, .. }), "{err}");
        bad[2] = vec![0.0; 4];
        let err = g.enroll("Alice", "m", &bad, EnrollMode::New).unwrap_err();
        assert!(err.to_string().contains("all zeros"), "{err}");
        bad[2] = vec![1.0; 5];
        let err = g.enroll("Alice", "m", &bad, EnrollMode::New).unwrap_err();
        assert!(matches!(err, GalleryError::InvalidTemplate { index: 2, .. }), "{err}");
        let err = g.enroll("Alice", "m", &[vec![]], EnrollMode::New).unwrap_err();
        assert!(matches!(err, GalleryError::InvalidTemplate { index: 0, .. }), "{err}");
        assert!(g.list().unwrap().is_empty(), "no person row left behind");

        // Once a model has templates, its dimension is fixed for the whole gallery.
        g.enroll("Alice", "m", &templates(1, 1, 4), EnrollMode::New).unwrap();
        let err = g.enroll("Bob", "m", &templates(2, 1, 8), EnrollMode::New).unwrap_err();
        assert!(err.to_string().contains("has 8 values, expected 4"), "{err}");
        assert_eq!(names(&g), ["Alice"]);
        assert_eq!(template_count(&g), 1);
    }

    #[test]
    fn templates_are_normalised_before_storage() {
        let mut g = Gallery::open_in_memory().unwrap();
        // Tiny values would underflow a naive f32 sum of squares.
        g.enroll("Alice", "m", &[vec![3.0, 4.0], vec![3e-30, -4e-30]], EnrollMode::New).unwrap();
        let blobs: Vec<(i64, Vec<u8>)> = g
            .conn
            .prepare("SELECT person_id, embedding FROM template ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let decode = |(person, b): &(i64, Vec<u8>)| -> Vec<f32> {
            let plain = g.key.unseal(&template_aad(*person, "Alice", "m", 2), b).unwrap();
            plain.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        assert_eq!(decode(&blobs[0]), [0.6, 0.8]);
        assert_eq!(decode(&blobs[1]), [0.6, -0.8]);
        let m = g.matcher("m").unwrap();
        let r = m.best_two(&[0.6, 0.8]).unwrap();
        assert!((r.best.unwrap().similarity - 1.0).abs() < 1e-6);
    }

    #[test]
    fn models_are_kept_apart() {
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "model-a", &templates(1, 3, 8), EnrollMode::New).unwrap();
        g.enroll("Bob", "model-b", &templates(2, 2, 16), EnrollMode::New).unwrap();
        g.enroll("Alice", "model-b", &templates(3, 1, 16), EnrollMode::Append).unwrap();

        let a = g.matcher("model-a").unwrap();
        assert_eq!((a.model_id(), a.dim(), a.len(), a.people()), ("model-a", 8, 3, 1));
        assert_eq!(a.person_name(0), "Alice");
        let b = g.matcher("model-b").unwrap();
        assert_eq!((b.dim(), b.len(), b.people()), (16, 3, 2));
        // Person order follows ids (enrolment order), not names.
        assert_eq!((b.person_name(0), b.person_name(1)), ("Alice", "Bob"));
        // A model-a embedding cannot be matched against model-b templates.
        let err = b.best_two(&templates(1, 1, 8)[0]).unwrap_err();
        assert!(matches!(err, GalleryError::DimensionMismatch { expected: 16, found: 8, .. }));
        let none = g.matcher("model-c").unwrap();
        assert!(none.is_empty());
        assert_eq!((none.len(), none.people(), none.dim()), (0, 0, 0));
    }

    #[test]
    fn corrupt_template_row_names_the_person() {
        let mut g = Gallery::open_in_memory().unwrap();
        let alice = g.enroll("Alice", "m", &templates(1, 2, 4), EnrollMode::New).unwrap();
        g.conn
            .execute(
                "INSERT INTO template (person_id, model_id, dim, embedding, created_unix) \
                 VALUES (?1, 'm', 4, x'00112233445566', 0)",
                [alice],
            )
            .unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(matches!(&err, GalleryError::CorruptTemplate { person, .. } if person == "Alice"));
        assert!(err.to_string().contains("\"Alice\""), "{err}");
        assert!(err.to_string().contains("7 bytes, expected 57"), "{err}");

        // Inconsistent dimensions within one model are corruption too.
        g.conn.execute("DELETE FROM template WHERE length(embedding) = 7", []).unwrap();
        g.conn
            .execute("UPDATE template SET dim = 3 WHERE id = (SELECT max(id) FROM template)", [])
            .unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(err.to_string().contains("dimension 3 differs from 4"), "{err}");
    }

    #[test]
    fn a_large_gallery_opens_on_every_core_like_one_row_at_a_time() {
        // 1,200 people x 2 rows: two batches, each shared over threads.
        let mut g = Gallery::open_in_memory().unwrap();
        let people: Vec<BackupPerson> = (0..1200)
            .map(|i| BackupPerson {
                name: format!("p{i:04}"),
                created_unix: 0,
                models: vec![BackupModel {
                    model_id: "m".into(),
                    templates: templates(i as u64, 2, 8),
                }],
            })
            .collect();
        g.import_people(&people, ImportMode::Refuse).unwrap();
        let m = g.matcher("m").unwrap();
        assert_eq!((m.len(), m.people()), (2400, 1200));
        for (r, want) in [(0, &people[0]), (1999, &people[999]), (2399, &people[1199])] {
            let t = &want.models[0].templates[r % 2];
            let n = t.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(m.row(r).iter().zip(t).all(|(a, b)| (a - b / n).abs() < 1e-6), "row {r}");
            assert_eq!(m.person_name(r / 2), want.name);
        }
        // A row sealed for the next person, deep in a later thread's share of the second
        // batch, is named, and the first bad row in store order is the one reported.
        let row_of = |name: &str| -> i64 {
            g.conn
                .query_row(
                    "SELECT t.id FROM template t JOIN person p ON p.id = t.person_id \
                     WHERE p.name = ?1 ORDER BY t.id LIMIT 1",
                    [name],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let (early, late) = (row_of("p1100"), row_of("p1190"));
        for id in [late, early] {
            g.conn
                .execute(
                    "UPDATE template SET embedding = (SELECT embedding FROM template \
                     WHERE id = ?1 + 2) WHERE id = ?1",
                    [id],
                )
                .unwrap();
        }
        let err = g.matcher_stored("m", Storage::Int8).unwrap_err();
        assert!(
            matches!(&err, GalleryError::CorruptTemplate { person, template_id, .. }
                if person == "p1100" && *template_id == early),
            "{err:?}"
        );
        // A row that cannot even be read (a dimension no buffer may be sized by) is reported
        // only after the rows before it: the earlier row sealed for someone else comes first.
        g.conn
            .execute("UPDATE template SET dim = 4611686018427387906 WHERE id = ?1", [late])
            .unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(
            matches!(&err, GalleryError::CorruptTemplate { template_id, .. } if *template_id == early),
            "{err:?}"
        );
        g.conn.execute("UPDATE template SET embedding = (SELECT embedding FROM template WHERE id = ?1 + 1) WHERE id = ?1", [early]).unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(err.to_string().contains("is not in 1..=8192"), "{err}");
        // A wrong key is told apart at the very first row, as before, even with the bad row
        // further on.
        g.key = DeviceKey::random(Path::new("k")).unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(matches!(err, GalleryError::WrongKey { .. }), "{err:?}");
        // One person's rows are opened on the caller's thread, with the same checks.
        let err = g.load(&["m"], Some(1), Storage::Float32).unwrap_err();
        assert!(matches!(err, GalleryError::WrongKey { .. }), "{err:?}");
    }

    #[test]
    fn several_models_load_in_one_pass_each_as_if_alone() {
        // 1,500 people with model "a" (2 x 8-d), every third also with "b" (1 x 4-d): the
        // models' rows interleave in the store, over more than one batch each.
        let mut g = Gallery::open_in_memory().unwrap();
        let people: Vec<BackupPerson> = (0..1500)
            .map(|i| BackupPerson {
                name: format!("p{i:04}"),
                created_unix: 0,
                models: std::iter::once(("a", 2, 8))
                    .chain((i % 3 == 0).then_some(("b", 1, 4)))
                    .map(|(model_id, count, dim)| BackupModel {
                        model_id: model_id.into(),
                        templates: templates(i as u64, count, dim),
                    })
                    .collect(),
            })
            .collect();
        g.import_people(&people, ImportMode::Refuse).unwrap();
        // A template appended later (a higher id) still loads with its person's rows.
        g.enroll("p0001", "a", &templates(99, 1, 8), EnrollMode::Append).unwrap();
        for storage in Storage::ALL {
            let both = g.matchers(&["b", "a", "none"], storage).unwrap();
            assert_eq!(both.len(), 3);
            assert!(both[0].same_as(&g.matcher_stored("b", storage).unwrap()), "{storage:?}");
            assert!(both[1].same_as(&g.matcher_stored("a", storage).unwrap()), "{storage:?}");
            assert_eq!((both[0].len(), both[0].people()), (500, 500));
            assert_eq!((both[1].len(), both[1].people()), (3001, 1500));
            assert_eq!(both[1].person_name(1), "p0001");
            assert!(both[2].is_empty() && both[2].model_id() == "none");
        }
        // Float32 rows as stored (normalised), the appended one among its person's.
        let a = g.matcher("a").unwrap();
        let unit = |t: &[f32]| -> Vec<f32> {
            let n = t.iter().map(|x| x * x).sum::<f32>().sqrt();
            t.iter().map(|x| x / n).collect()
        };
        let appended = unit(&templates(99, 1, 8)[0]);
        assert!(a.row(4).iter().zip(&appended).all(|(x, y)| (x - y).abs() < 1e-6));
        // A bad row of either model ends the load with that model's error.
        let b_row: i64 = g
            .conn
            .query_row(
                "SELECT id FROM template WHERE model_id = 'b' ORDER BY id LIMIT 1 OFFSET 400",
                [],
                |r| r.get(0),
            )
            .unwrap();
        g.conn.execute("UPDATE template SET dim = 5 WHERE id = ?1", [b_row]).unwrap();
        let err = g.matchers(&["a", "b"], Storage::Int8).unwrap_err();
        assert!(
            matches!(&err, GalleryError::CorruptTemplate { model_id, template_id, .. }
                if model_id == "b" && *template_id == b_row),
            "{err:?}"
        );
        // A model not asked for is not read: its bad row does not matter.
        assert_eq!(g.matchers(&["a"], Storage::Int8).unwrap()[0].len(), 3001);
        // A model asked for twice has its rows in both places.
        let twice = g.matchers(&["a", "a"], Storage::Int8).unwrap();
        assert!(twice[0].same_as(&twice[1]) && twice[1].len() == 3001);
    }

    #[test]
    fn load_matchers_checks_the_file_beside_the_load_and_refuses_what_open_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let key = path.with_extension("key");
        let mut g = open_at(&path).unwrap();
        for i in 0..40 {
            let sets: [(&str, &[Vec<f32>]); 2] =
                [("cpu", &templates(i, 3, 128)), ("npu", &templates(i + 100, 3, 64))];
            g.enroll_models(&format!("p{i}"), &sets, EnrollMode::New).unwrap();
        }
        let want = [
            g.matcher_stored("cpu", Storage::Int8).unwrap(),
            g.matcher_stored("npu", Storage::Int8).unwrap(),
        ];
        drop(g);
        let loaded = Gallery::load_matchers(&path, &key, &["cpu", "npu"], Storage::Int8).unwrap();
        assert!(loaded[0].same_as(&want[0]) && loaded[1].same_as(&want[1]));
        // The wrong key: told apart as by a load after `open`.
        let other = dir.path().join("other.key");
        DeviceKey::create(&other).unwrap();
        let err = Gallery::load_matchers(&path, &other, &["cpu"], Storage::Int8).unwrap_err();
        assert!(matches!(err, GalleryError::WrongKey { .. }), "{err:?}");
        // A damaged page: the integrity check's verdict, and the file is not written to.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = PAGE_SIZE as usize;
        let pages = bytes.len() / page;
        assert!(pages > 2, "{pages} pages");
        for b in &mut bytes[(pages / 2) * page..(pages / 2 + 1) * page] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Gallery::load_matchers(&path, &key, &["cpu", "npu"], Storage::Int8).unwrap_err();
        assert!(matches!(err, GalleryError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("database is corrupt"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "a damaged file is not written to");
        // Not a database at all: refused by its header, before any connection.
        std::fs::write(&path, b"not a database, not empty either").unwrap();
        let err = Gallery::load_matchers(&path, &key, &["cpu"], Storage::Int8).unwrap_err();
        assert!(matches!(err, GalleryError::NotADatabase { .. }), "{err:?}");
        // Another application's database: refused as not ours, and left as it was.
        std::fs::remove_file(&path).unwrap();
        let foreign = Connection::open(&path).unwrap();
        foreign
            .execute_batch("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('x');")
            .unwrap();
        drop(foreign);
        let before = std::fs::read(&path).unwrap();
        let err = Gallery::load_matchers(&path, &key, &["cpu"], Storage::Int8).unwrap_err();
        assert!(matches!(err, GalleryError::NotAGallery { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn garbage_file_is_refused_and_left_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let garbage: Vec<u8> =
            templates(7, 1, 2048)[0].iter().flat_map(|x| x.to_le_bytes()).collect();
        // Also garbage behind a valid magic, and a short file.
        let mut behind_magic = SQLITE_MAGIC.to_vec();
        behind_magic.extend_from_slice(&garbage);
        for bytes in [garbage.clone(), behind_magic, b"hello".to_vec()] {
            std::fs::write(&path, &bytes).unwrap();
            let err = open_at(&path).unwrap_err();
            assert!(
                matches!(err, GalleryError::NotADatabase { .. } | GalleryError::Corrupt { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("gallery {}: ", path.display())), "{msg}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "file must be left untouched");
        }
        let err = {
            std::fs::write(&path, &garbage).unwrap();
            open_at(&path).unwrap_err()
        };
        assert_eq!(
            err.to_string(),
            format!(
                "gallery {}: file is not a database (corrupt or not a portier gallery)",
                path.display()
            )
        );
        let siblings: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(siblings.len(), 1, "no -wal/-shm/-journal files created next to it");
    }

    #[test]
    fn foreign_sqlite_database_is_refused_and_left_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('mine');")
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = open_at(&path).unwrap_err();
        assert!(matches!(err, GalleryError::NotAGallery { .. }), "{err:?}");
        assert!(err.to_string().contains("not a portier gallery"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let mut g = open_at(&path).unwrap();
        g.enroll("Alice", "m", &templates(1, 1, 4), EnrollMode::New).unwrap();
        g.conn.pragma_update(None, "user_version", 4).unwrap();
        drop(g);
        let before = std::fs::read(&path).unwrap();
        let err = open_at(&path).unwrap_err();
        assert!(
            matches!(err, GalleryError::UnsupportedVersion { found: 4, supported: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("schema version 4 is newer"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn damaged_page_fails_quick_check_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let mut g = open_at(&path).unwrap();
        for i in 0..20 {
            g.enroll(&format!("p{i}"), "m", &templates(i, 20, 128), EnrollMode::New).unwrap();
        }
        drop(g); // last connection: checkpoints the WAL into the main file
        let mut bytes = std::fs::read(&path).unwrap();
        // The header's page size (big-endian at offset 16; 1 stands for 65536): new
        // galleries use the largest.
        let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
            1 => 65536,
            n => usize::from(n),
        };
        assert_eq!(page as i64, PAGE_SIZE);
        let pages = bytes.len() / page;
        assert!(pages > 2, "{pages} pages");
        // Smash a b-tree page in the middle of the file (page 1 is left intact).
        for b in &mut bytes[(pages / 2) * page..(pages / 2 + 1) * page] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = open_at(&path).unwrap_err();
        assert!(matches!(err, GalleryError::Corrupt { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with(&format!("gallery {}: database is corrupt", path.display())));
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "a damaged file is not written to");
    }

    #[test]
    fn empty_file_becomes_a_gallery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        std::fs::write(&path, b"").unwrap();
        let mut g = open_at(&path).unwrap();
        g.enroll("Alice", "m", &templates(1, 1, 4), EnrollMode::New).unwrap();
        let err = open_at(&dir.path().join("missing-dir/gallery.db")).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    #[test]
    fn remove_erases_name_and_templates_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let mut g = open_at(&path).unwrap();
        g.enroll("Keeper", "m", &templates(1, 4, 64), EnrollMode::New).unwrap();
        let secret = "Zebulon Quintessence";
        // All-equal components normalise to exactly 1/8 for dim 64: an easy byte pattern.
        let pattern: Vec<u8> = std::iter::repeat_n(0.125f32.to_le_bytes(), 8).flatten().collect();
        g.enroll(secret, "m", &vec![vec![0.5; 64]; 3], EnrollMode::New).unwrap();
        let ciphertexts = sealed_blobs(&g, secret);
        assert_eq!(ciphertexts.len(), 3);
        g.remove(secret).unwrap();

        let files = raw_files(&path);
        let contains = |needle: &[u8]| files.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(secret.as_bytes()), "removed name still on disk");
        assert!(!contains(&pattern), "removed template still on disk");
        for blob in &ciphertexts {
            // Nonce and the first ciphertext bytes: unique to that row.
            assert!(!contains(&blob[1..33]), "removed template's ciphertext still on disk");
        }
        assert!(contains(b"Keeper"));
        assert_eq!(names(&g), ["Keeper"]);
    }

    /// The main file and its `-wal`/`-shm` siblings, concatenated.
    fn raw_files(path: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            bytes.extend(std::fs::read(PathBuf::from(p)).unwrap_or_default());
        }
        bytes
    }

    /// The stored (sealed) blobs of one person.
    fn sealed_blobs(g: &Gallery, name: &str) -> Vec<Vec<u8>> {
        g.conn
            .prepare(
                "SELECT t.embedding FROM template t JOIN person p ON p.id = t.person_id \
                 WHERE p.name = ?1",
            )
            .unwrap()
            .query_map([name], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every window of 4 consecutive f32 (16 bytes) of every template, little-endian.
    fn runs_of_four(templates: &[Vec<f32>]) -> std::collections::HashSet<[u8; 16]> {
        let mut runs = std::collections::HashSet::new();
        for t in templates {
            // As stored: normalised in f64 like `insert_templates`.
            let norm = t.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            let bytes: Vec<u8> = t
                .iter()
                .flat_map(|&x| ((f64::from(x) / norm) as f32).to_le_bytes())
                .chain(t.iter().flat_map(|x| x.to_le_bytes()))
                .collect();
            for w in bytes.chunks_exact(4).collect::<Vec<_>>().windows(4) {
                let mut run = [0u8; 16];
                for (i, f) in w.iter().enumerate() {
                    run[i * 4..i * 4 + 4].copy_from_slice(f);
                }
                runs.insert(run);
            }
        }
        runs
    }

    /// Asserts that no 16-byte window at ANY byte offset (aligned or not) of `bytes` is a run
    /// of four consecutive values of any template, normalised or as given.
    fn assert_no_template_run(bytes: &[u8], templates: &[Vec<f32>]) {
        let runs = runs_of_four(templates);
        assert!(!runs.is_empty());
        let hits = bytes
            .windows(16)
            .enumerate()
            .filter(|(_, w)| runs.contains(<&[u8; 16]>::try_from(*w).unwrap()))
            .map(|(offset, _)| offset)
            .take(10)
            .collect::<Vec<_>>();
        assert!(hits.is_empty(), "template runs found at byte offsets {hits:?} (first 10)");
    }

    #[test]
    fn stolen_gallery_files_reveal_no_template() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let mut g = open_at(&path).unwrap();
        let mut enrolled = Vec::new();
        for i in 0..6u64 {
            let t = templates(100 + i, 5, 512);
            g.enroll(&format!("person {i}"), "m", &t, EnrollMode::New).unwrap();
            enrolled.extend(t);
        }
        // The check finds plaintext when there is some: the matcher's rows are in memory.
        let m = g.matcher("m").unwrap();
        let in_memory: Vec<u8> =
            (0..m.len()).flat_map(|i| m.row(i).to_vec()).flat_map(f32::to_le_bytes).collect();
        let found = std::panic::catch_unwind(|| assert_no_template_run(&in_memory, &enrolled));
        assert!(found.is_err(), "the scan must detect plaintext templates");

        // While open (WAL and -shm present) and after closing.
        assert!(dir.path().join("gallery.db-wal").exists());
        assert_no_template_run(&raw_files(&path), &enrolled);
        drop(g);
        assert_no_template_run(&raw_files(&path), &enrolled);
        assert_eq!(open_at(&path).unwrap().matcher("m").unwrap().len(), 30);
    }

    #[test]
    fn wrong_or_missing_key_is_a_clear_error_not_garbage_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let key = dir.path().join("gallery.key");
        open_at(&path).unwrap().enroll("Alice", "m", &templates(1, 2, 8), EnrollMode::New).unwrap();

        let other = dir.path().join("other.key");
        DeviceKey::create(&other).unwrap();
        let g = Gallery::open(&path, &other).unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(matches!(err, GalleryError::WrongKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("authentication failed") && msg.contains("other.key"), "{msg}");
        drop(g);

        let moved = dir.path().join("moved.key");
        std::fs::rename(&key, &moved).unwrap();
        let err = open_at(&path).unwrap_err();
        assert!(matches!(err, GalleryError::KeyMissing { .. }), "{err:?}");
        assert!(!key.exists(), "no new key may be made for a gallery with sealed templates");
        std::fs::rename(&moved, &key).unwrap();
        assert_eq!(open_at(&path).unwrap().matcher("m").unwrap().len(), 2);
    }

    #[test]
    fn sealed_template_moved_to_another_person_or_model_fails_authentication() {
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "m", &templates(1, 1, 8), EnrollMode::New).unwrap();
        let bob = g.enroll("Bob", "m", &templates(2, 1, 8), EnrollMode::New).unwrap();
        g.enroll("Bob", "n", &templates(3, 1, 8), EnrollMode::Append).unwrap();
        // Bob's model-m template replaced by a copy of Alice's: Bob would open Alice's door.
        g.conn
            .execute(
                "UPDATE template SET embedding = (SELECT embedding FROM template WHERE \
                 person_id <> ?1) WHERE person_id = ?1 AND model_id = 'm'",
                [bob],
            )
            .unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(matches!(&err, GalleryError::CorruptTemplate { person, .. } if person == "Bob"));
        assert!(err.to_string().contains("authentication failed"), "{err}");
        // Moved to another model: the row's model id no longer matches its binding.
        g.conn.execute("UPDATE template SET model_id = 'm' WHERE model_id = 'n'", []).unwrap();
        g.conn.execute("DELETE FROM template WHERE person_id = ?1 AND id = (SELECT min(id) FROM template WHERE person_id = ?1)", [bob]).unwrap();
        assert!(g.matcher("m").is_err());
    }

    /// The tables of schema versions 1 and 2 as those releases made them: version 3's but for
    /// `AUTOINCREMENT` (person ids reusable).
    fn schema_v1_v2() -> String {
        let old = SCHEMA.replace("PRIMARY KEY AUTOINCREMENT", "PRIMARY KEY");
        assert_ne!(old, SCHEMA);
        old
    }

    #[test]
    fn person_ids_are_never_reused() {
        let mut g = Gallery::open_in_memory().unwrap();
        let a = g.enroll("Alice", "m", &templates(1, 1, 8), EnrollMode::New).unwrap();
        let b = g.enroll("Bob", "m", &templates(2, 1, 8), EnrollMode::New).unwrap();
        g.remove("Bob").unwrap();
        let c = g.enroll("Carol", "m", &templates(3, 1, 8), EnrollMode::New).unwrap();
        assert!(a < b && b < c, "{a} {b} {c}: the removed highest id is not handed out again");
    }

    #[test]
    fn names_are_bound_renames_reseal_and_swapped_names_fail() {
        let mut g = Gallery::open_in_memory().unwrap();
        let alice = templates(1, 2, 8);
        g.enroll("Alice", "m", &alice, EnrollMode::New).unwrap();
        g.enroll("Mallory", "m", &templates(2, 1, 8), EnrollMode::New).unwrap();
        // A rename through portier reseals: everything still opens under the new name.
        g.rename("Alice", "Alice B").unwrap();
        let m = g.matcher("m").unwrap();
        assert_eq!(m.best_two(&alice[0]).unwrap().best.unwrap().name, "Alice B");
        // Names swapped in the file behind portier's back: Mallory would open as Alice.
        g.conn
            .execute_batch(
                "UPDATE person SET name = 'tmp' WHERE name = 'Mallory';
                 UPDATE person SET name = 'Mallory' WHERE name = 'Alice B';
                 UPDATE person SET name = 'Alice B' WHERE name = 'tmp';",
            )
            .unwrap();
        let err = g.matcher("m").unwrap_err();
        assert!(
            matches!(err, GalleryError::WrongKey { .. } | GalleryError::CorruptTemplate { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn version_2_gallery_is_migrated_ids_kept_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let key_file = path.with_extension("key");
        let key = DeviceKey::create(&key_file).unwrap();
        let alice = templates(21, 2, 16);
        let bob = templates(22, 2, 16);
        {
            // A version 2 file: sealed, bound to the person id only; Bob has id 5.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&schema_v1_v2()).unwrap();
            c.pragma_update(None, "application_id", APPLICATION_ID).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            for (id, name, ts) in [(2_i64, "Alice", &alice), (5, "Bob", &bob)] {
                c.execute(
                    "INSERT INTO person (id, name, created_unix) VALUES (?1, ?2, 5)",
                    params![id, name],
                )
                .unwrap();
                for t in ts {
                    let norm = t.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                    let plain: Vec<u8> = t
                        .iter()
                        .flat_map(|&x| ((f64::from(x) / norm) as f32).to_le_bytes())
                        .collect();
                    let blob = key.seal(&template_aad_v2(id, "m", 16), &plain).unwrap();
                    c.execute("INSERT INTO template (person_id, model_id, dim, embedding, created_unix) VALUES (?1, 'm', 16, ?2, 5)", params![id, blob]).unwrap();
                }
            }
        }
        let mut g = open_at(&path).unwrap();
        let version: i64 = g.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 3);
        let people: Vec<(i64, String)> =
            g.list().unwrap().into_iter().map(|p| (p.id, p.name)).collect();
        assert_eq!(people, [(2, "Alice".to_owned()), (5, "Bob".to_owned())]);
        let m = g.matcher("m").unwrap();
        assert_eq!(m.best_two(&bob[1]).unwrap().best.unwrap().name, "Bob");
        g.integrity_check().unwrap();
        // Bob leaves; the next person does not get his id.
        g.remove("Bob").unwrap();
        let carol = g.enroll("Carol", "m", &templates(23, 1, 16), EnrollMode::New).unwrap();
        assert!(carol > 5, "{carol}");
        // No old (version 2) blob survives the migration anywhere in the files.
        drop(g);
        let g = open_at(&path).unwrap();
        assert_eq!(g.matcher("m").unwrap().people(), 2);
    }

    #[test]
    fn version_1_gallery_is_sealed_and_scrubbed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.db");
        let alice = templates(11, 4, 128);
        let bob = templates(12, 3, 128);
        {
            // A version 1 file as the previous release wrote it: plaintext normalised f32.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&schema_v1_v2()).unwrap();
            c.pragma_update(None, "application_id", APPLICATION_ID).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            for (pid, (name, ts)) in [("Alice", &alice), ("Bob", &bob)].into_iter().enumerate() {
                c.execute(
                    "INSERT INTO person (id, name, created_unix) VALUES (?1, ?2, 5)",
                    params![pid as i64 + 1, name],
                )
                .unwrap();
                for t in ts {
                    let norm = t.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                    let blob: Vec<u8> = t
                        .iter()
                        .flat_map(|&x| ((f64::from(x) / norm) as f32).to_le_bytes())
                        .collect();
                    c.execute("INSERT INTO template (person_id, model_id, dim, embedding, created_unix) VALUES (?1, 'm', 128, ?2, 5)", params![pid as i64 + 1, blob]).unwrap();
                }
            }
        }
        let everyone: Vec<Vec<f32>> = alice.iter().chain(&bob).cloned().collect();
        assert!(
            std::panic::catch_unwind(|| assert_no_template_run(&raw_files(&path), &everyone))
                .is_err(),
            "the v1 file holds plaintext"
        );

        let g = open_at(&path).unwrap();
        let version: i64 = g.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 3);
        let m = g.matcher("m").unwrap();
        assert_eq!((m.len(), m.people()), (7, 2));
        let r = m.best_two(&bob[1]).unwrap();
        assert_eq!(r.best.unwrap().name, "Bob");
        assert_no_template_run(&raw_files(&path), &everyone);
        drop(g);
        assert_no_template_run(&raw_files(&path), &everyone);
        assert!(path.with_extension("key").exists());
    }

    #[test]
    fn export_import_round_trip_and_refusals() {
        use crate::gallery::backup::KdfParams;
        const CHEAP: KdfParams = KdfParams { memory_kib: 64, passes: 1, lanes: 1 };
        const PASS: &str = "a long enough passphrase";
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup.bin");
        let mut src = open_at(&dir.path().join("a.db")).unwrap();
        let alice = templates(21, 3, 16);
        src.enroll("Alice", "cpu", &alice, EnrollMode::New).unwrap();
        src.enroll("Alice", "npu", &templates(22, 2, 8), EnrollMode::Append).unwrap();
        src.enroll("Bob", "cpu", &templates(23, 1, 16), EnrollMode::New).unwrap();
        assert_eq!(src.export_with(&backup, PASS, CHEAP).unwrap(), 2);
        assert!(src
            .export_with(&backup, "short", CHEAP)
            .unwrap_err()
            .to_string()
            .contains("shorter than 12"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let bytes = std::fs::read(&backup).unwrap();
        assert_no_template_run(&bytes, &alice);
        assert!(!bytes.windows(5).any(|w| w == b"Alice"), "names are encrypted too");

        // Another device, another key: the backup restores everyone, every model.
        let mut dst = open_at(&dir.path().join("b.db")).unwrap();
        let s = dst.import(&backup, PASS, ImportMode::Refuse).unwrap();
        assert_eq!(s, ImportSummary { people: 2, replaced: 0, templates: 6 });
        assert_eq!(
            dst.list().unwrap(),
            src.list()
                .unwrap()
                .into_iter()
                .map(|mut p| {
                    p.id = dst.list().unwrap().iter().find(|q| q.name == p.name).unwrap().id;
                    p
                })
                .collect::<Vec<_>>()
        );
        for model in ["cpu", "npu"] {
            let (a, b) = (src.matcher(model).unwrap(), dst.matcher(model).unwrap());
            assert_eq!(a.len(), b.len());
            for i in 0..a.len() {
                assert_eq!(a.row(i), b.row(i), "model {model} row {i} differs");
            }
        }

        // Clash: nothing imported, names given; --replace replaces.
        let err = dst.import(&backup, PASS, ImportMode::Refuse).unwrap_err();
        assert!(matches!(err, GalleryError::ImportClash { .. }), "{err:?}");
        assert!(err.to_string().contains("\"Alice\", \"Bob\""), "{err}");
        dst.enroll("Carol", "cpu", &templates(24, 1, 16), EnrollMode::New).unwrap();
        let s = dst.import(&backup, PASS, ImportMode::Replace).unwrap();
        assert_eq!((s.people, s.replaced), (2, 2));
        assert_eq!(dst.matcher("cpu").unwrap().len(), 5);

        // Wrong passphrase, truncated and tampered files import nothing.
        let before = dst.list().unwrap();
        let err = dst.import(&backup, "not the passphrase", ImportMode::Replace).unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        for (name, bad) in [
            ("truncated", bytes[..bytes.len() - 1].to_vec()),
            ("tampered", {
                let mut b = bytes.clone();
                let n = b.len() / 2;
                b[n] ^= 1;
                b
            }),
            ("empty", Vec::new()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, bad).unwrap();
            let err = dst.import(&p, PASS, ImportMode::Replace).unwrap_err();
            assert!(matches!(err, GalleryError::Backup { .. }), "{name}: {err:?}");
        }
        assert_eq!(dst.list().unwrap(), before);
    }

    #[test]
    fn integrity_check_reports_orphan_templates() {
        let g = Gallery::open_in_memory().unwrap();
        g.integrity_check().unwrap();
        g.conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
        g.conn
            .execute(
                "INSERT INTO template (person_id, model_id, dim, embedding, created_unix) \
                 VALUES (42, 'm', 1, x'0000803f', 0)",
                [],
            )
            .unwrap();
        let err = g.integrity_check().unwrap_err();
        assert!(err.to_string().contains("1 template(s) belong to no person"), "{err}");
    }

    /// Env var naming the gallery file; set only when the crash test re-executes this binary.
    const CRASH_DB_ENV: &str = "PORTIER_GALLERY_CRASH_CHILD_DB";
    /// Env var with the run number, so each child's people get distinct names.
    const CRASH_RUN_ENV: &str = "PORTIER_GALLERY_CRASH_CHILD_RUN";
    /// Model id used by the crash child.
    const CRASH_MODEL: &str = "crash-model";

    /// Child half of `kill_during_enrolment_leaves_whole_person_or_nothing`; does nothing in a
    /// normal test run. Enrols people with 200..2000 templates of dim 512 until killed, printing
    /// a line before and after each enrolment so the parent knows where the kill landed. Only
    /// the last three people are kept so the file stays small across runs.
    #[test]
    fn crash_child_enrol_loop() {
        let Some(db) = std::env::var_os(CRASH_DB_ENV) else { return };
        let run: usize = std::env::var(CRASH_RUN_ENV).unwrap().parse().unwrap();
        let pool = templates(run as u64, 2000, 512);
        let mut g = open_at(Path::new(&db)).unwrap();
        for p in g.list().unwrap() {
            println!("removing {}", p.name);
            g.remove(&p.name).unwrap();
            println!("removed {}", p.name);
        }
        let mut enrolled: Vec<String> = Vec::new();
        // Bounded, so a child that is somehow never killed cannot fill the disk.
        for i in 0..300 {
            let count = 200 + (run * 389 + i * 631) % 1800;
            let name = format!("r{run}-p{i}-n{count}");
            println!("enrolling {name}");
            g.enroll(&name, CRASH_MODEL, &pool[..count], EnrollMode::New).unwrap();
            println!("enrolled {name}");
            enrolled.push(name);
            if enrolled.len() > 3 {
                let old = enrolled.remove(0);
                println!("removing {old}");
                g.remove(&old).unwrap();
                println!("removed {old}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn kill_during_enrolment_leaves_whole_person_or_nothing() {
        use std::os::unix::process::ExitStatusExt;

        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gallery.db");
        let exe = std::env::current_exe().unwrap();
        let mut killed_mid_enrolment = 0;
        let mut people_seen = 0;
        for run in 0..20u64 {
            let mut child = Command::new(&exe)
                .args(["crash_child_enrol_loop", "--nocapture", "--test-threads=1"])
                .env(CRASH_DB_ENV, &db)
                .env(CRASH_RUN_ENV, run.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(40 + (run * 137) % 900));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
                .lines()
                .map_while(Result::ok)
                .collect();
            assert_eq!(status.signal(), Some(9), "run {run}: child ended by itself: {lines:?}");

            // The last completed enrolment must be durable; one in flight may or may not be.
            let last = lines
                .iter()
                .rev()
                .find(|l| l.starts_with("enrolling ") || l.starts_with("enrolled "));
            let must_exist = match last {
                Some(l) if l.starts_with("enrolling ") => {
                    killed_mid_enrolment += 1;
                    lines.iter().rev().find_map(|l| l.strip_prefix("enrolled "))
                }
                Some(l) => l.strip_prefix("enrolled "),
                None => None,
            };

            let g = open_at(&db).unwrap();
            g.integrity_check().unwrap();
            let people = g.list().unwrap();
            for p in &people {
                let expected: usize = p.name.rsplit("-n").next().unwrap().parse().unwrap();
                assert_eq!(
                    p.templates,
                    vec![(CRASH_MODEL.to_owned(), expected)],
                    "run {run}: partial person {}",
                    p.name
                );
            }
            if let Some(name) = must_exist {
                let removed_later = lines.iter().any(|l| l == &format!("removing {name}"));
                assert!(
                    removed_later || people.iter().any(|p| p.name == name),
                    "run {run}: committed {name} lost"
                );
            }
            let m = g.matcher(CRASH_MODEL).unwrap();
            assert_eq!(m.people(), people.len());
            people_seen += people.len();
        }
        println!("{killed_mid_enrolment}/20 kills landed mid-enrolment; {people_seen} people seen");
        assert!(people_seen > 0, "no child ever committed an enrolment");
        assert!(
            killed_mid_enrolment >= 3,
            "only {killed_mid_enrolment} kills landed mid-enrolment"
        );
    }
}
