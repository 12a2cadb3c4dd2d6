//! The command verifier's memory on disk: used nonces inside the window, the highest accepted
//! timestamp and the clock mark ([`ReplayState`]), so that a recorded signed command cannot be
//! replayed after a restart or a clock step back.
//!
//! Role: [`load`] at start, [`save`] right after it and after every accepted command, before
//! the command reaches the loop. The file, `command-replay.json` in the configured outbox
//! directory (also when the outbox itself had to fall back to the temporary folder: a fresh
//! state anywhere else would let old signed commands through again), is one JSON
//! document followed by a line `crc32 <8 hex digits>` over the JSON bytes, and is replaced as a
//! whole with the outbox's durability rules: written to a temporary file (owner-only), fsynced,
//! renamed over the old one, the directory fsynced (`crate::secret::write_private`). A crash at
//! any point leaves the old or the new file, both complete.
//!
//! A file that does not parse, whose CRC is wrong (SD card damage, an edit) or that cannot be
//! read at all (an I/O error, a path that is not a folder) must not stop the door and must not
//! reopen the replay hole: it is renamed aside
//! (`command-replay.json.damaged-<unix ms>`, kept for inspection) and the verifier starts
//! empty, but refuses every command whose timestamp is not newer than the damaged file's
//! modification time plus the window. Every nonce the lost file could have held came with a
//! timestamp at most one window after its last write (the window check), so none of them can
//! pass; legitimate commands are refused for at most about one window after that write.
//!
//! A modification time in the future (the clock was set back since, or the inode is damaged
//! too) is taken as now: otherwise every command would be refused until the clock reached it,
//! for as long as the time is wrong. What that gives up is the same as after a deleted file:
//! a command accepted while the clock ran ahead, recorded and sent again once the clock
//! reaches its timestamp, is not known any more (the floor of the start and `clock_mark` of an
//! intact file still hold). After a clock that ran ahead, rotate the command key.
//!
//! # Resetting
//!
//! An intact file can refuse every command for long: its `clock_mark` after a clock that ran
//! far ahead (`clock_behind` until the clock catches up), or a high floor. [`reset`] is the
//! operator's way out (`portier mqtt reset-replay`, with portier stopped): the old file is
//! copied to `command-replay.json.reset-<unix ms>` and a state is written that remembers
//! nothing but a floor one window after the reset time: commands signed before the reset stay
//! refused, and so does one accepted just before it with a timestamp up to a window ahead
//! (the verifier allows that much skew), whose nonce the new state no longer holds.
//! Commands recorded while the clock ran ahead carry timestamps that become current again
//! later: rotate the command key with the reset when that was the cause.
//!
//! Must not: talk to the network, or decide anything about a command (the verifier does).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::command::ReplayState;

/// The state file's name inside the outbox directory.
pub const STATE_NAME: &str = "command-replay.json";

/// Largest state file read: 256 nonces of 64 characters and their timestamps are about 25 KiB.
const MAX_FILE: u64 = 1 << 20;

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: the first start (nothing was ever accepted here).
    Fresh,
    /// The state as saved.
    State(ReplayState),
    /// The file was damaged and renamed aside; the state to start from refuses every
    /// timestamp up to its modification time plus the window.
    Damaged {
        /// Where the damaged file now is (`None` when it could not even be renamed).
        kept: Option<PathBuf>,
        /// What was wrong.
        detail: String,
        /// The safe starting state.
        state: ReplayState,
    },
}

/// Reads the state from `dir`; `window_s` and `now_unix` set the floor after damage.
pub fn load(dir: &Path, window_s: u32, now_unix: i64) -> Loaded {
    let path = dir.join(STATE_NAME);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Fresh,
        Err(e) => {
            return damaged(&path, None, format!("cannot read its status: {e}"), window_s, now_unix)
        }
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok());
    if meta.len() > MAX_FILE {
        return damaged(
            &path,
            mtime,
            format!("{} bytes, more than a state file holds", meta.len()),
            window_s,
            now_unix,
        );
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return damaged(&path, mtime, format!("cannot read it: {e}"), window_s, now_unix),
    };
    match decode(&bytes) {
        Ok(state) => Loaded::State(state),
        Err(detail) => damaged(&path, mtime, detail, window_s, now_unix),
    }
}

/// Writes `state` durably to `dir` (see the module documentation).
pub fn save(dir: &Path, state: &ReplayState) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::secret::write_private(
        &dir.join(STATE_NAME),
        &encode(state),
        crate::secret::Place::Replace,
    )
}

