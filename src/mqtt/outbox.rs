//! Durable outbox of the MQTT publisher: a bounded on-disk queue of events awaiting their PUBACK.
//!
//! Role: the MQTT thread [`Outbox::push`]es every event before it publishes it and
//! [`Outbox::ack`]s it once the broker has acknowledged it (QoS 1 PUBACK). An event is on disk,
//! written and `fdatasync`ed, before `push` returns, and it leaves the queue only through an ack
//! or through the bound, so a broker outage, a restart, a SIGKILL or a power cut at any moment
//! loses nothing that `push` returned: [`Outbox::peek`] hands the remaining events out again,
//! oldest first. When the bound (entries or bytes) is reached the oldest events are dropped and
//! counted in [`OutboxStats::dropped_total`]: today's events matter more than last week's, and
//! the appliance's SD card must not fill up during a long outage.
//!
//! Delivery is at least once: an event whose PUBACK arrived but whose ack did not reach the disk
//! before a crash is sent again, so consumers deduplicate (on the sequence number or the event's
//! own id).
//!
//! Must not: talk to the network or block the frame loop. Every mutating call is file I/O with
//! an `fdatasync`, which takes milliseconds on an SD card: only the MQTT thread calls it. One
//! process owns a directory (the service is single-instance under systemd); nothing here locks.
//!
//! # File format
//!
//! One append-only file, `outbox.log`, replaced as a whole by compaction. All integers are
//! little-endian.
//!
//! ```text
//! file   = MAGIC record*        MAGIC  = "PORTIER-OUTBOX" 00 01 (name, NUL, format version 1)
//! record = MARKER len crc body  MARKER = 5A 0B 0C 7E; len: u32 = body bytes;
//!                               crc: u32 = CRC-32/IEEE of len and body
//! body   = 01 next_seq dropped_total           checkpoint, the first record after compaction
//!        | 02 seq topic_len:u16 topic payload  an event (topic in UTF-8, payload to the end)
//!        | 03 seq                              its PUBACK arrived
//!        | 04 up_to_seq dropped_total          the bound dropped every pending seq <= up_to_seq
//! ```
//!
//! Sequence numbers and counters are u64. Recovery reads the file once and replays the valid
//! records in order. A record whose CRC or shape is wrong is skipped by scanning for the next
//! MARKER that starts a valid record, so a flipped length byte does not lose the rest of the
//! file. A damaged header (a flipped bit in MAGIC, the version byte included) is resynced the
//! same way: when valid records follow it, from offset 16 on, they are recovered, the log is
//! rewritten with a good header, and only the 16 damaged header bytes are kept aside
//! (`outbox.log.damaged-<unix ms>`). A file in which no valid record follows a wrong header is
//! not an outbox and is left untouched. So a future format version must change MARKER (or
//! every body kind): a reader of version 1 must never find its records valid. A damaged stretch followed by valid records, or a complete but damaged last record,
//! counts as one lost event; an incomplete last record is an interrupted append whose `push`
//! never returned and is not counted. Any damage makes `open` compact at once, so it is reported
//! and counted only once.
//!
//! Compaction writes the checkpoint and the pending events to `outbox.log.tmp`, `fsync`s it,
//! renames it over `outbox.log` and `fsync`s the directory: a crash at any point leaves either
//! the old or the new file, both complete. It runs when the dead bytes (acked or dropped events,
//! ack and drop records) reach both the live bytes and 64 KiB, so the file stays below about
//! twice the pending data plus 64 KiB and compaction costs O(1) amortised per appended byte.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Longest topic accepted, in bytes; far above any portier topic, low enough to bound a record.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Largest payload accepted, in bytes; events are small JSON documents, snapshots go elsewhere.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024;

/// Name of the log file inside the outbox directory.
const LOG_NAME: &str = "outbox.log";
/// Name of the compaction's new file until it is renamed over the log.
const TMP_NAME: &str = "outbox.log.tmp";

/// File header: name and format version; a file that does not start with it is not touched.
const MAGIC: &[u8; 16] = b"PORTIER-OUTBOX\x00\x01";
/// Start of every record, what recovery scans for after damage.
const MARKER: [u8; 4] = [0x5A, 0x0B, 0x0C, 0x7E];
/// Marker, length and CRC in front of every body.
const RECORD_HEAD: usize = 12;

const KIND_CHECKPOINT: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_DROP: u8 = 4;

/// Body of an event record without topic and payload: kind, seq, topic length.
const ENTRY_BODY_FIXED: usize = 1 + 8 + 2;
/// Smallest event record; damaged bytes are converted into "at most this many lost events".
const MIN_ENTRY_RECORD: u64 = (RECORD_HEAD + ENTRY_BODY_FIXED) as u64;
/// Body of checkpoint and drop records: kind and two u64.
const PAIR_BODY: usize = 1 + 8 + 8;
/// Body of an ack record: kind and seq.
const ACK_BODY: usize = 1 + 8;
/// Largest body a valid record can have; a longer length field is damage.
const MAX_BODY: usize = ENTRY_BODY_FIXED + MAX_TOPIC_LEN + MAX_PAYLOAD_LEN;
/// Length of the checkpoint record at the start of every compacted file.
const CHECKPOINT_RECORD: u64 = (RECORD_HEAD + PAIR_BODY) as u64;

/// Dead bytes below which compaction is not worth a rewrite (and its SD card wear).
const COMPACT_MIN_DEAD: u64 = 64 * 1024;

/// Drops during one stretch at the bound between two warnings: an outage drops an event per push
/// and must not flood the journal.
const DROP_LOG_EVERY: u64 = 1000;

/// Everything that can go wrong with the outbox.
///
/// Every message names the outbox directory or file, so a log line alone locates the culprit.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// `max_entries` or `max_bytes` is zero: such an outbox could hold nothing.
    #[error(
        "outbox {dir}: bounds must be positive (max_entries {max_entries}, max_bytes {max_bytes})"
    )]
    InvalidBounds {
        /// Outbox directory.
        dir: PathBuf,
        /// Requested entry bound.
        max_entries: usize,
        /// Requested byte bound.
        max_bytes: u64,
    },
    /// The log file exists but was not written by this outbox (or by a newer format version).
    #[error("outbox {path}: not an outbox file ({detail}); refusing to touch it")]
    NotAnOutbox {
        /// Log file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// Creating, reading, writing, syncing or renaming a file of the outbox failed.
    #[error("outbox {path}: {context}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The topic is longer than [`MAX_TOPIC_LEN`].
    #[error("outbox {dir}: topic of {len} bytes exceeds the limit of {max} bytes")]
    TopicTooLong {
        /// Outbox directory.
        dir: PathBuf,
        /// Topic length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The topic could never be published (empty, MQTT wildcard, NUL). Refused here because the
    /// broker would refuse it forever and it would block the head of the queue.
    #[error("outbox {dir}: topic {topic:?} cannot be published: {reason}")]
    InvalidTopic {
        /// Outbox directory.
        dir: PathBuf,
        /// The topic.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload is larger than [`MAX_PAYLOAD_LEN`].
    #[error("outbox {dir}: payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Outbox directory.
        dir: PathBuf,
        /// Payload length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Topic and payload together exceed the outbox's byte bound: it could never be held.
    #[error("outbox {dir}: entry of {len} bytes exceeds the outbox bound of {max_bytes} bytes")]
    EntryTooLarge {
        /// Outbox directory.
        dir: PathBuf,
        /// Topic plus payload length in bytes.
        len: u64,
        /// The outbox's byte bound.
        max_bytes: u64,
    },
    /// An ack for a sequence number this outbox never handed out: a bug in the caller.
    #[error("outbox {dir}: ack of seq {seq}, which was never issued (next seq is {next_seq})")]
    UnknownSeq {
        /// Outbox directory.
        dir: PathBuf,
        /// The acknowledged sequence number.
        seq: u64,
        /// The next sequence number `push` would return.
        next_seq: u64,
    },
    /// All 2^64 sequence numbers are used (only a damaged checkpoint can get here).
    #[error("outbox {dir}: sequence numbers exhausted")]
    SeqExhausted {
        /// Outbox directory.
        dir: PathBuf,
    },
}

/// One pending event, as handed out by [`Outbox::peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number returned by [`Outbox::push`]; pass it to [`Outbox::ack`].
    pub seq: u64,
    /// MQTT topic.
    pub topic: String,
    /// MQTT payload.
    pub payload: Vec<u8>,
}

/// Counters of the outbox, for the status page and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events pushed and neither acknowledged nor dropped.
    pub pending: usize,
    /// Topic plus payload bytes of the pending events (what `max_bytes` bounds).
    pub pending_bytes: u64,
    /// Events that will never be delivered, over the outbox's whole life: dropped by the bound,
    /// or lost to a damaged record (counted conservatively, one per damaged stretch).
    pub dropped_total: u64,
    /// Sequence number the next push returns.
    pub next_seq: u64,
}

