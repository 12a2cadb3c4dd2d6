//! The command verifier's memory on disk: used nonces inside the window, the highest accepted
//! timestamp and the clock mark ([`ReplayState`]), so that a recorded signed command cannot be
//! replayed after a restart or a clock step back.
//!
//! Role: [`load`] at start, [`save`] after every accepted command and before the command
//! reaches the loop. The file, `command-replay.json` in the outbox directory, is one JSON
//! document followed by a line `crc32 <8 hex digits>` over the JSON bytes, and is replaced as a
//! whole with the outbox's durability rules: written to a temporary file (owner-only), fsynced,
//! renamed over the old one, the directory fsynced (`crate::secret::write_private`). A crash at
//! any point leaves the old or the new file, both complete.
//!
//! A file that does not parse or whose CRC is wrong (SD card damage, an edit) must not stop the
//! door and must not reopen the replay hole: it is renamed aside
//! (`command-replay.json.damaged-<unix ms>`, kept for inspection) and the verifier starts
//! empty, but refuses every command whose timestamp is not newer than the damaged file's
//! modification time plus the window. Every nonce the lost file could have held came with a
//! timestamp at most one window after its last write (the window check), so none of them can
//! pass; legitimate commands are refused for at most about one window after that write.
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
    let stamp =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
    let aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    let kept = match std::fs::rename(path, &aside) {
        Ok(()) => Some(aside),
        Err(e) => {
            log::error!("mqtt: cannot rename the damaged {} aside: {e}", path.display());
            None
        }
    };
    // Every nonce the file held came with a timestamp at most one window after the door's
    // clock when it was accepted, and the file was written after that with the same clock:
    // its mtime plus the window covers them all. Without an mtime, now is the safe choice.
    let written = mtime.unwrap_or(now_unix);
    let floor = written.saturating_add(i64::from(window_s));
    let state = ReplayState {
        clock_mark: Some(written),
        max_ts: None,
        floor: Some(floor),
        nonces: Vec::new(),
    };
    Loaded::Damaged { kept, detail, state }
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
}