/// Starts the state in `dir` afresh at `now_unix` (see "Resetting" in the module
/// documentation; portier must not be running): the old file, if any, is copied to
/// `command-replay.json.reset-<unix ms>` and kept; the new state, which replaces it
/// atomically, remembers no nonce and no mark, only the floor `now_unix + window_s`. Returns
/// where the old file is kept. On an error the old state is still in place.
pub fn reset(dir: &Path, now_unix: i64, window_s: u32) -> io::Result<Option<PathBuf>> {
    let path = dir.join(STATE_NAME);
    let kept = match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            let kept = PathBuf::from(format!("{}.reset-{}", path.display(), unix_ms()));
            std::fs::copy(&path, &kept)?;
            Some(kept)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let floor = now_unix.saturating_add(i64::from(window_s));
    // One-time codes: every step that begins at or before the floor is refused, and any
    // lock-out is lifted (the operator's way out of one, too).
    let otp = super::otp::OtpMemory {
        last_step: Some(floor.div_euclid(super::otp::STEP_S)),
        ..Default::default()
    };
    let state = ReplayState { floor: Some(floor), otp, ..ReplayState::default() };
    save(dir, &state)?;
    // Run as root (the usual way on the image), the new 0600 file would be root's, unreadable
    // to the service, which would then set it aside as damaged: it takes the folder's owner, as
    // the file it replaces had. Best effort: if that fails, that safe outcome is what follows.
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir)?;
        let _ = std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()));
    }
    Ok(kept)
}

/// The file's bytes: JSON, newline, `crc32 <hex>`, newline.
pub fn encode(state: &ReplayState) -> Vec<u8> {
    // Serialising plain integers and strings cannot fail; an empty object would be refused at
    // load (missing fields), never silently accepted.
    let mut out = serde_json::to_vec(state).unwrap_or_default();
    let crc = super::outbox::crc32(&out);
    out.extend_from_slice(format!("\ncrc32 {crc:08x}\n").as_bytes());
    out
}

/// Parses what [`encode`] wrote; the error says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<ReplayState, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let (json, trailer) = text.rsplit_once("\ncrc32 ").ok_or("no crc32 line")?;
    let crc = u32::from_str_radix(trailer.trim_end_matches('\n'), 16)
        .map_err(|_| "the crc32 line is not 8 hex digits".to_owned())?;
    let actual = super::outbox::crc32(json.as_bytes());
    if crc != actual {
        return Err(format!("crc32 {actual:08x} does not match the recorded {crc:08x}"));
    }
    serde_json::from_str(json).map_err(|e| format!("not a replay state: {e}"))
}