/// The durable, bounded outbox in one directory. See the module documentation.
pub struct Outbox {
    dir: PathBuf,
    path: PathBuf,
    /// The log, read-write; records are written at `file_len` with positioned writes.
    file: File,
    /// Bytes of valid records in the log: where the next record goes.
    file_len: u64,
    max_entries: usize,
    max_bytes: u64,
    state: State,
    /// Dead bytes to reach before compaction is tried again after a failed one (0: no failure).
    compact_retry_dead: u64,
    /// Events dropped since the queue was last below its bound, to rate-limit the warning.
    drop_streak: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl std::fmt::Debug for Outbox {
    /// Directory, bounds and counters; never the payloads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("stats", &self.stats())
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

/// The in-memory picture of the queue, rebuilt from the log at open.
#[derive(Debug, Default)]
struct State {
    pending: BTreeMap<u64, Entry>,
    pending_bytes: u64,
    dropped_total: u64,
    next_seq: u64,
}

impl State {
    fn fresh() -> State {
        // Seq 0 is never issued, so callers may use it for "none".
        State { next_seq: 1, ..State::default() }
    }

    /// Size of a compacted log holding exactly this state; O(1), it runs after every call.
    fn live_len(&self) -> u64 {
        let framing = (RECORD_HEAD + ENTRY_BODY_FIXED) as u64 * self.pending.len() as u64;
        MAGIC.len() as u64 + CHECKPOINT_RECORD + framing + self.pending_bytes
    }

    fn insert(&mut self, entry: Entry) {
        self.pending_bytes += entry_size(&entry.topic, &entry.payload);
        // The writer never repeats a seq; should a damaged file do so, the later copy wins.
        if let Some(old) = self.pending.insert(entry.seq, entry) {
            self.pending_bytes -= entry_size(&old.topic, &old.payload);
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Some(entry) = self.pending.remove(&seq) {
            self.pending_bytes -= entry_size(&entry.topic, &entry.payload);
        }
    }

    /// Removes every pending entry with `seq <= up_to`.
    fn drop_up_to(&mut self, up_to: u64) {
        let kept = match up_to.checked_add(1) {
            Some(first_kept) => self.pending.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        let dropped = std::mem::replace(&mut self.pending, kept);
        for entry in dropped.values() {
            self.pending_bytes -= entry_size(&entry.topic, &entry.payload);
        }
    }

    /// The newest seq to drop so that `extra_entries` more entries of `extra_bytes` fit the
    /// bounds, and how many entries that drops; `None` if everything fits already.
    fn plan_eviction(
        &self,
        max_entries: usize,
        max_bytes: u64,
        extra_entries: usize,
        extra_bytes: u64,
    ) -> Option<(u64, u64)> {
        let mut entries = self.pending.len() + extra_entries;
        let mut bytes = self.pending_bytes + extra_bytes;
        let mut plan = None;
        for (count, entry) in (1..).zip(self.pending.values()) {
            if entries <= max_entries && bytes <= max_bytes {
                break;
            }
            entries -= 1;
            bytes -= entry_size(&entry.topic, &entry.payload);
            plan = Some((entry.seq, count));
        }
        plan
    }
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`. `max_entries` and `max_bytes` bound it (both > 0).
    ///
    /// Recovers after a crash: a torn/partial last record is ignored (and truncated away),
    /// corrupt records are skipped with a warning and counted in
    /// [`OutboxStats::dropped_total`], never a panic. A damaged header followed by valid
    /// records is resynced: the records are recovered and the damaged header bytes kept aside
    /// (see the module documentation). Pending events beyond the bounds (smaller bounds than
    /// last time) are dropped oldest first and counted. A log file that is not an outbox (no
    /// valid record after a wrong header) is an error and is left untouched.
    ///
    /// On disk the outbox takes less than about twice `max_bytes` plus 23 bytes per entry
    /// plus 64 KiB (see the module documentation on compaction).
    pub fn open(dir: &Path, max_entries: usize, max_bytes: u64) -> Result<Outbox, OutboxError> {
        Outbox::open_reporting(dir, max_entries, max_bytes).map(|(outbox, _)| outbox)
    }

    /// [`Outbox::open`], and when a damaged header was resynced, where its bytes are kept and
    /// what was wrong.
    fn open_reporting(
        dir: &Path,
        max_entries: usize,
        max_bytes: u64,
    ) -> Result<(Outbox, Option<(PathBuf, String)>), OutboxError> {
        if max_entries == 0 || max_bytes == 0 {
            return Err(OutboxError::InvalidBounds {
                dir: dir.to_path_buf(),
                max_entries,
                max_bytes,
            });
        }
        ensure_dir(dir)?;
        let path = dir.join(LOG_NAME);
        let tmp = dir.join(TMP_NAME);
        // A leftover temp file is a compaction that crashed before its rename: the log is whole.
        match fs::remove_file(&tmp) {
            Ok(()) => log::warn!("outbox {}: removed an interrupted compaction", tmp.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp, "removing the interrupted compaction", e)),
        }

        let (mut state, rewrite, resynced) = match fs::read(&path) {
            Ok(bytes) => {
                let (state, rewrite, header) = recover(&path, &bytes)?;
                // Only the header was damaged: keep its bytes, the records are carried over.
                let resynced = header.map(|detail| {
                    let kept = keep_damaged_header(dir, &bytes[..MAGIC.len()]);
                    let detail = format!(
                        "damaged header ({detail}); {} pending events carried over",
                        state.pending.len()
                    );
                    log::error!(
                        "outbox {}: {detail}; the damaged header is kept as {:?}",
                        path.display(),
                        kept
                    );
                    // An empty path when it could not be kept.
                    (kept.unwrap_or_default(), detail)
                });
                (state, rewrite, resynced)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (State::fresh(), true, None),
            Err(e) => return Err(io_err(&path, "reading", e)),
        };

        let mut drop_record = Vec::new();
        if let Some((up_to, count)) = state.plan_eviction(max_entries, max_bytes, 0, 0) {
            state.drop_up_to(up_to);
            state.dropped_total += count;
            log::warn!(
                "outbox {}: dropped the {count} oldest events to fit the bounds \
                 ({max_entries} events, {max_bytes} bytes)",
                dir.display()
            );
            encode_pair(&mut drop_record, KIND_DROP, up_to, state.dropped_total);
        }

        let (file, file_len) = if rewrite {
            // Damage, a missing file, or an empty one: write a clean log from the recovered state.
            let (file, len) = write_compacted(dir, &path, &state)?;
            sync_dir(dir)?;
            (file, len)
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, "opening", e))?;
            let len = file.metadata().map_err(|e| io_err(&path, "reading the size", e))?.len();
            if !drop_record.is_empty() {
                append(&file, &path, len, &drop_record)?;
            }
            (file, len + drop_record.len() as u64)
        };

        if !state.pending.is_empty() {
            log::info!(
                "outbox {}: {} events pending ({} bytes) from before the restart",
                dir.display(),
                state.pending.len(),
                state.pending_bytes
            );
        }
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            path,
            file,
            file_len,
            max_entries,
            max_bytes,
            state,
            compact_retry_dead: 0,
            drop_streak: 0,
            buf: Vec::new(),
        };
        outbox.maybe_compact();
        Ok((outbox, resynced))
    }

    /// Opens the outbox like [`Outbox::open`], but a log that is not an outbox (no valid record
    /// after a garbage header: another program's file, or damage beyond repair) does not stop
    /// the appliance: it is renamed aside as `outbox.log.damaged-<unix ms>` (kept for
    /// inspection, never deleted) and a fresh outbox is started. Returns the outbox and, when a
    /// file was set aside (that log, or only the damaged header of a log whose records were
    /// carried over), the name it was kept under and what was wrong, for the caller's alarm
    /// event.
    pub fn open_or_set_aside(
        dir: &Path,
        max_entries: usize,
        max_bytes: u64,
    ) -> Result<(Outbox, Option<(PathBuf, String)>), OutboxError> {
        match Outbox::open_reporting(dir, max_entries, max_bytes) {
            Ok(opened) => Ok(opened),
            Err(OutboxError::NotAnOutbox { path, detail }) => {
                let aside = damaged_name(dir);
                fs::rename(&path, &aside)
                    .map_err(|e| io_err(&path, "renaming the damaged log aside", e))?;
                sync_dir(dir)?;
                log::error!(
                    "outbox {}: not an outbox file ({detail}); kept as {} and started afresh",
                    path.display(),
                    aside.display()
                );
                let outbox = Outbox::open(dir, max_entries, max_bytes)?;
                Ok((outbox, Some((aside, detail))))
            }
            Err(e) => Err(e),
        }
    }

    /// Appends durably (written and fdatasync'ed before returning). Returns its sequence number
    /// (strictly increasing across restarts). Drops oldest entries beyond the bounds, counting
    /// them in dropped_total (persisted across restarts too).
    ///
    /// The topic must be a publishable MQTT topic name of at most [`MAX_TOPIC_LEN`] bytes, the
    /// payload at most [`MAX_PAYLOAD_LEN`] bytes, and both together within `max_bytes`. On an
    /// error nothing was added (a partly written record is cut away again).
    pub fn push(&mut self, topic: &str, payload: &[u8]) -> Result<u64, OutboxError> {
        self.check_entry(topic, payload)?;
        let size = entry_size(topic, payload);
        let seq = self.state.next_seq;
        let next_seq = seq
            .checked_add(1)
            .ok_or_else(|| OutboxError::SeqExhausted { dir: self.dir.clone() })?;
        let eviction = self.state.plan_eviction(self.max_entries, self.max_bytes, 1, size);

        // The drop record goes after the event in the same write: if only the event survives a
        // crash, open enforces the bound again and counts the same drops.
        self.buf.clear();
        encode_entry(&mut self.buf, seq, topic, payload);
        if let Some((up_to, count)) = eviction {
            encode_pair(&mut self.buf, KIND_DROP, up_to, self.state.dropped_total + count);
        }
        append(&self.file, &self.path, self.file_len, &self.buf)?;
        self.file_len += self.buf.len() as u64;

        self.state.next_seq = next_seq;
        self.state.insert(Entry { seq, topic: topic.to_owned(), payload: payload.to_vec() });
        match eviction {
            Some((up_to, count)) => {
                self.state.drop_up_to(up_to);
                self.state.dropped_total += count;
                self.note_drops(count);
            }
            None => self.drop_streak = 0,
        }
        self.maybe_compact();
        Ok(seq)
    }

    /// The oldest pending entries, up to `max`, in order (not removed).
    pub fn peek(&self, max: usize) -> Vec<Entry> {
        self.state.pending.values().take(max).cloned().collect()
    }

    /// Marks `seq` acknowledged; acknowledgements may arrive out of order; acknowledged entries
    /// are never returned by peek again, also after restart.
    ///
    /// The ack is written and fdatasync'ed before returning. A late ack of an entry that was
    /// already acknowledged or dropped is a no-op; an ack of a seq never issued is an error.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        if seq >= self.state.next_seq {
            return Err(OutboxError::UnknownSeq {
                dir: self.dir.clone(),
                seq,
                next_seq: self.state.next_seq,
            });
        }
        if !self.state.pending.contains_key(&seq) {
            return Ok(());
        }
        self.buf.clear();
        encode_ack(&mut self.buf, seq);
        append(&self.file, &self.path, self.file_len, &self.buf)?;
        self.file_len += self.buf.len() as u64;
        self.state.remove(seq);
        self.maybe_compact();
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            pending: self.state.pending.len(),
            pending_bytes: self.state.pending_bytes,
            dropped_total: self.state.dropped_total,
            next_seq: self.state.next_seq,
        }
    }

    /// True when no event is pending.
    pub fn is_empty(&self) -> bool {
        self.state.pending.is_empty()
    }

    fn check_entry(&self, topic: &str, payload: &[u8]) -> Result<(), OutboxError> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(OutboxError::TopicTooLong {
                dir: self.dir.clone(),
                len: topic.len(),
                max: MAX_TOPIC_LEN,
            });
        }
        // MQTT 3.1.1 section 4.7: a topic name is non-empty and has no wildcards; NUL is banned
        // in every MQTT string.
        let reason = if topic.is_empty() {
            Some("empty")
        } else if topic.contains(['+', '#']) {
            Some("contains a wildcard (+ or #)")
        } else if topic.contains('\0') {
            Some("contains NUL")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(OutboxError::InvalidTopic {
                dir: self.dir.clone(),
                topic: topic.to_owned(),
                reason,
            });
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(OutboxError::PayloadTooLarge {
                dir: self.dir.clone(),
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let size = entry_size(topic, payload);
        if size > self.max_bytes {
            return Err(OutboxError::EntryTooLarge {
                dir: self.dir.clone(),
                len: size,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }

    fn note_drops(&mut self, count: u64) {
        let before = self.drop_streak;
        self.drop_streak += count;
        if before == 0 || before / DROP_LOG_EVERY != self.drop_streak / DROP_LOG_EVERY {
            log::warn!(
                "outbox {}: full ({} events, {} bytes): dropped the oldest events, \
                 {} since it filled up, {} in total",
                self.dir.display(),
                self.max_entries,
                self.max_bytes,
                self.drop_streak,
                self.state.dropped_total
            );
        }
    }

    /// Compacts when the dead bytes reach both the live bytes and [`COMPACT_MIN_DEAD`].
    ///
    /// A failure is only logged: the record that triggered it is already durable, the old log
    /// stays valid, and the next attempt waits until the dead bytes have doubled so that a full
    /// disk is not hammered with rewrites.
    fn maybe_compact(&mut self) {
        let live = self.state.live_len();
        let dead = self.file_len.saturating_sub(live);
        if dead < COMPACT_MIN_DEAD.max(live) || dead < self.compact_retry_dead {
            return;
        }
        match self.compact() {
            Ok(()) => self.compact_retry_dead = 0,
            Err(e) => {
                log::warn!("{e}; compaction will be retried later");
                self.compact_retry_dead = dead.saturating_mul(2);
            }
        }
    }

    /// Rewrites the log to hold only the checkpoint and the pending entries.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let (file, len) = write_compacted(&self.dir, &self.path, &self.state)?;
        // The rename is done: from here on the old handle points at an unlinked file.
        self.file = file;
        self.file_len = len;
        log::debug!(
            "outbox {}: compacted to {len} bytes ({} events)",
            self.dir.display(),
            self.state.pending.len()
        );
        sync_dir(&self.dir)
    }
}

/// One decoded record, borrowing topic and payload from the file's bytes.
#[derive(Debug)]
enum Record<'a> {
    Checkpoint { next_seq: u64, dropped_total: u64 },
    Entry { seq: u64, topic: &'a str, payload: &'a [u8] },
    Ack { seq: u64 },
    Drop { up_to: u64, dropped_total: u64 },
}

/// Rebuilds the state from the log's bytes. Also says whether the log must be rewritten, and
/// what was wrong with a damaged header that valid records follow (resynced).
fn recover(path: &Path, bytes: &[u8]) -> Result<(State, bool, Option<String>), OutboxError> {
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
        // Holds no record, so nothing is lost; our own writes never leave such a file, but a
        // file system repair might.
        log::warn!("outbox {}: empty or truncated header, starting afresh", path.display());
        return Ok((State::fresh(), true, None));
    }
    let mut header = None;
    if !bytes.starts_with(MAGIC) {
        let name = &MAGIC[..MAGIC.len() - 1];
        let detail = match (bytes.starts_with(name), bytes.get(MAGIC.len() - 1)) {
            (true, Some(version)) => format!("format version {version}, this build reads 1"),
            _ => "no outbox header".to_owned(),
        };
        // A bit flip in the header must not cost the events behind it: resync on the records.
        // Without one valid record the file is somebody else's (or lost): left untouched.
        if find_record(bytes, MAGIC.len()).is_none() {
            return Err(OutboxError::NotAnOutbox { path: path.to_path_buf(), detail });
        }
        let bits: u32 = MAGIC.iter().zip(bytes).map(|(a, b)| (a ^ b).count_ones()).sum();
        header = Some(format!("{bits} bit(s) of the 16 header bytes wrong"));
    }

    let mut state = State::fresh();
    let mut max_seq = 0;
    let mut lost = 0u64;
    let mut damaged_bytes = 0u64;
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        if let Some((record, next)) = parse_record(bytes, pos) {
            apply(&mut state, &mut max_seq, record);
            pos = next;
            continue;
        }
        let resume = find_record(bytes, pos + 1);
        let end = resume.unwrap_or(bytes.len());
        damaged_bytes += (end - pos) as u64;
        if resume.is_some() || claims_complete(bytes, pos) {
            lost += 1;
            log::warn!(
                "outbox {}: skipped {} damaged bytes at offset {pos} (counted as one lost event)",
                path.display(),
                end - pos
            );
        } else {
            log::warn!(
                "outbox {}: removed an incomplete last record ({} bytes at offset {pos}) left \
                 by an interrupted write",
                path.display(),
                end - pos
            );
        }
        pos = end;
    }

    state.next_seq = state.next_seq.max(max_seq.saturating_add(1));
    if damaged_bytes > 0 {
        // A damaged stretch may have held events whose push returned, the newest ones included:
        // skip as many seqs as it could have held so that no seq is ever handed out twice.
        state.next_seq = state.next_seq.saturating_add(damaged_bytes.div_ceil(MIN_ENTRY_RECORD));
        state.dropped_total += lost;
    }
    Ok((state, damaged_bytes > 0 || header.is_some(), header))
}

/// A name for a damaged file in `dir` that nothing has yet: `outbox.log.damaged-<unix ms>`,
/// with `-2`, `-3`, ... behind it in the rare case that the millisecond is taken.
fn damaged_name(dir: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let first = dir.join(format!("{LOG_NAME}.damaged-{stamp}"));
    if !first.exists() {
        return first;
    }
    (2..1000)
        .map(|n| dir.join(format!("{LOG_NAME}.damaged-{stamp}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Keeps a damaged header's bytes in a file of their own, for inspection (which bit flipped
/// says something about the card). Best effort: the records are carried over either way;
/// `None` when the file could not be written.
fn keep_damaged_header(dir: &Path, header: &[u8]) -> Option<PathBuf> {
    let kept = damaged_name(dir);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&kept)
        .and_then(|mut f| f.write_all(header).and_then(|()| f.sync_all()));
    match written {
        Ok(()) => Some(kept),
        Err(e) => {
            log::warn!("outbox {}: cannot keep the damaged header: {e}", kept.display());
            None
        }
    }
}

fn apply(state: &mut State, max_seq: &mut u64, record: Record<'_>) {
    match record {
        Record::Checkpoint { next_seq, dropped_total } => {
            state.next_seq = state.next_seq.max(next_seq);
            state.dropped_total = state.dropped_total.max(dropped_total);
        }
        Record::Entry { seq, topic, payload } => {
            *max_seq = (*max_seq).max(seq);
            state.insert(Entry { seq, topic: topic.to_owned(), payload: payload.to_vec() });
        }
        Record::Ack { seq } => {
            *max_seq = (*max_seq).max(seq);
            state.remove(seq);
        }
        Record::Drop { up_to, dropped_total } => {
            *max_seq = (*max_seq).max(up_to);
            state.drop_up_to(up_to);
            state.dropped_total = state.dropped_total.max(dropped_total);
        }
    }
}

/// The valid record at `pos` and the offset after it, or `None` for anything else.
fn parse_record(bytes: &[u8], pos: usize) -> Option<(Record<'_>, usize)> {
    let head = bytes.get(pos..pos.checked_add(RECORD_HEAD)?)?;
    if head[..4] != MARKER {
        return None;
    }
    let len_bytes = &head[4..8];
    let len = usize::try_from(u32::from_le_bytes(len_bytes.try_into().ok()?)).ok()?;
    if len > MAX_BODY {
        return None;
    }
    let crc = u32::from_le_bytes(head[8..12].try_into().ok()?);
    let start = pos + RECORD_HEAD;
    let body = bytes.get(start..start.checked_add(len)?)?;
    if crc32_update(crc32_update(CRC_INIT, len_bytes), body) ^ CRC_INIT != crc {
        return None;
    }
    Some((decode_body(body)?, start + len))
}

fn decode_body(body: &[u8]) -> Option<Record<'_>> {
    let (&kind, rest) = body.split_first()?;
    match kind {
        KIND_CHECKPOINT if body.len() == PAIR_BODY => {
            Some(Record::Checkpoint { next_seq: le_u64(rest, 0)?, dropped_total: le_u64(rest, 8)? })
        }
        KIND_DROP if body.len() == PAIR_BODY => {
            Some(Record::Drop { up_to: le_u64(rest, 0)?, dropped_total: le_u64(rest, 8)? })
        }
        KIND_ACK if body.len() == ACK_BODY => Some(Record::Ack { seq: le_u64(rest, 0)? }),
        KIND_ENTRY => {
            let seq = le_u64(rest, 0)?;
            let topic_len = usize::from(u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?));
            let topic = std::str::from_utf8(rest.get(10..10 + topic_len)?).ok()?;
            let payload = &rest[10 + topic_len..];
            (topic_len <= MAX_TOPIC_LEN && payload.len() <= MAX_PAYLOAD_LEN)
                .then_some(Record::Entry { seq, topic, payload })
        }
        _ => None,
    }
}

/// Offset of the first valid record at or after `from`.
fn find_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = bytes.get(at..)?.windows(MARKER.len()).position(|w| w == MARKER) {
        let candidate = at + found;
        if parse_record(bytes, candidate).is_some() {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// Whether the invalid record at `pos` has a plausible header and all the bytes its length
/// claims: then it was written completely and damaged later, rather than torn by a crash.
fn claims_complete(bytes: &[u8], pos: usize) -> bool {
    let Some(head) = bytes.get(pos..pos + RECORD_HEAD) else { return false };
    let Ok(len_bytes) = <[u8; 4]>::try_from(&head[4..8]) else { return false };
    let len = u32::from_le_bytes(len_bytes) as usize;
    head[..4] == MARKER && len <= MAX_BODY && pos + RECORD_HEAD + len <= bytes.len()
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// What `max_bytes` counts for one entry.
fn entry_size(topic: &str, payload: &[u8]) -> u64 {
    (topic.len() + payload.len()) as u64
}

/// Appends one record whose body is `parts` concatenated.
fn encode_record(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Bodies are bounded by MAX_BODY (checked before encoding), far below u32::MAX.
    let len_bytes = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    let mut crc = crc32_update(CRC_INIT, &len_bytes);
    for part in parts {
        crc = crc32_update(crc, part);
    }
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&(crc ^ CRC_INIT).to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

fn encode_entry(out: &mut Vec<u8>, seq: u64, topic: &str, payload: &[u8]) {
    // Topics are checked against MAX_TOPIC_LEN before they get here.
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX).to_le_bytes();
    let seq = seq.to_le_bytes();
    encode_record(out, &[&[KIND_ENTRY], &seq, &topic_len, topic.as_bytes(), payload]);
}

fn encode_ack(out: &mut Vec<u8>, seq: u64) {
    encode_record(out, &[&[KIND_ACK], &seq.to_le_bytes()]);
}

fn encode_pair(out: &mut Vec<u8>, kind: u8, a: u64, b: u64) {
    encode_record(out, &[&[kind], &a.to_le_bytes(), &b.to_le_bytes()]);
}

/// Writes `record` at `at` and fdatasyncs it; on failure cuts the file back to `at` so that a
/// partial record is not followed by later ones (which would make the next open count it lost).
fn append(file: &File, path: &Path, at: u64, record: &[u8]) -> Result<(), OutboxError> {
    let written = file.write_all_at(record, at).and_then(|()| file.sync_data());
    if let Err(e) = written {
        if let Err(cut) = file.set_len(at).and_then(|()| file.sync_data()) {
            log::warn!("outbox {}: cutting a failed append away: {cut}", path.display());
        }
        return Err(io_err(path, "appending a record", e));
    }
    Ok(())
}

/// Writes `state` as a new log through a temp file, syncs it and renames it over `path`.
/// Returns the open new log and its length; the caller syncs the directory.
fn write_compacted(dir: &Path, path: &Path, state: &State) -> Result<(File, u64), OutboxError> {
    let tmp = dir.join(TMP_NAME);
    let result = write_file(&tmp, state).and_then(|(file, len)| {
        fs::rename(&tmp, path).map_err(|e| io_err(path, "renaming the compacted log", e))?;
        Ok((file, len))
    });
    if result.is_err() {
        // Best effort: open removes a leftover temp file anyway.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_file(tmp: &Path, state: &State) -> Result<(File, u64), OutboxError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| io_err(tmp, "creating the compacted log", e))?;
    let mut out = BufWriter::with_capacity(64 * 1024, &file);
    let mut record = Vec::new();
    encode_pair(&mut record, KIND_CHECKPOINT, state.next_seq, state.dropped_total);
    let mut len = (MAGIC.len() + record.len()) as u64;
    let mut written = out.write_all(MAGIC).and_then(|()| out.write_all(&record));
    for entry in state.pending.values() {
        if written.is_err() {
            break;
        }
        record.clear();
        encode_entry(&mut record, entry.seq, &entry.topic, &entry.payload);
        len += record.len() as u64;
        written = out.write_all(&record);
    }
    written.and_then(|()| out.flush()).map_err(|e| io_err(tmp, "writing the compacted log", e))?;
    drop(out);
    file.sync_all().map_err(|e| io_err(tmp, "syncing the compacted log", e))?;
    Ok((file, len))
}

/// Creates `dir` if needed; a directory that did not exist is made durable in its parent.
fn ensure_dir(dir: &Path) -> Result<(), OutboxError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating the outbox directory", e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Makes renames and new files in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, "syncing the directory", e))
}

fn io_err(path: &Path, context: &'static str, source: io::Error) -> OutboxError {
    OutboxError::Io { path: path.to_path_buf(), context, source }
}

/// CRC-32/IEEE (reflected polynomial 0xEDB88320), the CRC of zlib, PNG and Ethernet.
const CRC_TABLE: [u32; 256] = crc_table();
/// Initial register value and final XOR of CRC-32/IEEE.
const CRC_INIT: u32 = 0xFFFF_FFFF;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            bit += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

/// CRC-32/IEEE of `bytes` (also the replay state file's check).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(CRC_INIT, bytes) ^ CRC_INIT
}

/// Feeds `bytes` into a CRC register (start with `CRC_INIT`, XOR the result with `CRC_INIT`).
fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;
    use tempfile::TempDir;

    const TOPIC: &str = "portier/door/event";
    const MANY: usize = 1_000_000;
    const MANY_BYTES: u64 = 1 << 30;

    fn open(dir: &Path) -> Outbox {
        Outbox::open(dir, MANY, MANY_BYTES).unwrap()
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("{{\"event\":{i}}}").into_bytes()
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox.peek(usize::MAX).iter().map(|e| e.seq).collect()
    }

    fn log_bytes(dir: &Path) -> Vec<u8> {
        fs::read(dir.join(LOG_NAME)).unwrap()
    }

    /// A fresh directory holding `bytes` as its log.
    fn dir_with_log(bytes: &[u8]) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOG_NAME), bytes).unwrap();
        dir
    }

    /// Offsets of the records of an undamaged log.
    fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
        let mut pos = MAGIC.len();
        while pos < bytes.len() {
            offsets.push(pos);
            pos = parse_record(bytes, pos).expect("undamaged log").1;
        }
        offsets
    }

    /// A log holding a checkpoint and five events; their seqs and entries.
    fn five_events() -> (TempDir, Vec<u64>, Vec<Entry>) {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let seqs: Vec<u64> = (0..5).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        let entries = outbox.peek(usize::MAX);
        (dir, seqs, entries)
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        // The catalogue check value of CRC-32/ISO-HDLC (zlib's crc32).
        assert_eq!(crc32_update(CRC_INIT, b"123456789") ^ CRC_INIT, 0xCBF4_3926);
        assert_eq!(crc32_update(CRC_INIT, b"") ^ CRC_INIT, 0);
    }

    #[test]
    fn push_peek_ack_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.stats(),
            OutboxStats { pending: 0, pending_bytes: 0, dropped_total: 0, next_seq: 1 }
        );
        let pushed: Vec<u64> = (0..5).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        assert!(pushed.windows(2).all(|w| w[0] < w[1]), "{pushed:?}");
        let head = outbox.peek(3);
        assert_eq!(head.len(), 3);
        for (i, entry) in (0..).zip(&head) {
            let expected =
                Entry { seq: pushed[i as usize], topic: TOPIC.into(), payload: payload(i) };
            assert_eq!(*entry, expected);
        }
        assert!(outbox.peek(0).is_empty());
        assert_eq!(outbox.peek(100).len(), 5);
        // peek does not remove.
        assert_eq!(outbox.peek(3), head);

        let bytes: u64 = (0..5).map(|i| entry_size(TOPIC, &payload(i))).sum();
        assert_eq!(outbox.stats().pending_bytes, bytes);
        outbox.ack(pushed[0]).unwrap();
        assert_eq!(outbox.peek(1)[0].seq, pushed[1]);
        assert_eq!(outbox.stats().pending, 4);
        assert_eq!(outbox.stats().pending_bytes, bytes - entry_size(TOPIC, &payload(0)));
        for &seq in &pushed[1..] {
            outbox.ack(seq).unwrap();
        }
        assert!(outbox.is_empty());
        assert_eq!(outbox.stats().pending_bytes, 0);
        assert_eq!(outbox.stats().next_seq, pushed[4] + 1);
    }

    #[test]
    fn out_of_order_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let s: Vec<u64> = (0..6).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        for i in [3, 0, 5] {
            outbox.ack(s[i]).unwrap();
        }
        assert_eq!(seqs(&outbox), [s[1], s[2], s[4]]);
        // A repeated (late) PUBACK is harmless.
        outbox.ack(s[3]).unwrap();
        assert_eq!(seqs(&outbox), [s[1], s[2], s[4]]);
        // An ack of a seq never issued is a caller bug and says so.
        let err = outbox.ack(s[5] + 1).unwrap_err();
        assert!(matches!(err, OutboxError::UnknownSeq { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("outbox ") && message.contains("never issued"), "{message}");
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    #[test]
    fn restart_keeps_pending_in_order_and_never_returns_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let s: Vec<u64> = (0..10).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        for i in [7, 2, 0, 9] {
            outbox.ack(s[i]).unwrap();
        }
        let before = outbox.peek(usize::MAX);
        let stats = outbox.stats();
        drop(outbox);

        let mut outbox = open(dir.path());
        assert_eq!(outbox.peek(usize::MAX), before);
        assert_eq!(outbox.stats(), stats);
        outbox.ack(s[4]).unwrap();
        drop(outbox);

        let outbox = open(dir.path());
        let expected: Vec<u64> = [1, 3, 5, 6, 8].iter().map(|&i| s[i]).collect();
        assert_eq!(seqs(&outbox), expected);
        for entry in outbox.peek(usize::MAX) {
            let i = s.iter().position(|&x| x == entry.seq).unwrap() as u64;
            assert_eq!(entry.payload, payload(i));
        }
    }

    #[test]
    fn seq_strictly_increasing_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for round in 0..6 {
            let mut outbox = open(dir.path());
            assert!(outbox.stats().next_seq > last);
            for i in 0..3 {
                let seq = outbox.push(TOPIC, &payload(i)).unwrap();
                assert!(seq > last, "round {round}: {seq} after {last}");
                last = seq;
            }
            // Empty the outbox; every other round also compact, so that only the checkpoint
            // remembers the seqs.
            for seq in seqs(&outbox) {
                outbox.ack(seq).unwrap();
            }
            if round % 2 == 1 {
                outbox.compact().unwrap();
                assert_eq!(record_offsets(&log_bytes(dir.path())).len(), 1);
            }
        }
    }

    #[test]
    fn max_entries_drops_oldest_and_count_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 3, MANY_BYTES).unwrap();
        let s: Vec<u64> = (0..5).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        assert_eq!(seqs(&outbox), &s[2..]);
        assert_eq!(outbox.stats().dropped_total, 2);
        // A late PUBACK of a dropped event is a no-op.
        outbox.ack(s[0]).unwrap();
        drop(outbox);

        let mut outbox = Outbox::open(dir.path(), 3, MANY_BYTES).unwrap();
        assert_eq!(seqs(&outbox), &s[2..]);
        assert_eq!(outbox.stats().dropped_total, 2);
        let newest = outbox.push(TOPIC, &payload(5)).unwrap();
        assert_eq!(seqs(&outbox), [s[3], s[4], newest]);
        assert_eq!(outbox.stats().dropped_total, 3);
        drop(outbox);
        assert_eq!(open(dir.path()).stats().dropped_total, 3);
    }

    #[test]
    fn max_bytes_drops_oldest_and_count_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        // Topic "t" and 9-byte payloads: 10 bytes an entry, so 35 bytes hold three.
        let mut outbox = Outbox::open(dir.path(), MANY, 35).unwrap();
        let s: Vec<u64> = (0..4).map(|_| outbox.push("t", b"123456789").unwrap()).collect();
        assert_eq!(seqs(&outbox), &s[1..]);
        assert_eq!(outbox.stats().pending_bytes, 30);
        assert_eq!(outbox.stats().dropped_total, 1);
        // One large entry displaces as many old ones as it needs: 30 + 25 - 10 - 10 = 35.
        let large = outbox.push("t", &[7; 24]).unwrap();
        assert_eq!(seqs(&outbox), [s[3], large]);
        assert_eq!(outbox.stats().dropped_total, 3);
        assert_eq!(outbox.stats().pending_bytes, 35);
        drop(outbox);

        let outbox = Outbox::open(dir.path(), MANY, 35).unwrap();
        assert_eq!(seqs(&outbox), [s[3], large]);
        assert_eq!(outbox.stats().dropped_total, 3);
    }

    #[test]
    fn smaller_bounds_at_open_drop_oldest_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let s: Vec<u64> = (0..10).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        drop(outbox);
        for _ in 0..2 {
            let outbox = Outbox::open(dir.path(), 4, MANY_BYTES).unwrap();
            assert_eq!(seqs(&outbox), &s[6..]);
            assert_eq!(outbox.stats().dropped_total, 6);
        }
        let outbox = open(dir.path());
        assert_eq!(seqs(&outbox), &s[6..]);
        assert_eq!(outbox.stats().dropped_total, 6);
    }

    #[test]
    fn torn_drop_record_is_redone_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 2, MANY_BYTES).unwrap();
        let s: Vec<u64> = (0..3).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        drop(outbox);
        // The last push wrote its event and a drop record; lose the drop record's tail.
        let bytes = log_bytes(dir.path());
        let drop_at = *record_offsets(&bytes).last().unwrap();
        assert_eq!(bytes[drop_at + RECORD_HEAD], KIND_DROP);
        let damaged = dir_with_log(&bytes[..bytes.len() - 3]);
        let outbox = Outbox::open(damaged.path(), 2, MANY_BYTES).unwrap();
        assert_eq!(seqs(&outbox), &s[1..]);
        assert_eq!(outbox.stats().dropped_total, 1);
    }

    #[test]
    fn invalid_input_is_rejected_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for (entries, bytes) in [(0, 10), (10, 0)] {
            let err = Outbox::open(dir.path(), entries, bytes).err().unwrap();
            assert!(matches!(err, OutboxError::InvalidBounds { .. }), "{err:?}");
        }
        let mut outbox = Outbox::open(dir.path(), 10, 4096).unwrap();
        outbox.push(TOPIC, b"ok").unwrap();
        let stats = outbox.stats();
        let long_topic = "t".repeat(MAX_TOPIC_LEN + 1);
        let cases: [(&str, Vec<u8>); 7] = [
            (&long_topic, vec![]),
            ("", vec![]),
            ("door/+/event", vec![]),
            ("door/#", vec![]),
            ("door\0", vec![]),
            (TOPIC, vec![0; MAX_PAYLOAD_LEN + 1]),
            (TOPIC, vec![0; 4096]),
        ];
        for (topic, payload) in &cases {
            let err = outbox.push(topic, payload).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("outbox "), "{message}");
            assert!(message.contains(&dir.path().display().to_string()), "{message}");
            assert_eq!(outbox.stats(), stats, "{message}");
        }
        assert!(matches!(outbox.push(&long_topic, b""), Err(OutboxError::TopicTooLong { .. })));
        assert!(matches!(outbox.push("a/#", b""), Err(OutboxError::InvalidTopic { .. })));
        let huge = vec![0; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(outbox.push(TOPIC, &huge), Err(OutboxError::PayloadTooLarge { .. })));
        let err = outbox.push(TOPIC, &[0; 4096]).unwrap_err();
        assert!(matches!(err, OutboxError::EntryTooLarge { .. }));
        // The limits themselves are accepted.
        let mut roomy = Outbox::open(&dir.path().join("roomy"), 10, MANY_BYTES).unwrap();
        let max_topic = "t".repeat(MAX_TOPIC_LEN);
        let seq = roomy.push(&max_topic, &vec![1; MAX_PAYLOAD_LEN]).unwrap();
        drop(roomy);
        let roomy = open(&dir.path().join("roomy"));
        assert_eq!(roomy.peek(1)[0].seq, seq);
        assert_eq!(roomy.peek(1)[0].payload.len(), MAX_PAYLOAD_LEN);
    }

    #[test]
    fn torn_last_record_recovers_all_complete_records() {
        let (dir, s, entries) = five_events();
        let bytes = log_bytes(dir.path());
        let last = *record_offsets(&bytes).last().unwrap();
        // Every cut inside the last record, header included (a cut at its start is a clean log).
        for cut in last + 1..bytes.len() {
            let torn = dir_with_log(&bytes[..cut]);
            let mut outbox = open(torn.path());
            assert_eq!(outbox.peek(usize::MAX), &entries[..4], "cut at {cut}");
            assert_eq!(outbox.stats().dropped_total, 0, "cut at {cut}");
            let seq = outbox.push(TOPIC, b"after").unwrap();
            assert!(seq > s[4], "cut at {cut}: seq {seq} reused");
            drop(outbox);
            // The torn bytes are gone: the new event follows the complete ones.
            let outbox = open(torn.path());
            assert_eq!(seqs(&outbox), [s[0], s[1], s[2], s[3], seq], "cut at {cut}");
            assert_eq!(outbox.stats().dropped_total, 0);
        }
    }

    #[test]
    fn flipped_byte_inside_a_record_skips_it_and_counts_it() {
        let (dir, s, entries) = five_events();
        let bytes = log_bytes(dir.path());
        let offsets = record_offsets(&bytes);
        // offsets[0] is the checkpoint, offsets[1..] the events; damage the third event,
        // every byte of it in turn (marker, length, CRC, body).
        let (start, end) = (offsets[3], offsets[4]);
        let mut expected = entries.clone();
        expected.remove(2);
        for at in start..end {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let damaged = dir_with_log(&damaged);
            let mut outbox = open(damaged.path());
            assert_eq!(outbox.peek(usize::MAX), expected, "byte {at}");
            assert_eq!(outbox.stats().dropped_total, 1, "byte {at}");
            assert!(outbox.push(TOPIC, b"after").unwrap() > s[4]);
            drop(outbox);
            // Counted once: open rewrote the log without the damage.
            let outbox = open(damaged.path());
            assert_eq!(outbox.stats().dropped_total, 1, "byte {at}");
            assert_eq!(outbox.stats().pending, 5);
        }
    }

    #[test]
    fn flipped_byte_in_the_last_record_skips_it_without_reusing_its_seq() {
        let (dir, s, entries) = five_events();
        let mut bytes = log_bytes(dir.path());
        let len = bytes.len();
        bytes[len - 2] ^= 0x01;
        let damaged = dir_with_log(&bytes);
        let mut outbox = open(damaged.path());
        assert_eq!(outbox.peek(usize::MAX), &entries[..4]);
        assert_eq!(outbox.stats().dropped_total, 1);
        // Its push returned, maybe it was even published: its seq must not come back.
        assert!(outbox.push(TOPIC, b"after").unwrap() > s[4]);
    }

    #[test]
    fn damaged_ack_sends_the_event_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let s: Vec<u64> = (0..3).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        outbox.ack(s[1]).unwrap();
        drop(outbox);
        let mut bytes = log_bytes(dir.path());
        let ack_at = *record_offsets(&bytes).last().unwrap();
        assert_eq!(bytes[ack_at + RECORD_HEAD], KIND_ACK);
        bytes[ack_at + RECORD_HEAD + 1] ^= 0xFF;
        let damaged = dir_with_log(&bytes);
        // At least once: the event comes back; the damaged record is counted conservatively.
        let outbox = open(damaged.path());
        assert_eq!(seqs(&outbox), s);
        assert_eq!(outbox.stats().dropped_total, 1);
    }

    #[test]
    fn garbage_file_is_refused_and_left_untouched() {
        let garbage = b"this is somebody's notes file, not an outbox\n".repeat(20);
        let dir = dir_with_log(&garbage);
        let err = Outbox::open(dir.path(), 10, 4096).err().unwrap();
        assert!(matches!(err, OutboxError::NotAnOutbox { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&dir.path().join(LOG_NAME).display().to_string()), "{message}");
        assert!(message.contains("not an outbox file"), "{message}");
        assert_eq!(log_bytes(dir.path()), garbage);

        let mut future = MAGIC.to_vec();
        future[MAGIC.len() - 1] = 2;
        future.extend_from_slice(&[0; 40]);
        let dir = dir_with_log(&future);
        let message = Outbox::open(dir.path(), 10, 4096).err().unwrap().to_string();
        assert!(message.contains("format version 2"), "{message}");
        assert_eq!(log_bytes(dir.path()), future);
    }

    #[test]
    fn a_flipped_bit_in_the_header_carries_the_events_over_and_sets_only_the_header_aside() {
        // In the name, in its NUL, in the version byte.
        for (at, bit) in [(3, 0x20), (MAGIC.len() - 2, 0x80), (MAGIC.len() - 1, 0x02)] {
            let (dir, pushed, _) = five_events();
            let mut outbox = open(dir.path());
            outbox.ack(pushed[1]).unwrap();
            let pending = outbox.peek(usize::MAX);
            drop(outbox);
            let mut bytes = log_bytes(dir.path());
            bytes[at] ^= bit;
            fs::write(dir.path().join(LOG_NAME), &bytes).unwrap();

            let (mut outbox, aside) =
                Outbox::open_or_set_aside(dir.path(), MANY, MANY_BYTES).unwrap();
            assert_eq!(outbox.peek(usize::MAX), pending, "byte {at}");
            assert_eq!(outbox.stats().dropped_total, 0, "nothing lost");
            let (kept, detail) = aside.expect("the damaged header is reported");
            assert_eq!(fs::read(&kept).unwrap(), &bytes[..MAGIC.len()], "only the header kept");
            assert!(detail.contains("1 bit(s)"), "{detail}");
            assert!(detail.contains("4 pending events carried over"), "{detail}");
            assert!(log_bytes(dir.path()).starts_with(MAGIC), "rewritten with a good header");
            let after = outbox.push(TOPIC, b"after").unwrap();
            assert!(after > pushed[4]);
            drop(outbox);
            let (again, aside) = Outbox::open_or_set_aside(dir.path(), MANY, MANY_BYTES).unwrap();
            assert!(aside.is_none(), "reported once");
            assert_eq!(seqs(&again), [pushed[0], pushed[2], pushed[3], pushed[4], after]);
            let names: BTreeSet<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 2, "the log and the header's file: {names:?}");
        }

        // The header and the checkpoint behind it destroyed: the events are still carried
        // over, the damaged stretch counted as one lost event and no seq handed out twice.
        let (dir, pushed, entries) = five_events();
        let mut bytes = log_bytes(dir.path());
        bytes[..MAGIC.len() + 8].fill(0);
        fs::write(dir.path().join(LOG_NAME), &bytes).unwrap();
        let (mut outbox, aside) = Outbox::open_or_set_aside(dir.path(), MANY, MANY_BYTES).unwrap();
        assert!(aside.unwrap().1.contains("5 pending events carried over"));
        assert_eq!(outbox.peek(usize::MAX), entries);
        assert_eq!(outbox.stats().dropped_total, 1);
        assert!(outbox.push(TOPIC, b"after").unwrap() > pushed[4]);
    }

    #[test]
    fn garbage_after_the_header_is_skipped() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..50 {
            let mut bytes = MAGIC.to_vec();
            bytes.extend((0..round * 37).map(|_| rng.next() as u8));
            let dir = dir_with_log(&bytes);
            let mut outbox = open(dir.path());
            assert!(outbox.is_empty());
            outbox.push(TOPIC, b"after").unwrap();
            drop(outbox);
            assert_eq!(open(dir.path()).stats().pending, 1);
        }
    }

    #[test]
    fn random_damage_never_panics_nor_invents_events() {
        // A log with every record kind: events of varied sizes, acks, drops by the bound.
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 30, MANY_BYTES).unwrap();
        let mut pushed = BTreeMap::new();
        for i in 0..60u64 {
            let body = vec![b'a' + (i % 26) as u8; (i * 13 % 300) as usize];
            let seq = outbox.push(TOPIC, &body).unwrap();
            pushed.insert(seq, body);
            if i % 4 == 1 {
                outbox.ack(seq - 1).unwrap();
            }
        }
        let last_seq = *pushed.keys().last().unwrap();
        drop(outbox);
        let bytes = log_bytes(dir.path());

        let mut rng = Rng(42);
        for round in 0..300 {
            let mut damaged = bytes.clone();
            let at = MAGIC.len() + rng.below(bytes.len() - MAGIC.len());
            let truncated = match round % 5 {
                0 => {
                    damaged[at] ^= 1 << rng.below(8);
                    false
                }
                1 => {
                    let end = (at + rng.below(200)).min(damaged.len());
                    damaged[at..end].fill(0);
                    false
                }
                2 => {
                    let junk: Vec<u8> = (0..rng.below(100) + 1).map(|_| rng.next() as u8).collect();
                    damaged.splice(at..at, junk);
                    false
                }
                3 => {
                    damaged.truncate(at);
                    true
                }
                _ => {
                    for _ in 0..10 {
                        let at = rng.below(damaged.len());
                        damaged[at] = rng.next() as u8;
                    }
                    false
                }
            };
            let damaged_dir = dir_with_log(&damaged);
            let mut outbox = match Outbox::open(damaged_dir.path(), 30, MANY_BYTES) {
                Ok(outbox) => outbox,
                // Only a damaged header may refuse the file.
                Err(OutboxError::NotAnOutbox { .. }) if !damaged.starts_with(MAGIC) => continue,
                Err(e) => panic!("round {round}: {e}"),
            };
            let entries = outbox.peek(usize::MAX);
            assert!(entries.len() <= 30, "round {round}");
            for entry in &entries {
                assert_eq!(Some(&entry.payload), pushed.get(&entry.seq), "round {round}");
            }
            let seq = outbox.push(TOPIC, b"after").unwrap();
            // A log cut at a record boundary looks like an older, undamaged one; any other
            // damage must not hand out a seq twice.
            if !truncated {
                assert!(seq > last_seq, "round {round}: seq {seq} reused");
            }
            drop(outbox);
            let again = Outbox::open(damaged_dir.path(), 30, MANY_BYTES).unwrap();
            assert_eq!(again.peek(usize::MAX).last().map(|e| e.seq), Some(seq), "round {round}");
        }
    }

    #[test]
    fn empty_or_truncated_header_starts_afresh() {
        for len in [0, 1, 7, MAGIC.len() - 1] {
            let dir = dir_with_log(&MAGIC[..len]);
            let mut outbox = open(dir.path());
            assert!(outbox.is_empty());
            assert_eq!(outbox.push(TOPIC, b"x").unwrap(), 1);
            drop(outbox);
            assert_eq!(open(dir.path()).stats().pending, 1);
        }
    }

    #[test]
    fn interrupted_compaction_leaves_the_log_whole() {
        let (dir, _, entries) = five_events();
        fs::write(dir.path().join(TMP_NAME), &MAGIC[..10]).unwrap();
        let outbox = open(dir.path());
        assert_eq!(outbox.peek(usize::MAX), entries);
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("var/lib/portier/outbox");
        let mut outbox = open(&nested);
        outbox.push(TOPIC, b"x").unwrap();
        assert!(nested.join(LOG_NAME).is_file());
    }

    #[test]
    fn compaction_keeps_order_and_pending_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let mut expected = BTreeMap::new();
        let mut appended = 0u64;
        let mut rng = Rng(7);
        for i in 0..300u64 {
            let body = vec![b'0' + (i % 10) as u8; 1000 + rng.below(100)];
            let seq = outbox.push(TOPIC, &body).unwrap();
            appended += RECORD_HEAD as u64 + 11 + TOPIC.len() as u64 + body.len() as u64;
            expected.insert(seq, body);
            // Ack two of three, picked at random among the pending: out of order.
            if i % 3 != 2 {
                let keys: Vec<u64> = expected.keys().copied().collect();
                let victim = keys[rng.below(keys.len())];
                outbox.ack(victim).unwrap();
                expected.remove(&victim);
            }
            assert_eq!(outbox.stats().pending, expected.len());
        }
        let file_len = fs::metadata(dir.path().join(LOG_NAME)).unwrap().len();
        assert_eq!(file_len, outbox.file_len);
        assert!(file_len < appended, "no compaction happened: {file_len} >= {appended}");

        let check = |outbox: &Outbox| {
            let entries = outbox.peek(usize::MAX);
            let got: Vec<(u64, &[u8])> =
                entries.iter().map(|e| (e.seq, e.payload.as_slice())).collect();
            let want: Vec<(u64, &[u8])> =
                expected.iter().map(|(&s, p)| (s, p.as_slice())).collect();
            assert_eq!(got, want);
        };
        check(&outbox);
        let stats = outbox.stats();
        outbox.compact().unwrap();
        assert_eq!(outbox.file_len, outbox.state.live_len());
        assert_eq!(fs::metadata(dir.path().join(LOG_NAME)).unwrap().len(), outbox.file_len);
        check(&outbox);
        assert_eq!(outbox.stats(), stats);
        drop(outbox);
        let outbox = open(dir.path());
        check(&outbox);
        assert_eq!(outbox.stats(), stats);
    }

    #[test]
    fn log_stays_bounded_over_10000_push_ack_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        // Fifty events stay pending throughout (a broker that never acks some of them).
        let stuck: Vec<u64> = (0..50).map(|i| outbox.push(TOPIC, &payload(i)).unwrap()).collect();
        let body = [b'x'; 200];
        for _ in 0..10_000 {
            let seq = outbox.push(TOPIC, &body).unwrap();
            outbox.ack(seq).unwrap();
            // What maybe_compact guarantees after every call.
            let live = outbox.state.live_len();
            assert!(outbox.file_len < live + live.max(COMPACT_MIN_DEAD));
        }
        let on_disk = fs::metadata(dir.path().join(LOG_NAME)).unwrap().len();
        assert_eq!(on_disk, outbox.file_len);
        assert!(on_disk < 80 * 1024, "log grew to {on_disk} bytes");
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [LOG_NAME]);
        drop(outbox);
        let outbox = open(dir.path());
        assert_eq!(seqs(&outbox), stuck);
        assert_eq!(outbox.stats().next_seq, 10_051);
    }

    /// xorshift64*: reproducible damage without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const CHILD_DIR_ENV: &str = "PORTIER_OUTBOX_CRASH_CHILD_DIR";
    const CHILD_RUN_ENV: &str = "PORTIER_OUTBOX_CRASH_CHILD_RUN";
    const CRASH_RUNS: u64 = 20;
    const CRASH_PAYLOAD: usize = 2000;

    fn crash_payload(run: u64, i: u64) -> Vec<u8> {
        let mut payload = format!("run {run} event {i} ").into_bytes();
        payload.resize(CRASH_PAYLOAD, b'.');
        payload
    }

    /// (run, i) of a crash test payload.
    fn crash_event(payload: &[u8]) -> (u64, u64) {
        let text = std::str::from_utf8(payload).unwrap();
        let words: Vec<&str> = text.split_whitespace().collect();
        (words[1].parse().unwrap(), words[3].parse().unwrap())
    }

    /// The child process of `sigkill_at_any_moment_loses_no_pushed_event`; without its
    /// environment variable (a normal test run) it does nothing.
    #[test]
    fn outbox_crash_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else { return };
        let run: u64 = std::env::var(CHILD_RUN_ENV).unwrap().parse().unwrap();
        let mut outbox = open(Path::new(&dir));
        // End the harness's "test ... " line, which has no newline yet, so that reports start
        // their lines.
        println!();
        // Bounded so that a child whose parent died stops by itself.
        for i in 0..20_000 {
            let seq = outbox.push(TOPIC, &crash_payload(run, i)).unwrap();
            println!("pushed {seq} {run} {i}");
            // Two acks per three pushes, every other one out of order: the log gets acks, dead
            // events and compactions, and the kill lands in any of them.
            // Beyond 150 pending (a broker that caught up) every push is acked, so that the
            // log compacts every few hundred pushes and some kills land in a compaction.
            let victim = match i % 3 {
                0 => outbox.peek(2).last().map(|e| e.seq),
                1 => outbox.peek(1).first().map(|e| e.seq),
                _ if outbox.stats().pending > 150 => outbox.peek(1).first().map(|e| e.seq),
                _ => None,
            };
            if let Some(victim) = victim {
                println!("acking {victim}");
                outbox.ack(victim).unwrap();
                println!("acked {victim}");
            }
        }
    }

    #[test]
    fn sigkill_at_any_moment_loses_no_pushed_event() {
        use std::io::Read;
        use std::os::unix::process::ExitStatusExt;
        use std::process::{Command, Stdio};

        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        // The harness names tests by their path without the crate.
        let module = module_path!();
        let test_path = module.split_once("::").map_or(module, |(_, rest)| rest);
        let child_test = format!("{test_path}::outbox_crash_child");

        // What the outbox must hold: seq -> (run, i), as the children reported it.
        let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut last_seq = 0;
        let (mut pushes, mut acks) = (0u64, 0u64);
        for run in 0..CRASH_RUNS {
            let mut child = Command::new(&exe)
                .args(["--exact", &child_test, "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR_ENV, dir.path())
                .env(CHILD_RUN_ENV, run.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let read_all = |mut pipe: Box<dyn Read + Send>| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    pipe.read_to_string(&mut text).unwrap();
                    text
                })
            };
            let stdout = read_all(Box::new(child.stdout.take().unwrap()));
            let stderr = read_all(Box::new(child.stderr.take().unwrap()));
            // From before the child opened the outbox to hundreds of pushes into it.
            std::thread::sleep(Duration::from_millis(5 + run * 37 % 240));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
            assert_eq!(status.signal(), Some(9), "child {run}: {status}\n{stdout}\n{stderr}");

            let mut acking = BTreeSet::new();
            let mut last_i = None;
            for line in stdout.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["pushed", seq, r, i] => {
                        let (seq, i): (u64, u64) = (seq.parse().unwrap(), i.parse().unwrap());
                        assert!(seq > last_seq, "run {run}: seq {seq} after {last_seq}");
                        assert_eq!(r.parse::<u64>().unwrap(), run);
                        assert!(model.insert(seq, (run, i)).is_none());
                        last_seq = seq;
                        last_i = Some(i);
                        pushes += 1;
                    }
                    ["acking", seq] => {
                        acking.insert(seq.parse::<u64>().unwrap());
                    }
                    ["acked", seq] => {
                        let seq = seq.parse().unwrap();
                        acking.remove(&seq);
                        assert!(
                            model.remove(&seq).is_some(),
                            "run {run}: acked unknown {seq}\n{stdout}"
                        );
                        acks += 1;
                    }
                    _ => {}
                }
            }
            assert!(acking.len() <= 1);

            let outbox = open(dir.path());
            let stats = outbox.stats();
            assert_eq!(stats.dropped_total, 0, "run {run}: a kill is not damage");
            let entries = outbox.peek(usize::MAX);
            let mut unreported = 0;
            for entry in &entries {
                let event = crash_event(&entry.payload);
                assert_eq!(entry.payload, crash_payload(event.0, event.1));
                match model.get(&entry.seq) {
                    Some(&known) => assert_eq!(known, event, "run {run}: seq {}", entry.seq),
                    None => {
                        // Only the push that was killed between its fdatasync and its println.
                        unreported += 1;
                        assert_eq!(event, (run, last_i.map_or(0, |i| i + 1)), "run {run}");
                        assert!(entry.seq > last_seq);
                    }
                }
            }
            assert!(unreported <= 1, "run {run}: {unreported} unreported events");
            // In order, no duplicates: seqs and (run, i) rise together.
            for pair in entries.windows(2) {
                assert!(pair[0].seq < pair[1].seq);
                assert!(crash_event(&pair[0].payload) < crash_event(&pair[1].payload));
            }
            // Nothing reported pushed is missing unless its ack was under way.
            let present: BTreeSet<u64> = entries.iter().map(|e| e.seq).collect();
            for seq in model.keys() {
                assert!(present.contains(seq) || acking.contains(seq), "run {run}: lost {seq}");
            }
            model = entries.iter().map(|e| (e.seq, crash_event(&e.payload))).collect();
            last_seq = last_seq.max(entries.last().map_or(0, |e| e.seq));
            assert!(stats.next_seq > last_seq);
        }
        assert!(pushes >= 100 && acks >= 50, "children did too little: {pushes} pushes");
        let len = fs::metadata(dir.path().join(LOG_NAME)).unwrap().len();
        assert!(len < pushes * CRASH_PAYLOAD as u64, "never compacted: {len} bytes");
    }

    #[test]
    fn a_garbage_log_is_set_aside_and_a_fresh_outbox_started() {
        let dir = dir_with_log(b"this is not an outbox at all, just garbage bytes");
        let (mut outbox, aside) = Outbox::open_or_set_aside(dir.path(), 100, 1 << 20).unwrap();
        let (kept, detail) = aside.unwrap();
        assert!(!detail.is_empty());
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"this is not an outbox at all, just garbage bytes"
        );
        assert!(kept.file_name().unwrap().to_string_lossy().starts_with("outbox.log.damaged-"));
        assert_eq!(outbox.stats().pending, 0);
        outbox.push("t/a", b"x").unwrap();
        drop(outbox);
        let (outbox, aside) = Outbox::open_or_set_aside(dir.path(), 100, 1 << 20).unwrap();
        assert!(aside.is_none());
        assert_eq!(outbox.stats().pending, 1);
    }
}
