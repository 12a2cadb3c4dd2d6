//! Gallery backup files (`portier gallery import FILE`): any bytes are refused with a message or
//! open, never a panic, and the Argon2 costs a header asks for are bounded before any key
//! derivation or allocation (the file is not authenticated until after the derivation, so a
//! crafted header could otherwise ask for gigabytes and minutes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::gallery::{open_backup, BackupHeader};

fuzz_target!(|data: &[u8]| {
    match BackupHeader::parse(data) {
        Ok((h, sealed)) => {
            assert!((1..=8).contains(&h.lanes), "{h:?}");
            assert!((1..=8).contains(&h.passes), "{h:?}");
            assert!(h.memory_kib >= 8 * h.lanes && h.memory_kib <= 1 << 18, "{h:?}");
            assert!(sealed.len() < data.len());
            // Derive and open only where that is cheap: the fuzzer's time goes to the parsing.
            if h.memory_kib <= 64 && h.passes == 1 {
                // Never authentic: the fuzzer does not know a passphrase's key.
                assert!(open_backup(data, "a passphrase of some length").is_err());
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