fn damaged(
    path: &Path,
    mtime: Option<i64>,
    detail: String,
    window_s: u32,
    now_unix: i64,
) -> Loaded {
    let aside = PathBuf::from(format!("{}.damaged-{}", path.display(), unix_ms()));
    let kept = match std::fs::rename(path, &aside) {
        Ok(()) => Some(aside),
        Err(e) => {
            log::error!("mqtt: cannot rename the damaged {} aside: {e}", path.display());
            None
        }
    };
    // Every nonce the file held came with a timestamp at most one window after the door's
    // clock when it was accepted, and the file was written after that with the same clock:
    // its mtime plus the window covers them all. Without an mtime, now is the safe choice; a
    // future mtime is taken as now too (see the module documentation).
    let mut detail = detail;
    let written = match mtime {
        Some(t) if t > now_unix => {
            detail.push_str(&format!(
                "; its modification time was {} s in the future (clock set back?), taken as now",
                t - now_unix
            ));
            now_unix
        }
        Some(t) => t,
        None => now_unix,
    };
    let floor = written.saturating_add(i64::from(window_s));
    let state = ReplayState {
        clock_mark: Some(written),
        max_ts: None,
        floor: Some(floor),
        nonces: Vec::new(),
        // A one-time code of a step that began at or before the floor could have been used and
        // recorded in the lost file: refused too.
        otp: super::otp::OtpMemory {
            last_step: Some(floor.div_euclid(super::otp::STEP_S)),
            ..Default::default()
        },
    };
    Loaded::Damaged { kept, detail, state }
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::command::Seen;
    use super::*;

    fn state() -> ReplayState {
        ReplayState {
            clock_mark: Some(1_764_355_210),
            max_ts: Some(1_764_355_200),
            floor: None,
            nonces: vec![Seen { nonce: "3f9a1c0d5e7b2a48".into(), ts: 1_764_355_200 }],
            otp: Default::default(),
        }
    }

    #[test]
    fn saves_and_loads_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path(), 30, 0), Loaded::Fresh));
        save(dir.path(), &state()).unwrap();
        match load(dir.path(), 30, 0) {
            Loaded::State(s) => assert_eq!(s, state()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_damaged_file_is_put_aside_and_the_floor_covers_its_nonces() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &state()).unwrap();
        let path = dir.path().join(STATE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mtime = std::fs::metadata(&path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        match load(dir.path(), 30, mtime) {
            Loaded::Damaged { kept, detail, state } => {
                let kept = kept.unwrap();
                assert!(kept.exists() && !path.exists(), "{kept:?}");
                assert_eq!(std::fs::read(&kept).unwrap(), bytes, "kept for inspection");
                assert!(detail.contains("crc32") || detail.contains("replay state"), "{detail}");
                assert_eq!(state.floor, Some(mtime + 30));
                assert!(state.nonces.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // Garbage of every kind is damage, never a panic.
        for garbage in [&b""[..], b"{}", b"\xff\xfe", b"{}\ncrc32 zz\n", b"null\ncrc32 00000000\n"]
        {
            std::fs::write(&path, garbage).unwrap();
            assert!(matches!(load(dir.path(), 30, 0), Loaded::Damaged { .. }), "{garbage:?}");
        }
    }

    #[test]
    fn an_unreadable_state_is_damage_and_never_a_fresh_start() {
        // The state path is a folder: its status reads, the read fails.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_NAME)).unwrap();
        match load(dir.path(), 30, 1_000) {
            Loaded::Damaged { kept, detail, state } => {
                assert!(detail.contains("cannot read"), "{detail}");
                assert!(kept.is_some_and(|k| k.is_dir()), "set aside");
                assert!(state.floor.is_some_and(|f| f >= 1_030), "{state:?}");
            }
            other => panic!("{other:?}"),
        }
        // The outbox folder's path runs through a file: nothing can be read or written there.
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let inside = file.join("outbox");
        match load(&inside, 30, 1_000) {
            Loaded::Damaged { kept, detail, state } => {
                assert!(kept.is_none() && detail.contains("status"), "{detail}");
                assert_eq!(state.floor, Some(1_030), "no mtime: the floor is now plus the window");
            }
            other => panic!("{other:?}"),
        }
        assert!(save(&inside, &state()).is_err());
    }

    #[test]
    fn a_damaged_file_from_the_future_is_taken_as_written_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_NAME);
        std::fs::write(&path, b"damaged").unwrap();
        // Written "a day from now" by a clock that ran ahead (or an inode that says so).
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let day_ahead = UNIX_EPOCH + std::time::Duration::from_secs((now + 86_400) as u64);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(day_ahead).unwrap();
        match load(dir.path(), 30, now) {
            Loaded::Damaged { detail, state, .. } => {
                assert_eq!(state.floor, Some(now + 30), "not refused for a day");
                assert_eq!(state.clock_mark, Some(now));
                assert!(detail.contains("86400 s in the future"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reset_keeps_the_old_file_and_leaves_only_a_floor_a_window_after_now() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing there yet: a floor all the same.
        assert_eq!(reset(dir.path(), 1_000, 30).unwrap(), None);
        assert!(matches!(load(dir.path(), 30, 1_000), Loaded::State(s) if s.floor == Some(1_030)));
        // A state whose clock mark is far ahead (every command clock_behind until then).
        let ahead = ReplayState { clock_mark: Some(1_764_355_210 + 86_400), ..state() };
        save(dir.path(), &ahead).unwrap();
        let kept = reset(dir.path(), 1_764_355_300, 30).unwrap().unwrap();
        assert_eq!(decode(&std::fs::read(&kept).unwrap()).unwrap(), ahead, "kept as it was");
        assert!(kept
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("command-replay.json.reset-"));
        match load(dir.path(), 30, 1_764_355_300) {
            Loaded::State(s) => {
                assert_eq!(
                    s,
                    ReplayState {
                        floor: Some(1_764_355_330),
                        otp: super::super::otp::OtpMemory {
                            last_step: Some(1_764_355_330 / 30),
                            ..Default::default()
                        },
                        ..ReplayState::default()
                    }
                )
            }
            other => panic!("{other:?}"),
        }
        // Where nothing can be written, an error: the old state stays where it was.
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(reset(&file.join("outbox"), 1, 30).is_err());
    }
}
