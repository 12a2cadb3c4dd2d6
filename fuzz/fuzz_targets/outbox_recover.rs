//! The MQTT outbox's recovery of `outbox.log` (`Outbox::open`): whatever bytes a crash, a bad SD
//! card or a person left in the file, opening is a clean refusal (not an outbox: the service
//! then sets it aside) or a consistent queue: pending events in strictly ascending sequence
//! below the next sequence number, within the topic and payload limits, and the same queue again
//! after the compaction that recovery writes, never a panic or a second hand-out of a sequence.
//! A damaged header with valid records behind it is resynced (its 16 bytes kept in a file of
//! their own, removed here after each input).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portier::mqtt::outbox::{Outbox, OutboxError, MAX_PAYLOAD_LEN, MAX_TOPIC_LEN};

/// One scratch folder per fuzzing process, in memory where the machine has /dev/shm (each run
/// fsyncs).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("portier-fuzz-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Removes the damaged headers a resync kept, so the scratch folder does not fill up.
fn remove_kept_headers(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("scratch folder").flatten() {
        if entry.file_name().to_string_lossy().starts_with("outbox.log.damaged-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let _ = std::fs::remove_file(dir.join("outbox.log.tmp"));
    remove_kept_headers(dir);
    std::fs::write(dir.join("outbox.log"), data).expect("write the log");
    let outbox = match Outbox::open(dir, 10_000, 16 << 20) {
        Ok(o) => o,
        Err(OutboxError::NotAnOutbox { .. }) => return,
        Err(e) => panic!("only a foreign file may be refused: {e}"),
    };
    let stats = outbox.stats();
    let pending = outbox.peek(usize::MAX);
    assert_eq!(pending.len(), stats.pending);
    for pair in pending.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "ascending: {} then {}", pair[0].seq, pair[1].seq);
    }
    for e in &pending {
        assert!(e.seq < stats.next_seq, "seq {} handed out again (next {})", e.seq, stats.next_seq);
        assert!(e.topic.len() <= MAX_TOPIC_LEN && e.payload.len() <= MAX_PAYLOAD_LEN);
    }
    drop(outbox);
    // What recovery left on disk opens to the same queue.
    let again = Outbox::open(dir, 10_000, 16 << 20).expect("the recovered log reopens");
    let replay = again.peek(usize::MAX);
    assert_eq!(replay.len(), pending.len());
    for (a, b) in pending.iter().zip(&replay) {
        assert_eq!((a.seq, &a.topic, &a.payload), (b.seq, &b.topic, &b.payload));
    }
    assert!(again.stats().next_seq >= stats.next_seq);
    assert!(again.stats().dropped_total >= stats.dropped_total);
});
